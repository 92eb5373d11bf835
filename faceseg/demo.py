"""`faceseg demo`: the whole pipeline on built-in synthetic faces, in one command.

synth -> prepare (Ray Data) -> train (Ray Train) -> predict (+ overlays) -> F1 table.
"""
from __future__ import annotations

import os
import time

from faceseg.config import Config
from faceseg.errors import FacesegError
from faceseg.metrics import format_report
from faceseg.storage import Location

DEMO_SIZE = 128
TRAIN_IMAGES, TEST_IMAGES, EPOCHS = 600, 60, 12


def demo_config(cache: Location, epochs: int) -> Config:
    """Sized for a laptop: one Ray Train worker with every core (on 2 cores, 2.3 times the images a second
    of two one-core workers, which pay MultiWorkerMirroredStrategy's collectives), 8 images a step."""
    return Config().with_overrides({
        "data.cache": str(cache), "data.size": DEMO_SIZE,
        "train.epochs": epochs, "train.batch_size": 8, "train.learning_rate": 2e-3,
        "scaling.num_workers": 1, "scaling.cpus_per_worker": os.cpu_count() or 1,
    })


def run_demo(workdir: str, train_images: int | None = None, test_images: int | None = None,
             epochs: int | None = None, address: str | None = None) -> int:
    from faceseg.data.prepare import find_source, prepare_cache
    from faceseg.data.synth import write_synthetic_dataset
    from faceseg.predict import predict_folder
    from faceseg.runtime import connect
    from faceseg.train.run import train, training_needs

    train_images = TRAIN_IMAGES if train_images is None else train_images
    test_images = TEST_IMAGES if test_images is None else test_images
    epochs = EPOCHS if epochs is None else epochs
    work = Location.of(workdir)
    if not work.is_local:
        raise FacesegError(f"--workdir {work}: the demo writes a local folder")
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
