"""`export --format lmms-eval`: an lmms-eval task folder for Med-Scout-Bench.

    lmms-eval --include_path DIR --tasks med_scout_bench --model ... [--log_samples]

DIR holds a group `med_scout_bench` (`med_scout_bench.yaml`) of two tasks,
`med_scout_bench_direct` and `med_scout_bench_cot` (one YAML each, sharing
`_default_template_yaml`), and `utils.py`, whose functions come from
`integrations.lmms_eval` through the scorer copy in `DIR/_medscout/` (no
medscout-data needed where lmms-eval runs). Metrics per task: `avg` (the
Med-Scout-Bench Avg, mean accuracy x 100), `total` (mean Dense Geometric
Reward x 100) and one accuracy metric per modality x task cell
(`ct_scale`, ...). Each task builds its own messages (`doc_to_messages`:
the mode's system prompt, the images, the question; the prompt `evaluate`
sends), so pass no `--system_instruction` (lmms-eval's OpenAI-compatible
model ignores it anyway). Both tasks set `reasoning_tags: none`: lmms-eval
would otherwise cut `<think>...</think>` out of every response before
`process_results`, and the CoT reward (and `evaluate`) sees the response whole.

The data stays where it is: a local bench (a shards root, checked against
its manifest first, or a staged repo folder) is named by the absolute paths
of its shards (`dataset_path: parquet`), a Hub repo by its id. Re-export
when the bench moves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from medscout_data import MODALITIES, TASKS
from medscout_data.evaluation.score import PROFILES, resolve_bench
from medscout_data.integrations.export import MODES
from medscout_data.integrations.lmms_eval import AVG_METRIC, TOTAL_METRIC, cell_metric
from medscout_data.integrations.vendor import BOOTSTRAP, write_vendored
from medscout_data.layout import Layout
from medscout_data.owned import OwnedFolder
from medscout_data.shards import write_bytes_atomic
from medscout_data.stages.manifest import verified_shards

GROUP = "med_scout_bench"
TASK_NAMES = {mode: f"{GROUP}_{mode}" for mode in MODES}
MAX_NEW_TOKENS = {"direct": 128, "cot": 2048}
QUESTION = {"direct": "Direct", "cot": "CoT"}
LMMS_RUNTIME = ["medscout_data.integrations.lmms_eval"]


@dataclass(frozen=True)
class BenchData:
    """Where lmms-eval reads the bench: local Parquet shards, or a Hub dataset repo id."""

    files: tuple[Path, ...] = ()
    repo_id: str = ""
    cells: tuple[tuple[str, str], ...] = ()


def locate_bench(bench: str | Path) -> BenchData:
    """A shards root (its bench side verified against manifest.json), a staged repo or bench
    folder, one Parquet file, or a Hub repo id (`owner/name`)."""
    root = Path(bench)
    if (root / "manifest.json").is_file() and (root / "bench").is_dir():
        files = tuple(p.resolve() for p in verified_shards(Layout.at(root), "bench"))
    else:
        source = resolve_bench(str(bench))
        if source.is_hub:
            return BenchData(repo_id=source.repo_id, cells=tuple((m, t) for m in MODALITIES for t in TASKS))
        files = tuple(p.resolve() for p in source.files)
    present = {(p.parent.parent.name, p.parent.name) for p in files}
    return BenchData(files, cells=tuple((m, t) for m in MODALITIES for t in TASKS if (m, t) in present))


@dataclass
class LmmsExport:
    """What the task export wrote."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    bench: BenchData = field(default_factory=BenchData)


def q(text: str) -> str:
    """A YAML scalar (JSON strings are YAML double-quoted scalars)."""
    return json.dumps(text, ensure_ascii=False)


def template_yaml(data: BenchData) -> str:
    """What both tasks share: the dataset, the functions, the metrics."""
    if data.repo_id:
        dataset = f"dataset_path: {q(data.repo_id)}\ndataset_name: default\n"
    else:
        listed = "".join(f"      - {q(str(path))}\n" for path in data.files)
        dataset = f"dataset_path: parquet\ndataset_kwargs:\n  data_files:\n    test:\n{listed}"
    metrics = [AVG_METRIC, TOTAL_METRIC, *(cell_metric(m, t) for m, t in data.cells)]
    aggregation = {name: "aggregate_accuracy" for name in metrics} | {TOTAL_METRIC: "aggregate_total"}
    metric_lines = "".join(
        f"  - metric: {name}\n    aggregation: !function utils.{aggregation[name]}\n"
        "    higher_is_better: true\n"
        for name in metrics
    )
    return (
        "# Written by `medscout-data export --format lmms-eval`; shared by the Direct and CoT tasks.\n"
        f"{dataset}"
        "test_split: test\n"
        "output_type: generate_until\n"
        "doc_to_visual: !function utils.doc_to_visual\n"
        "doc_to_target: !function utils.doc_to_target\n"
        "reasoning_tags: none  # score the whole response, <think> block included, as evaluate does\n"
        f"metric_list:\n{metric_lines}"
        "lmms_eval_specific_kwargs:\n"
        "  default:\n"
        '    pre_prompt: ""\n'
        '    post_prompt: ""\n'
    )


def task_yaml(mode: str) -> str:
    return (
        f"# Med-Scout-Bench, {mode} mode: the {QUESTION[mode]} question of every item,\n"
        "# scored by the Dense Geometric Reward (accuracy per cell, avg = Med-Scout-Bench Avg).\n"
        "include: _default_template_yaml\n"
        f"task: {TASK_NAMES[mode]}\n"
        f"doc_to_text: !function utils.doc_to_text_{mode}\n"
        f"doc_to_messages: !function utils.doc_to_messages_{mode}\n"
        f"process_results: !function utils.process_results_{mode}\n"
        "generation_kwargs:\n"
        f"  max_new_tokens: {MAX_NEW_TOKENS[mode]}\n"
        "  temperature: 0\n"
        "  do_sample: false\n"
        "metadata:\n"
        "  - version: 1.0\n"
    )


def group_yaml() -> str:
    tasks = "".join(f"  - {TASK_NAMES[mode]}\n" for mode in MODES)
    return f"group: {GROUP}\ntask:\n{tasks}metadata:\n  - version: 1.0\n"


UTILS = '''"""lmms-eval functions of the Med-Scout-Bench tasks; written by `medscout-data export`.

They score with the project's Dense Geometric Reward (the copy in _medscout/). Setting: PROFILE.
"""

PROFILE = "{profile}"  # official: the authors' released reward code; paper: the paper's formulas
{bootstrap}
from medscout_data.integrations.lmms_eval import (
    aggregate_accuracy,
    aggregate_total,
    doc_to_messages,
    doc_to_target,
    doc_to_text,
    doc_to_visual,
    process_results,
)


def doc_to_text_direct(doc, lmms_eval_specific_kwargs=None):
    return doc_to_text(doc, "direct", lmms_eval_specific_kwargs)


def doc_to_text_cot(doc, lmms_eval_specific_kwargs=None):
    return doc_to_text(doc, "cot", lmms_eval_specific_kwargs)


def doc_to_messages_direct(doc, lmms_eval_specific_kwargs=None):
    return doc_to_messages(doc, "direct", lmms_eval_specific_kwargs)


def doc_to_messages_cot(doc, lmms_eval_specific_kwargs=None):
    return doc_to_messages(doc, "cot", lmms_eval_specific_kwargs)


def process_results_direct(doc, results):
    return process_results(doc, results, "direct", PROFILE)


def process_results_cot(doc, results):
    return process_results(doc, results, "cot", PROFILE)
'''


def export_lmms_eval(
    bench: str | Path, out: Path, profile: str = "official", force: bool = False
) -> LmmsExport:
    """Write the task folder `out` for the bench at `bench` (see the module docstring); `force` deletes
    files in the way that medscout-data did not write (owned.py)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    data = locate_bench(bench)
    out = Path(out)
    result = LmmsExport(out, bench=data)
    with OwnedFolder(out, "export lmms-eval", force) as folder:
        _write_task_folder(folder, data, profile, result)
    return result


def _write_task_folder(folder: OwnedFolder, data: BenchData, profile: str, result: LmmsExport) -> None:
    result.files += write_vendored(folder, LMMS_RUNTIME)
    texts = {
        "utils.py": UTILS.format(profile=profile, bootstrap=BOOTSTRAP),
        "_default_template_yaml": template_yaml(data),
        **{f"{TASK_NAMES[mode]}.yaml": task_yaml(mode) for mode in MODES},
        f"{GROUP}.yaml": group_yaml(),  # last: its presence means the folder is whole
    }
    for name, text in texts.items():
        path = folder.claim(name)
        write_bytes_atomic(text.encode("utf-8"), path)
        result.files.append(path)
