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


def run(work: Path, quick: bool) -> dict:
    """What `faceseg predict` does per image on the CPU, one thread: decode + resize to the 256-px grid,
    PNG-encode the label map at the original size; and the resize + argmax of 11-channel probabilities
    that used to run on the CPU (now in the model's graph, on the accelerator). "Cores per H200" divides
    the H200's measured inference rate at 256 px by one core's rate for the CPU stages. Edge refinement
    (the default) adds CPU work (the photo decoded again at up to 4x the grid when the reduced JPEG decode
    has too few pixels, and resized to the guide) and graph work (the guided filter): both measured apart."""
    from faceseg.backend import tf

    from faceseg.data.decode import decode_image, encode_png, resize_image
    from faceseg.data.synth import render_face
    from faceseg.predict.parser import decode_photo, guide_image, refine_probabilities, resize_argmax_band

    cv2.setNumThreads(1)
    n = SIZES["stage_images"][not quick]
    rng = np.random.default_rng(6)
    result = {"images": n, "grid_px": 256, "classes": 11, "threads": 1, "h200_256px": H200_256PX}
    for original in (512, 1024):
        faces = [render_face(rng, original) for _ in range(n)]
        jpegs = [np.frombuffer(cv2.imencode(".jpg", cv2.cvtColor(f[0], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1], np.uint8)
                 for f in faces]
        labels = [f[1] for f in faces]
        probs = [rng.random((256, 256, 11), dtype=np.float32) for _ in range(min(n, 20))]
        decode = _per_image_seconds(lambda data: resize_image(decode_image(data, "x", 256)[0], 256), jpegs)
        encode = _per_image_seconds(lambda label: encode_png("x", label), labels)
        old_resize = _per_image_seconds(
            lambda p: np.argmax(cv2.resize(p, (original, original), interpolation=cv2.INTER_LINEAR), axis=-1).astype(np.uint8), probs)
        band = tf.function(lambda p: resize_argmax_band(tf, p, original, original, 0, original))
        band(tf.constant(probs[0]))
        graph_resize = _per_image_seconds(lambda p: band(tf.constant(p)).numpy(), probs)

        def decode_with_guide(data):
            pixels, _, detail = decode_photo(data, "x", 256, refine=True)
            return pixels, guide_image(detail, original, original, 256)
        decode_refined = _per_image_seconds(decode_with_guide, jpegs)
        guide = tf.constant(decode_with_guide(jpegs[0])[1])
        refine = tf.function(lambda p, g: refine_probabilities(tf, p, g, 256))
        refine(tf.constant(probs[0]), guide)
        graph_refine = _per_image_seconds(lambda p: refine(tf.constant(p), guide).numpy(), probs)
        cpu_seconds = decode + encode
        refined_seconds = decode_refined + encode
        result[f"{original}px"] = {
            "decode_resize_ms": 1000 * decode, "png_encode_ms": 1000 * encode,
            "cpu_stages_images_per_s_per_core": 1 / cpu_seconds,
            "old_cpu_resize_argmax_ms": 1000 * old_resize, "graph_resize_argmax_on_this_cpu_ms": 1000 * graph_resize,
            "cores_per_h200": H200_256PX["inference_images_per_s"] * cpu_seconds,
            "cores_per_h200_compiled": H200_256PX["inference_compiled_images_per_s"] * cpu_seconds,
            "cores_per_h200_with_old_cpu_resize": H200_256PX["inference_images_per_s"] * (cpu_seconds + old_resize),
            "refined_decode_resize_guide_ms": 1000 * decode_refined,
            "graph_refine_on_this_cpu_ms": 1000 * graph_refine,
            "cores_per_h200_refined": H200_256PX["inference_images_per_s"] * refined_seconds}
        print(f"  stages {original}px: {result[f'{original}px']}", flush=True)
    result["ratios"] = {}
    return result
