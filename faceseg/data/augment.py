"""Training augmentation as batched TensorFlow ops, run inside each worker's tf.data pipeline.

Why there: it is cheap next to the U-Net step, runs on the worker's own CPU threads in parallel with
the model (tf.data prefetch), and keeps the Parquet cache and Ray Data stages augmentation-free, so
validation and prediction see exactly the stored pixels. The flip has a NumPy/OpenCV twin, `flip_batch`,
for the input side on a CPU, where TensorFlow's reverse/where/gather cost ten times more
(benchmarks/results/design.md); inside a train step on a GPU the TensorFlow ops run.

Levels: none < flip < geometric (flip + scale/rotate/translate) < full (geometric + photometric).
Two settings: the scale range (train.augment_scale), 1 +- 0.2 by default, wider teaches faces framed
smaller or larger than the training photos' (benchmarks/results/real_photos_trials.md, twelfth round);
and, for `full`, the share of photos whose background is swapped for a random wall
(train.augment_background), so that a wall's colour stops saying "background" to the model.
Label maps are only ever moved with nearest neighbour, so no interpolated class id can appear.
Background is Taxonomy.background, the same class the metrics and overlays treat as background.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np
from faceseg.backend import tf

@dataclass(frozen=True, eq=False)
class Augmentation:
    """What a train batch goes through: the level, what it needs from the taxonomy (the mirror table,
    flip_lut[id] = the id a pixel takes when mirrored; the background id, for what a zoom out uncovers and
    where a new wall goes) and the level's settings (train.augment_scale, train.augment_background)."""

    level: str
    flip_lut: np.ndarray
    background_id: int = 0
    scale_range: float = 0.2
    wall_share: float = 0.0

    @classmethod
    def of(cls, train, taxonomy) -> "Augmentation":
        """From a TrainConfig and the Taxonomy the model learns."""
        return cls(train.augment, taxonomy.flip_lut, taxonomy.background, train.augment_scale,
                   train.augment_background)

    def at_level(self, level: str) -> "Augmentation":
        return replace(self, level=level)


def _flip(images, masks, flip_lut, gen: tf.random.Generator):
    """Mirror half of the batch; left and right classes swap in the mirrored label maps."""
    do = gen.uniform([tf.shape(images)[0]]) < 0.5                     # (B,)
    flipped_masks = tf.gather(tf.constant(flip_lut), tf.cast(tf.reverse(masks, axis=[2]), tf.int32))
    images = tf.where(do[:, None, None, None], tf.reverse(images, axis=[2]), images)
    masks = tf.where(do[:, None, None], flipped_masks, masks)
    return images, masks


def _mirror_tables(flip_lut: np.ndarray) -> tuple[np.ndarray, bool]:
    """cv2.LUT's 256-entry table for the class swap, and whether any class swaps at all."""
    lut = np.zeros(256, np.uint8)                 # cv2.LUT maps all 256 byte values
    lut[:len(flip_lut)] = flip_lut
    return lut, not np.array_equal(flip_lut, np.arange(len(flip_lut)))


def _mirror(image, mask, out_image, out_mask, lut: np.ndarray, swaps: bool) -> None:
    cv2.flip(image, 1, dst=out_image)
    cv2.flip(mask, 1, dst=out_mask)
    if swaps:
        cv2.LUT(out_mask, lut, dst=out_mask)


def mirror_into(images: np.ndarray, masks: np.ndarray, flip_lut: np.ndarray, out_images: np.ndarray,
                out_masks: np.ndarray) -> None:
    """out_images[i], out_masks[i] = images[i], masks[i] mirrored, left and right classes swapped."""
    lut, swaps = _mirror_tables(flip_lut)
    for image, mask, out_image, out_mask in zip(images, masks, out_images, out_masks):
        _mirror(image, mask, out_image, out_mask, lut, swaps)


def flip_batch(images: np.ndarray, masks: np.ndarray, flip_lut: np.ndarray, rng: np.random.Generator,
               rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What `_flip` does, in NumPy and OpenCV: new arrays of `rows` of the inputs (all of them by default),
    each mirrored with probability 1/2 (its label map mirrored too and left/right classes swapped). One
    gather, then OpenCV mirrors the chosen rows: twenty times faster than numpy's reversed gather."""
    rows = np.arange(len(images)) if rows is None else rows
    lut, swaps = _mirror_tables(flip_lut)
    out_images, out_masks = images[rows], masks[rows]
    for i in np.flatnonzero(rng.random(len(rows)) < 0.5):
        _mirror(images[rows[i]], masks[rows[i]], out_images[i], out_masks[i], lut, swaps)
    return out_images, out_masks


def _affine(images, masks, gen: tf.random.Generator, scale_range: float, background_id: int):
    """Random scale 1 +- scale_range, rotation +-15 deg, shift +-8%, about the image centre; what a zoom out
    uncovers is black, labelled background."""
    b = tf.shape(images)[0]
    size = tf.cast(tf.shape(images)[1], tf.float32)
    scale = gen.uniform([b], 1.0 - scale_range, 1.0 + scale_range)
    angle = gen.uniform([b], -15.0, 15.0) * (math.pi / 180.0)
    shift = gen.uniform([b, 2], -0.08, 0.08) * size
    # The transform maps OUTPUT pixel coordinates to INPUT ones, hence the inverse rotation and scale.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    c = (size - 1.0) / 2.0
    tx = c - cos * (c + shift[:, 0]) + sin * (c + shift[:, 1])
    ty = c - sin * (c + shift[:, 0]) - cos * (c + shift[:, 1])
    zeros = tf.zeros([b])
    transform = tf.stack([cos, -sin, tx, sin, cos, ty, zeros, zeros], axis=1)  # (B, 8)
    shape = tf.shape(images)[1:3]

    def warp(x, interpolation, fill):
        return tf.raw_ops.ImageProjectiveTransformV3(images=x, transforms=transform, output_shape=shape,
                                                     fill_value=float(fill), interpolation=interpolation,
                                                     fill_mode="CONSTANT")

    images = warp(images, "BILINEAR", 0)
    masks = warp(masks[..., None], "NEAREST", background_id)[..., 0]
    return images, masks


def _new_background(images, masks, gen: tf.random.Generator, share: float, background_id: int):
    """For `share` of the batch, background pixels (and what a zoom out uncovered) become a random wall: a 4x4
    grid of colours around one random grey level, resized smoothly to the image, so dark, bright, beige or
    tinted walls with gradients all appear behind faces. float32 in [0, 255]."""
    b, size = tf.shape(images)[0], tf.shape(images)[1:3]
    grey = gen.uniform([b, 1, 1, 1], 0.0, 255.0)
    tint = gen.uniform([b, 1, 1, 3], -40.0, 40.0)
    cells = grey + tint + gen.uniform([b, 4, 4, 3], -30.0, 30.0)
    wall = tf.clip_by_value(tf.image.resize(cells, size, method="bilinear"), 0.0, 255.0)
    swap = (gen.uniform([b, 1, 1]) < share) & (masks == background_id)
    return tf.where(swap[..., None], wall, images)


def _photometric(images, gen: tf.random.Generator):
    """Brightness, contrast, saturation, hue-ish channel gains, blur and noise, per image. float32 in [0,255]."""
    b = tf.shape(images)[0]
    brightness = gen.uniform([b, 1, 1, 1], -30.0, 30.0)
    contrast = gen.uniform([b, 1, 1, 1], 0.7, 1.3)
    saturation = gen.uniform([b, 1, 1, 1], 0.6, 1.4)
    channel_gain = gen.uniform([b, 1, 1, 3], 0.9, 1.1)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    grey = tf.reduce_mean(images, axis=3, keepdims=True)
    x = grey + (images - grey) * saturation
    x = (x - mean) * contrast + mean + brightness
    x = x * channel_gain
    blurred = tf.nn.avg_pool2d(x, 3, 1, "SAME")
    x = tf.where(gen.uniform([b, 1, 1, 1]) < 0.3, blurred, x)
    x = x + gen.normal(tf.shape(x)) * gen.uniform([b, 1, 1, 1], 0.0, 8.0)
    return tf.clip_by_value(x, 0.0, 255.0)


def augment_batch(images, masks, augmentation: Augmentation, gen: tf.random.Generator, flip: bool = True):
    """(B, S, S, 3) uint8, (B, S, S) uint8 -> same shapes and dtypes, augmented at `augmentation.level`.

    `flip=False`: the batch was flipped already (flip_batch), only the warps and colours of the level remain.
    `full` gives `augmentation.wall_share` of the batch a new background before the colours change."""
    a = augmentation
    if a.level == "none":
        return images, masks
    if flip:
        images, masks = _flip(images, masks, a.flip_lut, gen)
    if a.level in ("geometric", "full"):
        x, masks = _affine(tf.cast(images, tf.float32), masks, gen, a.scale_range, a.background_id)
        if a.level == "full":
            if a.wall_share > 0:
                x = _new_background(x, masks, gen, a.wall_share, a.background_id)
            x = _photometric(x, gen)
        images = tf.cast(tf.round(x), tf.uint8)
    return images, masks
