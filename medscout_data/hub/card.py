"""The dataset card (`README.md`) of a staged Med-Scout-Bench repo: YAML front matter + body.

The front matter and the facts the card is filled with are `card_facts.py`
(the configs `datasets.load_dataset` reads, `dataset_info`). The body,
here, explains the tasks, answers, scoring, how the split was
made and the licence and citation of every source. Everything in the card is
derived from the staged files, the split's manifest and the recipe the pool
was built with, so the same stage always gives the same card.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from medscout_data.hub.card_facts import (  # noqa: F401  (public names, importable from here)
    MODALITY_TITLES,
    PHYSIONET_LICENSE,
    PHYSIONET_LICENSE_LINK,
    SIZE_CATEGORIES,
    SPLITS,
    CardFacts,
    StagedFile,
    card_metadata,
    config_files,
    config_patterns,
    features_of_metadata,
    license_fields,
    pretty_name,
    size_category,
)
from medscout_data.recipe import AnomalyConfig, JigsawConfig, Recipe, ScaleConfig


def render_card(facts: CardFacts) -> str:
    """The whole README.md."""
    import yaml

    front = yaml.safe_dump(card_metadata(facts), sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{front}---\n\n{card_body(facts)}"


def card_body(facts: CardFacts) -> str:
    sections = [
        _intro(facts),
        _contents(facts),
        _loading(facts),
        _fields(),
        _tasks(facts.recipe),
        _scoring(facts),
        _validity(facts),
        _split(facts),
        _sources(facts),
        _citation(facts),
    ]
    return "\n\n".join(s.strip() for s in sections) + "\n"


def _intro(facts: CardFacts) -> str:
    titles = [MODALITY_TITLES[m] for m in facts.modalities]
    modalities = " and ".join([", ".join(titles[:-1]), titles[-1]] if len(titles) > 1 else titles)
    restricted = (
        "\n\n> **Credentialed data.** This repository holds items derived from MIMIC-CXR, "
        "released under the PhysioNet Credentialed Health Data License 1.5.0. It must stay "
        "private, and only people who hold their own credentialed PhysioNet access to MIMIC-CXR "
        "and have signed its data use agreement may be given access. See *Sources and licences*."
        if facts.includes_mimic
        else ""
    )
    return f"""
# {pretty_name(facts)}

Med-Scout-Bench measures the *geometric perception* of vision-language models on
medical images with three proxy tasks that need no expert labels: Hierarchical
Scale Localization, Topological Jigsaw Reconstruction and Anomaly Consistency
Detection. It comes from Med-Scout (ICML 2026, arXiv
[2601.23220](https://arxiv.org/abs/2601.23220)) and was regenerated with
`medscout-data` (recipe `{facts.manifest["recipe"]["name"]}`, seed {facts.manifest["seed"]}).
This repository holds the {modalities} items.{restricted}
"""


def _contents(facts: CardFacts) -> str:
    counts: dict[tuple[str, str, str], int] = Counter()
    for f in facts.files:
        counts[f.split, f.modality, f.task] += f.rows
    header = "| modality | task | test (bench) |" + (" train |" if facts.with_train else "")
    rule = "|---|---|---:|" + ("---:|" if facts.with_train else "")
    lines = [header, rule]
    for modality in facts.modalities:
        for task in facts.tasks:
            line = f"| {modality} | {task} | {counts['test', modality, task]:,} |"
            lines.append(line + (f" {counts['train', modality, task]:,} |" if facts.with_train else ""))
    total = f"| **all** | | **{facts.rows('test'):,}** |"
    lines.append(total + (f" **{facts.rows('train'):,}** |" if facts.with_train else ""))
    train_note = (
        "The `train` split holds every train-side item of the pool (subject-disjoint from the bench)."
        if facts.with_train
        else "Only the bench (`test` split) is published here; the train side stays with the shards."
    )
    configs = ", ".join(f"`{name}`" for name in config_patterns(facts))
    return f"""
## Contents

{chr(10).join(lines)}

{train_note}

Configs: {configs}. `default` holds everything, the others one modality or one
task each (`data/<modality>/<task>/{"{test,train}" if facts.with_train else "test"}-*.parquet`).
"""


def _loading(facts: CardFacts) -> str:
    example_config = facts.modalities[0]
    return f"""
## Loading

```python
import datasets

bench = datasets.load_dataset("{facts.repo_id}", "default", split="test")
{example_config} = datasets.load_dataset("{facts.repo_id}", "{example_config}", split="test")
item = bench[0]
item["images"]      # list of PIL images, in the order the question refers to them
item["question"]    # Direct-mode prompt; item["question_cot"] asks for <think>/<answer>
item["answer"]      # canonical answer text
```

Private repositories need a token with read access (`hf auth login`).
"""


def _fields() -> str:
    return """
## Fields

| column | type | meaning |
|---|---|---|
| id | string | unique, stable across reruns |
| modality | string | `ct`, `mri` or `xray` |
| task | string | `scale`, `jigsaw` or `anomaly` |
| variant | string | `tier` or `box` for scale, empty otherwise |
| images | list of Image | what the model sees, in prompt order (8-bit grayscale PNG) |
| question | string | Direct-mode prompt |
| question_cot | string | CoT-mode prompt (answer as `<think>...</think><answer>...</answer>`) |
| answer | string | canonical answer text (what goes inside `<answer>`) |
| target | string (JSON) | structured truth: tiers, float boxes in [0, 1], permutation, cell index |
| subject_id | string | patient / subject: the unit of the split |
| source_id | string | volume or image id |
| source | string (JSON) | provenance: dataset, path, plane, slice, spacing, window, crop |
| reference_subject_id | string | the anomaly reference's subject, empty otherwise |
| seed | int64 | the item's own seed |
"""


def _tasks(recipe: Recipe | None) -> str:
    scale = recipe.scale if recipe else ScaleConfig()
    jigsaw = recipe.jigsaw if recipe else JigsawConfig()
    anomaly = recipe.anomaly if recipe else AnomalyConfig()
    low, high = scale.centre_range
    areas = " or ".join(
        f"Level-{i + 1} ({a:.2%} of the image's area)" for i, a in enumerate(scale.level_areas)
    )
    n_tiles = jigsaw.grid**2
    cells = ", ".join(map(str, anomaly.cells))
    near, far = anomaly.ref_distance_mm
    return f"""
## Tasks and answer formats

Indices are 0-based. Boxes in answers are integers on a 0-1000 grid over the
full image, `(x1, y1, x2, y2)` with x to the right and y downward; `target`
keeps them as floats in [0, 1]. Every question states these conventions.

1. **scale**: Hierarchical Scale Localization. From one image, {scale.n_crops} crops,
   each {areas}, with the image's aspect ratio, centre drawn in [{low}, {high}] on both
   axes and the crop kept inside the image and mostly on anatomy. All crops are
   resized to one size, so the level cannot be read off the pixel size.
   Images: `[full image, crop 1, ..., crop {scale.n_crops}]`. Two variants, balanced:
   - `tier`: one label per crop, in order: `Label 1, Label 2, Label 1`
   - `box`: one box per crop, in order: `(x1, y1, x2, y2), (x1, y1, x2, y2), (x1, y1, x2, y2)`
2. **jigsaw**: Topological Jigsaw Reconstruction. The image cut into a
   {jigsaw.grid}x{jigsaw.grid} grid (tiles numbered in reading order) and shuffled by a
   uniformly drawn non-identity permutation. Answer: for each tile of the shown image,
   read left to right, top to bottom, its original index, e.g.
   `{" ".join(str((i + 2) % n_tiles) for i in range(n_tiles))}`. Images: `[shuffled image]`.
3. **anomaly**: Anomaly Consistency Detection. A {anomaly.grid}x{anomaly.grid} grid; one of
   the central cells {{{cells}}}, drawn uniformly, is replaced by the same cell of a
   reference image (CT/MRI: a slice of the same volume {near:g}-{far:g} mm away;
   X-ray: the nearest neighbour from another patient). Answer: the cell's flat index,
   e.g. `{anomaly.cells[-1]}` (row = k // {anomaly.grid}, column = k % {anomaly.grid}).
   Images: `[tampered image]`.
"""


def _scoring(facts: CardFacts) -> str:
    return f"""
## Scoring: Dense Geometric Reward

The answer text is the content of the first `<answer>...</answer>`, else the
whole response, stripped. Per item: accuracy in [0, 1], format in [0, 0.5]
and, in CoT mode, 0.5 when the response is `<think>...</think><answer>...</answer>`
(a perfect Direct answer totals 1.5, a perfect CoT answer 2.0).

- Profile `official` (default), the semantics of the authors' released reward code:
  - anomaly: the first integer k; exp(-d) with d the Euclidean distance between the
    (row, column) cells of k and of the truth, when both are in 0..15; else 0.
  - scale `box`: every `(int, int, int, int)`; if the count matches, the mean IoU by
    position, and a mean below 0.2 scores 0.
  - scale `tier`: every `Label 1|2`; if the count matches, the fraction equal by position.
  - jigsaw: all integers; if the count matches and none repeats, the fraction equal by
    position (exact match only with 2 or fewer tiles).
  - format (x 0.5): anomaly 1 when the answer is only digits; box 1/3 for any parsed box,
    +1/3 when the count matches, +1/3 when every box has x1 <= x2 and y1 <= y2; tier 0.5
    for any label, +0.5 when the count matches; jigsaw 0 when the count differs, else 0.5,
    +0.5 when nothing repeats.
- Profile `paper`, the paper's formulas: no 0.2 floor on the box IoU, and a format
  reward of 0.5 x the fraction of answer elements that match the schema.

Score predictions (JSONL lines of `id` and `response`, or `swift infer` results) with
`medscout-data`, the tool that built this repository:

```
medscout-data score --bench {facts.repo_id} --predictions predictions.jsonl --profile official
medscout-data score --bench {facts.repo_id} --predictions predictions.jsonl --profile paper --mode cot
```
"""


def _validity(facts: CardFacts) -> str:
    recipe = facts.recipe
    scale = recipe.scale if recipe else ScaleConfig()
    jigsaw = recipe.jigsaw if recipe else JigsawConfig()
    anomaly = recipe.anomaly if recipe else AnomalyConfig()
    return f"""
## Validity: answerable only by looking

Every item was checked when it was made. Each scale crop, each jigsaw tile and the
anomaly cell with at least half of its edge neighbours carries structure (the spread of its block means
is at least {scale.min_structure:g} / {jigsaw.min_structure:g} / {anomaly.min_structure:g} grey levels,
so a flat grey square never makes an item), no two jigsaw tiles look alike (at least
{jigsaw.min_tile_difference:g} grey levels apart), a Level-2 crop is never enlarged more than
{scale.max_enlargement:g}x to reach the crop size (smaller images are skipped), and the replaced
cell differs visibly from the original.

{_resampling_text(scale)}

{_paste_text(anomaly)}

{_audit_text(facts.audit)}
"""


def _resampling_text(scale: ScaleConfig) -> str:
    if scale.resampling == "direct":
        return (
            "**Scale crops: naive crop-and-resize.** Every crop was resized straight to the crop size, "
            "so a Level-2 crop is enlarged more than a Level-1 crop and looks blurrier, with its pixel "
            "noise magnified: a sharpness or noise probe can tell the levels apart without looking at "
            "the anatomy (see the audit below)."
        )
    grain = (
        " Every crop of an item then ends with one noise power spectrum: the image's own noise spectrum "
        "(correlated, as CT noise is, not assumed white) is measured as each level's chain shows it, and "
        "each crop receives zero-mean grain with the part of the common spectrum it lacks (only where the "
        "window did not clip the pixel), so the noise's level and texture do not tell the level either; "
        "the anatomy is not touched."
        if scale.match_noise
        else ""
    )
    return (
        "**Scale crops: why not a naive crop-and-resize.** Resizing every crop straight to the crop size "
        "enlarges a Level-2 crop (6.25% of the image) about 1.75x at the paper's sizes and a Level-1 crop "
        "(20%) hardly at all, so the level could be read off the blur and the magnified noise grain alone. "
        "Here every crop of an item first passes through one effective resolution: it is low-passed with a "
        f"Gaussian of {scale.resample_blur:g} pixels of the Level-2 crop's native grid (scaled for larger "
        "crops) and resampled to that grid, then enlarged to the crop size; every crop has the same "
        f"transfer function, so scale-free anatomy looks alike at every level.{grain} What a sharpness "
        "and a noise probe still read is in the audit below (AUC 0.5 = nothing)."
    )


def _paste_text(anomaly: AnomalyConfig) -> str:
    if anomaly.paste == "matched":
        return (
            "**Anomaly paste: matched.** The pasted block's grey levels were mapped (one linear map) to the "
            "mean and spread of the block it replaces, so a global intensity jump does not give it away."
        )
    return (
        "**Anomaly paste: hard, as in the paper.** The block is pasted as it is. The `matched` option "
        "(mean and spread of the pasted block mapped to those of the block it replaces) was measured with "
        "the audit's probes on the synthetic sample (`benchmarks/bench_validity.py`): the seam probe stays "
        "at 100% either way, but the brightness step at the cell border stays far above chance with "
        "`matched` too (the cue is local, not a global offset), so `matched` does not remove the "
        "intensity cue and the paper's `hard` paste stays the default."
    )


def _audit_text(audit: dict | None) -> str:
    if not audit:
        return "No shortcut audit was run for this card; `medscout-data audit --bench <repo>` runs it."
    lines = [
        "| modality | task | probe | accuracy | chance | AUC | items |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for cell, info in audit["cells"].items():
        modality, task = cell.split("/")
        for name, probe in info["probes"].items():
            auc = f"{probe['auc']:.2f}" if probe.get("auc") is not None else ""
            lines.append(
                f"| {modality} | {task} | {name} | {_percent(probe['accuracy'])} | "
                f"{_percent(probe['chance'])} | {auc} | {probe['items']:,} |"
            )
    table = "\n".join(lines)
    return f"""### Shortcut audit

What non-learning probes score on this bench (`medscout-data audit`; Dense Geometric Reward
accuracy x 100, official profile), next to the expected accuracy of a uniformly drawn answer.
`prior` is the text-only prior (the best constant answer per cell); `sharpness` and `noise` label
each scale crop's tier by a threshold on its high-frequency power or its pixel-noise level (tier
items; AUC over all crops); `seams` is seam continuity (jigsaw) or seam strength (anomaly);
`centroid` puts the body's bright mass in the middle; `intensity` picks the cell with the most
consistent brightness step at its border; `classical` is the classical baseline. Thresholds and
the prior are learnt on one half of each cell and scored on the other. A probe far above chance
marks a cue that answers without the geometry; `classical` is the no-learning ceiling.
`artefacts` and `content` are learned probes (gradient boosting, trained on the crops of half of
the source images, AUC on the other half): `artefacts` reads only what resampling leaves (noise
level and spectrum, Laplacian statistics, PNG size of the noise, all on flat tissue away from
borders) and should sit near 0.5; `content` reads what
a crop shows (grey levels, block structure, coarse gradients), and is expected to be well above
0.5: a Level-2 crop shows the anatomy about 1.8x larger, and seeing that is the task itself, not
a shortcut.

{table}"""


def _percent(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}"  # NaN: the probe answered no item


def _split(facts: CardFacts) -> str:
    manifest = facts.manifest
    subjects = manifest.get("subjects", {})
    subject_lines = "\n".join(
        f"| {m} | {subjects[m]['bench']:,} | {subjects[m]['train']:,} | `{subjects[m]['plan_sha256'][:16]}` |"
        for m in facts.modalities
        if m in subjects
    )
    cell_lines = "\n".join(
        f"| {cell} | {c['pool']:,} | {c['bench']:,} | {c['train']:,} | {c['dropped']:,} | "
        f"{_balance_text(c.get('bench_balance', {}))} |"
        for cell, c in manifest["cells"].items()
        if cell.split("/")[0] in facts.modalities
    )
    return f"""
## How the split was made

The unit of the split is the subject (patient). Before any item was built, each
modality's subjects were partitioned bench / train by a seeded plan (seed
{manifest["seed"]}); an item belongs to the side of its subject, and an anomaly
item's reference comes from the same side, so no bench item holds pixels of a
train subject and the other way round. Each modality x task cell of the bench keeps
exactly {manifest["bench_per_cell"]:,} items, balanced inside the cell (scale
`tier`/`box`, jigsaw permutations, anomaly cells: counts differ by at most one);
bench-side items beyond that are dropped and counted. Same recipe, seed and
sources give the same split, byte for byte.

- recipe: `{manifest["recipe"]["name"]}` (digest `{manifest["recipe"]["digest"]}`)
- split by: {manifest.get("created_by", "medscout-data")}
- manifest.json sha256: `{facts.manifest_sha256}`

| modality | bench subjects | train subjects | plan sha256 |
|---|---:|---:|---|
{subject_lines}

| cell | pool | bench | train | dropped | bench balance |
|---|---:|---:|---:|---:|---|
{cell_lines}
"""


def _balance_text(balance: dict[str, int]) -> str:
    return ", ".join(f"{key}: {count}" for key, count in balance.items())


def _sources(facts: CardFacts) -> str:
    datasets: dict[str, set[str]] = defaultdict(set)
    for f in facts.files:
        datasets[f.modality].update(f.datasets)
    seen = ", ".join(f"{m}: {', '.join(sorted(datasets[m])) or 'unknown'}" for m in facts.modalities)
    parts = [f"## Sources and licences\n\nSource datasets of the items (from their `source` column): {seen}."]
    if any(m in ("ct", "mri") for m in facts.modalities):
        parts.append(TOTALSEG_TEXT)
    if facts.includes_mimic:
        parts.append(MIMIC_TEXT)
    parts.append(
        "The code that generated the items (`medscout-data`) is Apache-2.0; the items' licence "
        "is that of their source images, as above."
    )
    return "\n\n".join(p.strip() for p in parts)


TOTALSEG_TEXT = """
**TotalSegmentator (CT and MRI), CC BY 4.0.** The CT and MRI items are derived from
the TotalSegmentator datasets, released under the Creative Commons Attribution 4.0
International licence (https://creativecommons.org/licenses/by/4.0/). Derived items
keep that licence; when you use or share them, credit the TotalSegmentator authors and
cite their papers (below), and say that the images were cropped, shuffled or
cut-pasted into proxy tasks. Check the licence of the exact release you used.
"""

MIMIC_TEXT = """
**MIMIC-CXR (chest X-ray): PhysioNet Credentialed Health Data License 1.5.0.** The
X-ray items are derived from MIMIC-CXR / MIMIC-CXR-JPG (Beth Israel Deaconess Medical
Center, via PhysioNet), which is credentialed-access data under the PhysioNet
Credentialed Health Data License 1.5.0 and its data use agreement
(https://physionet.org/content/mimic-cxr/). Its terms forbid sharing the data, or data
derived from it, with anyone who is not credentialed: **do not redistribute these items,
do not make this repository public**, and grant access only to people with their own
credentialed PhysioNet access to MIMIC-CXR who have signed its data use agreement.
Cite MIMIC-CXR, MIMIC-CXR-JPG and PhysioNet as their terms ask (below).
"""


def _citation(facts: CardFacts) -> str:
    entries = [MEDSCOUT_BIBTEX]
    if any(m in ("ct", "mri") for m in facts.modalities):
        entries += [TOTALSEG_CT_BIBTEX, TOTALSEG_MRI_BIBTEX]
    if facts.includes_mimic:
        entries += [MIMIC_CXR_BIBTEX, MIMIC_CXR_JPG_BIBTEX, PHYSIONET_BIBTEX]
    joined = "\n\n".join(e.strip() for e in entries)
    return f"## Citation\n\n```bibtex\n{joined}\n```"


MEDSCOUT_BIBTEX = """
@inproceedings{liu2026medscout,
  title     = {Med-Scout: Curing {MLLMs}' Geometric Blindness in Medical Perception
               via Geometry-Aware {RL} Post-Training},
  author    = {Liu, Anglin and Chen, Ruichao and Lu, Yi and Xu, Hongxia and Chen, Jintai},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2026},
  eprint    = {2601.23220},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url       = {https://arxiv.org/abs/2601.23220}
}
"""

TOTALSEG_CT_BIBTEX = """
@article{wasserthal2023totalsegmentator,
  title   = {{TotalSegmentator}: Robust Segmentation of 104 Anatomic Structures in {CT} Images},
  author  = {Wasserthal, Jakob and Breit, Hanns-Christian and Meyer, Manfred T. and
             Pradella, Maurice and Hinck, Daniel and Sauter, Alexander W. and Heye, Tobias and
             Boll, Daniel T. and Cyriac, Joshy and Yang, Shan and Bach, Michael and Segeroth, Martin},
  journal = {Radiology: Artificial Intelligence},
  year    = {2023},
  doi     = {10.1148/ryai.230024}
}
"""

TOTALSEG_MRI_BIBTEX = """
@article{dantonoli2025totalsegmentatormri,
  title   = {{TotalSegmentator MRI}: Robust Sequence-independent Segmentation of
             Multiple Anatomic Structures in {MRI}},
  author  = {Akinci D'Antonoli, Tugba and Berger, Lucas K. and Indrakanti, Ashraya K. and
             Vishwanathan, Nathan and Weiss, Jakob and Jung, Matthias and Berkarda, Zeynep and
             Rau, Alexander and Reisert, Marco and K{\\"u}stner, Thomas and Walter, Alexandra and
             Merkle, Elmar M. and Boll, Daniel and Breit, Hanns-Christian and Nicoli, Andrew Phillip and
             Segeroth, Martin and Cyriac, Joshy and Yang, Shan and Wasserthal, Jakob},
  journal = {Radiology},
  volume  = {314},
  number  = {2},
  year    = {2025},
  doi     = {10.1148/radiol.241613}
}
"""

MIMIC_CXR_BIBTEX = """
@article{johnson2019mimiccxr,
  title   = {{MIMIC-CXR}, a de-identified publicly available database of chest radiographs
             with free-text reports},
  author  = {Johnson, Alistair E. W. and Pollard, Tom J. and Berkowitz, Seth J. and
             Greenbaum, Nathaniel R. and Lungren, Matthew P. and Deng, Chih-ying and
             Mark, Roger G. and Horng, Steven},
  journal = {Scientific Data},
  volume  = {6},
  pages   = {317},
  year    = {2019},
  doi     = {10.1038/s41597-019-0322-0}
}
"""

MIMIC_CXR_JPG_BIBTEX = """
@misc{johnson2024mimiccxrjpg,
  title     = {{MIMIC-CXR-JPG} - chest radiographs with structured labels (version 2.1.0)},
  author    = {Johnson, Alistair and Lungren, Matthew and Peng, Yifan and Lu, Zhiyong and
               Mark, Roger and Berkowitz, Seth and Horng, Steven},
  publisher = {PhysioNet},
  year      = {2024},
  doi       = {10.13026/jsn5-t979}
}
"""

PHYSIONET_BIBTEX = """
@article{goldberger2000physionet,
  title   = {{PhysioBank}, {PhysioToolkit}, and {PhysioNet}: Components of a new research
             resource for complex physiologic signals},
  author  = {Goldberger, Ary L. and Amaral, Luis A. N. and Glass, Leon and Hausdorff, Jeffrey M. and
             Ivanov, Plamen Ch. and Mark, Roger G. and Mietus, Joseph E. and Moody, George B. and
             Peng, Chung-Kang and Stanley, H. Eugene},
  journal = {Circulation},
  volume  = {101},
  number  = {23},
  pages   = {e215--e220},
  year    = {2000}
}
"""
