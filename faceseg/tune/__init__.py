"""Ray Tune sweeps: one Ray Train run (the same train loop) per trial, ASHA early stopping."""
from faceseg.tune.sweep import SweepSummary, sweep

__all__ = ["SweepSummary", "sweep"]
