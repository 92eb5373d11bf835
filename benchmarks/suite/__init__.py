"""The benchmarks of `python benchmarks/run.py`, one module each; what they share is here (the goals, the
data sizes of a quick and a full run, the report's markdown). Methodology: benchmarks/README.md."""
from __future__ import annotations

import json
import os
import platform
import time

import cv2

GOALS = {"prepare_vs_pool": (">=", 0.8), "prepare_vs_single": (">=", 1.6), "train_vs_inmemory": (">=", 0.9),
         "memory_8000_vs_2000": ("<=", 1.3), "predict_refined_vs_model_predict": (">=", 0.6),
         "predict_plain_vs_model_predict": (">=", 0.8), "job_refined_vs_model_predict": (">=", 0.6),
         "one_at_a_time_vs_batch": (">=", 0.5), "ingest_streamed_256px_flip_vs_goal": (">=", 1.0),
         "serve_128px_c32_vs_inprocess": (">=", 0.8), "serve_512px_c32_vs_inprocess": (">=", 0.8)}
INGEST_GOAL = 2000          # images/s at 256 px per worker on one CPU core, streamed: what feeds one GPU
# Measured on one NVIDIA H200 (PyTorch, bf16, channels-last), faceseg's default U-Net topology at 256 px,
# batch 64 (benchmarks/results/gpu.md): what the CPU side must keep up with.
H200_256PX = {"train_images_per_s": 2606, "train_compiled_images_per_s": 4058, "inference_images_per_s": 8374,
              "inference_compiled_images_per_s": 13112}
SIZES = {  # (quick, full)
    "prepare_images": (400, 2000), "prepare_source_px": (512, 512), "prepare_runs": (3, 3),
    "train_images": (320, 400), "train_epochs": (3, 4), "train_px": ((128,), (128, 256)), "train_pair_runs": (1, 3),
    "memory_images": ((500, 2000), (2000, 8000)), "predict_images": (32, 256), "predict_runs": (3, 3),
    "ingest_images": (1024, 4096), "ingest_epochs": (4, 5), "ingest_px": ((256,), (128, 256)),
    "stage_images": (40, 100), "serve_requests": (64, 1024), "serve_seconds": (60, 180),
}


def machine() -> dict:
    import ray

    import faceseg
    from faceseg.backend import tf

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "ray": ray.__version__, "tensorflow": tf.__version__, "opencv": cv2.__version__,
            "faceseg": faceseg.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def met(name: str, value: float) -> str:
    """'yes' or 'NO' against the ratio's goal, from the unrounded value ('–' for a ratio without one)."""
    if name not in GOALS:        # a ratio an earlier version of the suite measured
        return "–"
    op, goal = GOALS[name]
    return "yes" if (value >= goal if op == ">=" else value <= goal) else "NO"


def markdown(report: dict) -> str:
    """The report as Markdown: the ratios against their goals, then every figure (generated from the JSON)."""
    lines = [f"# faceseg benchmarks ({'quick' if report['quick'] else 'full'})", "",
             f"{report['machine']['cpus']} CPUs, Ray {report['machine']['ray']}, TensorFlow "
             f"{report['machine']['tensorflow']}, {report['machine']['date']}", ""]
    if report["quick"]:   # the goals are set for the full run's data sets
        lines += ["The goals are set for the full run's sizes; the quick run's smaller sets weigh fixed start-up "
                  "costs more, so its ratios only show that nothing broke.", ""]
    lines += ["| ratio | measured | goal | met |", "|---|---|---|---|"]
    for name, value in report["ratios"].items():
        op, goal = GOALS.get(name, ("", "–"))
        lines.append(f"| {name} | {value:.4g} | {op} {goal} | {met(name, value)} |")
    lines += ["", "```json", json.dumps({k: v for k, v in report.items() if k != "ratios"}, indent=1), "```"]
    return "\n".join(lines) + "\n"
