"""Losses on sparse uint8 masks: cross-entropy, optionally plus soft Dice (small parts decide the F1)."""
from __future__ import annotations

from faceseg.backend import tf


def class_weights(frequency, mode: str) -> list[float]:
    """Per-class CE weights from pixel frequencies: 'sqrt-inverse' lifts small parts (Helen's eyes and
    brows cover ~0.3% of pixels) over the background, so they are not ignored early; normalised to
    mean 1 over pixels."""
    if mode == "none":
        return [1.0] * len(frequency)
    freq = [max(float(f), 1e-4) for f in frequency]
    raw = [f ** -0.5 for f in freq]
    scale = sum(f * w for f, w in zip(freq, raw)) / sum(freq)
    return [w / scale for w in raw]


def _pixel_cross_entropy(y_true, logits, weights):
    """(B, H, W) ids, (B, H, W, C) logits -> (B,) weighted mean pixel cross-entropy."""
    ids = tf.cast(y_true, tf.int32)
    pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(ids, logits)
    return tf.reduce_mean(pixel * tf.gather(tf.constant(weights, tf.float32), ids), axis=[1, 2])


def _soft_dice(y_true, logits, eps: float = 1.0):
    """(B,) 1 - mean over classes of the soft Dice; one-hot only per batch, inside the graph."""
    probs = tf.nn.softmax(logits)
    onehot = tf.one_hot(tf.cast(y_true, tf.int32), tf.shape(logits)[-1], dtype=probs.dtype)
    inter = tf.reduce_sum(probs * onehot, axis=[1, 2])
    total = tf.reduce_sum(probs + onehot, axis=[1, 2])
    return 1.0 - tf.reduce_mean((2.0 * inter + eps) / (total + eps), axis=-1)


def make_loss(name: str, weights: list[float]):
    """A Keras loss on (uint8 ids, float32 logits) returning one value per image."""
    if name == "ce":
        return lambda y_true, logits: _pixel_cross_entropy(y_true, logits, weights)
    return lambda y_true, logits: _pixel_cross_entropy(y_true, logits, weights) + _soft_dice(y_true, logits)
