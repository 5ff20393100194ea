"""Benchmark: what the one-answer checks (issue 21) cost per item, on 512 px sample CT slices.

    python benchmarks/bench_one_answer.py [--items 200]

Times, in this process and one thread (OpenCV's too), the making of scale and jigsaw items with the
paper's recipe (crops 224 px) with the checks on (`scale.min_match_iou` 0.5,
`jigsaw.min_solution_margin` 0.05) and off, on the same images and seeds, and prints ms per item
and the ratio. Attempts the checks reject are counted, not timed twice.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import cv2
import numpy as np

from medscout_data.recipe import load_recipe
from medscout_data.sample import Torso, VolumeGeometry, ct_intensities, phantom_volume
from medscout_data.tasks.geometry import TaskRejected, non_identity_permutations
from medscout_data.tasks.items import jigsaw_item, scale_item


def slices(count: int) -> list[np.ndarray]:
    """`count` 512 px phantom CT slices (soft-tissue window) along one volume, as the sample makes them."""
    rng = np.random.default_rng(0)
    n = 40
    blobs = np.column_stack(
        [
            rng.uniform(-0.7, 0.7, n) * 150,
            rng.uniform(-0.7, 0.7, n) * 100,
            rng.uniform(0, 2.0 * count, n),
            rng.uniform(4, 10, n),
            rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.0, n),
        ]
    ).astype(np.float32)
    torso = Torso(160.0, 110.0, 1.0, 1.0, 1.0, 26.0, blobs)
    geometry = VolumeGeometry(shape=(count, 512, 512), spacing=(380 / 512, 380 / 512, 2.0))
    labels, offsets = phantom_volume(torso, geometry)
    hu = ct_intensities(labels, offsets, rng).astype(np.float32)
    window = np.clip((hu - (40 - 200)) / 400 * 255, 0, 255).astype(np.uint8)
    return [window[k] for k in range(count)]


def timed(make, images: list[np.ndarray]) -> tuple[float, int]:
    rejected = 0
    start = time.perf_counter()
    for index, image in enumerate(images):
        try:
            make(index, image)
        except TaskRejected:
            rejected += 1
    return (time.perf_counter() - start) / len(images) * 1000, rejected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    print(f"cores: {os.cpu_count()} (one used); items per case: {args.items}")
    on = load_recipe("med-scout-bench")
    off = replace(
        on,
        scale=replace(on.scale, min_match_iou=0.0),
        jigsaw=replace(on.jigsaw, min_solution_margin=-1.0),
    )
    images = slices(min(args.items, 64))
    images = [images[i % len(images)] for i in range(args.items)]
    masks = [image > 20 for image in images]
    permutations = non_identity_permutations(4)
    for task in ("scale", "jigsaw"):
        results = {}
        for name, recipe in (("off", off), ("on", on)):
            if task == "scale":

                def make(i, image, recipe=recipe):
                    rng = np.random.default_rng(i)
                    return scale_item(image, masks[i], rng, recipe, "ct", "box")
            else:

                def make(i, image, recipe=recipe):
                    return jigsaw_item(image, permutations[i % 23], recipe, "ct")

            results[name] = timed(make, images)
        (off_ms, off_rej), (on_ms, on_rej) = results["off"], results["on"]
        print(
            f"{task:7s} checks off {off_ms:6.2f} ms/item ({off_rej} rejected) | on {on_ms:6.2f} ms/item "
            f"({on_rej} rejected) | +{on_ms - off_ms:.2f} ms, ratio {on_ms / off_ms:.2f}x"
        )


if __name__ == "__main__":
    main()
