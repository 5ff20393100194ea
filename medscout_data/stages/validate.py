"""Validate a split: the properties DESIGN.md promises, checked from the files alone.

- the manifest reads (stages.manifest) and every shard it lists exists with its
  size, sha256 and row count, and no other shard lies in bench/ or train/;
- the split came from a whole pool: the manifest records each modality's pool
  as complete, and a pool still in pool/ is whole and the same pool;
- the manifest's seed, subject counts and subject-list hashes equal the subject
  plans', and every item (and anomaly reference) is on its subject's side;
- every shard opens, carries the `huggingface` features metadata, and its
  images are PNGs (every image's signature; full decode of a sample, or of
  everything with `deep=True`);
- no two items show the same images (each item's image bytes hashed): an error
  on the bench or across sides, a warning inside train;
- each answer follows from its target, which describes a possible item
  (answers.py), and each item shows as many images as its task has;
- ids unique; each bench cell has exactly `bench_per_cell` items, balanced
  (tier/box, anomaly cells, jigsaw permutations within one of each other);
- the manifest's counts equal the rows, and dropped items stay under 1%.

Nothing is written, so a read-only split validates.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from medscout_data.errors import StageError
from medscout_data.layout import Layout
from medscout_data.stages.answers import AnswerRules, answer_problems
from medscout_data.stages.manifest import ManifestError, read_manifest, shard_problems
from medscout_data.stages.plan import BENCH, TRAIN, SubjectPlan, load_plan
from medscout_data.stages.pool import pool_problems, read_pool_record
from medscout_data.stages.split import (
    MAX_DROPPED_FRACTION,
    balance_key,
    pool_fingerprint,
    subject_list_hash,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
META_COLUMNS = [
    "id",
    "modality",
    "task",
    "variant",
    "answer",
    "target",
    "subject_id",
    "reference_subject_id",
]
SHOWN = 3  # examples quoted per finding


@dataclass
class Validation:
    """What `validate` found: problems make the split invalid, warnings do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # shards, items, images checked

    @property
    def valid(self) -> bool:
        return not self.problems


@dataclass
class ItemImages:
    """What the image pass learnt about one item."""

    digest: bytes
    count: int
    crop_shapes: frozenset[tuple[int, int]] = frozenset()


def validate_split(
    layout: Layout, deep: bool = False, progress: bool = True, sides: Iterable[str] = (BENCH, TRAIN)
) -> list[str]:
    """All problems found in the split under `layout.root` (empty list: valid)."""
    return validate_report(layout, deep=deep, progress=progress, sides=sides).problems


def validate_report(
    layout: Layout,
    deep: bool = False,
    progress: bool = True,
    sides: Iterable[str] = (BENCH, TRAIN),
    workers: int = 1,
) -> Validation:
    """Check the split; `sides` limits the image and sha256 passes (push-bench reads the bench only),
    while metadata, counts and plans are checked on both sides always. `workers` processes share
    the image pass (a shard each at a time); the findings are the same for any number."""
    result = Validation()
    sides = tuple(sides)
    try:
        manifest = read_manifest(layout)
    except ManifestError as exc:
        result.problems.append(str(exc))
        return result
    result.problems += _check_files(layout, manifest, sides)
    if result.problems:
        return result  # contents of unlisted or altered files are not worth reading further
    result.problems += _check_pools(layout, manifest)
    plans, plan_problems = _plans(layout, manifest)
    result.problems += plan_problems
    rows, images = _read_shards(layout, manifest, deep, progress, sides, result, workers)
    result.problems += _check_disjoint(rows, plans)
    result.problems += _check_counts(rows, manifest)
    result.problems += _check_balance(rows, manifest)
    result.problems += _check_answers(rows, images, _rules(plans))
    if deep:
        result.problems += _check_crop_sizes(rows, images)
    _check_duplicates(rows, images, result)
    result.counts.update(shards=len(manifest["shards"]), items=len(rows))
    return result


# ------------------------------------------------------------------ files and records


def _check_files(layout: Layout, manifest: dict, sides: tuple[str, ...]) -> list[str]:
    """Unlisted shards; listed ones missing, resized or re-hashed (sha256 for `sides`); row counts."""
    listed = manifest["shards"]
    present = {
        p.relative_to(layout.root).as_posix()
        for side in (BENCH, TRAIN)
        for p in layout.split_dir(side).rglob("*.parquet")
    }
    problems = [f"{layout.root / name}: shard not in the manifest" for name in sorted(present - set(listed))]
    hashed = [name for name in sorted(listed) if name.split("/")[0] in sides]
    problems += shard_problems(layout, manifest, hashed)
    for name, info in sorted(listed.items()):
        path = layout.root / name
        if name in hashed:
            pass
        elif not path.is_file():
            problems.append(f"{path}: listed in {layout.manifest()} but missing")
        elif "bytes" in info and path.stat().st_size != info["bytes"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, the manifest says {info['bytes']}")
    if problems:
        return problems
    for name, info in sorted(listed.items()):
        rows = _num_rows(layout.root / name)
        if isinstance(rows, str):
            problems.append(f"{layout.root / name}: does not open as Parquet ({rows})")
        elif "rows" in info and rows != info["rows"]:
            problems.append(f"{layout.root / name}: {rows} rows, the manifest says {info['rows']}")
    return problems


def _num_rows(path: Path) -> int | str:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:  # any failure to read the footer is the finding
        return f"{type(exc).__name__}: {exc}"


def _modalities(manifest: dict) -> list[str]:
    return sorted({cell.split("/")[0] for cell in manifest["cells"]})


def _check_pools(layout: Layout, manifest: dict) -> list[str]:
    """The split came from whole pools, and a pool still present is whole and the same one."""
    problems = []
    recorded = manifest.get("pools", {})
    for modality in _modalities(manifest):
        entry = recorded.get(modality)
        if entry is None or not entry["complete"]:
            problems.append(
                f"{layout.manifest()}: does not record a complete {modality} pool behind this split "
                "(a partial pool, or an older medscout-data); finish the build and rerun "
                "`medscout-data split`"
            )
            continue
        folder = layout.pool_dir(modality)
        if not layout.pool_record(modality).exists() and not any(folder.glob("*.parquet")):
            continue  # the pool was removed after the split; the manifest vouches for it
        now = pool_problems(layout, modality)
        if now:
            problems += [f"the pool behind this split is not whole: {p}" for p in now]
            continue
        record = read_pool_record(layout, modality)
        if record is not None and pool_fingerprint(record) != entry["fingerprint"]:
            problems.append(
                f"{folder}: holds another pool than the one this split was made from (built again "
                "since); rerun `medscout-data split`"
            )
    return problems


def _plans(layout: Layout, manifest: dict) -> tuple[dict[str, SubjectPlan], list[str]]:
    """Each modality's subject plan, checked against the manifest's seed and subject lists."""
    plans, problems = {}, []
    subjects = manifest.get("subjects", {})
    for modality in _modalities(manifest):
        path = layout.plan(modality)
        try:
            plan = load_plan(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(
                f"{path}: the {modality} subject plan cannot be read ({type(exc).__name__}), so the seed and "
                "subject lists cannot be checked; restore it from the build"
            )
            continue
        plans[modality] = plan
        problems += _plan_problems(layout, manifest, plan, subjects.get(modality))
    return plans, problems


def _plan_problems(layout: Layout, manifest: dict, plan: SubjectPlan, entry: dict | None) -> list[str]:
    where = layout.manifest()
    if manifest["seed"] != plan.seed:
        return [
            f"{where}: seed {manifest['seed']}, but the {plan.modality} pool's subject plan has seed "
            f"{plan.seed}: the manifest was changed after the split; rerun `medscout-data split`"
        ]
    if entry is None:
        return [f"{where}: no subject lists for {plan.modality}; rerun `medscout-data split`"]
    expected = {
        "bench": len(plan.bench),
        "train": len(plan.train),
        "bench_sha256": subject_list_hash(plan.subjects(BENCH)),
        "train_sha256": subject_list_hash(plan.subjects(TRAIN)),
        "plan_sha256": plan.digest,
    }
    wrong = [key for key, value in expected.items() if entry.get(key) != value]
    if wrong:
        return [
            f"{where}: the {plan.modality} subject {', '.join(wrong)} differ from the subject plan "
            f"{layout.plan(plan.modality)}; the manifest was changed after the split: "
            "rerun `medscout-data split`"
        ]
    return []


def _rules(plans: dict[str, SubjectPlan]) -> AnswerRules:
    """The geometry answers must follow: the recipe the pool was built with (stored in its plan)."""
    for plan in plans.values():
        with contextlib.suppress(StageError, ValueError, KeyError, TypeError):
            return AnswerRules.of(plan.recipe_settings())
    return AnswerRules.defaults()


# ------------------------------------------------------------------ contents


def _read_shards(
    layout: Layout,
    manifest: dict,
    deep: bool,
    progress: bool,
    sides: tuple[str, ...],
    result: Validation,
    workers: int = 1,
) -> tuple[list[dict], dict[str, ItemImages]]:
    """Metadata rows of every shard (with side and shard), and the image facts of `sides`."""
    rows: list[dict] = []
    images: dict[str, ItemImages] = {}
    names = sorted(manifest["shards"])
    imaged = [layout.root / name for name in names if name.split("/")[0] in sides]
    with _image_passes(imaged, deep, workers) as passes:
        for name in tqdm(names, desc="validate", unit="shard", disable=not progress):
            path = layout.root / name
            side = name.split("/")[0]
            if side in sides:
                shard = next(passes)
                result.problems.extend(shard.problems)
                result.counts["images"] += shard.images_seen
                images.update(shard.images)
                if not shard.readable:
                    continue
            try:
                table = pq.read_table(path, columns=META_COLUMNS)
            except Exception as exc:  # any failure to read is the finding
                result.problems.append(f"{path}: does not decode: {type(exc).__name__}: {exc}")
                continue
            for row in table.to_pylist():
                row["side"] = side
                row["shard"] = name
                rows.append(row)
    return rows, images


@dataclass
class ShardImages:
    """The image pass over one shard (made in a worker when there are several)."""

    problems: list[str]
    images: dict[str, ItemImages]
    images_seen: int
    readable: bool = True


def shard_images(path: Path, deep: bool) -> ShardImages:
    """Schema metadata, PNG signatures and decodes of one shard; a shard that cannot be read at
    all is one problem, and its metadata is not read either."""
    images: dict[str, ItemImages] = {}
    counts: Counter = Counter()
    try:
        problems = _check_images(path, deep, images, counts)
    except Exception as exc:  # any failure to read is the finding
        return ShardImages([f"{path}: does not decode: {type(exc).__name__}: {exc}"], {}, 0, False)
    return ShardImages(problems, images, counts["images"])


@contextlib.contextmanager
def _image_passes(paths: list[Path], deep: bool, workers: int) -> Iterator[Iterator[ShardImages]]:
    """The image pass of each shard, in order: in this process, or in `workers` processes that
    die with it."""
    if workers <= 1 or len(paths) <= 1:
        yield (shard_images(path, deep) for path in paths)
        return
    from medscout_data.workers import process_pool

    with process_pool(min(workers, len(paths))) as pool:
        yield pool.map(shard_images, paths, itertools.repeat(deep))


def _check_images(path: Path, deep: bool, images: dict[str, ItemImages], counts: Counter) -> list[str]:
    """Schema metadata, PNG signatures and decodes of one shard; records each item's image facts."""
    problems = []
    parquet = pq.ParquetFile(path)
    metadata = parquet.schema_arrow.metadata or {}
    if b"huggingface" not in metadata:
        problems.append(f"{path}: no `huggingface` schema metadata; datasets would not decode its images")
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group, columns=["id", "images"]).to_pylist()
        for index, row in enumerate(table):
            digest = hashlib.sha256()
            shapes = set()
            for number, image in enumerate(row["images"]):
                data = image["bytes"] or b""
                digest.update(len(data).to_bytes(8, "big") + hashlib.sha256(data).digest())
                counts["images"] += 1
                if not data.startswith(PNG_SIGNATURE):
                    problems.append(f"{path}: item {row['id']} image {number} is not a PNG")
                elif deep or (group == 0 and index == 0):
                    try:
                        with Image.open(io.BytesIO(data)) as decoded:
                            decoded.load()
                            shapes.add((number > 0, decoded.size))
                    except Exception as exc:  # PIL's unidentified-image message names an address
                        reason = "unreadable" if isinstance(exc, UnidentifiedImageError) else exc
                        problems.append(f"{path}: item {row['id']} image {number} does not decode: {reason}")
            crops = frozenset(size for is_crop, size in shapes if is_crop)
            images[row["id"]] = ItemImages(digest.digest(), len(row["images"]), crops)
    return problems


def _check_disjoint(rows: list[dict], plans: dict[str, SubjectPlan]) -> list[str]:
    problems = []
    subjects: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        subjects[row["modality"], row["side"]].add(row["subject_id"])
    for modality in sorted({m for m, _ in subjects}):
        both = subjects[modality, BENCH] & subjects[modality, TRAIN]
        if both:
            problems.append(f"{modality}: {len(both)} subject(s) on both sides, e.g. {sorted(both)[0]}")
    for row in rows:
        reference = row["reference_subject_id"]
        other = TRAIN if row["side"] == BENCH else BENCH
        if reference and reference in subjects[row["modality"], other]:
            problems.append(
                f"{row['shard']}: item {row['id']} uses pixels of {other}-side subject {reference}"
            )
    problems += _check_plan_sides(rows, plans)
    seen = Counter(row["id"] for row in rows)
    duplicates = [i for i, n in seen.items() if n > 1]
    if duplicates:
        problems.append(f"{len(duplicates)} duplicate item id(s), e.g. {sorted(duplicates)[0]}")
    return problems


def _check_plan_sides(rows: list[dict], plans: dict[str, SubjectPlan]) -> list[str]:
    """Every item's subject and reference on the side its subject plan gives it."""
    wrong: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        plan = plans.get(row["modality"])
        if plan is None:
            continue
        for subject in filter(None, (row["subject_id"], row["reference_subject_id"])):
            side = BENCH if subject in plan.bench else TRAIN if subject in plan.train else None
            if side != row["side"]:
                wrong[row["shard"]].append(f"{row['id']} ({subject}: {side or 'not in the plan'})")
    return [
        f"{shard}: {len(items)} item(s) off their subject plan's side, e.g. {', '.join(items[:SHOWN])}"
        for shard, items in sorted(wrong.items())
    ]


def _check_counts(rows: list[dict], manifest: dict) -> list[str]:
    problems = []
    actual = Counter((row["side"], f"{row['modality']}/{row['task']}") for row in rows)
    bench_per_cell = manifest["bench_per_cell"]
    for cell, counts in sorted(manifest["cells"].items()):
        if actual[BENCH, cell] != bench_per_cell:
            problems.append(f"bench {cell}: {actual[BENCH, cell]} items, expected {bench_per_cell}")
        for side in (BENCH, TRAIN):
            if actual[side, cell] != counts[side]:
                problems.append(f"{side} {cell}: {actual[side, cell]} items, manifest says {counts[side]}")
    extra = {cell for _, cell in actual} - set(manifest["cells"])
    problems += [f"{cell}: items of a cell the manifest does not list" for cell in sorted(extra)]
    totals = manifest.get("totals", {})
    if totals.get("pool") and totals.get("dropped", 0) / totals["pool"] >= MAX_DROPPED_FRACTION:
        problems.append(
            f"{totals['dropped']} dropped bench-side items: {MAX_DROPPED_FRACTION:.0%} or more of the pool"
        )
    return problems


def _check_balance(rows: list[dict], manifest: dict) -> list[str]:
    options = manifest.get("balance_options")
    if not options:
        return ["manifest: no `balance_options`; rerun `medscout-data split`"]
    keys: dict[str, Counter] = defaultdict(Counter)
    problems = []
    for row in rows:
        if row["side"] != BENCH:
            continue
        try:
            key = balance_key(row["task"], row["variant"], row["target"])
        except (ValueError, KeyError, TypeError):
            continue  # _check_answers names the broken target
        keys[f"{row['modality']}/{row['task']}"][key] += 1
    for cell, counter in sorted(keys.items()):
        task = cell.split("/")[1]
        counts = [counter.get(option, 0) for option in options.get(task, [])]
        if counts and max(counts) - min(counts) > 1:
            problems.append(f"bench {cell}: unbalanced ({dict(counter)}); counts must differ by at most 1")
    return problems


def _check_answers(rows: list[dict], images: dict[str, ItemImages], rules: AnswerRules) -> list[str]:
    """Answers that do not follow from their targets, and items with the wrong number of images."""
    wrong: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        found = answer_problems(row["task"], row["variant"], row["answer"], row["target"], rules)
        facts = images.get(row["id"])
        if facts is not None and facts.count != rules.images(row["task"]):
            found.append(
                f"shows {facts.count} image(s), a {row['task']} item shows {rules.images(row['task'])}"
            )
        wrong[row["shard"]].extend(f"item {row['id']}: {problem}" for problem in found)
    return [
        f"{shard}: {len(found)} inconsistent item(s): {'; '.join(found[:SHOWN])}"
        for shard, found in sorted(wrong.items())
        if found
    ]


def _check_crop_sizes(rows: list[dict], images: dict[str, ItemImages]) -> list[str]:
    """Scale crops of one item share one size (else the tier could be read off the pixel size)."""
    problems = []
    for row in rows:
        facts = images.get(row["id"])
        if row["task"] == "scale" and facts is not None and len(facts.crop_shapes) > 1:
            sizes = ", ".join(f"{w}x{h}" for w, h in sorted(facts.crop_shapes))
            problems.append(f"{row['shard']}: item {row['id']}: crops of different sizes ({sizes})")
    return problems


def _check_duplicates(rows: list[dict], images: dict[str, ItemImages], result: Validation) -> None:
    """Items showing byte-identical images: errors on the bench or across sides, warnings inside train."""
    groups: dict[bytes, list[dict]] = defaultdict(list)
    for row in rows:
        facts = images.get(row["id"])
        if facts is not None:
            groups[facts.digest].append(row)
    found: dict[tuple[str, str], list[list[dict]]] = defaultdict(list)
    for group in groups.values():
        if len(group) > 1:
            where = "/".join(sorted({row["side"] for row in group}))
            found[where, f"{group[0]['modality']}/{group[0]['task']}"].append(group)
    result.counts["duplicate_groups"] = sum(len(v) for v in found.values())
    for (where, cell), found_groups in sorted(found.items()):
        examples = "; ".join(" = ".join(row["id"] for row in group[:SHOWN]) for group in found_groups[:SHOWN])
        items = sum(len(group) for group in found_groups)
        text = (
            f"{where} {cell}: {len(found_groups)} group(s) of items with byte-identical images "
            f"({items} items), e.g. {examples}"
        )
        (result.warnings if where == TRAIN else result.problems).append(text)
