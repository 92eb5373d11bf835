"""`faceseg evaluate GT PRED`: the F1 report of docs/metrics.md from label-map files."""
from __future__ import annotations

import json

import cv2
import numpy as np

from faceseg.data.decode import BadFileError, read_bytes, read_label
from faceseg.data.layouts import DatasetError, discover
from faceseg.labels import Taxonomy, build_remap
from faceseg.metrics.confusion import ConfusionMatrix
from faceseg.storage import Location


class EvaluationError(ValueError):
    pass


def read_prediction(path: Location) -> np.ndarray:
    if not path.is_file():
        raise BadFileError(str(path), "missing prediction")
    pred = cv2.imdecode(read_bytes(str(path)), cv2.IMREAD_GRAYSCALE)
    if pred is None:
        raise BadFileError(str(path), "prediction is not a readable PNG")
    return pred


def prediction_classes(pred_dir: Location) -> Taxonomy | None:
    """The classes of the model that wrote `pred_dir`, from faceseg predict's record; None without one."""
    from faceseg.predict.job import read_record

    record = read_record(pred_dir)
    return Taxonomy(tuple(record["model"]["classes"])) if record else None


def evaluate(gt: str | Location, pred: str | Location, *, layout: str = "auto", json_out: str | None = None) -> dict:
    """Match every ground-truth label to its prediction by file name and score them together.

    The ground truth's classes must map by name onto those of the model that wrote the predictions
    (predict.json); predictions from elsewhere are taken to use the ground truth's own ids.
    """
    gt_dir, pred_dir = Location.of(gt), Location.of(pred)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{pred_dir}: no such folder of predictions")
    source = discover(gt_dir, layout)
    labelled = [s for s in source.samples if s.has_label]
    if not labelled:
        raise DatasetError(f"{gt_dir}: no ground-truth label maps found")
    remap = build_remap(source.taxonomy, prediction_classes(pred_dir), what=f"the ground truth at {gt_dir}")
    confusion, errors = ConfusionMatrix(remap.target), []
    for sample in labelled:
        pred_path = pred_dir / sample.prediction_name
        try:
            truth = read_label(sample, remap)
            prediction = read_prediction(pred_path)
            if prediction.shape != truth.shape:
                raise BadFileError(str(pred_path), f"prediction is {prediction.shape[1]}x{prediction.shape[0]}, "
                                                   f"ground truth is {truth.shape[1]}x{truth.shape[0]}")
            confusion.add(truth, prediction)
        except (BadFileError, ValueError) as error:
            errors.append(str(error))
    if errors:
        listing = "\n  ".join(errors[:20]) + ("\n  ..." if len(errors) > 20 else "")
        raise EvaluationError(f"{len(errors)} of {len(labelled)} images cannot be scored:\n  {listing}")
    report = confusion.report()
    if json_out:
        write_report(report, json_out)
    return report


def write_report(report: dict, where: str | Location) -> None:
    location = Location.of(where)
    location.parent.mkdir()
    location.write_text(json.dumps(report, indent=2))
