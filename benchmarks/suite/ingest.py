"""The train dataset as a worker builds it, without the model, the worker pinned to one core."""
from __future__ import annotations

import json
import sys
import os
import time
from pathlib import Path

import numpy as np

from suite import INGEST_GOAL, SIZES

# _ingest_loop runs in a Ray Train worker, where benchmarks/ is not importable: ship it by value.
import ray.cloudpickle  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _pin_process_to(core: int) -> None:
    """Every thread of this process (and any it starts later) on one CPU core."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {core})
        except OSError:
            pass


def _ingest_loop(loop: dict) -> None:
    """In a Ray Train worker: build the train dataset exactly as the train loop does and iterate it."""
    import ray.train

    from faceseg.data.augment import Augmentation
    from faceseg.labels import Taxonomy
    from faceseg.runtime import keep_freed_memory
    from faceseg.train.input import make_train_dataset

    _pin_process_to(0)
    keep_freed_memory()                      # as train_loop does
    taxonomy = Taxonomy(tuple(loop["classes"]))
    augmentation = Augmentation(loop["augment"], taxonomy.flip_lut, taxonomy.background)
    dataset = make_train_dataset(ray.train.get_dataset_shard("train"), loop["batch"], augmentation, seed=0,
                                 hold=loop["held"], size=loop["px"])
    rates = []
    for _ in range(loop["epochs"]):
        start, images = time.perf_counter(), 0
        for batch, _ in dataset:
            images += int(batch.shape[0])
        rates.append(images / (time.perf_counter() - start))
    Path(loop["out"]).write_text(json.dumps(rates))


def _ingest_rate(cache: Path, augment: str, held: bool, epochs: int, out: Path) -> float:
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    from faceseg.data.cache import Cache
    from faceseg.runtime import train_worker_runtime_env

    split = Cache.open(cache)
    trainer = TensorflowTrainer(
        _ingest_loop,
        train_loop_config={"batch": 64, "augment": augment, "held": held, "px": split.size,
                           "epochs": epochs, "classes": list(split.taxonomy.names), "out": str(out)},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        datasets={"train": split.dataset("train", decoded=False)}, dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(storage_path=str(out.parent / "ray"), name=out.stem,
                                       worker_runtime_env=train_worker_runtime_env()))
    trainer.fit()
    rates = json.loads(out.read_text())
    return float(np.median(rates[1:]))       # steady state: epoch 1 reads the files (and fills a held cache)


def run(work: Path, quick: bool) -> dict:
    """Images/s of the train dataset as a worker builds it, iterated without the model, the worker pinned
    to one core: held in memory (after the first epoch) and streamed from Parquet every epoch, for each
    augmentation level on the CPU. With train.augment_on: device (GPU runs) the CPU side is "none"."""
    from faceseg.data.prepare import find_source, prepare_cache
    from faceseg.data.synth import write_synthetic_dataset

    n, epochs = SIZES["ingest_images"][not quick], SIZES["ingest_epochs"][not quick]
    data = work / f"ingest{n}"
    if not data.exists():
        write_synthetic_dataset(data, train=n, test=0, size=256, seed=5)
    result = {"images": n, "batch": 64, "epochs": epochs, "core": "the worker process pinned to core 0",
              "goal_images_per_s": INGEST_GOAL}
    for px in SIZES["ingest_px"][not quick]:
        cache = work / f"cache-ingest{n}-{px}"
        if not cache.exists():
            prepare_cache(find_source(str(data)), cache, px)
        for held in (True, False):
            for augment in ("none", "flip", "geometric", "full"):
                key = f"{'held' if held else 'streamed'}_{px}px_{augment}"
                result[key] = _ingest_rate(cache, augment, held, epochs, work / f"ingest-{key}.json")
                print(f"  ingest {key}: {result[key]:.0f} images/s", flush=True)
    result["streamed_vs_held_256px_flip"] = result["streamed_256px_flip"] / result["held_256px_flip"]
    result["ratios"] = {"ingest_streamed_256px_flip_vs_goal": result["streamed_256px_flip"] / INGEST_GOAL}
    return result
