"""The run folder and the checkpoint folders inside it: every name in one place (docs/runs.md).

    RUN/ config.yaml  metrics.jsonl  model.keras  checkpoints/  tensorboard/  [cache/]
    RUN/checkpoints/<epoch_NNNNN_xxxxxxxx>/       Ray Train's (--local: RUN/checkpoints/local/<...>/)
        model.keras  train_state/  metrics.jsonl  config.yaml  checkpoint.json (written last)
"""
from __future__ import annotations

from faceseg.config import Config
from faceseg.errors import FacesegError
from faceseg.model.saved import MODEL_FILE
from faceseg.storage import Location

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"          # Ray Train's run name: RUN/checkpoints
LOCAL = "local"                      # --local's checkpoints: RUN/checkpoints/local
TENSORBOARD = "tensorboard"
CACHE_DIR = "cache"                  # `train --data`: the data set prepared here
RUN_FILES = (CONFIG_FILE, HISTORY_FILE, MODEL_FILE, CHECKPOINTS, TENSORBOARD, CACHE_DIR)

CHECKPOINT_MANIFEST = "checkpoint.json"
STATE_DIR = "train_state"            # weights, optimiser slots and step (tf.train.Checkpoint)

__all__ = ["CACHE_DIR", "CHECKPOINTS", "CHECKPOINT_MANIFEST", "CONFIG_FILE", "HISTORY_FILE", "LOCAL", "MODEL_FILE",
           "RUN_FILES", "STATE_DIR", "TENSORBOARD", "RunError", "checkpoint_roots", "is_run", "saved_config"]


class RunError(FacesegError):
    pass


def checkpoint_roots(run: Location) -> tuple[Location, Location]:
    """Where a run's checkpoints are: Ray Train's, then --local's."""
    return run / CHECKPOINTS, run / CHECKPOINTS / LOCAL


def is_run(run: Location) -> bool:
    return (run / CONFIG_FILE).is_file() or (run / CHECKPOINTS).is_dir()


def saved_config(run: Location) -> Config:
    """The config a run folder was trained with (RUN/config.yaml)."""
    try:
        return Config.from_yaml(run / CONFIG_FILE)
    except FileNotFoundError:
        raise RunError(f"{run}: not a run folder (no {CONFIG_FILE}); nothing to resume") from None
