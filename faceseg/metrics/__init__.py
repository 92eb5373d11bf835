"""Per-class F1 and IoU, mean F1 and IoU, pixel accuracy, and Helen's F1 groups (docs/metrics.md)."""
from faceseg.metrics.confusion import ConfusionMatrix, format_report, is_report, validation_metrics, write_report

__all__ = ["ConfusionMatrix", "format_report", "is_report", "validation_metrics", "write_report"]
