"""The one training loop, run by every Ray Train worker and by `--local` alike.

    shard --held_batches | StreamedBatches--> [augment] --> model.fit (under the strategy)
                                                               | on_epoch_end    [augment in the train
                                                               v                  step on a GPU]
            validate on the WHOLE val split -> checkpoint -> session.report -> table row
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import faceseg  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras as keras

from faceseg.config import Config, TrainConfig
from faceseg.data.augment import Augmentation, augment_batch, flip_batch, mirror_into
from faceseg.labels import Taxonomy
from faceseg.metrics import ConfusionMatrix, validation_metrics
from faceseg.model.losses import class_weights, make_loss
from faceseg.model.saved import MODEL_FILE, add_metadata
from faceseg.model.unet import build_unet
from faceseg.runtime import keep_freed_memory
from faceseg.storage import Location
from faceseg.train.checkpoint import (HISTORY_FILE, STATE_DIR, candidates, checkpoint_name, history_text,
                                      read_history_text, restore_newest_whole, seal)
from faceseg.train.progress import EpochProgressBar
from faceseg.train.session import write_error

READ_ROWS = 64   # rows per Ray Data batch while a held shard is read
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


class StreamedBatches:
    """One worker's shard streamed from Parquet every epoch, as NumPy batches for
    tf.data.Dataset.from_generator: one Python call per batch, through Ray Data's local shuffle buffer.
    With `flip`, each batch is flipped here with OpenCV (flip_batch), the cheapest place on a CPU."""

    def __init__(self, shard, batch_size: int, flip: bool, flip_lut: np.ndarray, seed: int):
        self.shard, self.batch_size, self.flip, self.flip_lut = shard, batch_size, flip, flip_lut
        self.seed, self.epoch = seed, 0

    def __call__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        for batch in self.shard.iter_batches(batch_size=self.batch_size, batch_format="numpy", drop_last=True,
                                             local_shuffle_buffer_size=4 * self.batch_size,
                                             local_shuffle_seed=int(rng.integers(2**31))):
            if self.flip:
                yield flip_batch(batch["image"], batch["mask"], self.flip_lut, rng)
            else:
                yield batch["image"], batch["mask"]


def read_shard(shard, flip_lut: np.ndarray | None) -> tuple[tf.Tensor, tf.Tensor]:
    """The whole shard as two tensors, (N, S, S, 3) images and (N, S, S) masks, read once. With `flip_lut`,
    rows N..2N-1 hold rows 0..N-1 mirrored (left/right classes swapped): a flipped batch is then a plain
    gather, as cheap as an unflipped one, for twice the memory.

    Ray Data hands the rows over in the order its read tasks finish, which changes from run to run; with a
    "name" column the rows are held sorted by name, so that a seed deals the same batches every run."""
    chunks = list(shard.iter_batches(batch_size=READ_ROWS, batch_format="numpy"))
    count = sum(len(chunk["image"]) for chunk in chunks)
    if not count:
        raise ValueError("this worker's share of the train split is empty: fewer train images than workers")
    position = np.arange(count)                  # where each row, as read, is held
    if "name" in chunks[0]:
        position[np.argsort(np.concatenate([chunk["name"] for chunk in chunks]), kind="stable")] = np.arange(count)
    copies = 1 if flip_lut is None else 2
    images = np.empty((copies * count, *chunks[0]["image"].shape[1:]), np.uint8)
    masks = np.empty((copies * count, *chunks[0]["mask"].shape[1:]), np.uint8)
    start = 0
    for chunk in chunks:
        rows = position[start:start + len(chunk["image"])]
        images[rows], masks[rows] = chunk["image"], chunk["mask"]
        start += len(rows)
    del chunks
    if flip_lut is not None:
        mirror_into(images[:count], masks[:count], flip_lut, images[count:], masks[count:])
    return tf.convert_to_tensor(images), tf.convert_to_tensor(masks)


def held_batches(images: tf.Tensor, masks: tf.Tensor, batch_size: int, flip: bool, seed: int) -> tf.data.Dataset:
    """Batches dealt out of a held shard (read_shard) in a new random order every epoch, each one a single
    gather inside tf.data: no Python, no Ray Data execution and no per-image op after the read. With
    `flip`, each image comes from the mirrored half with probability 1/2.

    An epoch's row order is drawn whole, as a (steps, batch) tensor, not by Dataset.batch: under
    MultiWorkerMirroredStrategy, tf.data's rebatching rewrites a batch op's size (to batch / workers),
    which would halve what a worker's epoch reads."""
    count = int(images.shape[0]) // (2 if flip else 1)
    steps = count // batch_size

    def epoch(epoch_seed):
        seeds = tf.random.experimental.stateless_split(tf.stack([epoch_seed, 0]), 2)
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed=seeds[0])
        rows = tf.reshape(order[:steps * batch_size], [steps, batch_size])
        if flip:
            mirrored = tf.random.stateless_uniform([steps, batch_size], seed=seeds[1]) < 0.5
            rows += count * tf.cast(mirrored, tf.int64)
        return tf.data.Dataset.from_tensor_slices(rows)

    epoch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    return epoch_seeds.flat_map(epoch).map(lambda rows: (tf.gather(images, rows), tf.gather(masks, rows)))


def make_train_dataset(shard, batch_size: int, augmentation: Augmentation, seed: int, hold: bool = False,
                       size: int | None = None) -> tf.data.Dataset:
    """A worker's shard as batches of ((B, S, S, 3) uint8 images, (B, S, S) uint8 masks).

    `batch_size` is what one batch of the dataset holds (Keras splits it between replicas). With `hold`
    the shard is read now into this worker's memory as tensors (read_shard, held_batches); without, it
    streams from Parquet every epoch (StreamedBatches). `augmentation` is what runs here, on the worker's
    CPU (level "none" when the train step augments on the device): the flip (a mirrored copy when held,
    OpenCV when streamed), then the warps and colours of `geometric`/`full` as batched TensorFlow ops.
    """
    flip, flip_lut = augmentation.level != "none", augmentation.flip_lut
    if hold:
        images, masks = read_shard(shard, flip_lut if flip else None)
        dataset = held_batches(images, masks, batch_size, flip, seed)
    else:
        dataset = tf.data.Dataset.from_generator(
            StreamedBatches(shard, batch_size, flip, flip_lut, seed),
            output_signature=(tf.TensorSpec((batch_size, size, size, 3), tf.uint8),
                              tf.TensorSpec((batch_size, size, size), tf.uint8)))
    if augmentation.level in ("geometric", "full"):
        generator = tf.random.Generator.from_seed(seed)
        dataset = dataset.map(lambda x, y: augment_batch(x, y, augmentation, generator, flip=False))
    options = tf.data.Options()
    # Ray Data already gave each worker its own equal shard: TF must not shard it again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(2)


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

    def __init__(self, session, state: tf.train.Checkpoint, loss_fn, history: list[dict], config: Config,
                 run: Location, images_per_step: int, info: dict, tensorboard: Path | None):
        super().__init__()
        # The batch hook only counts: without this, Keras copies every step's logs to numpy for it,
        # a host sync after each step.
        self._supports_tf_logs = True
        self.images_per_step, self.val_batches = images_per_step, None
        self.session, self.state, self.loss_fn = session, state, loss_fn
        self.history, self.config, self.run, self.info = history, config, run, info
        self.taxonomy, self.metric = Taxonomy(tuple(info["classes"])), info["metric"]
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
            add_metadata(folder / MODEL_FILE, {"classes": list(self.taxonomy.names), "size": self.info["size"],
                                               "metric": self.metric, "epoch": row["epoch"], "metrics": row})
            self.state.write(str(folder / STATE_DIR / "state"))  # weights + optimizer slots + step
            (folder / HISTORY_FILE).write_text(history_text(self.history))
            (folder / "config.yaml").write_text(self.config.to_yaml())
            seal(folder, row["epoch"], row, {"classes": list(self.taxonomy.names), "size": self.info["size"]})
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
                    (self.run / "tensorboard").upload_from(self.tensorboard)


def _precision_policy(config: TrainConfig) -> str:
    if not config.mixed_precision:
        return "float32"
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def train_loop(loop_config: dict, session) -> None:
    """Build, restore, fit: one epoch = one pass over this worker's shard.

    loop_config: {"config": Config as a dict, "run": the run folder's URI, "train_rows": rows in the train
                  split, "train_in_memory": keep this worker's shard in memory after the first epoch,
                  "class_frequency": train pixel share per class, "classes": class names, "size": px,
                  "metric": what picks the best epoch, "augment_on_device": augment in the train step}.
    """
    keep_freed_memory()
    config = Config.from_dict(loop_config["config"])
    run = Location.of(loop_config["run"])
    taxonomy = Taxonomy(tuple(loop_config["classes"]))
    tf.get_logger().setLevel("ERROR")  # MWMS logs every collective at INFO
    logging.getLogger("absl").setLevel(logging.WARNING)   # TF's checkpoint writer logs each save at INFO
    keras.backend.clear_session()      # --local runs may follow each other in one process
    keras.mixed_precision.set_global_policy(_precision_policy(config.train))
    strategy = session.strategy()
    keras.utils.set_random_seed(config.train.seed)

    replicas = strategy.num_replicas_in_sync
    shard_rows = loop_config["train_rows"] // session.world_size   # Ray splits the shards equally
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
    on_device = loop_config["augment_on_device"] and augmentation.level != "none"
    seed = config.train.seed * 1000 + session.world_rank
    with strategy.scope():
        unet = build_unet(config.model, loop_config["size"], taxonomy.num_classes)
        model = AugmentingModel(unet.inputs, unet.outputs, augmentation, seed, name=unet.name) if on_device else unet
        optimizer = make_optimizer(config.train, steps_per_epoch)
        loss_fn = make_loss(config.train.loss, class_weights(loop_config["class_frequency"], config.train.class_weights))
        model.compile(optimizer=optimizer, loss=loss_fn, jit_compile=config.train.jit)
        # Slots now, not at the first step: a restore then reads everything at once, while its files exist.
        optimizer.build(model.trainable_variables)
        state = tf.train.Checkpoint(model=model, optimizer=optimizer)

    history = []
    found = restore_newest_whole(candidates(session.restore_roots, session.latest_checkpoint()),
                                 {"classes": list(taxonomy.names), "size": loop_config["size"]})
    if found:
        local, manifest = found
        try:
            history = read_history_text((local / HISTORY_FILE).read_text(), str(local / HISTORY_FILE))
            state.read(str(local / STATE_DIR / "state")).expect_partial()
        finally:
            shutil.rmtree(local, ignore_errors=True)
        if session.is_chief:
            print(f"resumed from {manifest['checkpoint']} after epoch {len(history)}", flush=True)
    if len(history) >= config.train.epochs:
        return

    epoch_seed = seed + 7919 * len(history)
    train_data = make_train_dataset(session.train_data(), dataset_batch,
                                    augmentation.at_level("none") if on_device else augmentation, epoch_seed,
                                    loop_config["train_in_memory"], loop_config["size"])
    tensorboard = None
    if session.is_chief:
        tensorboard = run.local() / "tensorboard" if run.is_local else Path(tempfile.mkdtemp(prefix="faceseg-tb-"))
    callbacks = [EpochProgressBar(steps_per_epoch, config.train.epochs)] if session.progress_bar else []
    # A step trains on dataset_batch images in all (all workers' under MWMS, all replicas' otherwise).
    callbacks.append(EpochEnd(session, state, loss_fn, history, config, run, dataset_batch, loop_config, tensorboard))
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(tensorboard), profile_batch=0))
    try:
        model.fit(train_data, epochs=config.train.epochs, initial_epoch=len(history), callbacks=callbacks, verbose=0)
    finally:
        if tensorboard and not run.is_local:
            shutil.rmtree(tensorboard, ignore_errors=True)
