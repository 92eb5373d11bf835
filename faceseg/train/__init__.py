"""Training: one loop (`loop.py`) run by Ray Train workers or in-process (`--local`)."""
from faceseg.train.run import TrainResult, run_training, train

__all__ = ["TrainResult", "run_training", "train"]
