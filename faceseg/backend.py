"""TensorFlow and tf-keras: every faceseg module takes `tf` and `keras` from here.

faceseg/__init__.py has set what TensorFlow reads when it loads (TF_USE_LEGACY_KERAS, its log level) and
made its import quiet (faceseg/logs.py), as any `faceseg.` import runs it first.
"""
from __future__ import annotations

import logging

import tensorflow as tf
import tf_keras as keras

from faceseg.logs import verbose

__all__ = ["keras", "quiet_tensorflow", "tf"]


def quiet_tensorflow() -> None:
    """TensorFlow's Python-side chatter off (MWMS logs every collective at INFO, the checkpoint writer each
    save), unless verbose."""
    if verbose():
        return
    tf.get_logger().setLevel("ERROR")
    logging.getLogger("absl").setLevel(logging.ERROR)
