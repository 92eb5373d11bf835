"""`faceseg demo`: the whole pipeline on built-in synthetic faces, in one command.

synth -> prepare (Ray Data) -> train (Ray Train, 2 workers) -> predict (+ overlays) -> F1 table.
"""
from __future__ import annotations

import time

from faceseg.config import Config
from faceseg.metrics import format_report
from faceseg.storage import Location

DEMO_SIZE = 128


def demo_config(cache: Location, epochs: int) -> Config:
    """Sized for a 2-core laptop: 2 workers x 4 images a step keeps enough optimiser steps per epoch."""
    return Config().with_overrides({
        "data.cache": str(cache), "data.size": DEMO_SIZE,
        "train.epochs": epochs, "train.batch_size": 4, "train.learning_rate": 2e-3,
        "scaling.num_workers": 2,
    })


def run_demo(workdir: str, train_images: int = 600, test_images: int = 60, epochs: int = 12,
             address: str | None = None) -> int:
    from faceseg.data.prepare import find_source, prepare_cache
    from faceseg.data.synth import write_synthetic_dataset
    from faceseg.predict import predict_folder
    from faceseg.runtime import connect
    from faceseg.train.run import train, training_needs

    work = Location.of(workdir)
    if not work.is_local:
        raise ValueError(f"--workdir {work}: the demo writes a local folder")
    config = demo_config(work / "cache", epochs)
    timings, start = {}, time.perf_counter()

    def stage(name: str, since: float) -> float:
        timings[name] = time.perf_counter() - since
        print(f"--- {name} done in {timings[name]:.0f} s", flush=True)
        return time.perf_counter()

    connect(address, training_needs(config, local=False))
    t = time.perf_counter()
    print(f"--- synth: {train_images} train + {test_images} test faces at {DEMO_SIZE} px", flush=True)
    write_synthetic_dataset(work.local() / "data", train_images, test_images, DEMO_SIZE, seed=0)
    t = stage("synth", t)
    print(prepare_cache(find_source(str(work / "data")), work / "cache", DEMO_SIZE).format(), flush=True)
    t = stage("prepare", t)

    result = train(config, work / "run", overwrite=True, address=address)
    print(result.format(), flush=True)
    t = stage("train", t)

    predictions = predict_folder(work / "run", work / "data" / "test", work / "predictions", overlay=True,
                                 overwrite=True, address=address)
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
