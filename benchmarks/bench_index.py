"""Benchmark: X-ray index speed, embedding (images/s) and FAISS search (exact vs approximate).

    python benchmarks/bench_index.py [--device cpu|cuda] [--sizes 10000 100000] [--kinds exact ivf hnsw]
        [--table docs/generated/index-10k.md]

Embedding: the weight-free `pixels` embedder, and a ViT-B/16 image tower the
size of BiomedCLIP's (its open_clip config, random weights: no download), on
512x512 8-bit images, batch 32, a few batches after one warm-up batch;
preprocessing (open_clip's transform) and the forward pass are timed apart.
Also the whole `embed_missing` pipeline (cache reads, thread pool, parts on
disk) with pixels. Search: `search_side` (the index's own path: build, search
every row, drop same-subject results) on random unit 512-d vectors, 5 per
subject, clustered like image embeddings (--data uniform: ANN's worst case);
approximate kinds report recall@1 against exact. --device cuda takes
the same figures on a GPU (fp16 autocast; FAISS on GPU when it has GPUs).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import Figures, add_output_args, cores

from medscout_data.report import RunReport
from medscout_data.stages.embedders import (
    ModelSpec,
    PixelEmbedder,
    ResolvedModel,
    VisionTowerEmbedder,
    build_vision_tower,
    preprocess_config,
    resolve_model,
)
from medscout_data.stages.embeddings import EmbeddingStore, catalogue_blocks, embed_missing
from medscout_data.stages.search import SearchConfig, search_side

# BiomedCLIP's open_clip image-tower config (open_clip_config.json's model_cfg, text tower left out).
BIOMEDCLIP_VISION = {
    "embed_dim": 512,
    "vision_cfg": {
        "timm_model_name": "vit_base_patch16_224",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": 224,
    },
}


def radiographs(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n smooth random 8-bit images (content does not change the speed)."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 16, 16)).astype(np.float32)
    return np.stack([(cv2.resize(c, (size, size)) * 255).astype(np.uint8) for c in coarse])


def time_embedder(embedder, images: np.ndarray, batch: int, batches: int, sync) -> dict[str, float]:
    """images/s of prepare and of embed, after one warm-up batch."""
    embedder.embed(np.stack([embedder.prepare(i) for i in images[:batch]]))
    sync()
    prep = fwd = 0.0
    for b in range(batches):
        chunk = images[(b % (len(images) // batch)) * batch :][:batch]
        t0 = time.perf_counter()
        inputs = np.stack([embedder.prepare(i) for i in chunk])
        t1 = time.perf_counter()
        embedder.embed(inputs)
        sync()
        prep, fwd = prep + t1 - t0, fwd + time.perf_counter() - t1
    n = batch * batches
    return {"prepare": n / prep, "embed": n / fwd, "total": n / (prep + fwd)}


def bench_embedding(device: str, batch: int, batches: int, figures: Figures) -> None:
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    images = radiographs(batch * 2, 512)
    pixels = PixelEmbedder(resolve_model(ModelSpec("pixels")))
    model = ResolvedModel(
        spec=ModelSpec("hf-hub", "random/biomedclip-image-tower"),
        model_cfg=BIOMEDCLIP_VISION,
        preprocess_cfg=preprocess_config(BIOMEDCLIP_VISION, {}),
    )
    vit = VisionTowerEmbedder(model, build_vision_tower(BIOMEDCLIP_VISION), device)
    for name, embedder, n_batches in (
        ("pixels", pixels, batches * 8),
        ("ViT-B/16 (BiomedCLIP size)", vit, batches),
    ):
        rates = time_embedder(embedder, images, batch, n_batches, sync)
        print(
            f"embed {name:28s} {device}: {rates['total']:8.1f} images/s "
            f"(prepare {rates['prepare']:.1f}/s, forward {rates['embed']:.1f}/s; batch {batch})"
        )
        figures.row(
            f"embed, {name}, {device}",
            f"{rates['total']:,.1f} images/s",
            f"prepare {rates['prepare']:,.1f}/s, forward {rates['embed']:,.1f}/s; batch {batch}",
        )


def bench_pipeline(n: int, workers: int, figures: Figures) -> None:
    """embed_missing with pixels: cache reads + thread pool + parts on disk."""
    from medscout_data.cache import save_stack

    images = radiographs(n, 512)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        save_stack(cache / "c.npy", images)
        rows = [
            {"image_id": f"i{i:06d}", "row_key": "k", "path": f"i{i}.jpg", "cache_file": "c.npy",
             "cache_index": i, "height": 512, "width": 512}
            for i in range(n)
        ]  # fmt: skip
        model = resolve_model(ModelSpec("pixels"))
        store = EmbeddingStore(Path(tmp) / "emb", model.identity())
        t0 = time.perf_counter()
        blocks = catalogue_blocks(rows, 64)
        embed_missing(blocks, store, lambda: PixelEmbedder(model), cache, workers, RunReport("bench"))
        seconds = time.perf_counter() - t0
    print(f"pipeline pixels, {n} images 512x512, {workers} threads: {n / seconds:8.1f} images/s")
    figures.row(
        "`embed_missing` with pixels (cache reads, threads, parts on disk)",
        f"{n / seconds:,.1f} images/s",
        f"{n:,} images 512x512, {workers} threads",
    )


def random_vectors(n: int, dim: int, data: str, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors: `uniform` on the sphere (ANN's worst case), or `clustered` like image
    embeddings (n/20 random centres, each point at cosine ~0.7 to its centre)."""
    if data == "uniform":
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
    else:
        centres = rng.standard_normal((max(1, n // 20), dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        noise = rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
        vectors = centres[rng.integers(0, len(centres), n)] + noise
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def bench_search(
    sizes: list[int], dim: int, kinds: list[str], k: int, use_gpu: bool, data: str, figures: Figures
) -> None:
    rng = np.random.default_rng(0)
    for n in sizes:
        vectors = random_vectors(n, dim, data, rng)
        groups = np.arange(n) // 5  # 5 images per subject
        exact = None
        for kind in kinds:
            t0 = time.perf_counter()
            labels, _, params = search_side(vectors, groups, k, SearchConfig(kind, use_gpu=use_gpu))
            seconds = time.perf_counter() - t0
            if kind == "exact":
                exact = labels
            recall = (
                "" if exact is None else f", recall@1 vs exact {np.mean(labels[:, 0] == exact[:, 0]):.3f}"
            )
            extra = {key: params[key] for key in ("nlist", "nprobe", "m", "gpus") if key in params}
            print(
                f"search {kind:5s} {data} n={n:>7,d} d={dim} k={k}: {seconds:7.2f} s total "
                f"(build {params['build_seconds']:.2f} s, search {params['search_seconds']:.2f} s, "
                f"{n / params['search_seconds']:,.0f} queries/s){recall} {extra or ''}"
            )
            settings = ", ".join(f"{key} {value}" for key, value in extra.items())
            figures.row(
                f"search {kind}, {data}, {n:,} x {dim}-d, k={k}",
                f"{seconds:.2f} s",
                f"build {params['build_seconds']:.2f} s, search {params['search_seconds']:.2f} s"
                f" ({n / params['search_seconds']:,.0f} queries/s){recall}"
                + (f"; {settings}" if settings else ""),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--kinds", nargs="+", default=["exact", "ivf", "hnsw"])
    parser.add_argument("--data", choices=["clustered", "uniform"], default="clustered")
    parser.add_argument("--pipeline-images", type=int, default=2048)
    parser.add_argument("--skip-embedding", action="store_true")
    add_output_args(parser)
    args = parser.parse_args()
    figures = Figures(["measure", "figure", "detail"], align="lrl")
    import faiss
    import torch

    print(
        f"bench_index: {cores()} CPU cores, device {args.device}"
        f"{' (' + torch.cuda.get_device_name() + ')' if args.device == 'cuda' else ''}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), faiss {faiss.__version__} "
        f"({faiss.get_num_gpus()} GPUs), load average {os.getloadavg()[0]:.1f}"
    )
    if not args.skip_embedding:
        bench_embedding(args.device, args.batch_size, args.batches, figures)
        bench_pipeline(args.pipeline_images, os.cpu_count() or 1, figures)
    bench_search(args.sizes, args.dim, args.kinds, args.k, args.device == "cuda", args.data, figures)
    figures.note(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), faiss {faiss.__version__}"
        f" ({faiss.get_num_gpus()} GPUs). The ViT has random weights (no download); search vectors are"
        " random unit vectors, 5 a subject, same-subject results dropped; recall@1 against exact."
    )
    figures.write(args.table)
    print(f"load average at the end {os.getloadavg()[0]:.1f} (above the core count, figures are shared)")


if __name__ == "__main__":
    main()
