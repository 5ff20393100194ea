"""VLMEvalKit: the Med-Scout-Bench dataset class and the scoring of its prediction files.

`export --format vlmeval` writes `MedScoutBench.tsv` in VLMEvalKit's layout
(`index`, `image` = base64 PNG or a list of them, `question`, `answer`, plus
`id`, `modality`, `task`, `variant`, `target`, `question_cot`) and
`medscout_vlmeval.py`, which calls `dataset_class` and `main` below. Two
dataset names share the TSV: `MedScoutBench` (Direct questions) and
`MedScoutBench_CoT` (CoT questions, and the CoT template reward).

The class follows VLMEvalKit's `ImageBaseDataset`: `load_data` reads the TSV,
`dump_image` writes each image's PNG bytes as they are (VLMEvalKit's own
helper decodes and re-saves them), `build_prompt` gives the item's messages
(`tasks.messages`, the prompt `evaluate` sends) in VLMEvalKit's form: the
mode's system prompt as a text entry with `role: system`, the images in
prompt order, then the question (`force_use_dataset_prompt`, so no model
swaps in its own VQA prompt), and `evaluate` scores the prediction file with the
project's Dense Geometric Reward: accuracy x 100 per modality x task cell and
`Overall`, the Med-Scout-Bench Avg. VLMEvalKit is imported only inside
`dataset_class` and `main`; the scoring needs only the scorer.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from medscout_data.evaluation.score import BenchItem, ScoreResult, Truth, format_table, score_bench
from medscout_data.tasks.messages import item_messages, question_of

DATASETS = {"MedScoutBench": "direct", "MedScoutBench_CoT": "cot"}
ITEM_COLUMNS = ("id", "modality", "task", "variant", "target")


def text(value: Any) -> str:
    """A cell of a pandas row as text: NaN (an empty TSV cell) becomes ''."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def score_records(records: Iterable[Mapping[str, Any]], mode: str, profile: str = "official") -> ScoreResult:
    """Dense Geometric Reward of prediction rows (the TSV's item columns plus `prediction`)."""
    items, predictions = [], {}
    for row in records:
        item = {name: text(row[name]) for name in ITEM_COLUMNS}
        truth = Truth.from_item(item)
        items.append(BenchItem(item["id"], item["modality"], item["task"], item["variant"], truth))
        predictions[item["id"]] = text(row.get("prediction"))
    return score_bench(items, predictions, profile, mode)


def score_summary(result: ScoreResult) -> dict[str, float]:
    """`Overall` (Med-Scout-Bench Avg), `total`, and accuracy per cell (`ct_scale`, ...), all x 100."""
    summary = {
        "Overall": 100 * result.overall.means()["accuracy"],
        "total": 100 * result.overall.means()["total"],
    }
    for key, cell in result.cells.items():
        summary[key.replace("/", "_")] = 100 * cell.means()["accuracy"]
    return summary


def image_list(value: Any) -> list[str]:
    """The base64 images of a TSV cell: one string, or a list (VLMEvalKit's `toliststr` gives lists)."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    value = str(value)
    return json.loads(value) if value.startswith("[") else [value]


def vlmeval_messages(question: str, image_paths: Sequence[str], mode: str) -> list[dict[str, str]]:
    """The item's messages (`tasks.messages.item_messages`) as VLMEvalKit's flat message list:
    `{"type": "text", "value": system prompt, "role": "system"}`, one `{"type": "image", "value": path}`
    per image in prompt order, then `{"type": "text", "value": question}`."""
    system, user = item_messages(question, image_paths, mode, lambda path: {"type": "image", "value": path})
    parts = [{"type": "text", "value": p["text"]} if p["type"] == "text" else p for p in user["content"]]
    return [{"type": "text", "value": system["content"], "role": "system"}, *parts]


def dataset_class(tsv: str, profile: str = "official") -> type:
    """The VLMEvalKit dataset class reading `tsv` (see its docstring); needs VLMEvalKit installed."""
    from vlmeval.dataset.image_base import ImageBaseDataset
    from vlmeval.smp import dump, load

    class MedScoutBench(ImageBaseDataset):
        """Med-Scout-Bench for VLMEvalKit (`MedScoutBench`: Direct, `MedScoutBench_CoT`: CoT).

        `build_prompt` carries the system prompt (`vlmeval_messages`: the messages `evaluate`
        sends) as a text entry with `role: system`. What a model makes of it is VLMEvalKit's model
        class's choice: its API models (`BaseAPI`) send it as the system message, with a newline
        appended; some local models (`Qwen2VLChat`, for one) ignore the role and read it as the
        first text of the user turn. Images: local models open the PNG files `dump_image` writes
        (the shard's bytes). The OpenAI API wrapper (`vlmeval/api/gpt.py`, `OpenAIWrapper`) does not
        send them as they are: it reopens each file and re-encodes it as JPEG, shrunk to `img_size`
        (512 px by default; JPEG is lossy, so the model sees other pixels). VLMEvalKit has no switch
        for this. To keep the PNGs (and the prompt byte for byte) with an OpenAI-compatible server,
        ask it with `medscout-data evaluate`, which sends these same messages with the shard's PNG
        bytes (docs/notes/prompts.md)."""

        TYPE = "VQA"
        MODALITY = "IMAGE"
        DATASET_URL = dict.fromkeys(DATASETS, "")
        DATASET_MD5: ClassVar[dict[str, str]] = {}
        force_use_dataset_prompt = True

        def load_data(self, dataset: str):
            return load(tsv)

        def dump_image(self, line: Mapping[str, Any]) -> list[str]:
            os.makedirs(self.img_root, exist_ok=True)
            paths = []
            for k, data in enumerate(image_list(line["image"])):
                path = os.path.join(self.img_root, f"{line['index']}-{k}.png")
                if not os.path.isfile(path):
                    with open(path + ".tmp", "wb") as handle:
                        handle.write(base64.b64decode(data))
                    os.replace(path + ".tmp", path)
                paths.append(path)
            return paths

        def build_prompt(self, line: Any) -> list[dict[str, str]]:
            if isinstance(line, int):
                line = self.data.iloc[line]
            mode = DATASETS[self.dataset_name]
            return vlmeval_messages(question_of(line, mode), self.dump_image(line), mode)

        def evaluate(self, eval_file: str, **judge_kwargs: Any) -> dict[str, float]:
            data = load(eval_file)
            result = score_records(data.to_dict("records"), DATASETS[self.dataset_name], profile)
            summary = score_summary(result)
            dump(summary, os.path.splitext(eval_file)[0] + "_score.json")
            return summary

    return MedScoutBench


def register(cls: type) -> None:
    """Make the class known to VLMEvalKit's `build_dataset` and config files (`"class": "MedScoutBench"`)."""
    import vlmeval.dataset as registry

    setattr(registry, cls.__name__, cls)
    if cls not in registry.DATASET_CLASSES:
        registry.DATASET_CLASSES.insert(0, cls)


def main(tsv: str, profile: str = "official", argv: Sequence[str] | None = None) -> None:
    """Run one VLMEvalKit model on the bench and score it, or score an existing prediction file."""
    parser = argparse.ArgumentParser(description="Med-Scout-Bench with VLMEvalKit (from medscout-data).")
    parser.add_argument("--model", help="a VLMEvalKit model name (vlmeval.config.supported_VLM)")
    parser.add_argument("--mode", choices=sorted(set(DATASETS.values())), default="direct")
    parser.add_argument("--work-dir", default="outputs")
    parser.add_argument("--score", metavar="PREDICTIONS", help="score this prediction file (xlsx/tsv) only")
    args = parser.parse_args(argv)
    name = next(n for n, m in DATASETS.items() if m == args.mode)
    if args.score:
        import pandas as pd

        loader = pd.read_excel if args.score.endswith(".xlsx") else lambda f: pd.read_csv(f, sep="\t")
        result = score_records(loader(args.score).to_dict("records"), args.mode, profile)
        print(format_table(result))
        return
    if not args.model:
        parser.error("give --model NAME (or --score FILE)")
    cls = dataset_class(tsv, profile)
    register(cls)
    from vlmeval.config import supported_VLM
    from vlmeval.inference import infer_data_job
    from vlmeval.smp import get_pred_file_path

    dataset = cls(dataset=name)
    work_dir = os.path.join(args.work_dir, args.model)
    os.makedirs(work_dir, exist_ok=True)
    infer_data_job(supported_VLM[args.model](), work_dir=work_dir, model_name=args.model, dataset=dataset)
    predictions = get_pred_file_path(work_dir, args.model, name, use_env_format=True)
    print(json.dumps(dataset.evaluate(predictions), indent=2))
