"""open_clip models for the index: only the image tower, read from disk, never the network.

The model is tests/assets/tiny-clip/open_clip_config.json: BiomedCLIP's layout
(a timm ViT image tower with timm_model_pretrained=false, a PubMedBERT text
config) at toy size. The tests give it random weights, save them as
open_clip_pytorch_model.bin, and load it through `local-dir:` and through a
Hugging Face cache folder laid out as the Hub client writes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_index import run_index, small_recipe, smooth_image, write_plan, write_xray_catalogue, xray_images

from medscout_data.layout import Layout
from medscout_data.stages.embedders import (
    DEFAULT_MODEL,
    ModelUnavailable,
    build_vision_tower,
    load_embedder,
    parse_model_spec,
    resolve_model,
)
from medscout_data.stages.index import IndexMismatch, load_neighbours, neighbours_metadata

ASSET = Path(__file__).parent / "assets" / "tiny-clip" / "open_clip_config.json"
REPO = "medscout-test/tiny-clip"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def random_checkpoint(config: dict, seed: int) -> dict:
    """A whole-CLIP-like state dict: the image tower's tensors, random, plus text-tower tensors."""
    tower = build_vision_tower(config["model_cfg"])
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in tower.state_dict().items():
        state[f"visual.{name}"] = torch.randn(value.shape, generator=generator) * 0.05
    state["text.transformer.embeddings.word_embeddings.weight"] = torch.zeros(8, 4)
    state["logit_scale"] = torch.tensor(4.6)
    return state


def write_model_dir(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ASSET, folder / "open_clip_config.json")
    config = json.loads(ASSET.read_text())
    torch.save(random_checkpoint(config, seed), folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("tiny-clip"), seed=0)


def write_hub_cache(hub: Path, model_dir: Path) -> Path:
    """The Hub client's cache layout: refs/main -> revision, snapshot files linked to sha256 blobs."""
    repo = hub / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name in ("open_clip_config.json", "open_clip_pytorch_model.bin"):
        data = (model_dir / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return hub


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trip wires: any socket connection, and any path that builds a text tower or a tokenizer."""

    def refuse(*args, **kwargs):
        raise AssertionError("touched the network or the text tower")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for module, name in [
        (open_clip.model, "_build_text_tower"),
        (open_clip.factory, "create_model"),
        (open_clip, "create_model"),
        (open_clip, "get_tokenizer"),
        (open_clip.factory, "get_tokenizer"),
    ]:
        monkeypatch.setattr(module, name, refuse)


def open_clip_inputs(images: list[np.ndarray]) -> torch.Tensor:
    """open_clip's own inference transform of the config, on each gray image as a PIL image."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    config = json.loads(ASSET.read_text())
    size = config["model_cfg"]["vision_cfg"]["image_size"]
    preprocess = {k: tuple(v) for k, v in config["preprocess_cfg"].items()}
    transform = image_transform_v2(PreprocessCfg(size=size, **preprocess), is_train=False)
    return torch.stack([transform(Image.fromarray(image)) for image in images])


def reference_embedding(model_dir: Path, inputs: torch.Tensor) -> np.ndarray:
    """The checkpoint's image tower, loaded here by hand, on open_clip's transformed inputs."""
    config = json.loads(ASSET.read_text())["model_cfg"]
    tower = open_clip.model._build_vision_tower(config["embed_dim"], config["vision_cfg"]).eval()
    state = torch.load(model_dir / "open_clip_pytorch_model.bin", weights_only=True)
    tower.load_state_dict({k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")})
    with torch.inference_mode():
        out = tower(inputs).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def images(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [smooth_image(rng, 70 + 10 * i, 60) for i in range(n)]


def test_local_dir_loads_only_the_image_tower_with_its_weights(model_dir: Path, guarded) -> None:
    model = resolve_model(parse_model_spec(f"local-dir:{model_dir}"))
    assert model.dim == 32 and model.weights.startswith("sha256:")
    embedder = load_embedder(model, device="cpu")
    vectors = embedder.embed(np.stack([embedder.prepare(image) for image in images()]))
    assert vectors.shape == (4, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    inputs = open_clip_inputs(images())
    np.testing.assert_allclose(vectors, reference_embedding(model_dir, inputs), atol=1e-5)
    with torch.inference_mode():
        untrained = build_vision_tower(json.loads(ASSET.read_text())["model_cfg"]).eval()
        random_out = untrained(inputs).numpy()
    assert not np.allclose(vectors, random_out / np.linalg.norm(random_out, axis=1, keepdims=True), atol=1e-3)


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_model_input_is_bit_identical_to_open_clips_own_transform(model_dir: Path, resize_mode: str) -> None:
    """prepare (geometry on the gray image, in threads) + model_input (RGB, /255, normalise, on the
    device) must give exactly the tensor open_clip's transform gives, whatever the image's shape."""
    model = resolve_model(parse_model_spec(f"local-dir:{model_dir}"))
    model = dataclasses.replace(model, preprocess_cfg={**model.preprocess_cfg, "resize_mode": resize_mode})
    embedder = load_embedder(model, device="cpu")
    rng = np.random.default_rng(6)
    for shape in [(70, 60), (512, 420), (33, 97), (64, 64)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        prepared = embedder.prepare(image)
        assert prepared.dtype == np.uint8 and prepared.shape == (64, 64)
        expected = embedder.transform(Image.fromarray(image)).unsqueeze(0)
        got = embedder.model_input(prepared[None])
        assert got.shape == (1, 3, 64, 64)
        assert torch.equal(got, expected), (resize_mode, shape)


def test_preprocessing_is_the_models_own_with_gray_replicated(model_dir: Path) -> None:
    embedder = load_embedder(resolve_model(parse_model_spec(f"local-dir:{model_dir}")), device="cpu")
    inputs = embedder.model_input(np.stack([embedder.prepare(image) for image in images(2)])).numpy()
    np.testing.assert_array_equal(inputs, open_clip_inputs(images(2)).numpy())
    config = json.loads(ASSET.read_text())["preprocess_cfg"]
    mean, std = np.array(config["mean"])[:, None, None], np.array(config["std"])[:, None, None]
    pixels = inputs[0] * std + mean
    np.testing.assert_allclose(pixels[0], pixels[1], atol=1e-5)
    np.testing.assert_allclose(pixels[0], pixels[2], atol=1e-5)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1.0 + 1e-5


def test_hugging_face_cache_is_read_with_no_network(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guarded
) -> None:
    hub = write_hub_cache(tmp_path / "hub", model_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    model = resolve_model(parse_model_spec(f"hf-hub:{REPO}"))
    assert str(model.weights_path).startswith(str(hub / f"models--{REPO.replace('/', '--')}" / "snapshots"))
    blob = hashlib.sha256((model_dir / "open_clip_pytorch_model.bin").read_bytes()).hexdigest()
    assert model.weights == f"sha256:{blob}"
    local = resolve_model(parse_model_spec(f"local-dir:{model_dir}"))
    assert model.weights == local.weights  # same bytes, same identity
    inputs = np.stack([load_embedder(local, "cpu").prepare(image) for image in images()])
    np.testing.assert_allclose(
        load_embedder(model, "cpu").embed(inputs), load_embedder(local, "cpu").embed(inputs), atol=1e-6
    )


def test_hf_hub_cache_env_var_chooses_the_cache(model_dir: Path, tmp_path: Path) -> None:
    hub = write_hub_cache(tmp_path / "hub", model_dir)
    code = (
        "from medscout_data.stages.embedders import parse_model_spec, resolve_model;"
        f"print(resolve_model(parse_model_spec('hf-hub:{REPO}')).weights_path)"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(hub))


def test_offline_without_weights_fails_at_once_saying_how_to_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guarded
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ModelUnavailable) as caught:
        resolve_model(parse_model_spec(DEFAULT_MODEL))
    message = str(caught.value)
    assert "hf download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" in message
    assert "local-dir:" in message and "HF_HUB_OFFLINE" in message

    layout = Layout.at(tmp_path / "shards")
    recipe = small_recipe()
    write_xray_catalogue(layout, xray_images())
    write_plan(layout, recipe)
    with pytest.raises(ModelUnavailable):
        run_index(layout, recipe, model=DEFAULT_MODEL)
    assert not layout.index_dir("xray", DEFAULT_MODEL).exists()


def test_local_dir_missing_weights_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    shutil.copy(ASSET, tmp_path / "m" / "open_clip_config.json")
    with pytest.raises(ModelUnavailable, match="no weights"):
        resolve_model(parse_model_spec(f"local-dir:{tmp_path / 'm'}"))


def test_two_models_never_mix(model_dir: Path, tmp_path: Path, guarded) -> None:
    layout = Layout.at(tmp_path / "shards")
    recipe = small_recipe()
    catalogue = xray_images()
    write_xray_catalogue(layout, catalogue)
    write_plan(layout, recipe)
    pixels = run_index(layout, recipe)
    clip_spec = f"local-dir:{model_dir}"
    clip = run_index(layout, recipe, model=clip_spec)
    assert clip.parent != pixels.parent
    meta = neighbours_metadata(clip)
    assert meta["model"] == clip_spec and meta["embedding_dim"] == "32"
    assert load_neighbours(clip, model=clip_spec)["s1-0"][0][0] == "s2-dup"  # identical pixels
    with pytest.raises(IndexMismatch):
        load_neighbours(clip, model="pixels")
    with pytest.raises(IndexMismatch):
        load_neighbours(pixels, model=clip_spec)
    assert run_index(layout, recipe) == pixels and neighbours_metadata(pixels)["model"] == "pixels"
    rows = pq.read_table(clip).to_pylist()
    assert all(r["neighbour_subject_id"] != r["subject_id"] for r in rows)


def test_new_weights_under_the_same_spec_are_embedded_afresh(tmp_path: Path, guarded) -> None:
    folder = write_model_dir(tmp_path / "model", seed=1)
    layout = Layout.at(tmp_path / "shards")
    recipe = small_recipe()
    catalogue = xray_images()
    write_xray_catalogue(layout, catalogue)
    write_plan(layout, recipe)
    spec = f"local-dir:{folder}"
    first = run_index(layout, recipe, model=spec)
    weights = neighbours_metadata(first)["weights"]
    write_model_dir(folder, seed=2)
    second = run_index(layout, recipe, model=spec)
    assert second == first and neighbours_metadata(second)["weights"] != weights
    report = json.loads((second.parent / "report.json").read_text())
    assert report["counts"]["embedded"] == len(catalogue)
