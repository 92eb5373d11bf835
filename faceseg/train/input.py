"""A worker's train batches: its shard of the train split, held in memory or streamed from Parquet, flipped
and augmented, as a tf.data.Dataset of ((B, S, S, 3) uint8 images, (B, S, S) uint8 masks).

    the shard: the cache's stored columns (Cache.dataset(..., decoded=False)), whole blocks of Arrow
               fixed-size binary values turned into uint8 tensors here, without a copy (blocks)
    held:     read once (read_shard, a mirrored copy for the flip) -> a gather per batch (held_batches)
    streamed: every epoch (StreamedBatches), shuffled in a window, flipped with OpenCV
    both:     [warps and colours of geometric/full as batched TensorFlow ops] -> prefetch
"""
from __future__ import annotations

import numpy as np
from faceseg.backend import tf

from faceseg.data.augment import Augmentation, augment_batch, flip_batch, mirror_into
from faceseg.data.cache import decode_tensor
from faceseg.errors import FacesegError


def blocks(shard, size: int, prefetch: int = 2):
    """The shard's rows as they come, in pieces of {"image": (N, S, S, 3), "mask": (N, S, S)} uint8 (and
    "name" when read): views of the Arrow buffers, a piece per record batch of a block (a block of several
    Parquet row groups holds several, and joining them would copy every row), `prefetch` blocks fetched
    ahead while the caller works."""
    for table in shard.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=prefetch):
        for piece in table.to_batches():
            block = {"image": decode_tensor(piece.column("image"), (size, size, 3)),
                     "mask": decode_tensor(piece.column("mask"), (size, size))}
            if "name" in piece.schema.names:
                block["name"] = piece.column("name").to_numpy(zero_copy_only=False)
            yield block


class StreamedBatches:
    """One worker's shard streamed from Parquet every epoch, as NumPy batches for
    tf.data.Dataset.from_generator: one Python call per batch and no Python per row.

    Ray Data hands over whole blocks (no re-batching), prefetched while the step runs. Rows are shuffled in
    a window of `window` rows: each batch takes `batch_size` rows of the window at random, whose places the
    next rows of the stream then take; at the end of the stream the window is dealt out in a random order.
    How random: a row leaves the window, on average, after window / batch_size batches, so an epoch's order
    mixes rows that arrive within a few windows of each other, drawn anew every epoch; which rows arrive
    together is Ray Data's block order (the split's files, in a new random order each epoch). With `flip`,
    a random half of each batch is mirrored in the same gather, left and right classes swapped by a table.
    """

    def __init__(self, shard, batch_size: int, flip: bool, flip_lut: np.ndarray, seed: int, size: int,
                 window: int = 0):
        self.shard, self.batch_size, self.flip, self.seed, self.size, self.epoch = shard, batch_size, flip, seed, size, 0
        self.window = max(window or 8 * batch_size, batch_size)
        self.lut = np.asarray(flip_lut, np.uint8)

    def _deal(self, images, masks, rows: np.ndarray, rng: np.random.Generator):
        """One batch: rows of the window, a random half mirrored when flipping."""
        if self.flip:
            return flip_batch(images, masks, self.lut, rng, rows)
        return images[rows], masks[rows]

    def __call__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        images = masks = None
        free = np.arange(self.window)                # the window's places that wait for a row of the stream
        for block in blocks(self.shard, self.size):
            incoming_images, incoming_masks = block["image"], block["mask"]
            if images is None:
                images = np.empty((self.window, *incoming_images.shape[1:]), np.uint8)
                masks = np.empty((self.window, *incoming_masks.shape[1:]), np.uint8)
            start = 0
            while start < len(incoming_images):
                places = free[:len(incoming_images) - start]
                images[places] = incoming_images[start:start + len(places)]
                masks[places] = incoming_masks[start:start + len(places)]
                free, start = free[len(places):], start + len(places)
                if not len(free):                    # a full window: deal a batch, its places wait for rows
                    free = rng.choice(self.window, self.batch_size, replace=False)
                    yield self._deal(images, masks, free, rng)
        if images is None:
            return
        held = np.setdiff1d(np.arange(self.window), free)
        order = rng.permutation(held)                # the end of the stream: the window, dealt out
        for first in range(0, len(order) - self.batch_size + 1, self.batch_size):
            yield self._deal(images, masks, order[first:first + self.batch_size], rng)


def read_shard(shard, size: int, flip_lut: np.ndarray | None) -> tuple[tf.Tensor, tf.Tensor]:
    """The whole shard as two tensors, (N, S, S, 3) images and (N, S, S) masks, read once. With `flip_lut`,
    rows N..2N-1 hold rows 0..N-1 mirrored (left/right classes swapped): a flipped batch is then a plain
    gather, as cheap as an unflipped one, for twice the memory.

    Ray Data hands the rows over in the order its read tasks finish, which changes from run to run; with a
    "name" column the rows are held sorted by name, so that a seed deals the same batches every run."""
    chunks = list(blocks(shard, size))
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


def make_train_dataset(shard, batch_size: int, augmentation: Augmentation, seed: int, hold: bool,
                       size: int) -> tf.data.Dataset:
    """A worker's shard as batches of ((B, S, S, 3) uint8 images, (B, S, S) uint8 masks).

    `batch_size` is what one batch of the dataset holds (Keras splits it between replicas). With `hold`
    the shard is read now into this worker's memory as tensors (read_shard, held_batches); without, it
    streams from Parquet every epoch (StreamedBatches). `augmentation` is what runs here, on the worker's
    CPU (level "none" when the train step augments on the device): the flip (a mirrored copy when held,
    OpenCV when streamed), then the warps and colours of `geometric`/`full` as batched TensorFlow ops.
    """
    flip, flip_lut = augmentation.level != "none", augmentation.flip_lut
    if hold:
        images, masks = read_shard(shard, size, flip_lut if flip else None)
        dataset = held_batches(images, masks, batch_size, flip, seed)
    else:
        dataset = tf.data.Dataset.from_generator(
            StreamedBatches(shard, batch_size, flip, flip_lut, seed, size),
            output_signature=(tf.TensorSpec((batch_size, size, size, 3), tf.uint8),
                              tf.TensorSpec((batch_size, size, size), tf.uint8)))
    if augmentation.level in ("geometric", "full"):
        generator = tf.random.Generator.from_seed(seed)
        dataset = dataset.map(lambda x, y: augment_batch(x, y, augmentation, generator, flip=False))
    options = tf.data.Options()
    # Ray Data already gave each worker its own equal shard: TF must not shard it again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(2)


