"""Losses on sparse uint8 masks: cross-entropy, optionally plus soft Dice (small parts decide the F1)."""
from __future__ import annotations

import tensorflow as tf

from faceseg.labels import NUM_CLASSES


def cross_entropy(y_true, logits):
    """(B, H, W) ids, (B, H, W, C) logits -> (B,) mean pixel cross-entropy."""
    pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y_true, tf.int32), logits)
    return tf.reduce_mean(pixel, axis=[1, 2])


def _soft_dice(y_true, logits, eps: float = 1.0):
    """(B,) 1 - mean over classes of the soft Dice; one-hot only per batch, inside the graph."""
    probs = tf.nn.softmax(logits)
    onehot = tf.one_hot(tf.cast(y_true, tf.int32), NUM_CLASSES, dtype=probs.dtype)
    inter = tf.reduce_sum(probs * onehot, axis=[1, 2])
    total = tf.reduce_sum(probs + onehot, axis=[1, 2])
    return 1.0 - tf.reduce_mean((2.0 * inter + eps) / (total + eps), axis=-1)


def cross_entropy_dice(y_true, logits):
    return cross_entropy(y_true, logits) + _soft_dice(y_true, logits)


LOSSES = {"ce": cross_entropy, "ce+dice": cross_entropy_dice}


def make_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"train.loss must be one of {', '.join(LOSSES)}, not {name!r}")
    return LOSSES[name]
