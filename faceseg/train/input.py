"""A worker's train batches: its shard of the train split, held in memory or streamed from Parquet, flipped
and augmented, as a tf.data.Dataset of ((B, S, S, 3) uint8 images, (B, S, S) uint8 masks).

    held:     read once (read_shard, a mirrored copy for the flip) -> a gather per batch (held_batches)
    streamed: Ray Data's iterator every epoch (StreamedBatches) -> flip with OpenCV
    both:     [warps and colours of geometric/full as batched TensorFlow ops] -> prefetch
"""
from __future__ import annotations

import numpy as np
from faceseg.backend import tf

from faceseg.data.augment import Augmentation, augment_batch, flip_batch, mirror_into
from faceseg.errors import FacesegError

READ_ROWS = 64   # rows per Ray Data batch while a held shard is read


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
        raise FacesegError("this worker's share of the train split is empty: fewer train images than workers")
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


