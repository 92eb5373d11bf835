"""The one training loop, run by every Ray Train worker and by `--local` alike.

    shard --to_tf--> augment --> model.fit (one epoch at a time, under the strategy)
                                   | on_epoch_end
                                   v
            validate on the WHOLE val split -> checkpoint -> session.report -> table row
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import faceseg  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras as keras

from faceseg.atomic import write_atomic
from faceseg.config import Config, TrainConfig
from faceseg.data.augment import augment_batch
from faceseg.metrics import ConfusionMatrix
from faceseg.model.unet import build_unet
from faceseg.model.losses import class_weights, make_loss
from faceseg.model.saved import MODEL_FILE
from faceseg.train.progress import EpochProgressBar
from faceseg.train.session import scratch_dir

STATE_DIR = "train_state"
HISTORY_FILE = "metrics.jsonl"
READ_ROWS = 64   # rows per hand-over from Ray Data to tf.data
TABLE_COLUMNS = ("epoch", "loss", "val_loss", "val_pixel_accuracy", "val_mean_iou", "val_f1_overall",
                 "images_per_second", "seconds")


def make_optimizer(config: TrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    lr = config.learning_rate
    if config.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(total_steps, 1), alpha=0.05)
    elif config.schedule == "step":
        bounds = [int(total_steps * 0.6), int(total_steps * 0.85)]
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [lr, lr * 0.1, lr * 0.01])
    elif config.schedule != "constant":
        raise ValueError(f"train.schedule must be cosine, step or constant, not {config.schedule!r}")
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay)
    raise ValueError(f"train.optimizer must be adam or adamw, not {config.optimizer!r}")


def make_train_dataset(shard, batch_size: int, world_size: int, augment: str, seed: int,
                       in_memory_rows: int | None = None) -> tf.data.Dataset:
    """A worker's shard as batches of ((B, S, S, 3) uint8 images, (B, S, S) uint8 masks).

    Keras treats a dataset's batch as GLOBAL under a multi-worker strategy and splits each one into
    `world_size` per-replica steps, so a worker reads batch_size x world_size rows per batch to train
    on batch_size of them per step (measured: steps per epoch = shard rows / batch_size).

    Ray Data hands over READ_ROWS rows per Python call and tf.data shuffles and batches them in C++:
    Ray's own local shuffle buffer and a Python call per batch competed with the training thread for
    the GIL (one Ray worker, 128 px, batch 8: 29.6 / 29.9 -> 30.9 / 31.5 images/s).

    With `in_memory_rows` (the shard's size) the first epoch keeps the shard's rows in this worker's
    memory and later epochs replay them, reshuffled whole, as model.fit does with arrays: no Ray Data
    execution per epoch (one Ray worker, 128 px, 400 images, 3 pairs: 31.3 / 30.6 / 32.1 -> 33.1 /
    33.6 / 34.3 images/s). Without, the shard streams every epoch through a small shuffle buffer.
    """
    global_batch = batch_size * world_size
    rows = shard.to_tf("image", "mask", batch_size=READ_ROWS).unbatch()     # (S, S, 3), (S, S) uint8
    if in_memory_rows:
        rows = rows.cache().shuffle(in_memory_rows, seed=seed)
    else:
        rows = rows.shuffle(4 * global_batch, seed=seed)
    dataset = rows.batch(global_batch, drop_remainder=True)
    generator = tf.random.Generator.from_seed(seed)
    dataset = dataset.map(lambda x, y: augment_batch(x, y, augment, generator))
    options = tf.data.Options()
    # Ray Data already gave each worker its own equal shard: TF must not shard it again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(2)


def load_batches(data, batch_size: int) -> list[dict]:
    """The whole val split as numpy batches, read once per worker: re-running a Ray Data pipeline
    every epoch costs seconds, and val is a small fixed split (10% of train)."""
    return list(data.iter_batches(batch_size=batch_size, batch_format="numpy"))


def make_val_step(model: keras.Model, loss_fn):
    """One traced function for the whole run: (images, masks) -> (per-image loss, predicted ids)."""

    @tf.function
    def val_step(images, masks):
        logits = model(images, training=False)
        return loss_fn(masks, logits), tf.argmax(logits, axis=-1, output_type=tf.int32)

    return val_step


def validate(forward, val_batches: list[dict]) -> dict:
    """Loss and the Helen metrics of CONVENTIONS section 4 over every image of the val split."""
    confusion, losses = ConfusionMatrix(), []
    for batch in val_batches:
        loss, pred = forward(tf.constant(batch["image"]), tf.constant(batch["mask"]))
        losses.append(loss.numpy())
        confusion.add(batch["mask"], pred.numpy())
    report = confusion.report()
    return {"val_loss": float(np.concatenate(losses).mean()),
            "val_pixel_accuracy": report["pixel_accuracy"], "val_mean_iou": report["mean_iou"],
            "val_f1_overall": report["f1"]["overall"],
            **{f"val_f1_{name}": report["f1"][name] for name in ("eyes", "brows", "mouth", "nose", "hair")}}


def read_history(checkpoint: Path | None) -> list[dict]:
    path = checkpoint / HISTORY_FILE if checkpoint else None
    if not path or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_history(path: Path, history: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in history))


def format_row(row: dict, header: bool = False) -> str:
    if header:
        names = ("epoch", "loss", "val_loss", "val_acc", "val_mIoU", "val_F1_overall", "train_img/s", "seconds")
        return " ".join(f"{name:>14}" for name in names)
    cells = [f"{row['epoch']:>14d}"] + [f"{row[c]:>14.4f}" for c in TABLE_COLUMNS[1:-2]]
    return " ".join(cells + [f"{row['images_per_second']:>14.1f}", f"{row['seconds']:>14.1f}"])


class EpochEnd(keras.callbacks.Callback):
    """Validate, checkpoint and report after every epoch; print the epoch table on the chief."""

    def __init__(self, session, checkpoint_state: tf.train.Checkpoint, loss_fn, history: list[dict],
                 config: Config, run_dir: Path | None, global_batch: int):
        super().__init__()
        # The batch hook only counts: without this, Keras copies every step's logs to numpy for it,
        # a host sync after each step.
        self._supports_tf_logs = True
        self.global_batch, self.val_batches = global_batch, None
        self.session, self.state, self.loss_fn = session, checkpoint_state, loss_fn
        self.history, self.config, self.run_dir = history, config, run_dir
        self.writer = tf.summary.create_file_writer(str(run_dir / "tensorboard" / "validation")) \
            if run_dir and session.is_chief else None

    def on_train_begin(self, logs=None):
        # The same layers, uncompiled: the exported model.keras carries no optimizer state.
        self.export = keras.Model(self.model.inputs, self.model.outputs, name=self.model.name)
        # Built once: a tf.function made inside validate() would be re-traced every epoch.
        self.val_step = make_val_step(self.model, self.loss_fn)

    def on_epoch_begin(self, epoch, logs=None):
        self.started, self.steps = time.perf_counter(), 0
        if self.session.is_chief and not self.history:
            print(format_row({}, header=True), flush=True)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def on_epoch_end(self, epoch, logs=None):
        train_seconds = time.perf_counter() - self.started
        if self.val_batches is None:
            self.val_batches = load_batches(self.session.val_data(), self.config.train.batch_size)
        row = {"epoch": epoch + 1, "loss": float(logs["loss"]), **validate(self.val_step, self.val_batches),
               "steps": self.steps, "images_per_second": self.steps * self.global_batch / train_seconds}
        row["seconds"] = time.perf_counter() - self.started
        self.history.append(row)
        folder = scratch_dir()
        # Explicit format: tf-keras falls back to HDF5 for ".keras" in threads other than the main one,
        # and Ray Train runs this loop in a worker thread.
        self.export.save(str(folder / MODEL_FILE), save_format="keras_v3")
        self.state.write(str(folder / STATE_DIR / "state"))  # weights + optimizer slots + step
        write_history(folder / HISTORY_FILE, self.history)
        self.config.to_yaml(folder / "config.yaml")
        self.session.report(row, folder)
        shutil.rmtree(folder, ignore_errors=True)
        if self.session.is_chief:
            print(format_row(row), flush=True)
            if self.run_dir:
                write_history(self.run_dir / HISTORY_FILE, self.history)
            if self.writer:
                with self.writer.as_default(step=epoch + 1):
                    for key, value in row.items():
                        tf.summary.scalar(key, value)


def train_loop(loop_config: dict, session) -> None:
    """Build, restore, fit: one epoch = one pass over this worker's shard.

    loop_config: {"config": Config as a dict, "train_rows": rows in the train split,
                  "train_in_memory": keep this worker's shard in memory after the first epoch,
                  "class_frequency": train pixel frequency per class, "run_dir": RUN}.
    """
    config = Config.from_dict(loop_config["config"])
    tf.get_logger().setLevel("ERROR")  # MWMS logs every collective at INFO
    run_path = Path(loop_config["run_dir"]) if loop_config.get("run_dir") else None
    if config.train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = session.strategy()
    keras.utils.set_random_seed(config.train.seed)

    train_rows = loop_config["train_rows"] // session.world_size   # Ray splits the shards equally
    batch_size = max(1, min(config.train.batch_size, train_rows // session.world_size))
    steps_per_epoch = max(1, train_rows // (batch_size * session.world_size) * session.world_size)
    with strategy.scope():
        model = build_unet(config.model, config.data.size)
        optimizer = make_optimizer(config.train, steps_per_epoch * config.train.epochs)
        loss_fn = make_loss(config.train.loss, class_weights(loop_config["class_frequency"],
                                                             config.train.class_weights))
        model.compile(optimizer=optimizer, loss=loss_fn, jit_compile=config.train.jit)
        state = tf.train.Checkpoint(model=model, optimizer=optimizer)

    checkpoint = session.latest_checkpoint()
    history = read_history(checkpoint)
    if checkpoint:
        state.read(str(checkpoint / STATE_DIR / "state")).expect_partial()
        if session.is_chief:
            print(f"resumed from {checkpoint} after epoch {len(history)}", flush=True)
    if len(history) >= config.train.epochs:
        return

    seed = config.train.seed * 1000 + session.world_rank + 7919 * len(history)
    train_data = make_train_dataset(session.train_data(), batch_size, session.world_size, config.train.augment, seed,
                                    train_rows if loop_config["train_in_memory"] else None)
    global_batch = batch_size * session.world_size
    callbacks = [EpochProgressBar(steps_per_epoch, config.train.epochs)] if session.progress_bar else []
    callbacks.append(EpochEnd(session, state, loss_fn, history, config, run_path, global_batch))
    if run_path and session.is_chief:
        callbacks.append(keras.callbacks.TensorBoard(str(run_path / "tensorboard"), profile_batch=0))
    model.fit(train_data, epochs=config.train.epochs, initial_epoch=len(history), callbacks=callbacks,
              verbose=0)
