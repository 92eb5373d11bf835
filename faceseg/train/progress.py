"""A tqdm progress bar over the batches of each epoch (local mode)."""
from __future__ import annotations

from faceseg.backend import keras
from tqdm.auto import tqdm


class EpochProgressBar(keras.callbacks.Callback):
    LOSS_EVERY = 10   # batches; reading the loss is a host sync

    def __init__(self, steps_per_epoch: int, epochs: int):
        super().__init__()
        self._supports_tf_logs = True   # Keras then skips its per-step copy of every log to numpy
        self.steps, self.epochs, self.bar = steps_per_epoch, epochs, None

    def on_epoch_begin(self, epoch, logs=None):
        # disable=None: no bar where the output is not a terminal (a log file gets the epoch table only)
        self.bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", leave=False,
                        disable=None)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if batch % self.LOSS_EVERY == 0:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}")

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()
