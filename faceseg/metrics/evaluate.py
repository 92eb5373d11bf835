"""`faceseg evaluate GT PRED`: the Helen F1 report from label-map files."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from faceseg.atomic import write_atomic
from faceseg.data.decode import BadFileError, read_label
from faceseg.data.layouts import DatasetError, discover
from faceseg.metrics.confusion import ConfusionMatrix


class EvaluationError(ValueError):
    pass


def read_prediction(path: Path) -> np.ndarray:
    if not path.is_file():
        raise BadFileError(str(path), "missing prediction")
    pred = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_GRAYSCALE)
    if pred is None:
        raise BadFileError(str(path), "prediction is not a readable PNG")
    return pred


def evaluate_folders(gt_dir: Path | str, pred_dir: Path | str, layout: str = "auto") -> dict:
    """Match every ground-truth label to its prediction by file name and score them together."""
    source = discover(Path(gt_dir), layout)
    labelled = [s for s in source.samples if s.has_label]
    if not labelled:
        raise DatasetError(f"{gt_dir}: no ground-truth label maps found")
    confusion, errors = ConfusionMatrix(), []
    for sample in labelled:
        pred_path = Path(pred_dir) / sample.prediction_name
        try:
            gt = read_label(sample, source.remap)
            pred = read_prediction(pred_path)
            if pred.shape != gt.shape:
                raise BadFileError(str(pred_path), f"prediction is {pred.shape[1]}x{pred.shape[0]}, "
                                                   f"ground truth is {gt.shape[1]}x{gt.shape[0]}")
            confusion.add(gt, pred)
        except BadFileError as error:
            errors.append(str(error))
    if errors:
        listing = "\n  ".join(errors[:20]) + ("\n  ..." if len(errors) > 20 else "")
        raise EvaluationError(f"{len(errors)} of {len(labelled)} images cannot be scored:\n  {listing}")
    return confusion.report()


def write_report(report: dict, path: Path | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(report, indent=2))
