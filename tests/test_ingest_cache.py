"""The image cache: compressed stacks read back exactly, one entry at a time; damage is a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medscout_data.cache import CacheError, ImageCache, StackWriter, save_stack, stack_entries, write_stack


def structured(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A slice-like image: air around an elliptic body with smooth structure and noise."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = 120 + 80 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 3, (height, width))
    body = ((yy - height / 2) / (0.42 * height)) ** 2 + ((xx - width / 2) / (0.38 * width)) ** 2 <= 1
    return np.where(body, np.clip(base, 0, 255), 0).astype(np.uint8)


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 70), st.integers(1, 70)), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_images_and_masks_of_any_size_read_back_exactly(tmp_path_factory, shapes, seed) -> None:
    folder = tmp_path_factory.mktemp("stack")
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    masks = [rng.random(shape) < 0.4 for shape in shapes]
    write_stack(folder / "i.stack", images, "image")
    write_stack(folder / "m.stack", masks, "mask")
    cache = ImageCache(folder)
    for index in reversed(range(len(shapes))):  # any order: each entry is read on its own
        height, width = shapes[index]
        image = cache.read("i.stack", index, height, width)
        mask = cache.read("m.stack", index, height, width)
        assert image.dtype == np.uint8 and np.array_equal(image, images[index])
        assert mask.dtype == bool and np.array_equal(mask, masks[index])
        row = {"cache_file": "i.stack", "mask_file": "m.stack", "cache_index": index}
        row |= {"height": height, "width": width}
        assert np.array_equal(cache.mask(row), masks[index])
        image[...] = 0  # a fresh array: the next read is unchanged
        assert np.array_equal(cache.image(row), images[index])


def test_stack_is_smaller_than_raw_pixels_and_masks_nearly_free(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [structured(rng, 256, 256) for _ in range(4)]
    yy, xx = np.mgrid[0:256, 0:256]
    masks = [((yy - 128) / 100) ** 2 + ((xx - 128) / 80) ** 2 <= 1 for _ in range(4)]
    write_stack(tmp_path / "i.stack", images, "image")
    write_stack(tmp_path / "m.stack", masks, "mask")
    raw = sum(image.nbytes for image in images)
    assert (tmp_path / "i.stack").stat().st_size < 0.8 * raw
    assert (tmp_path / "m.stack").stat().st_size < 0.02 * raw  # vs one byte per pixel before
    assert stack_entries(tmp_path / "i.stack") == 4


def test_plain_npy_stacks_still_read(tmp_path: Path) -> None:
    stack = np.arange(2 * 5 * 6, dtype=np.uint8).reshape(2, 5, 6)
    save_stack(tmp_path / "old.npy", stack)
    cache = ImageCache(tmp_path)
    assert np.array_equal(cache.read("old.npy", 1, 4, 3), stack[1, :4, :3])
    assert stack_entries(tmp_path / "old.npy") == 2


def test_out_of_range_missing_and_damaged_are_clear_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    write_stack(tmp_path / "i.stack", [structured(rng, 40, 30), structured(rng, 40, 30)], "image")
    cache = ImageCache(tmp_path)
    with pytest.raises(IndexError, match="entry 5 out of range"):
        cache.read("i.stack", 5, 40, 30)
    with pytest.raises(OSError):
        cache.read("nowhere.stack", 0, 40, 30)
    data = bytearray((tmp_path / "i.stack").read_bytes())
    (tmp_path / "cut.stack").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CacheError, match=r"cut\.stack: not a complete cache stack"):
        ImageCache(tmp_path).read("cut.stack", 0, 40, 30)
    data[20:60] = bytes(40)  # inside entry 0's compressed bytes
    (tmp_path / "flip.stack").write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"flip\.stack: entry 0"):
        ImageCache(tmp_path).read("flip.stack", 0, 40, 30)
    assert np.array_equal(
        ImageCache(tmp_path).read("flip.stack", 1, 40, 30), cache.read("i.stack", 1, 40, 30)
    )


def test_an_aborted_writer_leaves_nothing_and_many_open_files_are_evicted(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), StackWriter(tmp_path / "x.stack", "image") as writer:
        writer.add(np.zeros((4, 4), np.uint8))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    for n in range(6):
        write_stack(tmp_path / f"{n}.stack", [np.full((3, 3), n, np.uint8)], "image")
    cache = ImageCache(tmp_path, max_open=2)
    for _ in range(2):
        assert [int(cache.read(f"{n}.stack", 0, 3, 3)[0, 0]) for n in range(6)] == list(range(6))
    assert len(cache._open) == 2
    cache.close()
    with pytest.raises(ValueError, match="uint8"):
        StackWriter(tmp_path / "y.stack", "image").add(np.zeros((2, 2), np.float32))
