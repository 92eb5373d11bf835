"""Prediction's CPU work per image, stage by stage, and the cores one H200 needs."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from suite import H200_256PX, SIZES


def _per_image_seconds(fn, items, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - start) / len(items))
    return best


def _probabilities(label: np.ndarray, grid: int, classes: int) -> np.ndarray:
    """A model's kind of (grid, grid, classes) softmax for a synthetic face: its labels at the grid, one-hot,
    blurred over a few grid pixels so that class edges are soft, as a trained model's are."""
    small = cv2.resize(label, (grid, grid), interpolation=cv2.INTER_NEAREST)
    one_hot = np.eye(classes, dtype=np.float32)[np.minimum(small, classes - 1)]
    blurred = cv2.GaussianBlur(one_hot, (0, 0), 1.5)
    return blurred / blurred.sum(-1, keepdims=True)


def run(work: Path, quick: bool) -> dict:
    """What `faceseg predict` does per image on the CPU, one thread, at the 256-px grid: decode + resize to
    the grid, the label map at the photo's size (predict/labelmap.py, plain and refined), PNG encode.
    "Cores per H200" divides the H200's measured inference rate at 256 px by one core's rate for the CPU
    stages. Edge refinement (the default) adds CPU work: the photo decoded again at up to 4x the grid when the
    reduced JPEG decode has too few pixels, resized to the guide, and the refined label map."""
    from faceseg.data.decode import decode_image, encode_png, resize_image
    from faceseg.data.synth import render_face
    from faceseg.predict.labelmap import plain_label_map, refined_label_map
    from faceseg.predict.parser import decode_photo, guide_image

    cv2.setNumThreads(1)
    n = SIZES["stage_images"][not quick]
    rng = np.random.default_rng(6)
    result = {"images": n, "grid_px": 256, "classes": 11, "threads": 1, "h200_256px": H200_256PX}
    for original in (512, 1024):
        faces = [render_face(rng, original) for _ in range(n)]
        jpegs = [np.frombuffer(cv2.imencode(".jpg", cv2.cvtColor(f[0], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1], np.uint8)
                 for f in faces]
        labels = [f[1] for f in faces]
        decode = _per_image_seconds(lambda data: resize_image(decode_image(data, "x", 256)[0], 256), jpegs)
        encode = _per_image_seconds(lambda label: encode_png("x", label), labels)

        def decode_with_guide(data):
            pixels, _, detail = decode_photo(data, "x", 256, refine=True)
            return pixels, guide_image(detail, original, original, 256)
        decode_refined = _per_image_seconds(decode_with_guide, jpegs)
        inputs = [(_probabilities(label, 256, 11),) + decode_with_guide(data) for label, data in zip(labels, jpegs)]
        plain_label_map(inputs[0][0], 8, 8), refined_label_map(*inputs[0], 8, 8)       # compiled
        plain = _per_image_seconds(lambda item: plain_label_map(item[0], original, original), inputs)
        refined = _per_image_seconds(lambda item: refined_label_map(*item, original, original), inputs)
        cpu_seconds = decode + plain + encode
        refined_seconds = decode_refined + refined + encode
        result[f"{original}px"] = {
            "decode_resize_ms": 1000 * decode, "png_encode_ms": 1000 * encode,
            "plain_label_map_ms": 1000 * plain, "refined_decode_resize_guide_ms": 1000 * decode_refined,
            "refined_label_map_ms": 1000 * refined,
            "cpu_stages_images_per_s_per_core": 1 / cpu_seconds,
            "cores_per_h200": H200_256PX["inference_images_per_s"] * cpu_seconds,
            "cores_per_h200_compiled": H200_256PX["inference_compiled_images_per_s"] * cpu_seconds,
            "cores_per_h200_refined": H200_256PX["inference_images_per_s"] * refined_seconds}
        print(f"  stages {original}px: {result[f'{original}px']}", flush=True)
    result["ratios"] = {}
    return result
