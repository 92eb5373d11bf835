"""One confusion matrix accumulated over every evaluated pixel, and the reports derived from it."""
from __future__ import annotations

import numpy as np

from faceseg.labels import CLASS_ID, LABEL_NAMES, NUM_CLASSES

# Each set counts as one class: a left eye predicted as right eye is a hit for `eyes` and `overall`.
F1_SETS: dict[str, tuple[str, ...]] = {
    **{name: (name,) for name in LABEL_NAMES},
    "eyes": ("le", "re"),
    "brows": ("lb", "rb"),
    "mouth": ("ulip", "imouth", "llip"),
    "overall": ("le", "re", "lb", "rb", "nose", "ulip", "imouth", "llip"),
}


class ConfusionMatrix:
    """counts[g, p] = number of pixels with ground truth g predicted as p."""

    def __init__(self, counts: np.ndarray | None = None, images: int = 0):
        self.counts = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64) if counts is None else counts
        self.images = images

    def add(self, gt: np.ndarray, pred: np.ndarray) -> "ConfusionMatrix":
        """Accumulate one image (H, W) or a batch (B, H, W) of class ids."""
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
        index = gt.astype(np.int64).reshape(-1) * NUM_CLASSES + pred.astype(np.int64).reshape(-1)
        self.counts += np.bincount(index, minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
        self.images += 1 if gt.ndim == 2 else gt.shape[0]
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        self.counts += other.counts
        self.images += other.images
        return self

    def f1(self, class_names: tuple[str, ...]) -> float:
        ids = [CLASS_ID[n] for n in class_names]
        hits = self.counts[np.ix_(ids, ids)].sum()
        gt_total = self.counts[ids, :].sum()
        pred_total = self.counts[:, ids].sum()
        denominator = gt_total + pred_total
        return float(2 * hits / denominator) if denominator else 0.0

    def pixel_accuracy(self) -> float:
        total = self.counts.sum()
        return float(np.trace(self.counts) / total) if total else 0.0

    def mean_iou(self) -> float:
        tp = np.diag(self.counts).astype(np.float64)
        union = self.counts.sum(0) + self.counts.sum(1) - tp
        return float(np.mean(np.divide(tp, union, out=np.zeros_like(tp), where=union > 0)))

    def report(self) -> dict:
        """The report schema of CONVENTIONS section 6 (fractions in [0, 1])."""
        return {
            "f1": {name: self.f1(members) for name, members in F1_SETS.items()},
            "pixel_accuracy": self.pixel_accuracy(),
            "mean_iou": self.mean_iou(),
            "images": self.images,
            "label_names": list(LABEL_NAMES),
        }


def format_report(report: dict) -> str:
    """A table of F1 in percent, single classes then the sets."""
    f1 = report["f1"]
    lines = ["F1 (%)      " + " ".join(f"{n:>6}" for n in LABEL_NAMES)]
    lines.append("            " + " ".join(f"{100 * f1[n]:6.1f}" for n in LABEL_NAMES))
    groups = ("eyes", "brows", "mouth", "overall")
    lines.append("            " + " ".join(f"{n:>7}" for n in groups))
    lines.append("            " + " ".join(f"{100 * f1[n]:7.1f}" for n in groups))
    lines.append(f"pixel accuracy {100 * report['pixel_accuracy']:.2f}%   mean IoU {100 * report['mean_iou']:.2f}%"
                 f"   images {report['images']}")
    return "\n".join(lines)
