"""Image embedders for the X-ray reference index: a model spec, its weights, and a batch encoder.

A model spec is parsed once into a `ModelSpec` (pure, like open_clip's
`parse_model_name`):

    pixels                         built-in: normalised 32x32 thumbnails, no weights (offline demo)
    hf-hub:ORG/NAME                an open_clip model repo (BiomedCLIP: DEFAULT_MODEL)
    local-dir:PATH                 a folder with open_clip_config.json + open_clip weights
    ARCH/TAG                       an open_clip built-in architecture with a pretrained tag

Only the image tower is ever built: `open_clip_config.json` gives
`model_cfg.embed_dim`, `model_cfg.vision_cfg` and `preprocess_cfg`; open_clip's
vision tower builder makes the tower (timm towers with
`timm_model_pretrained=false`) and only the `visual.*` weights of the
checkpoint are loaded. The text tower, its tokenizer and `transformers` are
never touched. Weights already on disk (Hugging Face cache or a local folder)
are read with no network call; with HF_HUB_OFFLINE=1 and no weights,
`ModelUnavailable` says at once how to fetch them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medscout_data.errors import StageError
from medscout_data.imaging import resize
from medscout_data.shards import sha256_file

log = logging.getLogger(__name__)

DEFAULT_MODEL = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
PIXELS = "pixels"
PIXELS_SIZE = 32
CONFIG_NAME = "open_clip_config.json"
# open_clip's weight file names, preferred first.
WEIGHT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TORCH_HINT = "the open_clip embedders need torch, timm and open_clip: pip install torch timm open_clip_torch"


class ModelSpecError(StageError):
    """A model spec that cannot be parsed or names no usable model."""


class ModelUnavailable(StageError):
    """Model weights or config that are not on this machine; the message says how to get them."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. `schema` is pixels, hf-hub, local-dir or open_clip (built-in name)."""

    schema: str
    name: str = ""
    tag: str = ""

    @property
    def text(self) -> str:
        """The canonical spec string, recorded in every output the model makes."""
        if self.schema == PIXELS:
            return PIXELS
        if self.schema == "open_clip":
            return f"{self.name}/{self.tag}" if self.tag else self.name
        return f"{self.schema}:{self.name}"

    def resolved(self) -> ModelSpec:
        """The same spec with a local-dir path made absolute (the folder it names here)."""
        if self.schema != "local-dir":
            return self
        return ModelSpec("local-dir", str(Path(self.name).expanduser().resolve()))


def parse_model_spec(text: str) -> ModelSpec:
    """Parse `pixels`, `hf-hub:ORG/NAME`, `local-dir:PATH` or `ARCH[/TAG]` into a `ModelSpec`."""
    text = text.strip()
    if not text:
        raise ModelSpecError("empty model spec; use pixels, hf-hub:ORG/NAME, local-dir:PATH or ARCH/TAG")
    if text == PIXELS:
        return ModelSpec(PIXELS)
    for schema in ("hf-hub", "local-dir"):
        if text.startswith(schema + ":"):
            rest = text[len(schema) + 1 :]
            if not rest:
                raise ModelSpecError(f"model spec {text!r}: nothing after '{schema}:'")
            if schema == "hf-hub" and not _REPO_ID.match(rest):
                raise ModelSpecError(f"model spec {text!r}: expected hf-hub:ORG/NAME")
            return ModelSpec(schema, rest)
    name, _, tag = text.partition("/")
    if not name or "/" in tag or ":" in text:
        raise ModelSpecError(
            f"model spec {text!r} is not pixels, hf-hub:ORG/NAME, local-dir:PATH or an open_clip ARCH/TAG"
        )
    return ModelSpec("open_clip", name, tag)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a spec's config and weights are on this machine, and what identifies them.

    `weights` is a digest of the weight file (the Hugging Face blob's sha256, or
    the file's own sha256), so embeddings made with other weights under the same
    spec are never mixed with these.
    """

    spec: ModelSpec
    model_cfg: dict[str, Any] = field(default_factory=dict)
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)
    weights_path: Path | None = None
    weights: str = ""

    @property
    def dim(self) -> int:
        return PIXELS_SIZE * PIXELS_SIZE if self.spec.schema == PIXELS else int(self.model_cfg["embed_dim"])

    def identity(self) -> dict[str, Any]:
        """What an embedding made with this model depends on."""
        return {
            "model": self.spec.text,
            "weights": self.weights,
            "dim": self.dim,
            "preprocess": self.preprocess_cfg,
        }


def resolve_model(spec: ModelSpec) -> ResolvedModel:
    """Find the spec's config and weights on disk (downloading them only when the Hub is allowed)."""
    if spec.schema == PIXELS:
        return ResolvedModel(
            spec, preprocess_cfg={"size": PIXELS_SIZE}, weights=f"builtin:pixels-{PIXELS_SIZE}"
        )
    if spec.schema == "local-dir":
        return _resolve_local_dir(spec)
    if spec.schema == "hf-hub":
        config_path = _hub_file(spec, spec.name, (CONFIG_NAME,))
        config = _read_config(config_path)
        weights = _hub_file(spec, spec.name, WEIGHT_NAMES)
        return _resolved(spec, config["model_cfg"], config.get("preprocess_cfg", {}), weights)
    return _resolve_builtin(spec)


def _resolve_local_dir(spec: ModelSpec) -> ResolvedModel:
    folder = Path(spec.name).expanduser()
    if not (folder / CONFIG_NAME).is_file():
        raise ModelUnavailable(
            f"{spec.text}: {folder / CONFIG_NAME} not found; the folder needs {CONFIG_NAME}"
        )
    config = _read_config(folder / CONFIG_NAME)
    weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise ModelUnavailable(
            f"{spec.text}: no weights in {folder} (expected one of {', '.join(WEIGHT_NAMES)})"
        )
    return _resolved(spec, config["model_cfg"], config.get("preprocess_cfg", {}), weights)


def _resolve_builtin(spec: ModelSpec) -> ResolvedModel:
    open_clip = _import_open_clip()
    model_cfg = open_clip.get_model_config(spec.name)
    if model_cfg is None:
        raise ModelSpecError(f"model spec {spec.text!r}: {spec.name!r} is not an open_clip architecture")
    tags = open_clip.list_pretrained_tags_by_model(spec.name)
    pretrained = open_clip.get_pretrained_cfg(spec.name, spec.tag) if spec.tag else {}
    if not pretrained.get("hf_hub"):
        raise ModelSpecError(
            f"model spec {spec.text!r} names no pretrained weights; use {spec.name}/TAG with TAG one of: "
            f"{', '.join(tags) or 'none known'}"
        )
    # open_clip's convention: "org/name/" (default file names) or "org/name/file".
    repo_id, filename = os.path.split(pretrained["hf_hub"])
    weights = _hub_file(spec, repo_id, (filename,) if filename else WEIGHT_NAMES)
    if pretrained.get("quick_gelu"):
        model_cfg = {**model_cfg, "quick_gelu": True}
    return _resolved(spec, model_cfg, pretrained, weights)


def _resolved(spec: ModelSpec, model_cfg: dict, preprocess: dict, weights: Path) -> ResolvedModel:
    if "embed_dim" not in model_cfg or "vision_cfg" not in model_cfg:
        raise ModelUnavailable(f"{spec.text}: the model config has no embed_dim / vision_cfg")
    return ResolvedModel(
        spec=spec,
        model_cfg=model_cfg,
        preprocess_cfg=preprocess_config(model_cfg, preprocess),
        weights_path=weights,
        weights=_weights_digest(weights),
    )


def preprocess_config(model_cfg: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """open_clip's inference preprocessing for this model: its defaults, the model's overrides, its size."""
    size = model_cfg["vision_cfg"].get("image_size", 224)
    cfg: dict[str, Any] = {
        "size": list(size) if isinstance(size, list | tuple) else int(size),
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    }
    for key in ("mean", "std", "interpolation", "resize_mode", "fill_color"):
        if overlay.get(key) is not None:
            value = overlay[key]
            cfg[key] = list(value) if isinstance(value, list | tuple) else value
    return cfg


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"{path}: not a readable open_clip config: {exc}") from exc
    if "model_cfg" not in config:
        raise ModelUnavailable(f"{path}: no 'model_cfg' key; not an open_clip config")
    return config


def _weights_digest(path: Path) -> str:
    """The Hugging Face blob name (its sha256) where the cache gives one, else the file's sha256."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{40,64}", real.name):
        return f"sha256:{real.name}" if len(real.name) == 64 else f"git:{real.name}"
    return f"sha256:{sha256_file(real)}"


def _hub_file(spec: ModelSpec, repo_id: str, names: tuple[str, ...]) -> Path:
    """The first of `names` in the local Hugging Face cache; downloaded only when the Hub is allowed."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str):
            return Path(found)
    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailable(_fetch_hint(spec, repo_id, names, constants.HF_HUB_CACHE))
    log.info("downloading %s from %s (once; later runs read the Hugging Face cache)", names, repo_id)
    errors = []
    for name in names:
        try:
            return Path(hf_hub_download(repo_id, name))
        except Exception as exc:  # a missing optional file name: try the next one
            errors.append(f"{name}: {type(exc).__name__}")
    raise ModelUnavailable(
        f"{spec.text}: could not fetch {' or '.join(names)} from {repo_id} ({'; '.join(errors)})"
    )


def _fetch_hint(spec: ModelSpec, repo_id: str, names: tuple[str, ...], cache: str) -> str:
    return (
        f"model {spec.text}: {' / '.join(names)} not in the Hugging Face cache ({cache}), and "
        f"HF_HUB_OFFLINE=1 forbids downloading. Fetch the model once on a machine with network:\n"
        f"    hf download {repo_id}\n"
        f"(or run this once without HF_HUB_OFFLINE; HF_HUB_CACHE or HF_HOME choose the cache), or put "
        f"{CONFIG_NAME} and the open_clip weights in a folder and use --model local-dir:FOLDER"
    )


class Embedder(Protocol):
    """Turns 8-bit grayscale images into L2-normalised float32 vectors."""

    model: ResolvedModel

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """One (H, W) uint8 image to the model's input array; thread-safe."""
        ...

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """A stack of prepared inputs to an (n, dim) float32 array of unit rows."""
        ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class PixelEmbedder:
    """Zero-mean 32x32 thumbnails: cosine similarity is the thumbnails' correlation. No weights."""

    model: ResolvedModel

    def prepare(self, image: np.ndarray) -> np.ndarray:
        thumb = resize(image, PIXELS_SIZE, PIXELS_SIZE).astype(np.float32).ravel()
        return thumb - thumb.mean()

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return l2_normalise(batch)


class VisionTowerEmbedder:
    """An open_clip image tower with the model's own preprocessing; fp16 autocast on CUDA.

    `prepare` runs the transform's geometric steps (resize, crop or pad) on the
    8-bit gray image in a worker thread and returns uint8; `model_input` then does
    the transform's RGB replication, ToTensor and Normalize on the batch, on the
    device, with the same float32 operations, so the tower sees exactly what
    open_clip's transform makes while the CPU does a tenth of the work.
    """

    def __init__(self, model: ResolvedModel, tower: Any, device: str) -> None:
        import torch
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.model = model
        self.device = device
        self.tower = tower.to(device).eval()
        cfg = dict(model.preprocess_cfg)
        cfg["size"] = tuple(cfg["size"]) if isinstance(cfg["size"], list) else cfg["size"]
        cfg["mean"], cfg["std"] = tuple(cfg["mean"]), tuple(cfg["std"])
        self.transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
        self.geometry, mean, std = split_transform(self.transform)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        from PIL import Image

        picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
        for step in self.geometry:
            picture = step(picture)
        return np.array(picture, dtype=np.uint8)

    def model_input(self, batch: np.ndarray) -> Any:
        """(n, H, W) uint8 -> (n, 3, H, W) float32 on the device: gray to RGB, /255, normalised."""
        import torch

        pixels = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).unsqueeze(1)
        scaled = pixels.to(torch.float32).div(255)
        return scaled.expand(-1, self.mean.shape[1], -1, -1).sub(self.mean).div(self.std)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=self.device == "cuda"):
            features = self.tower(self.model_input(batch))
        return l2_normalise(features.float().cpu().numpy())


_TO_RGB = {"MaybeConvertMode", "_convert_to_rgb"}
_TO_TENSOR = {"MaybeToTensor", "ToTensor"}


def split_transform(transform: Any) -> tuple[list[Any], tuple[float, ...], tuple[float, ...]]:
    """open_clip's inference transform as (geometric steps, mean, std).

    Its steps are geometric PIL operations, then RGB conversion, ToTensor and
    Normalize; any other shape is refused rather than guessed at.
    """
    steps = list(getattr(transform, "transforms", [transform]))
    names = [getattr(step, "__name__", type(step).__name__) for step in steps]
    cut = next((i for i, name in enumerate(names) if name in _TO_RGB | _TO_TENSOR), len(steps))
    tail = names[cut:]
    if not tail or tail[-1] != "Normalize" or not set(tail[:-1]) <= _TO_RGB | _TO_TENSOR:
        raise ModelUnavailable(
            f"open_clip's preprocessing {names} is not geometry + RGB + ToTensor + Normalize; "
            "this version of open_clip is not supported (pip install 'open_clip_torch>=2.24,<4')"
        )
    normalize = steps[-1]
    return steps[:cut], tuple(map(float, normalize.mean)), tuple(map(float, normalize.std))


def build_vision_tower(model_cfg: dict[str, Any]) -> Any:
    """open_clip's image tower for `model_cfg`, randomly initialised; never the text tower."""
    _import_open_clip()
    try:
        from open_clip.model import _build_vision_tower
    except ImportError as exc:
        raise ModelUnavailable(f"this open_clip has no vision tower builder ({exc}); {TORCH_HINT}") from exc
    vision_cfg = dict(model_cfg["vision_cfg"])
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False  # our checkpoint has the weights; never fetch timm's
    try:
        return _build_vision_tower(
            int(model_cfg["embed_dim"]), vision_cfg, quick_gelu=bool(model_cfg.get("quick_gelu", False))
        )
    except TypeError as exc:
        raise ModelUnavailable(f"vision_cfg {vision_cfg} is not understood by this open_clip: {exc}") from exc


def load_visual_weights(tower: Any, path: Path) -> None:
    """Load only the checkpoint's `visual.*` tensors into `tower`; any mismatch is an error."""
    from open_clip.factory import load_state_dict

    state = load_state_dict(str(path), device="cpu", weights_only=True)
    visual = {key[len("visual.") :]: value for key, value in state.items() if key.startswith("visual.")}
    if not visual:
        raise ModelUnavailable(f"{path}: no visual.* weights; not an open_clip CLIP checkpoint")
    missing, unexpected = tower.load_state_dict(visual, strict=False)
    if missing or unexpected:
        raise ModelUnavailable(
            f"{path}: weights do not fit the config's vision tower "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )


def resolve_device(device: str) -> str:
    """`auto` is cuda when torch sees a GPU, else cpu; `cuda` without a GPU is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise StageError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise StageError("--device cuda asked for, but torch sees no CUDA GPU (torch.cuda.is_available())")
    return "cpu"


def load_embedder(model: ResolvedModel, device: str = "auto") -> Embedder:
    """The embedder for a resolved model; open_clip models get their image tower and weights."""
    if model.spec.schema == PIXELS:
        return PixelEmbedder(model)
    if model.weights_path is None:
        raise ModelUnavailable(f"{model.spec.text}: no weight file resolved")
    tower = build_vision_tower(model.model_cfg)
    load_visual_weights(tower, model.weights_path)
    log.info("loaded the image tower of %s from %s", model.spec.text, model.weights_path)
    return VisionTowerEmbedder(model, tower, resolve_device(device))


def _import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as exc:
        raise ModelUnavailable(TORCH_HINT) from exc
    return open_clip
