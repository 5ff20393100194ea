"""GPU check of the index: one prepared run on a GPU machine; figures as JSON on stdout.

    python benchmarks/gpu_check.py [--device auto|cuda|cpu] [--images N] [--vectors N] [--json PATH]

1. embed: BiomedCLIP's image tower (ViT-B/16 at 224 px, built from its open_clip
   config with random weights: nothing is downloaded; fp16 autocast on CUDA)
   embeds 512x512 8-bit images from an image cache laid out as ingest writes it,
   end to end through the index's own `embed_missing` (cache reads, preprocessing
   threads, forward pass, parts on disk). Target: at least 3,000 images/s.
2. search: FAISS exact top-k over 250,000 x 512 unit vectors through the index's
   own `search_side` (IndexFlatIP on every GPU, same-subject results dropped).
   Target: under 10 s. The top-1 of 1,000 sampled queries is checked against a
   brute-force search.

Without a GPU it falls back to the CPU at a small size (seconds here; the
targets are then not judged). On the GPU machine it needs this package on
PYTHONPATH, torch, timm, open_clip_torch and a FAISS with GPU support
(faiss-gpu-cu12, or conda's faiss-gpu); with a CPU-only FAISS the search runs on
the CPU at 50,000 vectors and an exact top-k in torch on the GPU gives the
250,000 figure instead. About 2 minutes on one H200.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_index import BIOMEDCLIP_VISION, radiographs, random_vectors

from medscout_data.cache import save_stack
from medscout_data.report import RunReport
from medscout_data.stages.embedders import (
    ModelSpec,
    ResolvedModel,
    VisionTowerEmbedder,
    build_vision_tower,
    preprocess_config,
)
from medscout_data.stages.embeddings import EmbeddingStore, catalogue_blocks, embed_missing
from medscout_data.stages.search import SearchConfig, faiss_gpus, search_side

EMBED_TARGET = 3000.0  # images/s
SEARCH_TARGET = 10.0  # seconds
GPU_SIZES = {"images": 30_720, "unique": 4096, "batch_size": 256, "vectors": 250_000, "forward_batches": 10}
CPU_SIZES = {"images": 16, "unique": 16, "batch_size": 8, "vectors": 5_000, "forward_batches": 1}
CPU_FAISS_ON_GPU_MACHINE = 50_000


def tower_config(path: str | None) -> dict[str, Any]:
    """The model_cfg of an open_clip config file, or BiomedCLIP's image tower."""
    if path is None:
        return BIOMEDCLIP_VISION
    return json.loads(Path(path).read_text(encoding="utf-8"))["model_cfg"]


def make_embedder(model_cfg: dict[str, Any], device: str) -> VisionTowerEmbedder:
    model = ResolvedModel(
        spec=ModelSpec("hf-hub", "random/image-tower"),
        model_cfg=model_cfg,
        preprocess_cfg=preprocess_config(model_cfg, {}),
    )
    return VisionTowerEmbedder(model, build_vision_tower(model_cfg), device)


def cache_rows(cache: Path, images: int, unique: int) -> list[dict[str, Any]]:
    """`unique` 512x512 images in one cache stack; `images` catalogue rows cycling over them."""
    save_stack(cache / "c00000.npy", radiographs(unique, 512))
    return [
        {"image_id": f"i{i:07d}", "row_key": "k", "path": f"files/i{i}.jpg", "cache_file": "c00000.npy",
         "cache_index": i % unique, "height": 512, "width": 512}
        for i in range(images)
    ]  # fmt: skip


def check_embedding(embedder: VisionTowerEmbedder, sizes: dict[str, int], workers: int) -> dict[str, Any]:
    """End-to-end images/s through embed_missing, and the forward pass alone."""
    sync = _sync(embedder.device)
    batch = sizes["batch_size"]
    with tempfile.TemporaryDirectory() as tmp:
        rows = cache_rows(Path(tmp) / "cache", sizes["images"], sizes["unique"])
        sample = radiographs(batch, 512, seed=1)
        prepared = np.stack([embedder.prepare(image) for image in sample])
        embedder.embed(prepared)  # warm-up: CUDA context, kernels
        sync()
        started = time.perf_counter()
        for _ in range(sizes["forward_batches"]):
            embedder.embed(prepared)
        sync()
        forward = sizes["forward_batches"] * batch / (time.perf_counter() - started)
        one = time.perf_counter()
        for image in sample[:16]:
            embedder.prepare(image)
        prepare_ms = (time.perf_counter() - one) / 16 * 1e3
        store = EmbeddingStore(Path(tmp) / "embeddings", embedder.model.identity())
        report = RunReport("gpu-check")
        started = time.perf_counter()
        blocks = catalogue_blocks(rows, batch)
        embed_missing(blocks, store, lambda: embedder, Path(tmp) / "cache", workers, report)
        seconds = time.perf_counter() - started
        embedded = report.counts["embedded"]
        finite = bool(np.isfinite(store.vectors([rows[0]["image_id"], rows[-1]["image_id"]])).all())
    rate = embedded / seconds
    return {
        "images": embedded,
        "seconds": round(seconds, 3),
        "images_per_s": round(rate, 1),
        "forward_only_images_per_s": round(forward, 1),
        "prepare_ms_per_image_one_thread": round(prepare_ms, 3),
        "batch_size": batch,
        "workers": workers,
        "vectors_finite": finite,
        "target_images_per_s": EMBED_TARGET,
        "met": rate >= EMBED_TARGET if embedder.device == "cuda" else None,
    }


def check_search(n: int, k: int, use_gpu: bool, judged: bool) -> dict[str, Any]:
    """FAISS exact top-k through search_side, its top-1 checked on 1,000 queries by brute force."""
    rng = np.random.default_rng(0)
    vectors = random_vectors(n, 512, "clustered", rng)
    groups = np.arange(n) // 5  # 5 images per subject
    started = time.perf_counter()
    labels, _, params = search_side(vectors, groups, k, SearchConfig("exact", use_gpu=use_gpu))
    seconds = time.perf_counter() - started
    queries = rng.choice(n, size=min(1000, n), replace=False)
    scores = vectors[queries] @ vectors.T
    scores[groups[queries][:, None] == groups[None, :]] = -np.inf
    agree = float(np.mean(np.argmax(scores, axis=1) == labels[queries, 0]))
    return {
        "vectors": n,
        "dim": 512,
        "k": k,
        "seconds": round(seconds, 3),
        "build_seconds": params["build_seconds"],
        "search_seconds": params["search_seconds"],
        "faiss_gpus_used": params.get("gpus", 0),
        "top1_agrees_with_brute_force": agree,
        "target_seconds": SEARCH_TARGET,
        "met": seconds < SEARCH_TARGET if judged else None,
    }


def torch_topk(n: int, k: int) -> dict[str, Any]:
    """Exact top-k by matrix product in torch on the GPU: what the hardware does without FAISS GPU."""
    import torch

    vectors = torch.from_numpy(random_vectors(n, 512, "clustered", np.random.default_rng(0))).cuda()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for start in range(0, n, 8192):
        torch.topk(vectors[start : start + 8192] @ vectors.T, k + 5, dim=1)
    torch.cuda.synchronize()
    return {"vectors": n, "k": k + 5, "seconds": round(time.perf_counter() - started, 3)}


def machine(device: str) -> dict[str, Any]:
    import faiss
    import torch

    return {
        "cpu_cores": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "faiss": faiss.__version__,
        "faiss_gpus": faiss_gpus(),
    }


def _sync(device: str):
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--images", type=int, help="images to embed (GPU 30,720; CPU 16)")
    parser.add_argument("--unique", type=int, help="distinct images in the cache (GPU 4,096)")
    parser.add_argument("--batch-size", type=int, help="GPU 256; CPU 8")
    parser.add_argument("--vectors", type=int, help="vectors to search (GPU 250,000; CPU 5,000)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="preparing threads")
    parser.add_argument("--tower-config", help="an open_clip config JSON (default: BiomedCLIP's image tower)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    sizes = dict(GPU_SIZES if device == "cuda" else CPU_SIZES)
    for name in ("images", "unique", "batch_size", "vectors"):
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    sizes["unique"] = min(sizes["unique"], sizes["images"])
    figures: dict[str, Any] = {"machine": machine(device), "sizes": sizes}
    embedder = make_embedder(tower_config(args.tower_config), device)
    figures["embed"] = check_embedding(embedder, sizes, args.workers)
    gpu_faiss = device == "cuda" and faiss_gpus() > 0
    searched = sizes["vectors"] if gpu_faiss or device == "cpu" else CPU_FAISS_ON_GPU_MACHINE
    figures["search"] = check_search(searched, args.k, gpu_faiss, judged=gpu_faiss)
    if device == "cuda" and not gpu_faiss:
        figures["search"]["note"] = "this FAISS has no GPU support: searched on the CPU at a smaller size"
        figures["torch_topk_gpu"] = torch_topk(sizes["vectors"], args.k)
    figures["load_average_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
