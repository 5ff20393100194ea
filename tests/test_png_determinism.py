"""The PNG encoder's bytes depend on the image and the settings only: never on what a process encoded before.

Build promises byte-identical shards for any --workers, rank split or kill + rerun; each of those makes a
worker encode a different sequence of images. So an image encoded after others (of other sizes, content,
levels and filters) must give the bytes it gives first thing in a fresh process.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from medscout_data.imaging import encode_png
from medscout_data.recipe import PngConfig

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [PngConfig(level, "sub") for level in (0, 1, 2, 3)] + [PngConfig(1, "up"), PngConfig(1, "none")]


def _image(kind: str, height: int, width: int, seed: int) -> np.ndarray:
    """Slice-like (a noisy body on black), noise, flat, or a hard-edged pattern."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.integers(0, 256, (height, width), dtype=np.uint8)
    if kind == "flat":
        return np.full((height, width), seed % 256, np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    if kind == "edges":
        return (((x // 7 + y // 5) % 3) * 100).astype(np.uint8)
    body = (y - height / 2) ** 2 / (0.4 * height) ** 2 + (x - width / 2) ** 2 / (0.45 * width) ** 2 < 1
    tissue = 120 + 60 * np.sin(x / 17 + seed) * np.cos(y / 23) + rng.normal(0, 6, (height, width))
    return np.clip(tissue * body, 0, 255).astype(np.uint8)


# the images checked, and others of different sizes and content encoded before them
TARGETS = [("slice", 224, 224, 1), ("slice", 512, 480, 2), ("edges", 64, 65, 3), ("noise", 96, 33, 4)]
OTHERS = [("noise", 400, 500, 5), ("flat", 3, 2000, 6), ("slice", 700, 640, 7), ("edges", 31, 17, 8)]
OTHERS += [("slice", 300, 77, 9), ("noise", 1, 1, 10), ("flat", 512, 512, 11), ("slice", 90, 128, 12)]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _encode_others(start: int = 0) -> None:
    """Two of the others, in turn, each under another setting."""
    for number in range(start, start + 2):
        encode_png(_image(*OTHERS[number % len(OTHERS)]), SETTINGS[number % len(SETTINGS)])


def _fresh(mode: str) -> dict[str, str]:
    """Digests from a fresh interpreter: the targets alone, after others, or one as its first image."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_png_determinism as t; "
    )
    code += f"t._print_digests({mode!r})"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _print_digests(mode: str) -> None:
    """(Run in a fresh process.) Print the targets' digests under every setting, as JSON; mode "first N":
    only target N under the default setting, the process's first encoding."""
    if mode.startswith("first"):
        spec = TARGETS[int(mode.split()[1])]
        print(json.dumps({f"{spec} {PngConfig()}": _digest(encode_png(_image(*spec), PngConfig()))}))
        return
    digests = {}
    for setting in SETTINGS:
        for spec in TARGETS:
            if mode == "after":
                _encode_others(spec[3])
            digests[f"{spec} {setting}"] = _digest(encode_png(_image(*spec), setting))
    print(json.dumps(digests))


def test_an_image_encodes_to_the_same_bytes_whatever_was_encoded_before() -> None:
    alone = _fresh("alone")  # a fresh process encoding only the targets ...
    assert len(alone) == len(SETTINGS) * len(TARGETS)
    for number in range(len(TARGETS)):  # ... which give what each gives as a process's first image
        first = _fresh(f"first {number}")
        assert first.items() <= alone.items(), first
    assert alone == _fresh("after"), "after other images in a fresh process"
    here = {}
    for setting in SETTINGS:  # ... and this long-lived test process, after everything it did before
        for spec in reversed(TARGETS):
            _encode_others(spec[3] + 3)
            here[f"{spec} {setting}"] = _digest(encode_png(_image(*spec), setting))
    assert here == alone, sorted(k for k in alone if alone[k] != here.get(k))


def test_an_image_encodes_to_the_same_bytes_in_threads() -> None:
    """The compressor releases the GIL: images encoded at once in threads give their bytes alone."""
    from concurrent.futures import ThreadPoolExecutor

    images = [_image(*spec) for spec in TARGETS + OTHERS]
    alone = [_digest(encode_png(image)) for image in images]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(lambda image: _digest(encode_png(image)), images)) == alone
