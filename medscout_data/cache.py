"""The rendered-image cache that ingest writes and build and index read.

Each cache file is an `.npy` array of shape (n, H, W): uint8 images, or bool
body masks with the same indexing. A catalogue row points at one image by
(`cache_file`, `cache_index`) and its mask by (`mask_file`, `cache_index`);
`height` x `width` is the image's own size inside a possibly padded stack.
Files are memory-mapped, so reading one slice of a volume reads only it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medscout_data.shards import tmp_path


def save_stack(path: Path, stack: np.ndarray) -> None:
    """Write an (n, H, W) array atomically."""
    if stack.ndim != 3:
        raise ValueError(f"cache stacks are (n, H, W), got shape {stack.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    with open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(stack), allow_pickle=False)
    os.replace(tmp, path)


class ImageCache:
    """Reads images and masks of catalogue rows, keeping a few files mapped."""

    def __init__(self, folder: Path, max_open: int = 32) -> None:
        self.folder = Path(folder)
        self.max_open = max_open
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()

    def _stack(self, name: str) -> np.ndarray:
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        stack = np.load(self.folder / name, mmap_mode="r", allow_pickle=False)
        self._open[name] = stack
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return stack

    def read(self, name: str, index: int, height: int, width: int) -> np.ndarray:
        """Entry `index` of cache file `name`, cropped to its own size, as a fresh array."""
        return np.array(self._stack(name)[index, :height, :width])

    def image(self, row: Mapping[str, Any]) -> np.ndarray:
        """The row's 8-bit image as a fresh (H, W) array."""
        return self.read(row["cache_file"], row["cache_index"], row["height"], row["width"])

    def mask(self, row: Mapping[str, Any]) -> np.ndarray:
        """The row's body mask as a fresh (H, W) bool array."""
        return self.read(row["mask_file"], row["cache_index"], row["height"], row["width"]).astype(bool)
