"""Preprocessing: `faceseg prepare` (Ray Data) against a single-process and a multiprocessing.Pool OpenCV loop."""
from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import cv2
import numpy as np

from suite import SIZES


def _load_pair(paths, size=256):
    image_path, label_path = paths
    image = cv2.cvtColor(cv2.imread(image_path), cv2.COLOR_BGR2RGB)
    label = cv2.imread(label_path, cv2.IMREAD_GRAYSCALE)
    return (cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA),
            cv2.resize(label, (size, size), interpolation=cv2.INTER_NEAREST))


def _pairs(folder: Path):
    return [(str(p), str(p).replace("_image.jpg", "_label.png")) for p in sorted(folder.rglob("*_image.jpg"))]


def single_loop(folder: Path) -> float:
    start = time.perf_counter()
    loaded = [_load_pair(p) for p in _pairs(folder)]
    images, masks = np.stack([a for a, _ in loaded]), np.stack([b for _, b in loaded])
    assert images.shape[0] == masks.shape[0]
    return len(loaded) / (time.perf_counter() - start)


def pool_loop(folder: Path) -> float:
    start = time.perf_counter()
    pairs = _pairs(folder)
    with multiprocessing.Pool(os.cpu_count()) as pool:
        loaded = pool.map(_load_pair, pairs, chunksize=16)
    images, masks = np.stack([a for a, _ in loaded]), np.stack([b for _, b in loaded])
    assert images.shape[0] == masks.shape[0]
    return len(loaded) / (time.perf_counter() - start)


def run(work: Path, quick: bool) -> dict:
    from faceseg.data.layouts import discover
    from faceseg.data.prepare import prepare_cache
    from faceseg.data.synth import write_synthetic_dataset

    n = SIZES["prepare_images"][not quick]
    data = work / f"synth{n}"
    if not data.exists():
        write_synthetic_dataset(data, train=n, test=0, size=SIZES["prepare_source_px"][not quick], seed=1)
    runs = SIZES["prepare_runs"][not quick]
    # timeit's rule, for faceseg and both baselines alike: the fastest run is the least disturbed one.
    single = max(single_loop(data) for _ in range(runs))
    pool = max(pool_loop(data) for _ in range(runs))
    # The first call in a driver also starts Ray's worker processes (each imports Ray Data, pyarrow and
    # OpenCV); a later call, like every job on a running service after its first, finds them up.
    first = prepare_cache(discover(data), work / "cache-prepare", size=256)
    warm = max(prepare_cache(discover(data), work / "cache-prepare", size=256).images_per_second
               for _ in range(runs))
    return {"images": n, "source_px": SIZES["prepare_source_px"][not quick], "target_px": 256, "runs": runs,
            "single_images_per_s": single, "pool_images_per_s": pool,
            "faceseg_first_call_images_per_s": first.images_per_second,
            "faceseg_images_per_s": warm,
            "ratios": {"prepare_vs_single": warm / single, "prepare_vs_pool": warm / pool},
            "first_call_ratios": {"prepare_vs_single": first.images_per_second / single,
                                  "prepare_vs_pool": first.images_per_second / pool}}
