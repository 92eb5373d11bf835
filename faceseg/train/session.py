"""Where the one train loop runs: a Ray Train worker, or this process (`--local`).

A Session gives the loop its distribution strategy, its data, where its checkpoints live, and a place to
report each epoch. Everything else in the loop is shared by both modes.
"""
from __future__ import annotations

import errno
import importlib.util
import json
import logging
import shutil
import uuid
from pathlib import Path

import ray.data
import ray.train
from faceseg.backend import tf

from faceseg.storage import Location
from faceseg.train.checkpoint import MANIFEST, candidates, epoch_of, write_error
from faceseg.train.layout import CHECKPOINTS, checkpoint_roots


class RaySession:
    """Inside a Ray Train worker: MultiWorkerMirroredStrategy, this worker's shard, Ray checkpoints."""

    progress_bar = False   # the per-epoch table is the progress report in worker logs

    def __init__(self, run: Location):
        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.is_chief = self.world_rank == 0
        self.checkpoint_root = run / CHECKPOINTS      # Ray Train's storage_path / name
        self.restore_roots = checkpoint_roots(run)
        # Per-report (every metric, each worker) and per-epoch INFO lines bury the table. Ray Train's report
        # line comes from a logger named by its module's file path, outside the "ray.train" hierarchy.
        reports = importlib.util.find_spec("ray.train.v2._internal.execution.context")
        for noisy in ("ray.train", "ray.data", reports.origin if reports else None):
            logging.getLogger(noisy).setLevel(logging.WARNING)

    def strategy(self) -> tf.distribute.Strategy:
        if self.world_size == 1:   # MWMS with one worker only adds collectives
            return single_process_strategy()
        # Ray's TensorflowConfig has set TF_CONFIG for this worker; the strategy reads it.
        return tf.distribute.MultiWorkerMirroredStrategy()

    def train_data(self):
        return ray.train.get_dataset_shard("train")

    def val_data(self):
        return ray.train.get_dataset_shard("val")   # not split: every worker sees the whole split

    def latest_checkpoint(self) -> Location | None:
        checkpoint = ray.train.get_checkpoint()
        return self.checkpoint_root / Path(checkpoint.path).name if checkpoint else None

    def report(self, metrics: dict, folder: Path | None, name: str) -> None:
        # Every worker must call report (it is a barrier); only the chief's checkpoint is kept.
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if self.is_chief and folder else None
        try:
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        except OSError as error:
            raise write_error(error, self.checkpoint_root / name) from None


class LocalSession:
    """This process alone: the default strategy (or MirroredStrategy over several devices), checkpoints
    under RUN/checkpoints/local. Keeps the two newest checkpoints (to resume, with one to fall back on)
    and the best by the run's metric."""

    world_rank, world_size, is_chief, progress_bar = 0, 1, True, True

    def __init__(self, train: ray.data.Dataset, val: ray.data.Dataset, run: Location, metric: str):
        self.train, self.val, self.metric = train, val, metric
        self.restore_roots = checkpoint_roots(run)[::-1]      # a cluster run resumes here too
        self.checkpoint_root = self.restore_roots[0]

    def strategy(self) -> tf.distribute.Strategy:
        return single_process_strategy()

    def train_data(self):
        return self.train

    def val_data(self):
        return self.val

    def latest_checkpoint(self) -> Location | None:
        return None    # the loop takes the newest whole checkpoint under checkpoint_root

    def report(self, metrics: dict, folder: Path, name: str) -> None:
        target = self.checkpoint_root / name
        for stale in candidates(self.checkpoint_root):   # a damaged folder of this epoch, skipped on resume
            if epoch_of(stale.name) >= metrics["epoch"]:
                stale.delete()
        try:
            if target.is_local:   # a sibling temporary folder renamed into place: whole or absent
                partial = self.checkpoint_root / f".{name}.partial-{uuid.uuid4().hex[:8]}"
                try:
                    shutil.copytree(folder, partial.local())
                    target.delete()
                    partial.local().rename(target.local())
                finally:
                    partial.delete()
            else:                 # an object store: checkpoint.json goes last and marks it whole
                for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
                    (target / path.relative_to(folder).as_posix()).write_bytes(path.read_bytes())
                (target / MANIFEST).write_bytes((folder / MANIFEST).read_bytes())
        except (OSError, shutil.Error) as error:
            error = error if isinstance(error, OSError) else OSError(errno.EIO, str(error.args[0][0][-1]))
            raise write_error(error, target) from None
        self._keep_latest_and_best(folder)

    def _keep_latest_and_best(self, newest: Path) -> None:
        scores = {}
        for location in candidates(self.checkpoint_root):
            try:
                scores[location.name] = float(json.loads((location / MANIFEST).read_text())["metrics"][self.metric])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        if not scores:
            return
        newest = sorted(scores, key=epoch_of)[-2:]
        best = max(scores, key=lambda name: (scores[name], epoch_of(name)))
        for name in scores:
            if name not in (*newest, best):
                (self.checkpoint_root / name).delete()


def single_process_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over this process's GPUs (or logical CPUs) when it has several, else the default."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()
