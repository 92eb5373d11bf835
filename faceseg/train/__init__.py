"""Training: one loop (`loop.py`) run by Ray Train workers or in-process (`--local`)."""
from faceseg.train.run import RunSummary, train

__all__ = ["RunSummary", "train"]
