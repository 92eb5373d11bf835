"""Decode and resize one sample with OpenCV (docs/data.md, "Preprocessing"). Shared by prepare, predict,
evaluate and FaceParser.

Every failure raises BadFileError naming the file and the reason; callers decide to skip or stop.
Nothing here trusts a file: sizes are read from the header and checked before anything is decoded.
"""
from __future__ import annotations

import os
import stat

import cv2
import numpy as np

from faceseg.data.layouts import Sample
from faceseg.errors import FacesegError
from faceseg.labels import Remap, Taxonomy
from faceseg.storage import Location

ASPECT_TOLERANCE = 0.02          # relative; label maps may be scaled copies of the image, never reshaped
MAX_IMAGE_PIXELS = 100_000_000   # 10000 x 10000; a header claiming more is refused before decoding
# What one decode may hold: the decoded array as the header says it will be (pixels x channels x bytes per
# channel), so a small 16-bit RGBA PNG cannot cost gigabytes. 100 megapixels of 8-bit RGB fit.
MAX_DECODE_BYTES = 3 * MAX_IMAGE_PIXELS
MAX_FILE_BYTES = 256 << 20       # an encoded image or label map


class BadFileError(FacesegError):
    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


_KINDS = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}


def not_a_regular_file(path: str) -> str | None:
    """Why a local path is not a regular file faceseg can read (a FIFO would block forever), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None                   # missing or unreadable: the read says so
    return None if stat.S_ISREG(mode) else f"not a regular file ({_KINDS.get(stat.S_IFMT(mode), 'special file')})"


def read_bytes(path: str, limit: int = MAX_FILE_BYTES) -> np.ndarray:
    try:
        if "://" in path:
            location = Location.of(path)
            size = location.info().size
            if size is not None and size > limit:
                raise BadFileError(path, f"{size} bytes, more than the {limit} faceseg reads")
            data = np.frombuffer(location.read_bytes(), dtype=np.uint8)
        else:
            reason = not_a_regular_file(path)
            if reason:
                raise BadFileError(path, reason)
            size = os.path.getsize(path)
            if size > limit:
                raise BadFileError(path, f"{size} bytes, more than the {limit} faceseg reads")
            data = np.fromfile(path, dtype=np.uint8)   # copes with any file name, where cv2.imread may not
    except (OSError, ValueError) as error:
        if isinstance(error, BadFileError):
            raise
        raise BadFileError(path, f"cannot read file ({error.__class__.__name__}: {str(error)[:200]})") from None
    if data.size == 0:
        raise BadFileError(path, "empty file (0 bytes)")
    return data


_JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_START_OF_SCAN = 0xDA
_REDUCED_DECODE = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def _jpeg_segments(data: np.ndarray):
    """(marker, offset) of the JPEG header segments up to and including the first start of scan."""
    header = data[:1 << 20].tobytes()
    at = 2
    while at + 4 <= len(header) and header[at] == 0xFF:
        marker = header[at + 1]
        if marker == 0xFF:          # fill byte
            at += 1
            continue
        yield marker, at
        if marker == _JPEG_START_OF_SCAN:
            return
        at += 2 + int.from_bytes(header[at + 2:at + 4], "big")


def jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header without decoding it; None if it is no JPEG."""
    if data[:2].tobytes() != b"\xff\xd8":
        return None
    for marker, at in _jpeg_segments(data):
        if marker in _JPEG_FRAME_MARKERS:
            frame = data[at + 5:at + 9].tobytes()
            if len(frame) == 4:
                return int.from_bytes(frame[:2], "big"), int.from_bytes(frame[2:], "big")
    return None


def png_size(data: np.ndarray) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR chunk; None if it is no PNG."""
    head = data[:24].tobytes()
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 24:
        return None
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}       # IHDR colour type -> channels as decoded


def _png_sample_bytes(data: np.ndarray) -> int:
    """Bytes per pixel of a PNG decoded as it is stored (IMREAD_UNCHANGED): channels x (1 or 2)."""
    head = data[:26].tobytes()
    depth, colour = (head[24], head[25]) if len(head) >= 26 else (8, 6)
    return _PNG_CHANNELS.get(colour, 4) * (2 if depth == 16 else 1)


def _jpeg_components(data: np.ndarray) -> int:
    for marker, at in _jpeg_segments(data):
        if marker in _JPEG_FRAME_MARKERS:
            count = data[at + 9:at + 10].tobytes()
            return count[0] if count else 3
    return 3


def _jpeg_is_truncated(data: np.ndarray) -> bool:
    """A JPEG must have an end-of-image marker after its first scan; OpenCV silently pads a truncated
    one with grey. Bytes after the marker (some cameras and editors append them) are fine."""
    scan = [at for marker, at in _jpeg_segments(data) if marker == _JPEG_START_OF_SCAN]
    start = scan[0] if scan else 2
    return data[start:].tobytes().rfind(b"\xff\xd9") < 0


def _check_size(path: str, size: tuple[int, int] | None) -> None:
    if size is None:
        return
    height, width = size
    if height == 0 or width == 0:
        raise BadFileError(path, f"image header says {width}x{height} pixels")
    if height * width > MAX_IMAGE_PIXELS:
        raise BadFileError(path, f"image is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                                 "faceseg decodes (MAX_IMAGE_PIXELS)")


def _decode(path: str, flags: int, data: np.ndarray) -> np.ndarray:
    is_jpeg = data[:2].tobytes() == b"\xff\xd8"
    _check_size(path, jpeg_size(data) if is_jpeg else png_size(data))
    if is_jpeg and _jpeg_is_truncated(data):
        raise BadFileError(path, "truncated JPEG (no end-of-image marker)")
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error as error:   # OpenCV refuses some corrupt headers by raising, not by returning None
        raise BadFileError(path, f"not a decodable image ({str(error).strip().splitlines()[-1]})") from None
    if image is None or image.size == 0:
        raise BadFileError(path, "not a decodable image (corrupt, truncated or not an image format)")
    if image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:
        raise BadFileError(path, f"image is {image.shape[1]}x{image.shape[0]} pixels, more than the "
                                 f"{MAX_IMAGE_PIXELS:,} faceseg decodes")
    return image


def _decode_scale(original: tuple[int, int], size: int | None) -> int:
    """The largest JPEG DCT scaling (1/2, 1/4, 1/8) that still leaves at least `size` pixels a side."""
    if size is None:
        return 1
    return max([1] + [k for k in _REDUCED_DECODE if min(original) // k >= size])


def _to_rgb(path: str, image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise BadFileError(path, f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise BadFileError(path, f"unsupported number of channels {image.shape[2]}")


PHOTO = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION    # 8-bit BGR from any depth and channels


def decode_image(data: np.ndarray, path: str, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded bytes of any JPEG/PNG/... (grey, RGB, RGBA, 8 or 16 bit) -> ((H', W', 3) uint8 RGB, (H, W)).

    With `size`, a JPEG of at least twice that size is decoded at 1/2, 1/4 or 1/8 of its resolution
    by libjpeg's scaled IDCT (an area average, like INTER_AREA) and H', W' may be smaller than the
    original H, W: the decode gets cheaper and the resize to `size` it spares is the same average.
    """
    original = jpeg_size(data)
    scale = _decode_scale(original, size) if original else 1
    if scale > 1:
        image = _decode(path, _REDUCED_DECODE[scale] | cv2.IMREAD_IGNORE_ORIENTATION, data)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), original
    image = _to_rgb(path, _decode(path, PHOTO, data))
    return image, image.shape[:2]


def read_image(path: str, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """The image file at `path` (a path or URI); see decode_image."""
    return decode_image(read_bytes(path), path, size)


def decode_image_and_detail(data: np.ndarray, path: str, size: int,
                            detail_size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """decode_image at `size` (what the model sees, decoded as training did) and at `detail_size` (for
    edge refinement), decoding a second time only where the reduced JPEG decode would differ."""
    image, original = decode_image(data, path, size)
    if image.shape[:2] == tuple(original) or min(image.shape[:2]) >= detail_size:
        return image, image, original
    return image, decode_image(data, path, detail_size)[0], original


def read_ids(path: str) -> np.ndarray:
    """A grey label map (or a prediction) as (H, W) uint8 class ids, exactly as stored: 8 or 16 bit, grey or
    grey in every channel; an id above 255 is refused."""
    label = _decode(path, cv2.IMREAD_UNCHANGED, read_bytes(path))
    if label.ndim == 3:
        channels = label[..., :3]
        if not (np.array_equal(channels[..., 0], channels[..., 1])
                and np.array_equal(channels[..., 0], channels[..., 2])):
            raise BadFileError(path, "label map is in colour; expected grey class ids")
        label = channels[..., 0]
    if label.dtype != np.uint8:
        if label.max() > 255:
            raise BadFileError(path, f"label id {int(label.max())} does not fit in 0..255")
        label = label.astype(np.uint8)
    return np.ascontiguousarray(label)


def _merge_parts(parts: tuple[tuple[int, str], ...]) -> np.ndarray:
    """CelebAMask-HQ raw masks: paint each part in the official order, later parts on top."""
    merged = None
    for source_id, path in parts:
        mask = read_ids(path)
        if merged is None:
            merged = np.zeros(mask.shape, np.uint8)
        elif mask.shape != merged.shape:
            raise BadFileError(path, f"part mask is {mask.shape[1]}x{mask.shape[0]}, "
                                     f"others are {merged.shape[1]}x{merged.shape[0]}")
        merged[mask > 127] = source_id
    return merged


def read_source_ids(sample: Sample, taxonomy: Taxonomy) -> np.ndarray:
    """(H, W) uint8 ids of the data set's own taxonomy, each one checked to have a class name."""
    source = read_ids(sample.label) if sample.label else _merge_parts(sample.parts)
    named = taxonomy.num_classes
    if source.max() >= named:
        bad = np.unique(source[source >= named])
        raise BadFileError(sample.label_path,
                           f"label ids {bad.tolist()[:8]} are outside 0..{named - 1} (the {named} class names)")
    return source


def read_label(sample: Sample, remap: Remap) -> np.ndarray:
    """(H, W) uint8 ids in the remap's target taxonomy, at the label file's own resolution."""
    return remap.apply(read_source_ids(sample, remap.source))


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
        source = read_source_ids(sample, remap.source)
        check_same_aspect((height, width), source.shape, sample.label_path)
        # Nearest neighbour only picks pixels: remapping after it gives the same map, on fewer pixels.
        row["mask"] = remap.apply(resize_label(source, size))
    return row


def class_pixel_counts(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """(B, H, W) uint8 ids -> (num_classes,) pixel counts.

    cv2.calcHist counts without np.bincount's int64 copy; its float32 counts are exact per image
    (under 2**24 pixels), so images are counted one at a time and summed as int64.
    """
    counts = np.zeros(num_classes, np.int64)
    for mask in masks:
        counts += cv2.calcHist([mask], [0], None, [256], [0, 256]).reshape(-1)[:num_classes].astype(np.int64)
    return counts


def encode_png(path: str, array: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    return encoded.tobytes()
