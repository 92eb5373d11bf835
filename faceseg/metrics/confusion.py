"""One confusion matrix accumulated over every evaluated pixel, and the reports derived from it
(docs/metrics.md): per-class F1 and IoU, mean IoU, mean F1 over the non-background classes, pixel
accuracy, and Helen's F1 groups (eyes, brows, mouth, overall) when the classes are Helen's.
"""
from __future__ import annotations

import json

import numpy as np

from faceseg.errors import FacesegError
from faceseg.labels import HELEN_GROUPS, Taxonomy, metric_key

CHUNK_PIXELS = 1 << 22
REPORT_FORMAT = "faceseg-report-1"


class LabelMapError(FacesegError):
    """A label map or prediction that cannot be scored against its pair (callers add the file's name)."""


class ConfusionMatrix:
    """counts[g, p] = number of pixels with ground truth g predicted as p."""

    def __init__(self, taxonomy: Taxonomy, counts: np.ndarray | None = None, images: int = 0):
        n = taxonomy.num_classes
        self.taxonomy = taxonomy
        self.counts = np.zeros((n, n), np.int64) if counts is None else counts
        self.images = images

    def add(self, gt: np.ndarray, pred: np.ndarray) -> "ConfusionMatrix":
        """Accumulate one image (H, W) or a batch (B, H, W) of class ids."""
        if gt.shape != pred.shape:
            raise LabelMapError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
        images = 1 if gt.ndim == 2 else gt.shape[0]
        n = self.taxonomy.num_classes
        if gt.size and max(int(gt.max()), int(pred.max())) >= n:
            raise LabelMapError(f"class id {max(int(gt.max()), int(pred.max()))} is outside 0..{n - 1}")
        gt, pred = gt.reshape(-1), pred.reshape(-1)
        for start in range(0, gt.size, CHUNK_PIXELS):   # int64 indices a chunk at a time: bounded memory
            index = gt[start:start + CHUNK_PIXELS].astype(np.int64) * n + pred[start:start + CHUNK_PIXELS]
            self.counts += np.bincount(index, minlength=n * n).reshape(n, n)
        self.images += images
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        self.counts += other.counts
        self.images += other.images
        return self

    def f1(self, ids) -> float:
        """F1 of a set of classes counted as one: 2 |gt in S and pred in S| / (|gt in S| + |pred in S|)."""
        ids = list(ids)
        hits = self.counts[np.ix_(ids, ids)].sum()
        denominator = self.counts[ids, :].sum() + self.counts[:, ids].sum()
        return float(2 * hits / denominator) if denominator else 0.0

    def iou(self) -> np.ndarray:
        tp = np.diag(self.counts).astype(np.float64)
        union = self.counts.sum(0) + self.counts.sum(1) - tp
        return np.divide(tp, union, out=np.zeros_like(tp), where=union > 0)

    def pixel_accuracy(self) -> float:
        total = self.counts.sum()
        return float(np.trace(self.counts) / total) if total else 0.0

    def report(self) -> dict:
        """Fractions in [0, 1]; the schema of docs/metrics.md."""
        taxonomy = self.taxonomy
        f1 = {name: self.f1(ids) for name, ids in taxonomy.f1_sets.items()}
        foreground = [name for i, name in enumerate(taxonomy.names) if i != taxonomy.background]
        iou = self.iou()
        return {
            "format": REPORT_FORMAT,
            "f1": f1,
            "iou": {name: float(value) for name, value in zip(taxonomy.names, iou)},
            "mean_f1": float(np.mean([f1[name] for name in foreground])),
            "mean_iou": float(iou.mean()),
            "pixel_accuracy": self.pixel_accuracy(),
            "images": self.images,
            "label_names": list(taxonomy.names),
            "groups": {group: list(members) for group, members in HELEN_GROUPS.items()} if taxonomy.is_helen else {},
        }


def validation_metrics(report: dict) -> dict:
    """A report as the flat `val_*` values of metrics.jsonl, TensorBoard and Tune."""
    row = {"val_pixel_accuracy": report["pixel_accuracy"], "val_mean_iou": report["mean_iou"],
           "val_f1_mean": report["mean_f1"]}
    row.update({f"val_f1_{metric_key(name)}": value for name, value in report["f1"].items()})
    return row


def format_report(report: dict) -> str:
    """A table in percent: F1 and IoU per class, then the groups and the means."""
    names = report["label_names"]
    width = max(6, *(len(n) for n in names))
    lines = ["class".ljust(width) + "      F1     IoU"]
    lines += [f"{name.ljust(width)} {100 * report['f1'][name]:7.1f} {100 * report['iou'][name]:7.1f}" for name in names]
    groups = list(report.get("groups", {}))
    if groups:
        lines.append("F1 (%)  " + "  ".join(f"{g} {100 * report['f1'][g]:.1f}" for g in groups))
    lines.append(f"mean F1 {100 * report['mean_f1']:.2f}%   mean IoU {100 * report['mean_iou']:.2f}%   "
                 f"pixel accuracy {100 * report['pixel_accuracy']:.2f}%   images {report['images']}")
    return "\n".join(lines)


def write_report(report: dict, where) -> None:
    from faceseg.storage import Location

    location = Location.of(where)
    location.parent.mkdir()
    location.write_text(json.dumps(report, indent=2))


def is_report(where) -> bool:
    """Whether the file is a report faceseg wrote (evaluate --json may replace it, nothing else)."""
    from faceseg.storage import Location

    try:
        location = Location.of(where)
        if (location.info().size or 0) > 64 << 20:
            return False
        report = json.loads(location.read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(report, dict) and (report.get("format") == REPORT_FORMAT
                                         or {"f1", "iou", "pixel_accuracy", "label_names"} <= set(report))
