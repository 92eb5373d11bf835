"""Where the one train loop runs: a Ray Train worker, or this process (`--local`).

A Session gives the loop its distribution strategy, its data, its last checkpoint, and a place to
report each epoch. Everything else in the loop is shared by both modes.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import ray.data
import ray.train
import tensorflow as tf

from faceseg.atomic import write_atomic

BEST_METRIC = "val_f1_overall"


class RaySession:
    """Inside a Ray Train worker: MultiWorkerMirroredStrategy, this worker's shard, Ray checkpoints."""

    def __init__(self):
        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.is_chief = self.world_rank == 0
        self.progress_bar = False  # the per-epoch table is the progress report in worker logs
        for noisy in ("ray.train", "ray.data"):  # per-report and per-epoch INFO lines bury the table
            logging.getLogger(noisy).setLevel(logging.WARNING)

    def strategy(self) -> tf.distribute.Strategy:
        if self.world_size == 1:   # MWMS with one worker only adds collectives: measured 4% of a step
            return single_process_strategy()
        # Ray's TensorflowConfig has set TF_CONFIG for this worker; the strategy reads it.
        return tf.distribute.MultiWorkerMirroredStrategy()

    def train_data(self):
        return ray.train.get_dataset_shard("train")

    def val_data(self):
        return ray.train.get_dataset_shard("val")   # not split: every worker sees the whole split

    def latest_checkpoint(self) -> Path | None:
        checkpoint = ray.train.get_checkpoint()
        return Path(checkpoint.to_directory()) if checkpoint else None

    def report(self, metrics: dict, checkpoint_dir: Path) -> None:
        # Every worker must call report (it is a barrier); only the chief's checkpoint is kept.
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if self.is_chief else None
        ray.train.report(metrics, checkpoint=checkpoint)


class LocalSession:
    """This process alone: the default strategy (or MirroredStrategy over several GPUs), local checkpoints.

    Keeps the newest checkpoint (to resume) and the best by val_f1_overall, like the Ray mode does.
    """

    world_rank, world_size, is_chief, progress_bar = 0, 1, True, True

    def __init__(self, train: ray.data.Dataset, val: ray.data.Dataset, checkpoints: Path):
        self.train, self.val = train, val
        self.root = checkpoints
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.json"

    def strategy(self) -> tf.distribute.Strategy:
        return single_process_strategy()

    def train_data(self):
        return self.train

    def val_data(self):
        return self.val

    def _index(self) -> dict:
        return json.loads(self.index_path.read_text()) if self.index_path.is_file() else {}

    def latest_checkpoint(self) -> Path | None:
        latest = self._index().get("latest")
        return self.root / latest if latest else None

    def best_checkpoint(self) -> Path | None:
        best = self._index().get("best")
        return self.root / best if best else None

    def report(self, metrics: dict, checkpoint_dir: Path) -> None:
        name = f"checkpoint_epoch_{metrics['epoch']:04d}"
        target = self.root / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(checkpoint_dir, target)
        index = self._index()
        if index.get("best") is None or metrics[BEST_METRIC] > index.get("best_score", -1.0):
            index.update(best=name, best_score=metrics[BEST_METRIC])
        index["latest"] = name
        write_atomic(self.index_path, json.dumps(index))  # the index only ever names complete checkpoints
        for old in self.root.glob("checkpoint_epoch_*"):
            if old.name not in (index["best"], index["latest"]):
                shutil.rmtree(old, ignore_errors=True)


def single_process_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over this process's GPUs when it has several, else TensorFlow's default."""
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="faceseg-ckpt-"))
