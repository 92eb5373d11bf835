import numpy as np
import pytest

from faceseg.labels import CLASS_ID
from faceseg.metrics import ConfusionMatrix, format_report

LE, RE, NOSE, FACE, BG = (CLASS_ID[n] for n in ("le", "re", "nose", "face", "bg"))


def test_f1_by_hand():
    gt = np.array([[LE, LE, NOSE, BG]])
    pred = np.array([[LE, BG, NOSE, NOSE]])
    report = ConfusionMatrix().add(gt, pred).report()
    # le: hits 1, |gt| 2, |pred| 1 -> 2/3 ; nose: hits 1, |gt| 1, |pred| 2 -> 2/3
    assert report["f1"]["le"] == pytest.approx(2 / 3)
    assert report["f1"]["nose"] == pytest.approx(2 / 3)
    # overall = {le, nose, ...}: hits 2, |gt in S| 3, |pred in S| 3
    assert report["f1"]["overall"] == pytest.approx(2 * 2 / 6)
    assert report["pixel_accuracy"] == pytest.approx(2 / 4)


def test_left_eye_predicted_as_right_eye_is_a_hit_for_eyes_and_overall():
    gt = np.array([[LE, LE, RE, FACE]])
    pred = np.array([[RE, RE, LE, FACE]])
    report = ConfusionMatrix().add(gt, pred).report()
    assert report["f1"]["le"] == 0.0 and report["f1"]["re"] == 0.0
    assert report["f1"]["eyes"] == pytest.approx(1.0)
    assert report["f1"]["overall"] == pytest.approx(1.0)


def test_one_matrix_over_all_pixels_not_a_mean_of_images():
    big_gt, big_pred = np.full((10, 10), NOSE), np.full((10, 10), NOSE)      # perfect, 100 px
    small_gt, small_pred = np.array([[NOSE]]), np.array([[BG]])              # all wrong, 1 px
    confusion = ConfusionMatrix().add(big_gt, big_pred).add(small_gt, small_pred)
    assert confusion.f1(("nose",)) == pytest.approx(2 * 100 / (101 + 100))
    assert confusion.images == 2


def test_mean_iou_and_schema():
    gt = np.array([[BG, BG, FACE, FACE]])
    pred = np.array([[BG, FACE, FACE, FACE]])
    report = ConfusionMatrix().add(gt, pred).report()
    # bg: tp 1, union 2 ; face: tp 2, union 3 ; other classes absent count as 0
    assert report["mean_iou"] == pytest.approx((1 / 2 + 2 / 3) / 11)
    assert set(report) == {"f1", "pixel_accuracy", "mean_iou", "images", "label_names"}
    assert {"eyes", "brows", "mouth", "overall", "hair"} <= set(report["f1"])
    assert "overall" in format_report(report)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        ConfusionMatrix().add(np.zeros((2, 2)), np.zeros((2, 3)))
