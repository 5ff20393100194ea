"""preview --predictions on a real sample split: every item scored from prediction files, each
cell's worst items first, each file's answer drawn on the item's own pixels beside the truth."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from splitfixture import side_rows

from medscout_data.cli import cli
from medscout_data.evaluation.score import reward
from medscout_data.integrations.failures import TRUTH_COLOUR, _boxes, answer_figures
from medscout_data.integrations.preview import HIGHLIGHT, PALETTE, decode, jigsaw_figures

SIZE = 128


class Page(HTMLParser):
    """Sections (cells) with their items in page order, and every image source."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.cells: dict[str, list[str]] = {}
        self.options: list[str] = []
        self.sources: list[str] = []
        self._cell = ""
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section" and values.get("class") == "cell":
            self._cell = values.get("id") or ""
            self.cells[self._cell] = []
        if tag == "article":
            self.cells[self._cell].append(values.get("id") or "")
        if tag == "img":
            self.sources.append(values.get("src") or "")
        if tag == "option" and values.get("value"):
            self.options.append(values["value"] or "")


def wrong(row: dict) -> str:
    """A well-formed wrong answer."""
    if row["task"] == "anomaly":
        return str({5: 10, 6: 9, 9: 6, 10: 5}[int(row["answer"])])
    if row["task"] == "jigsaw":
        return " ".join(reversed(row["answer"].split()))
    if row["variant"] == "tier":
        return ", ".join("Label 2" if a == "Label 1" else "Label 1" for a in row["answer"].split(", "))
    return "(0, 0, 100, 100), (0, 0, 100, 100), (0, 0, 100, 100)"


@pytest.fixture(scope="module")
def rows(split_shards: Path) -> dict[str, dict]:
    return side_rows(split_shards)


@pytest.fixture(scope="module")
def runs(rows: dict[str, dict], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, set[str]]:
    """`evaluate`-style predictions: every third item answered wrongly by model A; model B right
    everywhere but one item it never answered."""
    folder = tmp_path_factory.mktemp("runs")
    bad = {item_id for n, item_id in enumerate(sorted(rows)) if n % 3 == 0}
    a, b = folder / "a" / "predictions.jsonl", folder / "b" / "predictions.jsonl"
    a.parent.mkdir(), b.parent.mkdir()
    lines_a = [
        {"id": i, "model": "model-a", "response": wrong(r) if i in bad else r["answer"]}
        for i, r in rows.items()
    ]
    lines_b = [{"id": i, "model": "model-b", "response": r["answer"]} for i, r in sorted(rows.items())[1:]]
    a.write_text("".join(json.dumps(line) + "\n" for line in lines_a))
    b.write_text("".join(json.dumps(line) + "\n" for line in lines_b))
    return a, b, bad


def run_preview(split_shards: Path, out: Path, *args: str) -> str:
    result = CliRunner().invoke(
        cli,
        ["preview", "--shards", str(split_shards), "--out", str(out), "--size", str(SIZE), "--quiet", *args],
    )
    assert result.exit_code == 0, result.output
    return (out / "index.html").read_text(encoding="utf-8")


def test_each_cell_shows_its_worst_items_first_with_every_files_rewards(
    split_shards: Path, rows: dict[str, dict], runs: tuple[Path, Path, set[str]], tmp_path: Path
) -> None:
    a, b, bad = runs
    text = run_preview(
        split_shards, tmp_path, "--predictions", str(a), "--predictions", f"B={b}", "--per-cell", "3"
    )
    page = Page(text)
    assert all(src.startswith("data:image/png;base64,") for src in page.sources) and page.sources
    assert "http://" not in text and "https://" not in text  # one self-contained page
    assert (
        set(page.options)
        == set(page.cells)
        == {f"{m}-{t}" for m in ("ct", "mri", "xray") for t in ("scale", "jigsaw", "anomaly")}
    )
    for cell, shown in page.cells.items():
        modality, task = cell.split("-")
        items = [i for i, r in rows.items() if r["modality"] == modality and r["task"] == task]

        def mean(i: str) -> float:
            got_a = reward(rows[i]["answer"] if i not in bad else wrong(rows[i]), rows[i]).total
            got_b = reward(rows[i]["answer"], rows[i]).total if i != min(rows) else 0.0
            return (got_a + got_b) / 2

        assert shown == sorted(items, key=lambda i: (mean(i), i))[:3], cell
        assert shown[0] in bad or shown[0] == min(rows)  # the worst item is a wrong (or unanswered) one
    assert "model-a" in text and "<th>B</th>" in text  # the model named in the file, the given label
    assert min(rows) in page.cells["ct-anomaly"] and "no answer" in text  # B never answered it


def test_the_cell_filters_limit_the_page(
    split_shards: Path, runs: tuple[Path, Path, set[str]], tmp_path: Path
) -> None:
    a, _, _ = runs
    page = Page(
        run_preview(split_shards, tmp_path, "--predictions", str(a), "--modality", "ct", "--task", "anomaly")
    )
    assert list(page.cells) == ["ct-anomaly"] and len(page.cells["ct-anomaly"]) == 4


def first(rows: dict[str, dict], task: str, variant: str = "") -> dict:
    return next(r for _, r in sorted(rows.items()) if r["task"] == task and (r["variant"] or "") == variant)


def images_of(row: dict) -> list[Image.Image]:
    return [decode(image["bytes"], "test") for image in row["images"]]


def test_a_jigsaw_answer_is_reassembled_in_the_models_order(rows: dict[str, dict]) -> None:
    row = first(rows, "jigsaw")
    target = json.loads(row["target"])
    (right,) = answer_figures(images_of(row), row, f"<answer>{row['answer']}</answer>", "m", SIZE)
    truth = jigsaw_figures(images_of(row), target, SIZE)[2]  # preview's original, reassembled by the truth
    assert np.array_equal(np.asarray(right.image), np.asarray(truth.image))
    (other,) = answer_figures(images_of(row), row, wrong(row), "m", SIZE)
    assert not np.array_equal(np.asarray(other.image), np.asarray(truth.image))
    assert "reassembled in its order" in other.title
    (broken,) = answer_figures(images_of(row), row, "0 0 1 2", "m", SIZE)
    assert "is not an order" in broken.title


def test_an_anomaly_answer_marks_the_chosen_cell_and_the_true_one(rows: dict[str, dict]) -> None:
    row = first(rows, "anomaly")
    grid, cell = json.loads(row["target"])["grid"], int(row["answer"])
    chosen = int(wrong(row))
    (figure,) = answer_figures(images_of(row), row, str(chosen), "m", SIZE)
    pixels = np.asarray(figure.image)
    height, width = pixels.shape[0] / grid, pixels.shape[1] / grid

    def bottom_edge(k: int) -> tuple[int, ...]:  # the middle of the cell's bottom border
        r, c = divmod(k, grid)
        return tuple(pixels[round((r + 1) * height) - 2, round((c + 0.5) * width)])

    assert bottom_edge(chosen) == HIGHLIGHT and bottom_edge(cell) == TRUTH_COLOUR
    assert f"cell {chosen} (red); truth {cell}" in figure.title


def test_scale_answers_are_drawn_beside_the_true_boxes(rows: dict[str, dict]) -> None:
    row = first(rows, "scale", "box")
    (figure,) = answer_figures(images_of(row), row, "(0, 0, 500, 500), (500, 500, 1000, 1000)", "m", SIZE)
    (none,) = answer_figures(images_of(row), row, "no boxes", "m", SIZE)
    assert "2 box(es)" in figure.title and "0 box(es)" in none.title
    assert not np.array_equal(np.asarray(figure.image), np.asarray(none.image))
    alone = np.asarray(_boxes(images_of(row)[0], [], [(0.0, 0.0, 0.5, 0.5)], SIZE))  # the model's box only
    bottom = int(alone.shape[0] * 0.5 - 1)
    assert (alone[bottom, 1 : alone.shape[1] // 4] == PALETTE[0]).all()
    tier = first(rows, "scale", "tier")
    (said,) = answer_figures(images_of(tier), tier, wrong(tier), "m", SIZE)
    assert re.search(r"tiers 'Label [12]", said.title)
    assert not np.array_equal(
        np.asarray(said.image),
        np.asarray(answer_figures(images_of(tier), tier, tier["answer"], "m", SIZE)[0].image),
    )
