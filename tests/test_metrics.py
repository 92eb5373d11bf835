"""F1, IoU and accuracy from one global confusion matrix, checked against hand computations."""
import numpy as np
import pytest

from faceseg.labels import HELEN, HELEN_NAMES, Taxonomy
from faceseg.metrics import ConfusionMatrix, format_report, validation_metrics

LE, RE, NOSE, FACE, BG = (HELEN_NAMES.index(n) for n in ("le", "re", "nose", "face", "bg"))


def test_f1_by_hand():
    gt = np.array([[LE, LE, NOSE, BG]])
    pred = np.array([[LE, BG, NOSE, NOSE]])
    report = ConfusionMatrix(HELEN).add(gt, pred).report()
    # le: hits 1, |gt| 2, |pred| 1 -> 2/3 ; nose: hits 1, |gt| 1, |pred| 2 -> 2/3
    assert report["f1"]["le"] == pytest.approx(2 / 3)
    assert report["f1"]["nose"] == pytest.approx(2 / 3)
    # overall = {le, nose, ...}: hits 2, |gt in S| 3, |pred in S| 3
    assert report["f1"]["overall"] == pytest.approx(2 * 2 / 6)
    assert report["pixel_accuracy"] == pytest.approx(2 / 4)


def test_left_eye_predicted_as_right_eye_is_a_hit_for_eyes_and_overall():
    gt = np.array([[LE, LE, RE, FACE]])
    pred = np.array([[RE, RE, LE, FACE]])
    report = ConfusionMatrix(HELEN).add(gt, pred).report()
    assert report["f1"]["le"] == 0.0 and report["f1"]["re"] == 0.0
    assert report["f1"]["eyes"] == pytest.approx(1.0)
    assert report["f1"]["overall"] == pytest.approx(1.0)


def test_one_matrix_over_all_pixels_not_a_mean_of_images():
    big_gt, big_pred = np.full((10, 10), NOSE), np.full((10, 10), NOSE)      # perfect, 100 px
    small_gt, small_pred = np.array([[NOSE]]), np.array([[BG]])              # all wrong, 1 px
    confusion = ConfusionMatrix(HELEN).add(big_gt, big_pred).add(small_gt, small_pred)
    assert confusion.f1([NOSE]) == pytest.approx(2 * 100 / (101 + 100))
    assert confusion.images == 2


def test_mean_iou_and_schema():
    gt = np.array([[BG, BG, FACE, FACE]])
    pred = np.array([[BG, FACE, FACE, FACE]])
    report = ConfusionMatrix(HELEN).add(gt, pred).report()
    # bg: tp 1, union 2 ; face: tp 2, union 3 ; other classes absent count as 0
    assert report["mean_iou"] == pytest.approx((1 / 2 + 2 / 3) / 11)
    assert set(report) == {"format", "f1", "iou", "mean_f1", "mean_iou", "pixel_accuracy", "images", "label_names",
                           "groups"}
    assert {"eyes", "brows", "mouth", "overall", "hair"} <= set(report["f1"])
    assert "overall" in format_report(report)


def test_six_classes_by_hand_per_class_f1_iou_and_mean_f1_without_background():
    fasseg = Taxonomy(("background", "skin", "hair", "eyes", "nose", "mouth"))
    gt = np.array([[0, 0, 1, 1, 1, 2, 3, 5]])
    pred = np.array([[0, 1, 1, 1, 2, 2, 4, 5]])
    report = ConfusionMatrix(fasseg).add(gt, pred).report()
    # skin: gt 3, pred 3, hits 2 -> F1 2*2/6, IoU 2/4 ; hair: gt 1, pred 2, hits 1 -> F1 2/3, IoU 1/2
    assert report["f1"]["skin"] == pytest.approx(4 / 6) and report["iou"]["skin"] == pytest.approx(2 / 4)
    assert report["f1"]["hair"] == pytest.approx(2 / 3) and report["iou"]["hair"] == pytest.approx(1 / 2)
    # eyes: gt 1, pred 0 -> 0 ; nose: gt 0, pred 1 -> 0 ; mouth: perfect -> 1
    assert report["f1"]["eyes"] == 0 and report["f1"]["nose"] == 0 and report["f1"]["mouth"] == 1
    assert report["mean_f1"] == pytest.approx((4 / 6 + 2 / 3 + 0 + 0 + 1) / 5)      # background left out
    assert report["pixel_accuracy"] == pytest.approx(5 / 8)
    assert report["groups"] == {} and "overall" not in report["f1"]
    row = validation_metrics(report)
    assert row["val_f1_mean"] == report["mean_f1"] and row["val_f1_skin"] == report["f1"]["skin"]


def test_shape_mismatch_and_ids_outside_the_taxonomy_are_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        ConfusionMatrix(HELEN).add(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="outside 0..10"):
        ConfusionMatrix(HELEN).add(np.zeros((2, 2), np.uint8), np.full((2, 2), 11, np.uint8))
