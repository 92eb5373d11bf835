"""Batch prediction: a Ray Data job writing one label-map PNG per image, scored when ground truth exists."""
from faceseg.predict.job import PredictSummary, predict_folder

__all__ = ["PredictSummary", "predict_folder"]
