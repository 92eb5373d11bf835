"""`FaceParser`: a trained model as a function from a face photo to its label map, at the photo's own size.

    parser = FaceParser.load("runs/r1")            # a run folder, a .keras file, or s3://.../model.keras
    ids = parser("photo.jpg")                      # (H, W) uint8 class ids; parser.classes names them
    overlay = parser.overlay("photo.jpg", ids)     # RGB picture with the classes blended in

The batch-prediction job, the Serve endpoint and this class share the same three steps, so they give
the same numbers for the same image:
  1. decode (any size; large JPEGs at a reduced scale) and resize to the model's grid,
     and the photo at up to REFINE_ZOOM times the grid as the guide                    [CPU]
  2. the U-Net's softmax probabilities for a batch                                       [accelerator]
  3. probabilities resized to the guide, refined along the photo's edges (a guided
     filter), resized to the output size, then argmax, in bands of rows                 [accelerator]
Step 3 runs in the TensorFlow graph, so only uint8 ids come back from the device, and working in bands
keeps memory bounded for any output size (BAND_BYTES of float32 probabilities at a time).

Why refine: the model sees the photo at 128 or 256 px, the label map is wanted at the photo's size, and
a bilinear resize of the probabilities puts class edges only as precisely as the model's grid. The guided
filter (He, Sun and Tang, "Guided Image Filtering", ECCV 2010 / TPAMI 2013) makes the probabilities follow
the photo's colour edges within a few grid pixels (benchmarks/results/real_photos_trials.md, sixth round).
`refine=False` (`faceseg predict --no-refine`) gives the plain resize.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from faceseg.data.decode import (MAX_IMAGE_PIXELS, decode_image, decode_image_and_detail, read_bytes, read_image,
                                 resize_image)
from faceseg.errors import FacesegError
from faceseg.labels import Taxonomy
from faceseg.model.saved import ModelInfo, inspect_model, load_keras_model
from faceseg.predict.overlay import PANEL_HEIGHT, make_overlay
from faceseg.storage import Location


class ImageArgumentError(FacesegError, TypeError):
    """An argument FaceParser cannot take as an image or an output size."""

BAND_BYTES = 64 << 20   # float32 probabilities resized at a time
REFINE_ZOOM = 4         # the guide's long side: up to this many times the model's grid
REFINE_RADIUS = 3       # the guided filter's window radius, in the model's grid pixels
REFINE_EPS = 1e-4       # its regulariser, for colours in [0, 1]: smaller follows weaker edges
REFINE_MIN_PROBABILITY = 0.1   # refinement picks only among the classes the model gave this much
UNLIKELY = 1e3          # subtracted from the refined score of any other class (finite: resized after)


def decode_photo(data: np.ndarray, path: str, size: int, refine: bool) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """Encoded image bytes -> ((S, S, 3) model input, decoded and resized as training did; the original
    (H, W); the photo with enough pixels for guide_image: up to REFINE_ZOOM x size when refining, a large
    JPEG being decoded at a reduced scale, else the model's decode)."""
    rgb, detail, original = decode_image_and_detail(data, path, size, size * REFINE_ZOOM if refine else size)
    return resize_image(rgb, size), original, detail


def guide_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) of the guide for an output of (height, width): that shape, shrunk to a long side of at most
    REFINE_ZOOM x size."""
    scale = min(1.0, REFINE_ZOOM * size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def guide_image(rgb: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """The photo (any resolution, the output's aspect) resized to guide_shape; (h, w, 3) uint8."""
    h, w = guide_shape(height, width, size)
    interpolation = cv2.INTER_AREA if rgb.shape[0] > h else cv2.INTER_LINEAR
    return cv2.resize(rgb, (w, h), interpolation=interpolation)


def box_mean(tf, x, radius):
    """Mean of (h, w, k) `x` over the (2r+1)^2 window around each pixel, the window clipped to the image;
    running sums, so the cost does not grow with the radius."""
    def along(x, axis):
        n = tf.shape(x)[axis]
        sums = tf.cumsum(x, axis=axis)
        sums = tf.concat([tf.zeros_like(tf.gather(sums, [0], axis=axis)), sums], axis=axis)
        i = tf.range(n)
        high, low = tf.minimum(i + radius + 1, n), tf.maximum(i - radius, 0)
        window = tf.gather(sums, high, axis=axis) - tf.gather(sums, low, axis=axis)
        count = tf.cast(high - low, x.dtype)
        return window / (count[:, None, None] if axis == 0 else count[None, :, None])
    return along(along(x, 0), 1)


def guided_filter(tf, guide, probs, low_shape, radius, eps):
    """He et al.'s guided filter with a colour guide, in its fast form (He and Sun, "Fast Guided Filter",
    2015): each class's map is made a local linear function of the guide's colours, the coefficients
    found on the coarser `low_shape` grid (where the probabilities have their own detail) and applied at
    the guide's full size.
    (h, w, 3) float32 guide, (S, S, C) probabilities -> (h, w, C)."""
    h, w = tf.shape(guide)[0], tf.shape(guide)[1]
    lh, lw, c = low_shape[0], low_shape[1], tf.shape(probs)[2]
    guide = guide - tf.reduce_mean(guide, axis=[0, 1])      # centred: the running sums stay small
    low = tf.image.resize(guide[None], low_shape, method="area")[0]                      # (lh, lw, 3)
    p = tf.image.resize(probs[None], low_shape, method="bilinear")[0]                    # (lh, lw, C)
    mean_i = box_mean(tf, low, radius)
    outer = tf.reshape(low[..., :, None] * low[..., None, :], [lh, lw, 9])
    cov_ii = tf.reshape(box_mean(tf, outer, radius), [lh, lw, 3, 3]) - mean_i[..., :, None] * mean_i[..., None, :]
    inverse = tf.linalg.inv(cov_ii + eps * tf.eye(3))                                   # (lh, lw, 3, 3)
    mean_p = box_mean(tf, p, radius)                                                     # (lh, lw, C)
    cross = tf.reshape(low[..., :, None] * p[..., None, :], [lh, lw, 3 * c])
    cov_ip = tf.reshape(box_mean(tf, cross, radius), [lh, lw, 3, c]) - mean_i[..., :, None] * mean_p[..., None, :]
    a = tf.einsum("hwij,hwjc->hwic", inverse, cov_ip)                                    # (lh, lw, 3, C)
    b = mean_p - tf.einsum("hwi,hwic->hwc", mean_i, a)
    coefficients = tf.concat([box_mean(tf, tf.reshape(a, [lh, lw, 3 * c]), radius), box_mean(tf, b, radius)], -1)
    coefficients = tf.image.resize(coefficients[None], [h, w], method="bilinear")[0]     # (h, w, 4C)
    a, b = tf.reshape(coefficients[..., :3 * c], [h, w, 3, c]), coefficients[..., 3 * c:]
    return tf.einsum("hwi,hwic->hwc", guide, a) + b


def refine_probabilities(tf, probs, guide, size):
    """(S, S, C) probabilities and an (h, w, 3) uint8 guide -> (h, w, C) refined scores.

    A pixel can only take a class the model itself gave at least REFINE_MIN_PROBABILITY there: where two
    neighbouring classes share a colour (upper and lower lip), the filter alone would blend them."""
    shape = tf.shape(guide)[:2]
    long_side = tf.cast(tf.reduce_max(shape), tf.float32)
    scale = tf.minimum(1.0, size / long_side)           # the low grid: the model's, at the guide's aspect
    low_shape = tf.maximum(1, tf.cast(tf.round(tf.cast(shape, tf.float32) * scale), tf.int32))
    radius = tf.maximum(1, tf.cast(tf.round(REFINE_RADIUS * long_side * scale / size), tf.int32))
    refined = guided_filter(tf, tf.cast(guide, tf.float32) / 255.0, probs, low_shape, radius, REFINE_EPS)
    plain = tf.image.resize(probs[None], shape, method="bilinear")[0]
    return refined - UNLIKELY * tf.cast(plain < REFINE_MIN_PROBABILITY, tf.float32)


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

    def __init__(self, info: ModelInfo, refine: bool = True):
        from faceseg.backend import tf

        self.info = info
        self.taxonomy: Taxonomy = info.taxonomy
        self.size = info.size
        self.refine = refine
        self.model = load_keras_model(info)
        self._tf = tf
        model = self.model
        self._probabilities = tf.function(
            lambda images: tf.nn.softmax(tf.cast(model(images, training=False), tf.float32)),
            input_signature=[tf.TensorSpec([None, self.size, self.size, 3], tf.uint8)])
        self._band = tf.function(
            lambda probs, height, width, row0, rows: resize_argmax_band(tf, probs, height, width, row0, rows),
            input_signature=[tf.TensorSpec([None, None, self.taxonomy.num_classes], tf.float32)]
            + [tf.TensorSpec([], tf.int32)] * 4)
        self._refine = tf.function(
            lambda probs, guide: refine_probabilities(tf, probs, guide, self.size),
            input_signature=[tf.TensorSpec([self.size, self.size, self.taxonomy.num_classes], tf.float32),
                             tf.TensorSpec([None, None, 3], tf.uint8)])

    @classmethod
    def load(cls, where: Location | str | Path, refine: bool = True) -> "FaceParser":
        """A run folder, a .keras file or a URI; the file is checked before it is deserialised."""
        return cls(inspect_model(where), refine)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.taxonomy.names

    # --- the three steps, shared with the batch job and the Serve endpoint -----------------------------------
    def read(self, image) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
        """An RGB array, a PIL image, a file path/URI or encoded bytes -> ((S, S, 3) model input, decoded as
        training did; original (H, W); the RGB photo with enough pixels for `guide`)."""
        if _is_pil(image):
            image = np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or not image.size:
                raise ImageArgumentError(f"expected an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
            return resize_image(image, self.size), image.shape[:2], image
        if isinstance(image, (bytes, bytearray, memoryview)):
            return decode_photo(np.frombuffer(image, np.uint8), "<bytes>", self.size, self.refine)
        if isinstance(image, (str, Path, Location)):
            return decode_photo(read_bytes(str(image)), str(image), self.size, self.refine)
        raise ImageArgumentError(f"cannot parse a {type(image).__name__}: give a file path or URI, encoded image "
                                 "bytes, an (H, W, 3) uint8 RGB array or a PIL image")

    def guide(self, rgb: np.ndarray, height: int, width: int) -> np.ndarray | None:
        """What `label_map` refines an output of (height, width) with: the photo at guide_shape, or None."""
        return guide_image(rgb, height, width, self.size) if self.refine else None

    def probabilities(self, pixels: np.ndarray):
        """(B, S, S, 3) uint8 -> (B, S, S, C) float32 softmax, left on the device."""
        return self._probabilities(pixels)

    def label_map(self, probs, height: int, width: int, guide: np.ndarray | None = None) -> np.ndarray:
        """(S, S, C) probabilities (one image's, on the device) -> (height, width) uint8 ids; refined
        along the edges of `guide` (from `guide()`) when given."""
        if guide is not None:
            probs = self._refine(probs, guide)
        rows_per_band = max(1, BAND_BYTES // (4 * width * self.taxonomy.num_classes))
        bands = [self._band(probs, height, width, row0, min(rows_per_band, height - row0)).numpy()
                 for row0 in range(0, height, rows_per_band)]
        return bands[0] if len(bands) == 1 else np.concatenate(bands)

    # --- the public calls -------------------------------------------------------------------------------------
    def batch(self, images: list, sizes: list[tuple[int, int]] | None = None) -> list[np.ndarray]:
        """Label maps for several images, each at its own size (or at `sizes`, one (height, width) per
        image), in one forward pass."""
        if isinstance(images, (str, bytes, np.ndarray)) or not isinstance(images, (list, tuple)):
            raise ImageArgumentError(f"batch() takes a list of images, not a {type(images).__name__}; "
                                     "call the parser itself for one image")
        sizes = None if sizes is None else [_output_size(size, i) for i, size in enumerate(sizes)]
        if sizes is not None and len(sizes) != len(images):
            raise ImageArgumentError(f"{len(images)} images but {len(sizes)} sizes; give one (height, width) per "
                                     "image, or none for each image's own size")
        if not images:
            return []
        read = [self.read(image) for image in images]
        probs = self.probabilities(np.stack([pixels for pixels, _, _ in read]))
        sizes = sizes or [original for _, original, _ in read]
        return [self.label_map(probs[i], int(h), int(w), self.guide(read[i][2], int(h), int(w)))
                for i, (h, w) in enumerate(sizes)]

    def __call__(self, image) -> np.ndarray:
        """(H, W) uint8 class ids for one image (RGB array, file path/URI or encoded bytes)."""
        return self.batch([image])[0]

    def overlay(self, image, ids: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
        """An RGB picture: the image, the label map blended on it (and the ground truth), with a legend."""
        if _is_pil(image):
            image = np.asarray(image.convert("RGB"))
        if not isinstance(image, np.ndarray):
            image = decode_image(np.frombuffer(image, np.uint8), "<bytes>", PANEL_HEIGHT)[0] \
                if isinstance(image, (bytes, bytearray)) else read_image(str(image), PANEL_HEIGHT)[0]
        return make_overlay(image, ids, self.taxonomy, truth)


def _is_pil(image) -> bool:
    return type(image).__module__.startswith("PIL.") and hasattr(image, "convert")


def _output_size(size, index: int) -> tuple[int, int]:
    """A (height, width) of positive whole numbers whose product faceseg would decode."""
    try:
        height, width = size
        if any(isinstance(v, bool) or int(v) != v for v in (height, width)):
            raise ValueError
        height, width = int(height), int(width)
    except (TypeError, ValueError):
        raise ImageArgumentError(f"sizes[{index}] = {size!r}: expected (height, width) in whole pixels") from None
    if height < 1 or width < 1 or height * width > MAX_IMAGE_PIXELS:
        raise ImageArgumentError(f"sizes[{index}] = {size!r}: a label map of 1 to {MAX_IMAGE_PIXELS:,} pixels")
    return height, width
