"""Decode and resize one sample with OpenCV (CONVENTIONS section 3). Shared by prepare, predict, evaluate.

Every failure raises BadFileError naming the file and the reason; callers decide to skip or stop.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from faceseg.atomic import write_atomic
from faceseg.data.layouts import Sample
from faceseg.labels import NUM_CLASSES, Remap

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


def _decode(path: str, flags: int, data: np.ndarray | None = None) -> np.ndarray:
    data = _read_bytes(path) if data is None else data
    if _looks_truncated(data):
        raise BadFileError(path, "truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(data, flags)
    if image is None:
        raise BadFileError(path, "not a decodable image (corrupt, truncated or not an image format)")
    return image


_JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_REDUCED_DECODE = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header without decoding it; None if there is none."""
    header = data[:65536].tobytes()
    if header[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 9 <= len(header) and header[at] == 0xFF:
        marker, length = header[at + 1], int.from_bytes(header[at + 2:at + 4], "big")
        if marker in _JPEG_FRAME_MARKERS:
            return int.from_bytes(header[at + 5:at + 7], "big"), int.from_bytes(header[at + 7:at + 9], "big")
        at += 2 + length
    return None


def _decode_scale(original: tuple[int, int], size: int | None) -> int:
    """The largest JPEG DCT scaling (1/2, 1/4, 1/8) that still leaves at least `size` pixels a side."""
    if size is None:
        return 1
    return max([1] + [k for k in _REDUCED_DECODE if min(original) // k >= size])


def read_image(path: str, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Any JPEG/PNG (grey, RGB, RGBA, 8 or 16 bit) -> ((H', W', 3) uint8 RGB, original (H, W)).

    With `size`, a JPEG of at least twice that size is decoded at 1/2, 1/4 or 1/8 of its resolution
    by libjpeg's scaled IDCT (an area average, like INTER_AREA) and H', W' may be smaller than H, W:
    measured on 512 px faces, 0.68 ms against 1.20 ms for the full decode, before the resize it spares.
    """
    data = _read_bytes(path)
    original = jpeg_size(data)
    scale = _decode_scale(original, size) if original else 1
    if scale > 1:
        image = _decode(path, _REDUCED_DECODE[scale] | cv2.IMREAD_IGNORE_ORIENTATION, data)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), original
    image = _decode(path, cv2.IMREAD_UNCHANGED, data)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise BadFileError(path, f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image, image.shape[:2]


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


def read_source_ids(sample: Sample, remap: Remap) -> np.ndarray:
    """(H, W) uint8 ids of the data set's own taxonomy, each one checked to have a label name."""
    source = _read_grey_ids(sample.label) if sample.label else _merge_parts(sample.parts)
    named = len(remap.source_names)
    if source.max() >= named:
        bad = np.unique(source[source >= named])
        raise BadFileError(sample.label_path,
                           f"label ids {bad.tolist()[:8]} are outside 0..{named - 1} (the {named} label names)")
    return source


def read_label(sample: Sample, remap: Remap) -> np.ndarray:
    """(H, W) uint8 ids in the 11-class taxonomy, at the label file's own resolution."""
    return remap.apply(read_source_ids(sample, remap))


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
    image, (height, width) = read_image(sample.image, size)
    row = {"image": resize_image(image, size), "name": sample.name, "split": sample.split,
           "height": height, "width": width}
    if sample.has_label:
        source = read_source_ids(sample, remap)
        check_same_aspect((height, width), source.shape, sample.label_path)
        # Nearest neighbour only picks pixels: remapping after it gives the same map, on 1/4 of them.
        row["mask"] = remap.apply(resize_label(source, size))
    return row


def class_pixel_counts(masks: np.ndarray) -> np.ndarray:
    """(B, H, W) uint8 ids -> (NUM_CLASSES,) pixel counts.

    cv2.calcHist is 2x np.bincount here (no int64 copy); its float32 counts are exact per image
    (under 2**24 pixels), so images are counted one at a time and summed as int64.
    """
    counts = np.zeros(NUM_CLASSES, np.int64)
    for mask in masks:
        counts += cv2.calcHist([mask], [0], None, [256], [0, 256]).reshape(-1)[:NUM_CLASSES].astype(np.int64)
    return counts


def write_png_atomic(path: Path, array: np.ndarray) -> None:
    """A PNG that appears whole or not at all."""
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    write_atomic(path, encoded.tobytes())
