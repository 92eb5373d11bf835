"""Batch prediction: a Ray Data job writing one label-map PNG per image, scored when ground truth exists."""
from faceseg.predict.job import PredictSummary, run_prediction

__all__ = ["PredictSummary", "run_prediction"]
