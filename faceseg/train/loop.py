"""The one training loop, run by every Ray Train worker and by `--local` alike.

    build (or start from --init's weights) -> restore the newest whole checkpoint, if any
    shard --train/input.py--> batches --> model.fit (under the strategy)      [augment in the train
                                             | on_epoch_end                    step on a GPU]
                                             v
            validate on the WHOLE val split -> checkpoint -> session.report -> table row
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from faceseg.backend import keras, quiet_tensorflow, tf

from faceseg.config import TrainConfig
from faceseg.data.augment import Augmentation, augment_batch
from faceseg.labels import Taxonomy
from faceseg.metrics import ConfusionMatrix, validation_metrics
from faceseg.model.losses import class_weights, make_loss
from faceseg.model.saved import add_metadata, inspect_model, load_keras_model, transfer_weights
from faceseg.model.unet import build_unet
from faceseg.runtime import keep_freed_memory
from faceseg.storage import Location
from faceseg.train.checkpoint import (candidates, checkpoint_name, history_text, read_history_text,
                                      restore_newest_whole, seal, write_error)
from faceseg.train.input import make_train_dataset
from faceseg.train.layout import CONFIG_FILE, HISTORY_FILE, MODEL_FILE, STATE_DIR, TENSORBOARD
from faceseg.train.progress import EpochProgressBar
from faceseg.train.spec import LoopSpec

TABLE = (("epoch", "epoch", "d"), ("loss", "loss", ".4f"), ("val_loss", "val_loss", ".4f"),
         ("val_acc", "val_pixel_accuracy", ".4f"), ("val_mIoU", "val_mean_iou", ".4f"))


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr, total = config.learning_rate, steps_per_epoch * config.epochs
    if config.schedule == "cosine":
        warmup = min(steps_per_epoch * config.warmup_epochs, total - 1)
        lr = keras.optimizers.schedules.CosineDecay(lr if not warmup else 0.0, decay_steps=max(total - warmup, 1),
                                                    alpha=0.05, warmup_target=lr if warmup else None,
                                                    warmup_steps=warmup)
    elif config.schedule == "step":
        bounds = [int(total * 0.6), int(total * 0.85)]
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [lr, lr * 0.1, lr * 0.01])
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(lr)


class AugmentingModel(keras.Model):
    """The U-Net, augmenting each batch inside its train step: on a GPU the warps run there, next to
    the model, instead of on the worker's CPU. Exported as the plain U-Net it wraps."""

    def __init__(self, inputs, outputs, augmentation: Augmentation, seed: int, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.augmentation = augmentation
        self.augment_rng = tf.random.Generator.from_seed(seed)

    def train_step(self, data):
        images, masks = data
        images, masks = augment_batch(images, masks, self.augmentation, self.augment_rng)
        return super().train_step((images, masks))


def load_batches(data, batch_size: int) -> list[dict]:
    """The whole val split as numpy batches, read once per worker: re-running a Ray Data pipeline
    every epoch costs seconds, and val is a small fixed split."""
    return list(data.iter_batches(batch_size=batch_size, batch_format="numpy"))


def make_val_step(model: keras.Model, loss_fn):
    """One traced function for the whole run: (images, masks) -> (per-image loss, predicted ids)."""

    @tf.function
    def val_step(images, masks):
        logits = model(images, training=False)
        return loss_fn(masks, logits), tf.argmax(logits, axis=-1, output_type=tf.int32)

    return val_step


def validate(forward, val_batches: list[dict], taxonomy: Taxonomy) -> dict:
    """Loss and the metrics of docs/metrics.md over every image of the val split."""
    confusion, losses = ConfusionMatrix(taxonomy), []
    for batch in val_batches:
        loss, pred = forward(tf.constant(batch["image"]), tf.constant(batch["mask"]))
        losses.append(loss.numpy())
        confusion.add(batch["mask"], pred.numpy())
    return {"val_loss": float(np.concatenate(losses).mean()), **validation_metrics(confusion.report())}


def format_row(row: dict, metric: str, header: bool = False) -> str:
    if header:
        names = [label for label, _, _ in TABLE] + [metric, "train_img/s", "seconds"]
        return " ".join(f"{name:>14}" for name in names)
    cells = [f"{row[key]:>14{fmt}}" for _, key, fmt in TABLE] + [f"{row[metric]:>14.4f}"]
    return " ".join(cells + [f"{row['images_per_second']:>14.1f}", f"{row['seconds']:>14.1f}"])


class EpochEnd(keras.callbacks.Callback):
    """Validate, checkpoint and report after every epoch; print the epoch table on the chief."""

    def __init__(self, session, state: tf.train.Checkpoint, loss_fn, history: list[dict], spec: LoopSpec,
                 images_per_step: int, tensorboard: Path | None):
        super().__init__()
        # The batch hook only counts: without this, Keras copies every step's logs to numpy for it,
        # a host sync after each step.
        self._supports_tf_logs = True
        self.images_per_step, self.val_batches = images_per_step, None
        self.session, self.state, self.loss_fn = session, state, loss_fn
        self.history, self.spec, self.config, self.run = history, spec, spec.config, Location.of(spec.run)
        self.taxonomy, self.metric = Taxonomy(spec.classes), spec.metric
        self.tensorboard = tensorboard
        self.writer = tf.summary.create_file_writer(str(tensorboard / "validation")) if tensorboard else None

    def on_train_begin(self, logs=None):
        # The same layers as a plain functional model, uncompiled: the exported model.keras carries no
        # optimizer state and no augmentation.
        self.export = keras.Model(self.model.inputs, self.model.outputs, name=self.model.name)
        # Built once: a tf.function made inside validate() would be re-traced every epoch.
        self.val_step = make_val_step(self.model, self.loss_fn)

    def on_epoch_begin(self, epoch, logs=None):
        self.started, self.steps = time.perf_counter(), 0
        if self.session.is_chief and not self.history:
            print(format_row({}, self.metric, header=True), flush=True)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def _write_checkpoint(self, row: dict) -> Path:
        """This worker's checkpoint in a scratch folder (every worker writes one: saving is collective
        under MultiWorkerMirroredStrategy); the chief's is the one kept."""
        folder = Path(tempfile.mkdtemp(prefix="faceseg-ckpt-"))
        try:
            # Explicit format: tf-keras falls back to HDF5 for ".keras" in threads other than the main
            # one, and Ray Train runs this loop in a worker thread.
            self.export.save(str(folder / MODEL_FILE), save_format="keras_v3")
            add_metadata(folder / MODEL_FILE, {"classes": list(self.taxonomy.names), "size": self.spec.size,
                                               "model": self.config.model.model_dump(), "metric": self.metric,
                                               "epoch": row["epoch"], "metrics": row})
            self.state.write(str(folder / STATE_DIR / "state"))  # weights + optimizer slots + step
            (folder / HISTORY_FILE).write_text(history_text(self.history))
            (folder / CONFIG_FILE).write_text(self.config.to_yaml())
            seal(folder, row["epoch"], row, {"classes": list(self.taxonomy.names), "size": self.spec.size})
            return folder
        except OSError as error:
            shutil.rmtree(folder, ignore_errors=True)
            raise write_error(error, folder) from None

    def on_epoch_end(self, epoch, logs=None):
        train_seconds = time.perf_counter() - self.started
        if self.val_batches is None:
            self.val_batches = load_batches(self.session.val_data(), self.config.train.batch_size)
        row = {"epoch": epoch + 1, "loss": float(logs["loss"]),
               **validate(self.val_step, self.val_batches, self.taxonomy),
               "steps": self.steps, "images_per_second": self.steps * self.images_per_step / train_seconds}
        row["seconds"] = time.perf_counter() - self.started
        self.history.append(row)
        folder = self._write_checkpoint(row)
        try:
            self.session.report(row, folder, checkpoint_name(row["epoch"]))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if self.session.is_chief:
            print(format_row(row, self.metric), flush=True)
            (self.run / HISTORY_FILE).write_text(history_text(self.history))
            if self.writer:
                with self.writer.as_default(step=epoch + 1):
                    for key, value in row.items():
                        tf.summary.scalar(key, value)
                self.writer.flush()
                if not self.run.is_local:
                    (self.run / TENSORBOARD).upload_from(self.tensorboard)


def _precision_policy(config: TrainConfig) -> str:
    if not config.mixed_precision:
        return "float32"
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def start_from(unet: keras.Model, init: str, taxonomy: Taxonomy) -> None:
    """`train --init`: the weights of the model `init`, layer by layer (the classifier too when the classes
    are the same ones, in the same order; else it keeps its fresh weights)."""
    source = inspect_model(init)
    same_classes = source.taxonomy == taxonomy
    transfer_weights(load_keras_model(source), unet, skip=() if same_classes else ("classifier",))


def train_loop(spec: LoopSpec, session) -> None:
    """Build, restore, fit: one epoch = one pass over this worker's shard."""
    keep_freed_memory()
    quiet_tensorflow()
    config, run = spec.config, Location.of(spec.run)
    taxonomy = Taxonomy(spec.classes)
    keras.backend.clear_session()      # --local runs may follow each other in one process
    keras.mixed_precision.set_global_policy(_precision_policy(config.train))
    strategy = session.strategy()
    keras.utils.set_random_seed(config.train.seed)

    replicas = strategy.num_replicas_in_sync
    shard_rows = spec.train_rows // session.world_size   # Ray splits the shards equally
    batch_size = max(1, min(config.train.batch_size, shard_rows // replicas))
    if session.world_size > 1:
        # Keras treats each worker's batch as the GLOBAL one under MultiWorkerMirroredStrategy and
        # takes world_size steps of batch_size from it: a worker reads batch_size x world_size rows.
        dataset_batch = batch_size * session.world_size
        steps_per_epoch = max(1, shard_rows // dataset_batch * session.world_size)
    else:      # one process: a batch is split between its replicas (MirroredStrategy) in one step
        dataset_batch = batch_size * replicas
        steps_per_epoch = max(1, shard_rows // dataset_batch)
    augmentation = Augmentation.of(config.train, taxonomy)
    on_device = spec.augment_on_device and augmentation.level != "none"
    seed = config.train.seed * 1000 + session.world_rank
    with strategy.scope():
        unet = build_unet(config.model, spec.size, taxonomy.num_classes)
        model = AugmentingModel(unet.inputs, unet.outputs, augmentation, seed, name=unet.name) if on_device else unet
        optimizer = make_optimizer(config.train, steps_per_epoch)
        loss_fn = make_loss(config.train.loss, class_weights(spec.class_frequency, config.train.class_weights))
        model.compile(optimizer=optimizer, loss=loss_fn, jit_compile=config.train.jit)
        # Slots now, not at the first step: a restore then reads everything at once, while its files exist.
        optimizer.build(model.trainable_variables)
        state = tf.train.Checkpoint(model=model, optimizer=optimizer)

    history = []
    found = restore_newest_whole(candidates(session.restore_roots, session.latest_checkpoint()),
                                 {"classes": list(taxonomy.names), "size": spec.size})
    if found:
        local, manifest = found
        try:
            history = read_history_text((local / HISTORY_FILE).read_text(), str(local / HISTORY_FILE))
            state.read(str(local / STATE_DIR / "state")).expect_partial()
        finally:
            shutil.rmtree(local, ignore_errors=True)
        if session.is_chief:
            print(f"resumed from {manifest['checkpoint']} after epoch {len(history)}", flush=True)
    elif spec.init:
        start_from(unet, spec.init, taxonomy)
    if len(history) >= config.train.epochs:
        return

    epoch_seed = seed + 7919 * len(history)
    train_data = make_train_dataset(session.train_data(), dataset_batch,
                                    augmentation.at_level("none") if on_device else augmentation, epoch_seed,
                                    spec.train_in_memory, spec.size)
    tensorboard = None
    if session.is_chief:
        tensorboard = run.local() / TENSORBOARD if run.is_local else Path(tempfile.mkdtemp(prefix="faceseg-tb-"))
    callbacks = [EpochProgressBar(steps_per_epoch, config.train.epochs)] if session.progress_bar else []
    # A step trains on dataset_batch images in all (all workers' under MWMS, all replicas' otherwise).
    callbacks.append(EpochEnd(session, state, loss_fn, history, spec, dataset_batch, tensorboard))
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(tensorboard), profile_batch=0))
    try:
        model.fit(train_data, epochs=config.train.epochs, initial_epoch=len(history), callbacks=callbacks, verbose=0)
    finally:
        if tensorboard and not run.is_local:
            shutil.rmtree(tensorboard, ignore_errors=True)
