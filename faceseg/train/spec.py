"""What the train loop is told by the driver: one typed value, the same for Ray Train workers and --local."""
from __future__ import annotations

from dataclasses import dataclass

from faceseg.config import Config


@dataclass(frozen=True)
class LoopSpec:
    config: Config
    run: str                             # the run folder's URI
    train_rows: int                      # rows of the train split, repeats included
    train_in_memory: bool                # each worker holds its shard after reading it once
    class_frequency: tuple[float, ...]   # each class's share of the train pixels, for the loss weights
    classes: tuple[str, ...]
    size: int                            # px
    metric: str                          # what picks the best epoch, e.g. val_f1_mean
    augment_on_device: bool              # augment inside the train step (GPUs)
    init: str | None = None              # a model file whose weights the run starts from (train --init)
