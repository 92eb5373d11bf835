"""`faceseg predict` against model.predict on preloaded tensors, with and without edge refinement."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from suite import SIZES


def _predict_rate(model, tensors: np.ndarray) -> float:
    start = time.perf_counter()
    model.predict(tensors, batch_size=16, verbose=0)
    return len(tensors) / (time.perf_counter() - start)


def run(work: Path, quick: bool) -> dict:
    from faceseg.backend import tf

    from faceseg.config import ModelConfig
    from faceseg.model.unet import build_unet
    from faceseg.predict.job import predict_folder
    from faceseg.data.synth import write_synthetic_dataset

    n = SIZES["predict_images"][not quick]
    data = work / f"predict{n}"
    if not data.exists():
        write_synthetic_dataset(data, train=0, test=n, size=256, seed=4)
    model_path = work / "predict-model.keras"
    model = build_unet(ModelConfig(depth=4, base_filters=16), 256, 11)
    model.save(str(model_path), save_format="keras_v3")
    files = sorted((data / "test").glob("*_image.jpg"))
    tensors = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in files])
    model.predict(tensors[:16], batch_size=16, verbose=0)                      # warm up, as an actor would
    runs = SIZES["predict_runs"][not quick]
    # One model.predict run swung 19.5-29.4 images/s on this machine: the best of `runs`, for both sides.
    baseline = max(_predict_rate(model, tensors) for _ in range(runs))
    del model
    tf.keras.backend.clear_session()
    out = work / "predict-out"
    # The job against model.predict: the same work (probabilities resized, no edge refinement), so the ratio
    # is the job's plumbing. Edge refinement, faceseg's default, is extra work measured on its own below.
    summaries, refined = [], []
    for _ in range(runs):
        for refine, kept in ((False, summaries), (True, refined)):
            shutil.rmtree(out, ignore_errors=True)
            kept.append(predict_folder(model_path, data / "test", out, batch_size=16, overwrite=True, refine=refine))
            assert kept[-1].predicted == n
    # Steady state, as for the baseline (warmed up, model in memory): from the first batch through a loaded,
    # traced model to the last PNG (PredictSummary.steady_images_per_second).
    steady = max(summary.steady_images_per_second for summary in summaries)
    steady_refined = max(summary.steady_images_per_second for summary in refined)
    whole = max(summary.predicted / summary.seconds for summary in summaries)
    return {"images": n, "px": 256, "runs": runs, "model_predict_images_per_s": baseline,
            "faceseg_images_per_s": steady, "faceseg_whole_call_images_per_s": whole,
            "faceseg_refined_images_per_s": steady_refined,
            "ratios": {"predict_vs_model_predict": steady / baseline},
            "whole_call_ratio": whole / baseline, "refined_vs_plain": steady_refined / steady}
