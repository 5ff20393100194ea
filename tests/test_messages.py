"""One prompt in every path: evaluate's request, the ms-swift JSONL row, the lmms-eval task's
doc_to_messages and the VLMEvalKit class's build_prompt give every bench item the same system
prompt, images (same pixels, prompt order) and question, byte for byte, in both modes."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image
from promptparity import canonical, pixels
from splitfixture import cli_ok, read_jsonl, side_rows

from medscout_data.evaluation.evaluate import request_messages
from medscout_data.tasks.messages import (
    IMAGE_TAG,
    item_messages,
    question_of,
    system_prompt,
    tagged_messages,
)
from medscout_data.tasks.prompts import SYSTEM_PROMPTS

MODES = ("direct", "cot")


def expected(row: dict, mode: str) -> list:
    """What every path must send: the mode's system prompt as it is, the images, the question."""
    images = [pixels(image["bytes"]) for image in row["images"]]
    return [("system", [SYSTEM_PROMPTS[mode]]), ("user", [*images, question_of(row, mode)])]


def test_item_messages_order_and_the_tagged_form() -> None:
    messages = item_messages("Q?", ["a", "b"], "cot", lambda x: {"type": "image", "name": x})
    assert messages == [
        {"role": "system", "content": system_prompt("cot")},
        {
            "role": "user",
            "content": [
                {"type": "image", "name": "a"},
                {"type": "image", "name": "b"},
                {"type": "text", "text": "Q?"},
            ],
        },
    ]
    assert not system_prompt("direct").endswith(("\n", " "))
    assert tagged_messages(messages)[1] == {"role": "user", "content": f"{IMAGE_TAG}{IMAGE_TAG}Q?"}
    with pytest.raises(ValueError, match="unknown mode"):
        item_messages("Q?", [], "thinking", dict)


@pytest.mark.parametrize("mode", MODES)
def test_evaluate_and_the_swift_rows_send_the_same_prompt(
    split_shards: Path, tmp_path: Path, mode: str
) -> None:
    out = tmp_path / "swift"
    cli_ok(
        "export",
        "--split",
        "bench",
        "--mode",
        mode,
        "--shards",
        str(split_shards),
        "--out",
        str(out),
        "--quiet",
    )
    rows = side_rows(split_shards)
    records = read_jsonl(out / f"bench-{mode}-swift.jsonl")
    assert sorted(r["id"] for r in records) == sorted(rows)
    for record in records:
        row = rows[record["id"]]
        assert canonical(request_messages(row, mode)) == expected(row, mode)
        # ms-swift's server turns evaluate's parts into `<image>` tags + text; the row must read the same
        assert record["messages"] == tagged_messages(request_messages(row, mode))
        assert [pixels((out / p).read_bytes()) for p in record["images"]] == expected(row, mode)[1][1][:-1]
    assert (out / f"system-{mode}.txt").read_bytes() == SYSTEM_PROMPTS[mode].encode("utf-8")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lmms_eval_task_builds_the_same_messages_with_its_system_turn(
    split_shards: Path, tmp_path: Path
) -> None:
    import datasets

    folder = tmp_path / "lmms"
    cli_ok("export", "--format", "lmms-eval", "--shards", str(split_shards), "--out", str(folder))
    template = (folder / "_default_template_yaml").read_text()
    assert "reasoning_tags: none" in template  # lmms-eval would otherwise cut <think> out of responses
    assert not list(folder.glob("system-*.txt"))  # no --system_instruction to pass: the task has it
    for mode in MODES:
        assert (
            f"doc_to_messages: !function utils.doc_to_messages_{mode}"
            in (folder / f"med_scout_bench_{mode}.yaml").read_text()
        )
    utils = _load(folder / "utils.py", "medscout_lmms_messages_utils")
    files = sorted(str(p.resolve()) for p in (split_shards / "bench").glob("*/*/*.parquet"))
    docs = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    rows = side_rows(split_shards)
    for doc in docs:
        for mode in MODES:
            messages = getattr(utils, f"doc_to_messages_{mode}")(doc, {"pre_prompt": "", "post_prompt": ""})
            got = []
            for message in messages:
                assert isinstance(message["content"], list)  # lmms-eval's ChatMessage wants parts
                parts = [p["text"] if p["type"] == "text" else pixels(p["url"]) for p in message["content"]]
                got.append((message["role"], parts))
            assert got == expected(rows[doc["id"]], mode)


def _stand_in_vlmeval(root: Path) -> None:
    """A stand-in for VLMEvalKit (not on the package index): the two names the class imports, with
    `ImageBaseDataset.__init__` doing what VLMEvalKit's does for a TSV dataset (name, data, image root)."""
    package = root / "vlmeval"
    (package / "dataset").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "dataset" / "__init__.py").write_text("DATASET_CLASSES = []\n")
    (package / "dataset" / "image_base.py").write_text(
        textwrap.dedent(
            f"""
            import os

            class ImageBaseDataset:
                def __init__(self, dataset="MMBench", skip_noimg=True):
                    self.dataset_name = dataset
                    self.img_root = os.path.join({str(root)!r}, "images", dataset)
                    self.data = self.load_data(dataset)
            """
        )
    )
    (package / "smp.py").write_text(
        "import json\nimport pandas as pd\n\n"
        "def load(f):\n    return pd.read_csv(f, sep='\\t')\n\n"
        "def dump(data, f):\n    open(f, 'w').write(json.dumps(data))\n"
    )


def test_vlmeval_class_build_prompt_carries_the_same_messages_with_a_stand_in_vlmeval(
    split_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "vlm"
    cli_ok("export", "--format", "vlmeval", "--shards", str(split_shards), "--out", str(out), "--quiet")
    _stand_in_vlmeval(tmp_path / "fake")
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    for name in [m for m in sys.modules if m == "vlmeval" or m.startswith("vlmeval.")]:
        monkeypatch.delitem(sys.modules, name)
    from medscout_data.integrations.vlmeval import dataset_class

    cls = dataset_class(str(out / "MedScoutBench.tsv"))
    rows = side_rows(split_shards)
    for name, mode in (("MedScoutBench", "direct"), ("MedScoutBench_CoT", "cot")):
        dataset = cls(dataset=name)
        assert len(dataset.data) == len(rows)
        for k in range(len(dataset.data)):
            line = dataset.data.iloc[k]
            prompt = dataset.build_prompt(k)
            system, *user = prompt
            assert system == {"type": "text", "value": SYSTEM_PROMPTS[mode], "role": "system"}
            assert all("role" not in part for part in user)
            parts = [p["value"] if p["type"] == "text" else pixels(Image.open(p["value"])) for p in user]
            assert [("system", [system["value"]]), ("user", parts)] == expected(rows[line["id"]], mode)
