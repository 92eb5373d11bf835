"""`FaceParser`: a trained model as a function from a face photo to its label map, at the photo's own size.

    parser = FaceParser.load("runs/r1")            # a run folder, a .keras file, or s3://.../model.keras
    ids = parser("photo.jpg")                      # (H, W) uint8 class ids; parser.classes names them
    overlay = parser.overlay("photo.jpg", ids)     # RGB picture with the classes blended in

The batch-prediction job, the Serve endpoint and this class share the same three steps, so they give
the same numbers for the same image:
  1. decode (any size; large JPEGs at a reduced scale) and resize to the model's grid,
     and the photo at up to REFINE_ZOOM times the grid as the guide                    [CPU]
  2. the U-Net's softmax probabilities for a batch                                       [accelerator]
  3. the label map: where the model's grid agrees around a pixel its class is read from a table;
     only at the other pixels, the class edges, are the probabilities resized, refined along the
     photo's edges (a guided filter) and their argmax taken                                  [accelerator]
Step 3 runs in the TensorFlow graph, so only uint8 ids come back from the device. An output larger than
the guide is refined at the guide's size, then resized and argmaxed in bands of rows, which keeps memory
bounded for any output size (BAND_BYTES of float32 scores at a time, were every pixel open).

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

BAND_BYTES = 64 << 20   # a band's float32 corner scores, were every pixel of it open
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


def box_mean(tf, x, radius: int):
    """Mean of (h, w, k) `x` over the (2r+1)^2 window around each pixel, the window clipped to the image:
    TensorFlow's average pooling with SAME padding counts only the pixels inside; one pass per axis."""
    width = 2 * radius + 1
    return tf.nn.avg_pool2d(tf.nn.avg_pool2d(x[None], [1, width, 1, 1], 1, "SAME"), [1, 1, width, 1], 1, "SAME")[0]


def guide_coefficients(tf, guide, probs, low_shape, radius, eps):
    """He et al.'s guided filter with a colour guide, in its fast form (He and Sun, "Fast Guided Filter",
    2015): each class's map is made a local linear function of the guide's colours, the coefficients
    found on the coarser `low_shape` grid, where the probabilities have their own detail.
    (h, w, 3) guide of 0-255 colours (uint8 or float), (S, S, C) probabilities -> (lh, lw, 4C): per class,
    the weights of the guide's three colours (0-255), then the constant; `apply_coefficients` uses them.

    Elementwise throughout: the 3x3 colour covariance is inverted in closed form, by cofactors, and the
    colours' scale and centring are folded into the coefficients here, on the small grid."""
    c = probs.shape[2] if probs.shape[2] is not None else tf.shape(probs)[2]
    low = tf.image.resize(tf.cast(guide, tf.float32)[None], low_shape, method="area")[0] / 255.0   # (lh, lw, 3)
    centre = tf.reduce_mean(low, axis=[0, 1])
    low = low - centre
    p = tf.image.resize(probs[None], low_shape, method="bilinear")[0]                               # (lh, lw, C)
    i0, i1, i2 = low[..., 0:1], low[..., 1:2], low[..., 2:3]
    stats = box_mean(tf, tf.concat([low, i0 * i0, i0 * i1, i0 * i2, i1 * i1, i1 * i2, i2 * i2,
                                    p, i0 * p, i1 * p, i2 * p], -1), radius)
    m0, m1, m2 = stats[..., 0:1], stats[..., 1:2], stats[..., 2:3]
    s00, s01, s02 = stats[..., 3:4] - m0 * m0 + eps, stats[..., 4:5] - m0 * m1, stats[..., 5:6] - m0 * m2
    s11, s12, s22 = stats[..., 6:7] - m1 * m1 + eps, stats[..., 7:8] - m1 * m2, stats[..., 8:9] - m2 * m2 + eps
    mean_p = stats[..., 9:9 + c]
    v0, v1, v2 = (stats[..., 9 + k * c:9 + (k + 1) * c] - m * mean_p for k, m in ((1, m0), (2, m1), (3, m2)))
    c00, c01, c02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
    c11, c12, c22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
    det = s00 * c00 + s01 * c01 + s02 * c02
    a0 = (c00 * v0 + c01 * v1 + c02 * v2) / det
    a1 = (c01 * v0 + c11 * v1 + c12 * v2) / det
    a2 = (c02 * v0 + c12 * v1 + c22 * v2) / det
    b = mean_p - m0 * a0 - m1 * a1 - m2 * a2
    a0, a1, a2, b = (box_mean(tf, x, radius) for x in (a0, a1, a2, b))
    # On 0-255 colours g: a . (g / 255 - centre) + b = (a / 255) . g + (b - a . centre).
    b = b - centre[0] * a0 - centre[1] * a1 - centre[2] * a2
    return tf.concat([a0 / 255.0, a1 / 255.0, a2 / 255.0, b], -1)


def apply_coefficients(tf, coefficients, colours):
    """(k, 4C) coefficients and (k, 3) colours (0-255, float32) at the same k pixels -> (k, C) scores."""
    colours = tf.concat([colours, tf.ones_like(colours[:, :1])], -1)                                # (k, 4)
    return tf.reduce_sum(colours[:, :, None] * tf.reshape(coefficients, [tf.shape(colours)[0], 4, -1]), axis=1)


def guided_filter(tf, guide, probs, low_shape, radius, eps):
    """The guided filter at every pixel of the guide: (h, w, 3) guide, (S, S, C) probabilities -> (h, w, C)."""
    h, w = tf.shape(guide)[0], tf.shape(guide)[1]
    coefficients = guide_coefficients(tf, guide, probs, low_shape, radius, eps)
    coefficients = tf.image.resize(coefficients[None], [h, w], method="bilinear")[0]                # (h, w, 4C)
    scores = apply_coefficients(tf, tf.reshape(coefficients, [h * w, -1]),
                                tf.reshape(tf.cast(guide, tf.float32), [h * w, 3]))
    return tf.reshape(scores, [h, w, -1])


def _low_shape(tf, shape, size):
    """The guided filter's grid: the model's own resolution, at the guide's aspect; its window is in these
    pixels."""
    scale = size / tf.cast(tf.reduce_max(shape), tf.float32)
    return tf.maximum(1, tf.cast(tf.round(tf.cast(shape, tf.float32) * scale), tf.int32))


def refine_probabilities(tf, probs, guide, size):
    """(S, S, C) probabilities and an (h, w, 3) uint8 guide -> (h, w, C) refined scores.

    A pixel can only take a class the model itself gave at least REFINE_MIN_PROBABILITY there: where two
    neighbouring classes share a colour (upper and lower lip), the filter alone would blend them."""
    shape = tf.shape(guide)[:2]
    refined = guided_filter(tf, guide, probs, _low_shape(tf, shape, size), REFINE_RADIUS, REFINE_EPS)
    plain = tf.image.resize(probs[None], shape, method="bilinear")[0]
    return refined - UNLIKELY * tf.cast(plain < REFINE_MIN_PROBABILITY, tf.float32)


# --- label maps, computed only where the answer is open ------------------------------------------------------
# A bilinear resize mixes, at each output pixel, the four grid points around it. Where those four agree (the
# same class is the argmax at all four; or, when refining, one class alone reaches REFINE_MIN_PROBABILITY at
# any of them) the mix has that answer too, so the pixel's class is read from a table of grid cells, and the
# resize, the filter and the argmax run only at the other pixels: the class edges.
UNDECIDED = -1


def bilinear_taps(tf, out_size, in_size, start, count):
    """Output positions [start, start + count) of a resize from in_size to out_size, with half-pixel
    centres and clamped edges as tf.image.resize and OpenCV's INTER_LINEAR: the lower and upper source
    index and the upper one's weight."""
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    src = (tf.cast(tf.range(start, start + count), tf.float32) + 0.5) * scale - 0.5
    src = tf.clip_by_value(src, 0.0, tf.cast(in_size - 1, tf.float32))
    low = tf.cast(tf.floor(src), tf.int32)
    return low, tf.minimum(low + 1, in_size - 1), src - tf.cast(low, tf.float32)


def _cell_corners(tf, grid):
    """(S, S, ...) -> the four (S, S, ...) corners of each cell (i, j): (i, j), (i, j+1), (i+1, j), (i+1, j+1),
    clamped at the last row and column, as the taps are."""
    grid = tf.concat([grid, grid[-1:]], 0)
    grid = tf.concat([grid, grid[:, -1:]], 1)
    return grid[:-1, :-1], grid[:-1, 1:], grid[1:, :-1], grid[1:, 1:]


def _argmax_cells(tf, scores):
    """(S, S) int32: the class when it is the argmax at all four corners of the cell, else UNDECIDED."""
    top = tf.argmax(scores, axis=-1, output_type=tf.int32)
    a, b, c, d = _cell_corners(tf, top)
    agree = tf.logical_and(tf.logical_and(tf.equal(a, b), tf.equal(a, c)), tf.equal(a, d))
    return tf.where(agree, top, UNDECIDED)


def _candidate_cells(tf, probs):
    """(S, S) int32: the class when it alone reaches REFINE_MIN_PROBABILITY at any corner of the cell, else
    UNDECIDED (refinement may only choose among those classes)."""
    a, b, c, d = _cell_corners(tf, probs >= REFINE_MIN_PROBABILITY)
    candidates = tf.cast(tf.logical_or(tf.logical_or(a, b), tf.logical_or(c, d)), tf.int32)      # (S, S, C)
    return tf.where(tf.equal(tf.reduce_sum(candidates, axis=-1), 1),
                    tf.argmax(candidates, axis=-1, output_type=tf.int32), UNDECIDED)


def _lerp_at(tf, grid, rows, cols):
    """(H, W, K) grid sampled bilinearly at k pixels, given each pixel's row and column taps -> (k, K)."""
    (y0, y1, wy), (x0, x1, wx) = rows, cols
    width = tf.shape(grid)[1]
    corners = tf.gather(tf.reshape(grid, [-1, tf.shape(grid)[2]]),             # one gather for all four
                        tf.concat([y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1], 0))
    top_left, top_right, bottom_left, bottom_right = tf.split(corners, 4)
    top = top_left + (top_right - top_left) * wx[:, None]
    bottom = bottom_left + (bottom_right - bottom_left) * wx[:, None]
    return top + (bottom - top) * wy[:, None]


def _taps_at(tf, taps, index):
    return tuple(tf.gather(t, index) for t in taps)


def resize_argmax_band(tf, scores, height, width, row0, rows):
    """Rows [row0, row0 + rows) of argmax(bilinear resize of (S, S, C) `scores` to (height, width)), uint8."""
    in_h, in_w = tf.shape(scores)[0], tf.shape(scores)[1]
    row_taps, col_taps = bilinear_taps(tf, height, in_h, row0, rows), bilinear_taps(tf, width, in_w, 0, width)
    labels = tf.gather(tf.gather(_argmax_cells(tf, scores), row_taps[0]), col_taps[0], axis=1)     # (rows, W)
    open_pixels = tf.cast(tf.where(labels == UNDECIDED), tf.int32)                                # (k, 2)
    mixed = _lerp_at(tf, scores, _taps_at(tf, row_taps, open_pixels[:, 0]), _taps_at(tf, col_taps, open_pixels[:, 1]))
    labels = tf.tensor_scatter_nd_update(labels, open_pixels, tf.argmax(mixed, axis=-1, output_type=tf.int32))
    return tf.cast(labels, tf.uint8)


def refined_label_map(tf, probs, guide, size):
    """(S, S, C) probabilities and an (h, w, 3) uint8 guide -> the (h, w) uint8 label map of
    refine_probabilities, the filter applied only where more than one class is open."""
    h, w = tf.shape(guide)[0], tf.shape(guide)[1]
    s = tf.shape(probs)[0]
    low_shape = _low_shape(tf, tf.shape(guide)[:2], size)
    row_taps, col_taps = bilinear_taps(tf, h, s, 0, h), bilinear_taps(tf, w, s, 0, w)
    labels = tf.gather(tf.gather(_candidate_cells(tf, probs), row_taps[0]), col_taps[0], axis=1)   # (h, w)
    open_pixels = tf.cast(tf.where(labels == UNDECIDED), tf.int32)                                # (k, 2)
    ys, xs = open_pixels[:, 0], open_pixels[:, 1]
    plain = _lerp_at(tf, probs, _taps_at(tf, row_taps, ys), _taps_at(tf, col_taps, xs))          # (k, C)
    coefficients = guide_coefficients(tf, guide, probs, low_shape, REFINE_RADIUS, REFINE_EPS)
    low_rows, low_cols = bilinear_taps(tf, h, low_shape[0], 0, h), bilinear_taps(tf, w, low_shape[1], 0, w)
    coefficients = _lerp_at(tf, coefficients, _taps_at(tf, low_rows, ys), _taps_at(tf, low_cols, xs))  # (k, 4C)
    colours = tf.gather(tf.reshape(guide, [-1, 3]), ys * w + xs)
    scores = apply_coefficients(tf, coefficients, tf.cast(colours, tf.float32))
    scores -= UNLIKELY * tf.cast(plain < REFINE_MIN_PROBABILITY, tf.float32)
    labels = tf.tensor_scatter_nd_update(labels, open_pixels, tf.argmax(scores, axis=-1, output_type=tf.int32))
    return tf.cast(labels, tf.uint8)


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
        refine_signature = [tf.TensorSpec([self.size, self.size, self.taxonomy.num_classes], tf.float32),
                            tf.TensorSpec([None, None, 3], tf.uint8)]
        self._refine = tf.function(lambda probs, guide: refine_probabilities(tf, probs, guide, self.size),
                                   input_signature=refine_signature)
        # The guide at the output's own size (a photo up to REFINE_ZOOM x the grid): the refined scores are
        # the label map's already, and resizing them to the same size changes nothing but the time.
        self._refined_ids = tf.function(lambda probs, guide: refined_label_map(tf, probs, guide, self.size),
                                        input_signature=refine_signature)

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
        if guide is not None and guide.shape[:2] == (height, width):
            return self._refined_ids(probs, guide).numpy()
        if guide is not None:
            probs = self._refine(probs, guide)
        rows_per_band = max(1, BAND_BYTES // (4 * 4 * width * self.taxonomy.num_classes))   # 4 corners
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
