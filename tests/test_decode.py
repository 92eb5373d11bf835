"""Decoding shortcuts taken for speed give what the plain OpenCV path gives (real files, no Ray)."""
import cv2
import numpy as np
import pytest

from datasets import celeba_ids, face, save_grey, save_rgb
from faceseg.data.cache import decode_tensor, encode_tensor
from faceseg.data.decode import (class_pixel_counts, jpeg_size, load_sample, read_bytes, read_image, read_label,
                                 resize_image, resize_label)
from faceseg.data.layouts import Sample
from faceseg.labels import CELEBAMASK_NAMES, HELEN, Taxonomy, build_remap


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_jpeg_size_reads_the_frame_header(tmp_path, progressive):
    image, _ = face(1, size=160)
    path = tmp_path / "wide.jpg"
    wide = cv2.resize(image, (200, 120))
    assert cv2.imwrite(str(path), cv2.cvtColor(wide, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert jpeg_size(read_bytes(str(path))) == (120, 200)
    save_rgb(tmp_path / "face.png", image)
    assert jpeg_size(read_bytes(str(tmp_path / "face.png"))) is None


def test_scaled_jpeg_decode_matches_full_decode_and_area_resize(tmp_path):
    image, _ = face(2, size=256)
    save_rgb(tmp_path / "face.jpg", image)
    reduced, original = read_image(str(tmp_path / "face.jpg"), size=64)
    full, _ = read_image(str(tmp_path / "face.jpg"))
    assert original == (256, 256) and reduced.shape == (64, 64, 3)       # decoded at 1/4 scale
    expected = resize_image(full, 64)                                     # the plain path: INTER_AREA
    assert np.abs(resize_image(reduced, 64).astype(int) - expected.astype(int)).mean() < 2.0
    assert read_image(str(tmp_path / "face.jpg"), size=200)[0].shape == (256, 256, 3)   # 1/2 would be < 200


def test_scaled_decode_of_a_grey_jpeg_is_rgb(tmp_path):
    image, _ = face(3, size=128)
    save_grey(tmp_path / "grey.jpg", cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    rgb, original = read_image(str(tmp_path / "grey.jpg"), size=32)
    assert original == (128, 128) and rgb.shape == (32, 32, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all()


def test_class_pixel_counts_equal_bincount():
    masks = np.random.default_rng(0).integers(0, 11, (5, 40, 24)).astype(np.uint8)
    assert (class_pixel_counts(masks, 11) == np.bincount(masks.ravel(), minlength=11)).all()


def test_tensor_bytes_round_trip():
    images = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    column = encode_tensor(images)
    assert column.type.byte_width == 8 * 8 * 3
    assert (decode_tensor(column, (8, 8, 3)) == images).all()
    assert (decode_tensor(column.slice(1), (8, 8, 3)) == images[1:]).all()   # an offset into the buffer


def test_mask_remapped_after_resizing_equals_remapped_before(tmp_path):
    image, label = face(3, size=200)
    save_rgb(tmp_path / "a.jpg", image)
    save_grey(tmp_path / "a.png", celeba_ids(label))              # CelebAMask-HQ ids: a real remap
    sample = Sample("a", "train", str(tmp_path / "a.jpg"), str(tmp_path / "a.png"))
    remap = build_remap(Taxonomy(CELEBAMASK_NAMES), HELEN, allow_unmapped=True)
    full = read_label(sample, remap)                              # remapped at 200 px, then resized
    assert (full == label).all()
    assert (load_sample(sample, remap, 64)["mask"] == resize_label(full, 64)).all()
