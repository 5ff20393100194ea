"""Benchmark: bench validity (issue 17) at the paper's sizes, and what the checks cost.

    python benchmarks/bench_validity.py [--xray-subjects 40] [--items 120] [--build-items 200] [--work DIR]
                                        [--only tier] [--table docs/generated/validity.md]

Setup (not timed): the sample sources at 512 px (CT, MRI, MIMIC-CXR-JPG),
ingested with the paper's settings (images at most 512 px, crops 224 px).

Measured, per modality, on items made by the pipeline's own item functions:

1. Tier shortcuts. Scale items with the `direct` chain (the paper's
   crop-and-resize), `matched` without grain and `matched` with grain (the
   shipped recipes): the AUC of the sharpness probe (share of power above
   0.25 cycles/px; also at 0.15 and 0.35) and of the noise probe (pixel-noise
   level; also the spread of the Laplacian) for telling Level-2 from
   Level-1 crops, and the tier accuracy of a threshold learnt on half the
   items; and the held-out AUC of the learned probes (issue 21: gradient
   boosting on a crop's artefact features, and apart on its content
   features, trained on the crops of half the source images). The same on
   textured test images: 1/f^beta textures with white noise, and CT-like
   slices whose noise is correlated (white noise through a ramp or a smooth
   reconstruction kernel, in HU, before the W400/L40 window), with a
   scale-free tissue texture or with organs.
2. Degenerate content: jigsaw and scale items from CT slices whose air is
   stored as 0 HU (a flat grey background the -500 HU mask keeps), with and
   without the content check.
3. Anomaly paste `hard` vs `matched`: accuracy of the seam-strength probe
   (solvable by looking) and of the intensity-step probe (the intensity cue).
4. Speed on 512 px CT slices, direct vs matched: scale items/s (item
   functions + PNG rows), and items/s of item making in a real `build` of
   the three CT cells; the machine's cores and load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from common import Figures, add_output_args, cores

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the synthetic textures of the validity tests

from validityfixture import ct_noise_texture, power_law_texture  # noqa: E402

from medscout_data.evaluation.artefacts import artefact_features, content_features  # noqa: E402
from medscout_data.evaluation.audit import (  # noqa: E402
    ItemRecord,
    folds,
    high_frequency_share,
    learned_tier_probe,
    separability,
    solve_anomaly_intensity,
    tier_probe,
)
from medscout_data.evaluation.baselines import solve_anomaly  # noqa: E402
from medscout_data.evaluation.score import Truth  # noqa: E402
from medscout_data.recipe import Recipe, load_recipe  # noqa: E402
from medscout_data.tasks.content import TaskRejected, noise_level, structure  # noqa: E402
from medscout_data.tasks.geometry import fit_to_grid, non_identity_permutations, tiles  # noqa: E402
from medscout_data.tasks.items import (  # noqa: E402
    ItemContent,
    ItemKey,
    anomaly_difference,
    anomaly_item,
    jigsaw_item,
    scale_item,
    to_row,
)

MODALITIES = ("ct", "mri", "xray")
SUBJECTS = 6  # CT and MRI sample subjects (x 40 slices)
ITEMS = 120  # scale items per modality and chain
CHAINS = {
    "direct": {"resampling": "direct"},
    "matched, no grain": {"resampling": "matched", "match_noise": False},
    "matched (shipped)": {"resampling": "matched", "match_noise": True},
}


def paper_recipe(**scale: object) -> Recipe:
    recipe = load_recipe("med-scout-bench")
    return dataclasses.replace(recipe, scale=dataclasses.replace(recipe.scale, **scale))


def setup(work: Path, xray_subjects: int) -> dict[str, list]:
    """Ingested 512 px sample images per modality: (pixels, mask, ref) lists."""
    from medscout_data.cache import ImageCache
    from medscout_data.layout import Layout
    from medscout_data.sample import write_samples
    from medscout_data.sources import run_ingest
    from medscout_data.stages.build.catalog import read_catalogue

    recipe = load_recipe("med-scout-bench")
    layout = Layout.at(work / "shards")
    sources = {"ct": "totalseg-ct", "mri": "totalseg-mri", "xray": "mimic-cxr-jpg"}
    images = {}
    for modality, source in sources.items():
        count = xray_subjects if modality == "xray" else SUBJECTS
        folder = work / f"src-{modality}-{count}"
        if not (folder / source).exists():
            write_samples(folder, subjects=count, size=512, slices=40, seed=1, sources=(source,))
        if not layout.catalogue(modality).exists():
            run_ingest(layout, recipe, modality, root=folder / source, workers=2, progress=False)
        cache = ImageCache(layout.cache_dir(modality))
        images[modality] = [
            (r, r.pixels(cache), r.body(cache)) for r in read_catalogue(layout.catalogue(modality))
        ]
    return images


# ---------------------------------------------------------------- 1. tier shortcuts


def scale_records(pairs: list, recipe: Recipe, count: int, cell: str) -> tuple[list[ItemRecord], list]:
    """`count` scale items (tier / box alternating) from (pixels, mask) pairs, as audit records,
    and per crop the probe variants (share above 0.15 and 0.35 cycles/px, Laplacian spread)."""
    records, extras = [], []
    for number in range(count):
        image, mask = pairs[number % len(pairs)]
        group = str(number % len(pairs))
        variant = ("tier", "box")[number % 2]
        modality = cell if cell in MODALITIES else "ct"
        try:
            content = scale_item(image, mask, np.random.default_rng(number), recipe, modality, variant)
        except TaskRejected:
            continue
        truth = Truth.from_item({"task": "scale", "variant": variant, "target": content.target})
        features = [(high_frequency_share(c), noise_level(c)) for c in content.images[1:]]
        extra = [
            (high_frequency_share(c, 0.15), high_frequency_share(c, 0.35), _laplacian_spread(c))
            for c in content.images[1:]
        ]
        record = ItemRecord(
            f"{number:06d}", cell, variant, truth, 0.5, levels=content.target["levels"], features=features
        )
        record.group = group
        record.learned = {
            "artefacts": [artefact_features(c) for c in content.images[1:]],
            "content": [content_features(c) for c in content.images[1:]],
        }
        records.append(record)
        extras.extend(extra)
    return records, extras


def _laplacian_spread(image: np.ndarray) -> float:
    return float(cv2.Laplacian(image.astype(np.float32), cv2.CV_32F).std())


def tier_figures(records: list[ItemRecord], extra: list, cells: list | None = None) -> str:
    """One printed line of a row's probes; `cells` (when given) gets the table's figures."""
    fold = folds(records)
    levels = [level for r in records for level in r.levels]
    sharp, noise = tier_probe(records, fold, 0), tier_probe(records, fold, 1)
    variants = [separability([e[i] for e in extra], levels) for i in range(3)]
    learned = {name: learned_tier_probe(records, name).auc for name in ("artefacts", "content")}
    if cells is not None:
        cells += [
            f"{sharp.auc:.2f}",
            f"{noise.auc:.2f}",
            f"{variants[2]:.2f}",
            f"**{_auc(learned['artefacts'])}**",
            _auc(learned["content"]),
            len(records),
        ]
    return (
        f"sharpness AUC {sharp.auc:.2f} (tier acc {sharp.accuracy:.2f}) | noise AUC {noise.auc:.2f} "
        f"(tier acc {noise.accuracy:.2f}) | hf>0.15 {variants[0]:.2f} hf>0.35 {variants[1]:.2f} "
        f"laplacian-std {variants[2]:.2f} | learned: artefacts {_auc(learned['artefacts'])} "
        f"content {_auc(learned['content'])} | {len(records)} items"
    )


def _auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def tier_shortcuts(images: dict[str, list], count: int, figures: Figures) -> None:
    print("\n1. tier shortcuts: AUC of telling Level-2 from Level-1 crops (0.5 = none), 512 px, crops 224 px")
    textures = {
        "texture 1/f^2 + noise": [(power_law_texture(512, s, 2.0, 6.0), None) for s in range(24)],
        "texture 1/f^2": [(power_law_texture(512, s, 2.0, 0.0), None) for s in range(24)],
        "texture 1/f^1 + noise": [(power_law_texture(512, s, 1.0, 6.0), None) for s in range(24)],
        "texture 1/f^3 + noise": [(power_law_texture(512, s, 3.0, 6.0), None) for s in range(24)],
        "CT-like, ramp kernel": [(ct_noise_texture(512, s, "ramp"), None) for s in range(24)],
        "CT-like, smooth kernel": [(ct_noise_texture(512, s, "smooth"), None) for s in range(24)],
        "organs, ramp kernel": [(ct_noise_texture(512, s, "ramp", organs=True), None) for s in range(24)],
        "organs, smooth kernel": [(ct_noise_texture(512, s, "smooth", organs=True), None) for s in range(24)],
        "organs, no noise": [(ct_noise_texture(512, s, "ramp", 0.0, organs=True), None) for s in range(24)],
    }
    sets = {m: [(p, k) for _, p, k in images[m]] for m in MODALITIES}
    sets.update({name: [(t, np.ones(t.shape, bool)) for t, _ in pairs] for name, pairs in textures.items()})
    for chain, settings in CHAINS.items():
        recipe = paper_recipe(**settings)
        for name, pairs in sets.items():
            picked = [pairs[i] for i in np.random.default_rng(0).permutation(len(pairs))]
            cells: list = [chain, name]
            line = tier_figures(*scale_records(picked, recipe, count, name), cells)
            print(f"  {chain:18s} {name:22s} {line}", flush=True)
            figures.row(*cells)
    figures.note(
        f"{count} scale items per row (tier / box alternating), 512 px images, 224 px crops, the paper "
        "recipe; AUC of telling Level-2 from Level-1 crops (0.5 = nothing); single features are "
        "max(AUC, 1 - AUC), learned probes the mean held-out AUC over the two halves of the source images."
    )
    if count < ITEMS:
        figures.note(f"Items per row reduced from the default {ITEMS} to {count} to keep the run short.")


# ---------------------------------------------------------------- 2. degenerate content


def small_head_in_0hu(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The slice shrunk to 35% and placed at a random spot of a frame whose air is stored as
    0 HU (grey 102 in the W400/L40 window, with noise): a skull-stripped head in a large field
    of view, where a -500 HU mask keeps the whole frame."""
    height, width = image.shape
    small = cv2.resize(image, (round(width * 0.35), round(height * 0.35)), interpolation=cv2.INTER_AREA)
    frame = np.zeros_like(image)
    y0 = int(rng.integers(0, height - small.shape[0]))
    x0 = int(rng.integers(0, width - small.shape[1]))
    frame[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
    out = frame.astype(np.float32)
    air = frame < 3
    out[air] = 102 + rng.normal(0, 7.6, int(air.sum()))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def degenerate_content(images: dict[str, list], count: int) -> None:
    print("\n2. small head in a 0 HU background (mask = whole frame): items made / rejected by the check")
    rng = np.random.default_rng(0)
    slices = [small_head_in_0hu(p, rng) for _, p, _ in images["ct"][:count]]
    off = paper_recipe()
    off = dataclasses.replace(
        off,
        scale=dataclasses.replace(off.scale, min_structure=0.0),
        jigsaw=dataclasses.replace(off.jigsaw, min_structure=0.0, min_tile_difference=0.0),
    )
    for name, recipe in (("check off", off), ("check on (shipped)", paper_recipe())):
        reasons: Counter[str] = Counter()
        made, degenerate = Counter(), Counter()
        for k, image in enumerate(slices):
            for task in ("jigsaw", "scale"):
                try:
                    content = _degenerate_item(task, image, k, recipe)
                except TaskRejected as exc:
                    reasons[f"{task}: {str(exc).split(' (')[0]}"] += 1
                    continue
                made[task] += 1
                if task == "jigsaw":
                    pieces = tiles(fit_to_grid(image, 2), 2)
                else:
                    pieces = [image[y0:y1, x0:x1] for x0, y0, x1, y1 in content.provenance["crops_px"]]
                flat = sum(structure(p) < 3.0 for p in pieces)
                degenerate[task] += flat >= (2 if task == "jigsaw" else 1)
        print(
            f"  {name:20s} made {dict(made)}, of which degenerate {dict(degenerate)} "
            "(jigsaw: 2+ featureless tiles; scale: a featureless crop)"
        )
        print(f"  {'':20s} rejected {dict(reasons.most_common(4))}")


def _degenerate_item(task: str, image: np.ndarray, k: int, recipe: Recipe) -> ItemContent:
    if task == "jigsaw":
        return jigsaw_item(image, non_identity_permutations(4)[k % 23], recipe, "ct")
    return scale_item(image, np.ones(image.shape, bool), np.random.default_rng(k), recipe, "ct", "tier")


# ---------------------------------------------------------------- 3. anomaly paste


def anomaly_pairs(images: dict[str, list], modality: str, count: int) -> list[tuple]:
    """(image, reference) pairs as build draws them: CT/MRI the same volume 4-12 mm away, X-ray
    another subject's image."""
    refs = images[modality]
    rng = np.random.default_rng(1)
    pairs = []
    for index in rng.permutation(len(refs)):
        ref, pixels, _ = refs[index]
        if modality == "xray":
            others = [p for r, p, _ in refs if r.subject_id != ref.subject_id]
        else:
            others = [
                p
                for r, p, _ in refs
                if r.source_id == ref.source_id
                and 4 <= abs(r.z_mm - ref.z_mm) <= 12
                and r.window == ref.window
            ]
        if others:
            pairs.append((pixels, [others[int(i)] for i in rng.permutation(len(others))[:8]]))
        if len(pairs) >= count:
            break
    return pairs


def anomaly_paste(images: dict[str, list], count: int) -> None:
    print("\n3. anomaly paste: accuracy (exact cell) of the seam-strength and intensity-step probes")
    for modality in MODALITIES:
        pairs = anomaly_pairs(images, modality, count)
        for paste in ("hard", "matched"):
            recipe = paper_recipe()
            recipe = dataclasses.replace(recipe, anomaly=dataclasses.replace(recipe.anomaly, paste=paste))
            hits, made, rejected = Counter(), 0, Counter()
            for k, (image, refs) in enumerate(pairs):
                cell = recipe.anomaly.cells[k % 4]
                visible = [
                    r
                    for r in refs
                    if anomaly_difference(image, r, cell, 4, paste) >= recipe.anomaly.min_cell_difference
                ]
                if not visible:
                    rejected["no reference differs visibly"] += 1
                    continue
                try:
                    item = anomaly_item(image, visible[0], cell, recipe, modality)
                except TaskRejected as exc:
                    rejected[str(exc).split(" (")[0]] += 1
                    continue
                made += 1
                tampered = item.images[0]
                hits["seams"] += solve_anomaly(tampered, 4, recipe.anomaly.cells) == cell
                hits["intensity"] += solve_anomaly_intensity(tampered, 4, recipe.anomaly.cells) == cell
            rates = " ".join(f"{k} {v / max(made, 1):.2f}" for k, v in sorted(hits.items()))
            print(
                f"  {modality:5s} {paste:8s} {made:4d} items: {rates} (chance 0.25); "
                f"rejected {dict(rejected)}"
            )


# ---------------------------------------------------------------- 4. speed


def rows_per_second(pairs: list, recipe: Recipe, tasks: tuple[str, ...], count: int = 300) -> float:
    """Items per CPU second (process time: the shared machine's load does not count)."""
    perms = non_identity_permutations(4)
    made, start = 0, time.process_time()
    for k in range(count):
        image, mask = pairs[k % len(pairs)]
        task = tasks[k % len(tasks)]
        rng = np.random.default_rng(k)
        try:
            if task == "scale":
                content = scale_item(image, mask, rng, recipe, "ct", ("tier", "box")[k % 2])
            elif task == "jigsaw":
                content = jigsaw_item(image, perms[k % 23], recipe, "ct")
            else:
                content = anomaly_item(image, pairs[(k + 1) % len(pairs)][0], 5 + k % 2, recipe, "ct")
        except TaskRejected:
            continue
        to_row(content, ItemKey(f"{k}", "ct", task, "", "s", "s", "", k), {}, recipe.png)
        made += 1
    return made / (time.process_time() - start)


def build_items_per_second(work: Path, settings: dict, items_per_cell: int) -> float:
    """Items per CPU second of a whole `build` (1 worker: planning, item making, shards) of the
    three CT cells, on a copy of the ingested catalogue and cache so every run starts alike."""
    from medscout_data.layout import Layout
    from medscout_data.stages.build import BuildOptions, build_modality

    root = work / "build-run"
    shutil.rmtree(root, ignore_errors=True)
    for folder in ("catalogue", "cache"):
        shutil.copytree(work / "shards" / folder / "ct", root / folder / "ct")
    recipe = paper_recipe(**settings)
    pool = dataclasses.replace(
        recipe.pool, items_per_cell=items_per_cell, bench_per_cell=items_per_cell // 10
    )
    options = BuildOptions(modality="ct", root=work / f"src-ct-{SUBJECTS}" / "totalseg-ct", progress=False)
    start = time.process_time()
    report = build_modality(Layout.at(root), dataclasses.replace(recipe, pool=pool), options)
    seconds = time.process_time() - start
    shutil.rmtree(root, ignore_errors=True)
    return report.info["items"] / seconds


SPEED_SETTINGS = {  # before issue 17, the content check alone, the chain without grain, what ships
    "before": {"resampling": "direct", "min_structure": 0.0},
    "check": {"resampling": "direct"},
    "no grain": {"resampling": "matched", "match_noise": False},
    "shipped": {"resampling": "matched"},
}


def speed(images: dict[str, list], work: Path, items_per_cell: int, rounds: int = 5) -> None:
    print(
        f"\n4. speed on 512 px CT slices, items per CPU second, 1 process "
        f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}); best of {rounds} interleaved rounds"
    )
    pairs = [(p, m) for _, p, m in images["ct"]][:40]
    runs = {
        "scale items (item functions + PNG rows)": lambda s: rows_per_second(
            pairs, paper_recipe(**s), ("scale",)
        ),
        "build of the 3 CT cells, 1 worker": lambda s: build_items_per_second(work, s, items_per_cell),
    }
    for name, run in runs.items():
        figures: dict[str, list[float]] = {}
        for _ in range(rounds):  # interleaved, so a load change hits every setting alike
            for setting, values in SPEED_SETTINGS.items():
                figures.setdefault(setting, []).append(run(values))
        best = {k: max(v) for k, v in figures.items()}
        chain = best["check"] / best["shipped"] - 1
        whole = best["before"] / best["shipped"] - 1
        grain = 1000 / best["shipped"] - 1000 / best["no grain"]
        print(
            f"  {name:40s} before {best['before']:6.1f}/s, content check {best['check']:6.1f}/s, "
            f"matched without grain {best['no grain']:6.1f}/s, shipped {best['shipped']:6.1f}/s: "
            f"the chain {100 * chain:+.1f}% time per item, the grain {grain:+.2f} ms CPU per item, "
            f"the whole change {100 * whole:+.1f}% (load {os.getloadavg()[0]:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--xray-subjects", type=int, default=40)
    parser.add_argument("--items", type=int, default=ITEMS, help="items per modality and chain")
    parser.add_argument("--build-items", type=int, default=200, help="items per cell of the timed builds")
    parser.add_argument("--work", type=Path, default=None, help="reuse this folder (sample + ingest)")
    parser.add_argument("--only", choices=["tier", "content", "anomaly", "speed"], action="append")
    add_output_args(parser)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-validity-"))
    print(f"bench_validity: {cores()} cores (nproc), load {os.getloadavg()[0]:.2f}, work {work}")
    figures = Figures(
        [
            "chain",
            "images",
            "sharpness",
            "noise",
            "Laplacian spread",
            "**artefacts (learned)**",
            "content (learned)",
            "items",
        ],
        "llrrrrrr",
    )
    images = setup(work, args.xray_subjects)
    print("images: " + ", ".join(f"{m} {len(v)}" for m, v in images.items()))
    steps = {
        "tier": lambda: tier_shortcuts(images, args.items, figures),
        "content": lambda: degenerate_content(images, 40),
        "anomaly": lambda: anomaly_paste(images, args.items),
        "speed": lambda: speed(images, work, args.build_items),
    }
    for name in args.only or steps:
        steps[name]()
    figures.write(args.table)  # the tier table (the other steps print only)


if __name__ == "__main__":
    main()
