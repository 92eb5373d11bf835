"""Decode and resize one sample with OpenCV (CONVENTIONS section 3). Shared by prepare, predict, evaluate.

Every failure raises BadFileError naming the file and the reason; callers decide to skip or stop.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from faceseg.atomic import write_atomic
from faceseg.data.layouts import Sample
from faceseg.labels import INVALID_ID, NUM_CLASSES, Remap

ASPECT_TOLERANCE = 0.02  # relative; label maps may be scaled copies of the image, never reshaped


class BadFileError(ValueError):
    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def _read_bytes(path: str) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)  # np.fromfile copes with unicode names, cv2.imread not always
    except (OSError, ValueError) as error:
        raise BadFileError(path, f"cannot read file ({error.__class__.__name__}: {error})") from None
    if data.size == 0:
        raise BadFileError(path, "empty file (0 bytes)")
    return data


def _looks_truncated(data: np.ndarray) -> bool:
    """A JPEG must end with the EOI marker; OpenCV silently pads truncated ones with grey."""
    if data[:2].tobytes() != b"\xff\xd8":
        return False
    return b"\xff\xd9" not in data[-64:].tobytes()


def _decode(path: str, flags: int) -> np.ndarray:
    data = _read_bytes(path)
    if _looks_truncated(data):
        raise BadFileError(path, "truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(data, flags)
    if image is None:
        raise BadFileError(path, "not a decodable image (corrupt, truncated or not an image format)")
    return image


def read_image(path: str) -> np.ndarray:
    """Any JPEG/PNG (grey, RGB, RGBA, 8 or 16 bit) -> (H, W, 3) uint8 RGB."""
    image = _decode(path, cv2.IMREAD_UNCHANGED)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise BadFileError(path, f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_grey_ids(path: str) -> np.ndarray:
    label = _decode(path, cv2.IMREAD_UNCHANGED)
    if label.ndim == 3:
        channels = label[..., :3]
        if not (np.array_equal(channels[..., 0], channels[..., 1])
                and np.array_equal(channels[..., 0], channels[..., 2])):
            raise BadFileError(path, "label map is in colour; expected grey class ids")
        label = channels[..., 0]
    if label.dtype != np.uint8:
        if label.max() > 255:
            raise BadFileError(path, f"label id {int(label.max())} does not fit the taxonomy")
        label = label.astype(np.uint8)
    return label


def _merge_parts(parts: tuple[tuple[int, str], ...]) -> np.ndarray:
    """CelebAMask-HQ raw masks: paint each part in the official order, later parts on top."""
    merged = None
    for source_id, path in parts:
        mask = _read_grey_ids(path)
        if merged is None:
            merged = np.zeros(mask.shape, np.uint8)
        elif mask.shape != merged.shape:
            raise BadFileError(path, f"part mask is {mask.shape[1]}x{mask.shape[0]}, "
                                     f"others are {merged.shape[1]}x{merged.shape[0]}")
        merged[mask > 127] = source_id
    return merged


def read_label(sample: Sample, remap: Remap) -> np.ndarray:
    """(H, W) uint8 ids in the 11-class taxonomy, at the label file's own resolution."""
    path = sample.label or sample.parts[0][1]
    source = _read_grey_ids(sample.label) if sample.label else _merge_parts(sample.parts)
    label = remap.apply(source)
    if (label == INVALID_ID).any():
        bad = np.unique(source[label == INVALID_ID])
        raise BadFileError(path, f"label ids {bad.tolist()[:8]} are outside 0..{len(remap.source_names) - 1} "
                                 f"(the {len(remap.source_names)} label names)")
    return label


def check_same_aspect(image_shape, label_shape, label_path: str) -> None:
    ih, iw = image_shape[:2]
    lh, lw = label_shape[:2]
    if abs((iw / ih) / (lw / lh) - 1.0) > ASPECT_TOLERANCE:
        raise BadFileError(label_path, f"label map is {lw}x{lh} but its image is {iw}x{ih} "
                                       "(different aspect ratio: not the same picture)")


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    interpolation = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def resize_label(label: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(label, (size, size), interpolation=cv2.INTER_NEAREST)


def load_sample(sample: Sample, remap: Remap, size: int) -> dict:
    """Decode, check and resize one sample to the training grid; raises BadFileError."""
    image = read_image(sample.image)
    row = {"image": resize_image(image, size), "name": sample.name, "split": sample.split,
           "height": image.shape[0], "width": image.shape[1]}
    if sample.has_label:
        label = read_label(sample, remap)
        check_same_aspect(image.shape, label.shape, sample.label or sample.parts[0][1])
        row["mask"] = resize_label(label, size)
    return row


def class_pixel_counts(masks: np.ndarray) -> np.ndarray:
    return np.bincount(masks.reshape(-1), minlength=NUM_CLASSES)[:NUM_CLASSES].astype(np.int64)


def write_png_atomic(path: Path, array: np.ndarray) -> None:
    """A PNG that appears whole or not at all."""
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    write_atomic(path, encoded.tobytes())
