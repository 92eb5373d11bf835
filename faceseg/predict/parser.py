"""`FaceParser`: a trained model as a function from a face photo to its label map, at the photo's own size.

    parser = FaceParser.load("runs/r1")            # a run folder, a .keras file, or s3://.../model.keras
    ids = parser("photo.jpg")                      # (H, W) uint8 class ids; parser.classes names them
    overlay = parser.overlay("photo.jpg", ids)     # RGB picture with the classes blended in

The batch-prediction job, the Serve endpoint and this class share the same three steps, so they give
the same numbers for the same image:
  1. decode (any size; large JPEGs at a reduced scale) and resize to the model's grid,
     and the photo at up to REFINE_ZOOM times the grid as the guide                    [CPU]
  2. the U-Net's softmax probabilities for a batch                                       [accelerator]
  3. the label map at the photo's size: a bilinear resize of the probabilities and its argmax, refined
     along the photo's colour edges (a guided filter fitted on the model's grid), computed only at the
     class edges (predict/labelmap.py)                                                     [CPU, any thread]
Step 3 takes the model's (S, S, C) probabilities and writes the label map with no temporaries, so memory
stays bounded for any output size. `refine=False` (`faceseg predict --no-refine`) gives the plain resize;
predict/refine.py says why refinement pays.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from faceseg.data.decode import (MAX_IMAGE_PIXELS, decode_image, decode_image_and_detail, read_bytes, read_image,
                                 resize_image)
from faceseg.errors import FacesegError
from faceseg.labels import Taxonomy
from faceseg.model.saved import ModelInfo, inspect_model, load_keras_model
from faceseg.predict.labelmap import plain_label_map, refined_label_map
from faceseg.predict.overlay import PANEL_HEIGHT, make_overlay
from faceseg.predict.refine import REFINE_ZOOM
from faceseg.runtime import available_cores
from faceseg.storage import Location


class ImageArgumentError(FacesegError, TypeError):
    """An argument FaceParser cannot take as an image or an output size."""


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


class FaceParser:
    """A loaded faceseg model; see the module docstring."""

    def __init__(self, info: ModelInfo, refine: bool = True):
        from faceseg.backend import tf

        self.info = info
        self.taxonomy: Taxonomy = info.taxonomy
        self.size = info.size
        self.refine = refine
        self.model = load_keras_model(info)
        model = self.model
        # Decoding and label maps release the GIL: a thread per core runs them side by side.
        self._threads = ThreadPoolExecutor(max_workers=available_cores(), thread_name_prefix="faceseg-parser")
        self._probabilities = tf.function(
            lambda images: tf.nn.softmax(tf.cast(model(images, training=False), tf.float32)),
            input_signature=[tf.TensorSpec([None, self.size, self.size, 3], tf.uint8)])

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

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 -> (B, S, S, C) float32 softmax."""
        return self._probabilities(pixels).numpy()

    def label_map(self, probs: np.ndarray, pixels: np.ndarray, height: int, width: int,
                  guide: np.ndarray | None = None) -> np.ndarray:
        """One image's (S, S, C) probabilities and its (S, S, 3) model input -> (height, width) uint8 ids;
        refined along the edges of `guide` (from `guide()`) when given. Releases the GIL: label maps of a
        batch can run on threads while the next batch is in the network."""
        if guide is None:
            return plain_label_map(probs, height, width)
        return refined_label_map(probs, pixels, guide, height, width)

    def label_maps(self, probs: np.ndarray, pixels: np.ndarray, sizes: list[tuple[int, int]],
                   guides: list[np.ndarray | None]) -> list[np.ndarray]:
        """label_map for each image of a batch, on the parser's threads."""
        return list(self._threads.map(lambda i: self.label_map(probs[i], pixels[i], *sizes[i], guides[i]),
                                      range(len(sizes))))

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
        read = list(self._threads.map(self.read, images))
        pixels = np.stack([pixels for pixels, _, _ in read])
        probs = self.probabilities(pixels)
        sizes = [(int(h), int(w)) for h, w in sizes or [original for _, original, _ in read]]
        return self.label_maps(probs, pixels, sizes, [self.guide(read[i][2], *sizes[i]) for i in range(len(sizes))])

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
