"""F1, pixel accuracy and mean IoU exactly as the standard Helen evaluation (CONVENTIONS section 4)."""
from faceseg.metrics.confusion import ConfusionMatrix, F1_SETS, format_report

__all__ = ["ConfusionMatrix", "F1_SETS", "format_report"]
