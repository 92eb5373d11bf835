"""`FaceParser`: a trained model as a function from a face photo to its label map, at the photo's own size.

    parser = FaceParser.load("runs/r1")            # a run folder, a .keras file, or s3://.../model.keras
    ids = parser("photo.jpg")                      # (H, W) uint8 class ids; parser.classes names them
    overlay = parser.overlay("photo.jpg", ids)     # RGB picture with the classes blended in

The batch-prediction job, the Serve endpoint and this class share the same three steps, so they give
the same numbers for the same image:
  1. decode (any size; large JPEGs at a reduced scale) and resize to the model's grid    [CPU]
  2. the U-Net's softmax probabilities for a batch                                       [accelerator]
  3. probabilities resized to the output size, then argmax, in bands of rows             [accelerator]
Step 3 runs in the TensorFlow graph, so only uint8 ids come back from the device, and working in bands
keeps memory bounded for any output size (BAND_BYTES of float32 probabilities at a time).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from faceseg.data.decode import decode_image, read_image, resize_image
from faceseg.labels import Taxonomy
from faceseg.model.saved import ModelInfo, inspect_model, load_keras_model
from faceseg.storage import Location

BAND_BYTES = 64 << 20   # float32 probabilities resized at a time


def resize_argmax_band(tf, probs, height, width, row0, rows):
    """Rows [row0, row0 + rows) of the (height, width) label map from (S, S, C) probabilities.

    Bilinear resize with half-pixel centres and clamped edges, as OpenCV's INTER_LINEAR and
    tf.image.resize, then argmax; computed separably with gathers, so a band costs rows x width x C.
    """
    def taps(out_size, in_size, start, count):
        scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
        src = (tf.cast(tf.range(start, start + count), tf.float32) + 0.5) * scale - 0.5
        src = tf.clip_by_value(src, 0.0, tf.cast(in_size - 1, tf.float32))
        low = tf.cast(tf.floor(src), tf.int32)
        high = tf.minimum(low + 1, in_size - 1)
        return low, high, src - tf.cast(low, tf.float32)

    in_h, in_w = tf.shape(probs)[0], tf.shape(probs)[1]
    y0, y1, wy = taps(height, in_h, row0, rows)
    top, bottom = tf.gather(probs, y0), tf.gather(probs, y1)                        # (rows, S, C)
    band = top + (bottom - top) * wy[:, None, None]
    x0, x1, wx = taps(width, in_w, 0, width)
    left, right = tf.gather(band, x0, axis=1), tf.gather(band, x1, axis=1)          # (rows, W, C)
    band = left + (right - left) * wx[None, :, None]
    return tf.cast(tf.argmax(band, axis=-1), tf.uint8)


class FaceParser:
    """A loaded faceseg model; see the module docstring."""

    def __init__(self, info: ModelInfo):
        import faceseg  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
        import tensorflow as tf

        self.info = info
        self.taxonomy: Taxonomy = info.taxonomy
        self.size = info.size
        self.model = load_keras_model(info)
        self._tf = tf
        model = self.model
        self._probabilities = tf.function(
            lambda images: tf.nn.softmax(tf.cast(model(images, training=False), tf.float32)),
            input_signature=[tf.TensorSpec([None, self.size, self.size, 3], tf.uint8)])
        self._band = tf.function(
            lambda probs, height, width, row0, rows: resize_argmax_band(tf, probs, height, width, row0, rows),
            input_signature=[tf.TensorSpec([self.size, self.size, self.taxonomy.num_classes], tf.float32)]
            + [tf.TensorSpec([], tf.int32)] * 4)

    @classmethod
    def load(cls, where: Location | str | Path) -> "FaceParser":
        """A run folder, a .keras file or a URI; the file is checked before it is deserialised."""
        return cls(inspect_model(where))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.taxonomy.names

    # --- the three steps, shared with the batch job and the Serve endpoint -----------------------------------
    def read(self, image) -> tuple[np.ndarray, tuple[int, int]]:
        """An RGB array, a file path/URI or encoded bytes -> ((S, S, 3) model input, original (H, W))."""
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or not image.size:
                raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
            return resize_image(image, self.size), image.shape[:2]
        if isinstance(image, (bytes, bytearray, memoryview)):
            rgb, original = decode_image(np.frombuffer(image, np.uint8), "<bytes>", self.size)
        else:
            rgb, original = read_image(str(image), self.size)
        return resize_image(rgb, self.size), original

    def probabilities(self, pixels: np.ndarray):
        """(B, S, S, 3) uint8 -> (B, S, S, C) float32 softmax, left on the device."""
        return self._probabilities(pixels)

    def label_map(self, probs, height: int, width: int) -> np.ndarray:
        """(S, S, C) probabilities (one image's, on the device) -> (height, width) uint8 ids."""
        rows_per_band = max(1, BAND_BYTES // (4 * width * self.taxonomy.num_classes))
        bands = [self._band(probs, height, width, row0, min(rows_per_band, height - row0)).numpy()
                 for row0 in range(0, height, rows_per_band)]
        return bands[0] if len(bands) == 1 else np.concatenate(bands)

    # --- the public calls -------------------------------------------------------------------------------------
    def batch(self, images: list, sizes: list[tuple[int, int]] | None = None) -> list[np.ndarray]:
        """Label maps for several images, each at its own size (or at `sizes`), in one forward pass."""
        if not images:
            return []
        read = [self.read(image) for image in images]
        probs = self.probabilities(np.stack([pixels for pixels, _ in read]))
        sizes = sizes or [original for _, original in read]
        return [self.label_map(probs[i], int(h), int(w)) for i, (h, w) in enumerate(sizes)]

    def __call__(self, image) -> np.ndarray:
        """(H, W) uint8 class ids for one image (RGB array, file path/URI or encoded bytes)."""
        return self.batch([image])[0]

    def overlay(self, image, ids: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
        """An RGB picture: the image, the label map blended on it (and the ground truth), with a legend."""
        from faceseg.predict.overlay import PANEL_HEIGHT, make_overlay

        if not isinstance(image, np.ndarray):
            image = decode_image(np.frombuffer(image, np.uint8), "<bytes>", PANEL_HEIGHT)[0] \
                if isinstance(image, (bytes, bytearray)) else read_image(str(image), PANEL_HEIGHT)[0]
        return make_overlay(image, ids, self.taxonomy, truth)
