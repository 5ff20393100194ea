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
import pytest

from medscout_data.imaging import encode_png, encoder_fingerprint
from medscout_data.layout import Layout
from medscout_data.recipe import PngConfig, RecipeError, load_recipe
from medscout_data.stages.build import BuildOptions, build_modality, making

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


# the images checked, and others of different sizes and content encoded before them; the compressor
# grows its output buffer in steps (16 KiB, then doubling) and can hold a block header in a temporary
# buffer near a step: some targets end just past a step, one runs past 128 KiB (four steps)
TARGETS = [("slice", 224, 224, 1), ("slice", 512, 480, 2), ("edges", 64, 65, 3), ("noise", 96, 33, 4)]
TARGETS += [
    ("noise", 128, 130, 21),
    ("noise", 181, 181, 22),
    ("slice", 300, 260, 25),
    ("slice", 640, 600, 26),
]
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


def test_targets_straddle_the_compressors_output_steps() -> None:
    """The buffer steps are exercised: streams just past 16 and 32 KiB, and one past 128 KiB."""
    from isal import isal_zlib

    from medscout_data.imaging import filtered_scanlines

    sizes = [len(isal_zlib.compress(filtered_scanlines(_image(*spec)), 1)) for spec in TARGETS]
    assert any(16 * 1024 < size < 17 * 1024 for size in sizes)
    assert any(32 * 1024 < size < 33 * 1024 for size in sizes)
    assert max(sizes) > 128 * 1024


def test_the_encoder_fingerprint_is_a_function_of_the_encoders_bytes() -> None:
    """Each level's fingerprint differs (they write different bytes) and is the same in a fresh process."""
    prints = {level: encoder_fingerprint(PngConfig(level, "sub")) for level in (0, 1, 2)}
    assert len(set(prints.values())) == 3
    code = (
        "from medscout_data.imaging import encoder_fingerprint; from medscout_data.recipe import PngConfig; "
        "print(encoder_fingerprint(PngConfig(1, 'sub')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.stdout.strip() == prints[1], done.stderr


def test_a_pool_written_by_an_encoder_with_other_bytes_is_remade_not_reused(
    tmp_path: Path, test_recipe: Path, sample_sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun (or a rank's merge) on a machine whose PNG encoder writes other bytes for the same
    pixels must not take the shards on disk as its own: the pool would mix two encoders' bytes."""
    recipe, root = load_recipe(test_recipe), tmp_path / "pool"
    options = BuildOptions(modality="ct", root=sample_sources["totalseg-ct"], progress=False)
    first = build_modality(Layout.at(root), recipe, options)
    shards = first.counts["shards_written"]
    assert shards > 0
    again = build_modality(Layout.at(root), recipe, options)
    assert again.counts["shards_reused"] == shards  # same encoder: everything is reused
    monkeypatch.setattr(making, "encoder_fingerprint", lambda config: "another-cpu-path")
    other = build_modality(Layout.at(root), recipe, options)
    assert other.counts.get("shards_reused", 0) == 0 and other.counts["shards_written"] == shards


def test_a_recipe_asking_for_the_cpu_dependent_level_is_refused(tmp_path: Path, test_recipe: Path) -> None:
    """ISA-L level 3 writes other bytes on AVX2 and on AVX-512 CPUs: a cluster's ranks would disagree."""
    path = tmp_path / "level3.toml"
    path.write_text(test_recipe.read_text(encoding="utf-8") + "\n[png]\ncompression = 3\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"png\.compression must be in \[0, 2\], got 3") as caught:
        load_recipe(path)
    assert str(path) in str(caught.value)


def test_a_rank_whose_encoder_writes_other_bytes_is_not_merged(
    tmp_path: Path, test_recipe: Path, sample_sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranks on two node kinds whose encoders disagree: the merge names the odd rank instead of mixing."""
    import shutil

    from medscout_data.ranks import Rank, RankError

    recipe, root = load_recipe(test_recipe), tmp_path / "ranked"

    def build(**kwargs) -> None:
        options = BuildOptions(modality="ct", root=sample_sources["totalseg-ct"], progress=False, **kwargs)
        build_modality(Layout.at(root), recipe, options)

    build()  # ingest (ranks need the catalogue first) ...
    shutil.rmtree(root / "pool")  # ... then a fresh ranked build
    build(rank=Rank(0, 2))
    with monkeypatch.context() as patch:
        patch.setattr(making, "encoder_fingerprint", lambda config: "another-cpu-path")
        build(rank=Rank(1, 2))
    with pytest.raises(RankError, match=r"rank\(s\) 1 of 2 have not finished \(or wrote .* PNG encoder\)"):
        build(merge=True)
