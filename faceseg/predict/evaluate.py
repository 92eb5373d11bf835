"""`faceseg evaluate GT PRED`: the F1 report of docs/metrics.md from label-map files.

Predictions are read exactly as ground truth is (8- or 16-bit grey PNGs of class ids); the classes are
those of the model that wrote PRED (its predict.json), mapped onto the ground truth's by name.
"""
from __future__ import annotations

from faceseg.data.decode import BadFileError, read_ids, read_label
from faceseg.data.layouts import DatasetError, discover
from faceseg.errors import FacesegError
from faceseg.labels import Taxonomy, build_remap
from faceseg.metrics import ConfusionMatrix, is_report, write_report
from faceseg.metrics.confusion import LabelMapError
from faceseg.predict.output import read_record
from faceseg.storage import Location, check_writable


class EvaluationError(FacesegError):
    pass


def prediction_classes(pred_dir: Location) -> Taxonomy | None:
    """The classes of the model that wrote `pred_dir`, from faceseg predict's record; None without one."""
    record = read_record(pred_dir)
    return Taxonomy(tuple(record.model.classes)) if record else None


def check_report_destination(json_out: Location, gt_dir: Location) -> None:
    """--json OUT: a new file, or a faceseg report to replace; never inside the ground truth."""
    if gt_dir.contains(json_out):
        raise EvaluationError(f"--json {json_out}: lies inside the ground truth {gt_dir}; write the report elsewhere")
    if json_out.is_dir():
        raise EvaluationError(f"--json {json_out}: is a folder; name the report file to write")
    if json_out.exists() and not is_report(json_out):
        raise EvaluationError(f"--json {json_out}: exists and is not a faceseg report; refusing to replace it")


def evaluate(gt: str | Location, pred: str | Location, *, layout: str = "auto", json_out: str | None = None) -> dict:
    """Match every ground-truth label to its prediction by file name and score them together.

    The ground truth's classes must map by name onto those of the model that wrote the predictions
    (predict.json); predictions from elsewhere are taken to use the ground truth's own ids.
    """
    gt_dir, pred_dir = Location.of(gt), Location.of(pred)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{pred_dir}: no such folder of predictions")
    if json_out:
        check_report_destination(Location.of(json_out), gt_dir)
        check_writable(Location.of(json_out).parent, "--json")
    source = discover(gt_dir, layout)
    labelled = [s for s in source.samples if s.has_label]
    if not labelled:
        raise DatasetError(f"{gt_dir}: no ground-truth label maps found")
    remap = build_remap(source.taxonomy, prediction_classes(pred_dir), what=f"the ground truth at {gt_dir}")
    confusion, errors = ConfusionMatrix(remap.target), []
    for sample in labelled:
        pred_path = pred_dir / sample.prediction_name
        try:
            if not pred_path.is_file():
                raise BadFileError(str(pred_path), "missing prediction")
            truth = read_label(sample, remap)
            prediction = read_ids(str(pred_path))
            if prediction.shape != truth.shape:
                raise BadFileError(str(pred_path), f"prediction is {prediction.shape[1]}x{prediction.shape[0]}, "
                                                   f"ground truth is {truth.shape[1]}x{truth.shape[0]}")
            confusion.add(truth, prediction)
        except LabelMapError as error:
            errors.append(f"{pred_path}: {error}")
        except BadFileError as error:
            errors.append(str(error))
    if errors:
        listing = "\n  ".join(errors[:20]) + ("\n  ..." if len(errors) > 20 else "")
        raise EvaluationError(f"{len(errors)} of {len(labelled)} images cannot be scored:\n  {listing}")
    report = confusion.report()
    if json_out:
        write_report(report, json_out)
    return report
