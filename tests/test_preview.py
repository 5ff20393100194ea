"""Preview: a self-contained page with one entry per shown item, contact sheets that open, the truth
drawn where it belongs, a seeded choice of items, escaped text, and bad items listed, not fatal."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image
from splitfixture import write_manifest_for

from medscout_data.cli import cli
from medscout_data.integrations.preview import (
    GRID_COLOUR,
    HIGHLIGHT,
    PALETTE,
    PreviewOptions,
    anomaly_figures,
    draw_boxes,
    jigsaw_figures,
    write_preview,
)
from medscout_data.layout import Layout
from medscout_data.schema import ITEM_SCHEMA
from medscout_data.tasks.geometry import shuffle_tiles

SIZE = 128


class Page(HTMLParser):
    """Items (`article.item`), image sources, links and the text of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.items: list[str] = []
        self.sources: list[str] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.tags.append(tag)
        if tag == "article" and "item" in (values.get("class") or "").split():
            self.items.append(values.get("id") or "")
        if tag == "img":
            self.sources.append(values.get("src") or "")
        if tag == "a":
            self.links.append(values.get("href") or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _open_data_uri(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))
    image.load()
    return image


def _preview(*args: str) -> str:
    result = CliRunner().invoke(cli, ["preview", *args, "--quiet"])
    assert result.exit_code == 0, result.output
    return result.output


def test_page_is_self_contained_with_one_entry_per_item(split_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "preview"
    output = _preview(
        "--shards", str(split_shards), "--per-cell", "2", "--size", str(SIZE), "--out", str(out)
    )
    assert "18 items" in output
    page = Page((out / "index.html").read_text(encoding="utf-8"))
    assert len(page.items) == 9 * 2 and len(set(page.items)) == 18
    bench_ids = {
        row["id"]
        for path in (split_shards / "bench").rglob("*.parquet")
        for row in pq.read_table(path, columns=["id"]).to_pylist()
    }
    assert set(page.items) <= bench_ids
    # scale: full + 3 crops; jigsaw: input, truth, reassembled; anomaly: input, truth
    assert len(page.sources) == 3 * 2 * (4 + 3 + 2)
    for source in page.sources:
        image = _open_data_uri(source)
        assert min(image.size) >= 32 and max(image.size) <= SIZE + 16
    files = [link for link in page.links if not link.startswith("#")]
    assert len(files) == 9
    for link in files:
        sheet = Image.open(out / link)
        sheet.load()
        assert SIZE <= sheet.width <= 8 * SIZE and SIZE <= sheet.height <= 8 * SIZE
    assert "script" not in page.tags
    assert "PhysioNet" in "".join(page.text)
    report = json.loads((out / "_report" / "report.json").read_text())
    assert report["counts"]["items_shown"] == 18 and report["skipped"] == 0


def test_choice_is_seeded_and_pool_is_readable(split_shards: Path, tmp_path: Path) -> None:
    layout = Layout.at(split_shards)

    def shown(seed: int, name: str) -> list[str]:
        options = PreviewOptions(
            split="pool", per_cell=3, seed=seed, size=64, tasks=("jigsaw",), progress=False
        )
        result = write_preview(layout, tmp_path / name, options)
        assert result.shown == 9 and len(result.sheets) == 3
        return Page((tmp_path / name / "index.html").read_text()).items

    first, again, other = shown(1, "a"), shown(1, "b"), shown(2, "c")
    assert first == again
    assert first != other
    assert all("-jigsaw-" in item for item in first)


def _draw(figure_image: Image.Image) -> np.ndarray:
    return np.asarray(figure_image.convert("RGB")).astype(int)


def test_scale_boxes_are_drawn_in_each_crops_colour() -> None:
    image = Image.new("L", (100, 100), 128)
    boxes = [[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]]
    drawn = _draw(draw_boxes(image, boxes, [1, 2], SIZE))
    assert drawn.shape == (SIZE, SIZE, 3)
    # the bottom-right corners (away from the labels at the top-left) carry each box's colour
    assert tuple(drawn[round(0.5 * SIZE) - 1, round(0.5 * SIZE) - 1]) == PALETTE[0]
    assert tuple(drawn[round(0.9 * SIZE) - 1, round(0.9 * SIZE) - 1]) == PALETTE[1]
    assert tuple(drawn[round(0.3 * SIZE), round(0.3 * SIZE)]) == (128, 128, 128)  # inside: untouched


def test_jigsaw_truth_and_reassembly_put_every_tile_where_it_belongs() -> None:
    values = [0, 60, 120, 180]
    original = np.zeros((64, 64), np.uint8)
    for k, value in enumerate(values):
        row, col = divmod(k, 2)
        original[row * 32 : (row + 1) * 32, col * 32 : (col + 1) * 32] = value
    permutation = (2, 0, 3, 1)
    shuffled = Image.fromarray(shuffle_tiles(original, permutation, 2))
    model_input, truth, reassembled = jigsaw_figures(
        [shuffled], {"grid": 2, "permutation": list(permutation)}, SIZE
    )
    centres = [(SIZE // 4 + (k // 2) * SIZE // 2 + 8, SIZE // 4 + (k % 2) * SIZE // 2 + 8) for k in range(4)]
    for position, (y, x) in enumerate(centres):
        assert _draw(model_input.image)[y, x, 0] == values[permutation[position]]
        assert _draw(truth.image)[y, x, 0] == values[permutation[position]]
        assert _draw(reassembled.image)[y, x, 0] == values[position]  # the original order again
    assert tuple(_draw(truth.image)[SIZE // 2, 5]) == GRID_COLOUR  # the grid line between the rows


def test_anomaly_outline_marks_the_replaced_cell_only() -> None:
    image = Image.new("L", (64, 64), 100)
    model_input, truth = anomaly_figures([image], {"grid": 4, "cell": 9}, SIZE)
    drawn = _draw(truth.image)
    cell = SIZE // 4
    row, col = divmod(9, 4)
    bottom_right = (row + 1) * cell - 1, (col + 1) * cell - 1
    assert tuple(drawn[bottom_right]) == HIGHLIGHT
    for other in (5, 6, 10):
        r, c = divmod(other, 4)
        assert tuple(drawn[(r + 1) * cell - 4, (c + 1) * cell - 4]) != HIGHLIGHT
    assert truth.title == "truth: replaced cell 9"
    assert _draw(model_input.image)[drawn.shape[0] // 2, drawn.shape[1] // 2, 0] == 100


def test_text_is_escaped_and_bad_items_are_listed(split_shards: Path, tmp_path: Path) -> None:
    root = tmp_path / "shards"
    cell = root / "bench" / "mri" / "scale"
    cell.mkdir(parents=True)
    rows = pq.read_table(next((split_shards / "bench" / "mri" / "scale").glob("*.parquet"))).to_pylist()
    rows[0]["question"] = "<script>alert(1)</script> & <marquee>bold</marquee>"
    rows[1]["images"][0] = {"bytes": b"\x89PNG\r\n\x1a\n truncated", "path": None}
    rows[2]["target"] = "{not json"
    pq.write_table(pa.Table.from_pylist(rows, schema=ITEM_SCHEMA), cell / "test-00000-of-00001.parquet")
    write_manifest_for(root, split_shards)  # bad when split, so the manifest's hashes match
    out = tmp_path / "preview"
    options = PreviewOptions(per_cell=len(rows), size=64, progress=False)
    result = write_preview(Layout.at(root), out, options)
    assert result.shown == len(rows) - 2
    assert result.report.skipped_by_reason() == {"bad-image": 1, "bad-target": 1}
    text = (out / "index.html").read_text(encoding="utf-8")
    page = Page(text)
    assert "script" not in page.tags and "marquee" not in page.tags
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;marquee&gt;bold&lt;/marquee&gt;" in text
    assert len(page.items) == len(rows) - 2
    assert rows[1]["id"] in text and rows[2]["id"] in text  # listed under "Skipped"
    assert "PhysioNet" not in text  # no X-ray shown


def test_missing_split_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["preview", "--shards", str(tmp_path), "--out", str(tmp_path / "p")])
    assert result.exit_code != 0 and "medscout-data split" in result.output
    with pytest.raises(ValueError, match="unknown split"):
        PreviewOptions(split="test")
