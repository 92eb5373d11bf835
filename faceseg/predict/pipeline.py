"""The one Ray Data pipeline of `faceseg predict`, for a folder of images and for a video alike:

    rows --from_items--> load --> Predictor [actors, GPUs optional] --> write [CPU tasks] --> driver

`load` and `write` are the stages of predict/stages.py for images or for frames. Where the actors ask for the
CPUs a load task does (the usual CPU run), Ray Data fuses `load` into the model actor's calls, so the decoded
pixels and guides never leave the process; otherwise (GPUs, a fractional CPU share) load runs as CPU tasks.
An actor runs CALLS_PER_ACTOR calls at once. The driver reads the small result rows (errors, confusion
matrices, timings) as they come.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator

import numpy as np

from faceseg.model.saved import ModelInfo
from faceseg.predict.stages import Predictor
from faceseg.runtime import Needs, verbose


# Several calls at once let batches decode (when `load` is fused into the actor) and get their label maps
# while another is in the network, instead of the cores waiting on each step in turn. An actor then holds up
# to this many batches (--batch-size) at once.
CALLS_PER_ACTOR = 4


def prediction_needs(concurrency: int, num_gpus: float) -> Needs:
    return Needs(cpus=0.0 if num_gpus else concurrency, gpus=concurrency * num_gpus,
                 what=f"{concurrency} model actor(s)", flags="--concurrency / --num-gpus")


def run_pipeline(rows: list[dict], model: ModelInfo, refine: bool, *, load: Callable, load_kwargs: dict,
                 rows_per_load: int, write: Callable, write_kwargs: dict, batch_size: int, concurrency: int,
                 num_gpus: float, cpu_share: float) -> Iterator[dict]:
    """Result batches of `write`, as the job runs."""
    import ray.data

    # Blocks of at most rows_per_load rows: a larger block would leave a small remainder batch per block.
    dataset = ray.data.from_items(rows, override_num_blocks=-(-len(rows) // rows_per_load))
    # Ray Data's progress bars belong on a terminal; in a log file they are lines of escape codes.
    dataset.context.enable_progress_bars = sys.stderr.isatty() or verbose()
    dataset = dataset.map_batches(load, fn_kwargs=load_kwargs, batch_size=rows_per_load)
    actors = ray.data.ActorPoolStrategy(size=concurrency, max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
                                        enable_true_multi_threading=True)
    dataset = dataset.map_batches(Predictor, fn_constructor_kwargs={"model": str(model.location),
                                                                    "sha256": model.sha256, "refine": refine},
                                  batch_size=batch_size, compute=actors,
                                  num_gpus=num_gpus or None, num_cpus=None if num_gpus else cpu_share)
    dataset = dataset.map_batches(write, batch_size=batch_size, fn_kwargs=write_kwargs)
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy")


def steady_rate(model_ready_at: list[float], warm: list[bool], finished_at: float | None = None) -> float:
    """Images/s once running: from the first batch through a loaded, traced model to the last write.

    Only images predicted by an already warm actor count; each actor's first batch is start-up.
    """
    finished_at = time.time() if finished_at is None else finished_at
    if not model_ready_at or finished_at <= min(model_ready_at):
        return 0.0
    return float(np.sum(warm)) / (finished_at - min(model_ready_at))
