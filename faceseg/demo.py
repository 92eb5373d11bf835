"""`faceseg demo`: the whole pipeline on built-in synthetic faces, in one command.

synth -> prepare (Ray Data) -> train (Ray Train, 2 workers) -> predict (+ overlays) -> F1 table.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from faceseg.config import Config
from faceseg.metrics import format_report

DEMO_SIZE = 128


def demo_config(cache: Path, epochs: int) -> Config:
    """Sized for a 2-core laptop: 2 workers x 4 images a step keeps enough optimiser steps per epoch."""
    return Config().with_overrides({
        "data.cache": str(cache), "data.size": DEMO_SIZE,
        "train.epochs": epochs, "train.batch_size": 4, "train.learning_rate": 2e-3,
        "scaling.num_workers": 2,
    })


def run_demo(args) -> int:
    from faceseg.data.layouts import discover
    from faceseg.data.prepare import prepare_cache
    from faceseg.data.synth import write_synthetic_dataset
    from faceseg.predict import run_prediction
    from faceseg.runtime import init_ray
    from faceseg.train import run_training

    work = Path(args.workdir).resolve()
    timings, start = {}, time.perf_counter()

    def stage(name: str, since: float) -> float:
        timings[name] = time.perf_counter() - since
        print(f"--- {name} done in {timings[name]:.0f} s", flush=True)
        return time.perf_counter()

    init_ray(args.address, reserved_cpus=2)
    t = time.perf_counter()
    print(f"--- synth: {args.train_images} train + {args.test_images} test faces at {DEMO_SIZE} px", flush=True)
    write_synthetic_dataset(work / "data", args.train_images, args.test_images, DEMO_SIZE, seed=0)
    t = stage("synth", t)
    print(prepare_cache(discover(work / "data"), work / "cache", DEMO_SIZE).format(), flush=True)
    t = stage("prepare", t)

    config_path = work / "demo.yaml"
    demo_config(work / "cache", args.epochs).to_yaml(config_path)
    train_args = argparse.Namespace(config=str(config_path), output=str(work / "run"), cache=None, data=None,
                                    resume=None, local=False, address=args.address)
    result = run_training(train_args)
    print(result.format(), flush=True)
    t = stage("train", t)

    predict_args = argparse.Namespace(model=str(work / "run"), input=str(work / "data" / "test"),
                                      output=str(work / "predictions"), overlay=True, layout="auto",
                                      batch_size=16, concurrency=1, num_gpus=0.0, overwrite=True,
                                      address=args.address)
    predictions = run_prediction(predict_args)
    t = stage("predict", t)

    total = time.perf_counter() - start
    print("\n=== faceseg demo: F1 on the synthetic test set ===")
    print(format_report(predictions.report))
    print("\n".join([
        f"\nwall time {total / 60:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})",
        f"data:        {work / 'data'}",
        f"cache:       {work / 'cache'}",
        f"run:         {work / 'run'}   (model.keras, metrics.jsonl, tensorboard/)",
        f"predictions: {work / 'predictions'}",
        f"overlays:    {work / 'predictions' / 'overlays'}   <- look at these first",
        f"report:      {work / 'predictions' / 'report.json'}",
    ]))
    return 0 if not predictions.failed else 1
