"""Side-by-side overlays: input | prediction blended on the input | ground truth, with a colour legend."""
from __future__ import annotations

import cv2
import numpy as np

from faceseg.labels import Taxonomy

PANEL_HEIGHT = 256
ALPHA = 0.55


def fit_height(image: np.ndarray, height: int) -> np.ndarray:
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _blend(image: np.ndarray, label: np.ndarray, taxonomy: Taxonomy) -> np.ndarray:
    colours = taxonomy.colorize(label).astype(np.float32)
    mixed = image.astype(np.float32) * (1 - ALPHA) + colours * ALPHA
    return np.where(label[..., None] != taxonomy.background, mixed, image).astype(np.uint8)


def _legend(width: int, taxonomy: Taxonomy) -> np.ndarray:
    """Colour swatches with class names, wrapped to the overlay's width."""
    cell_h = 20
    cell_w = max(78, 30 + 8 * max(len(name) for name in taxonomy.names))
    per_row = max(1, width // cell_w)
    rows = -(-taxonomy.num_classes // per_row)
    legend = np.full((rows * cell_h, width, 3), 255, np.uint8)
    for i, name in enumerate(taxonomy.names):
        x, y = (i % per_row) * cell_w, (i // per_row) * cell_h
        colour = tuple(int(c) for c in taxonomy.palette[i])
        cv2.rectangle(legend, (x + 4, y + 4), (x + 18, y + 16), colour, -1)
        cv2.rectangle(legend, (x + 4, y + 4), (x + 18, y + 16), (0, 0, 0), 1)
        cv2.putText(legend, name, (x + 22, y + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return legend


def make_overlay(image: np.ndarray, pred: np.ndarray, taxonomy: Taxonomy, gt: np.ndarray | None = None) -> np.ndarray:
    """RGB (H, W, 3) image and (h, w) label maps -> RGB overlay panel, PANEL_HEIGHT px high + legend."""
    picture = fit_height(image, PANEL_HEIGHT)
    size = (picture.shape[1], picture.shape[0])
    panels = [picture, _blend(picture, cv2.resize(pred, size, interpolation=cv2.INTER_NEAREST), taxonomy)]
    if gt is not None:
        panels.append(_blend(picture, cv2.resize(gt, size, interpolation=cv2.INTER_NEAREST), taxonomy))
    strip = np.concatenate(panels, axis=1)
    titles = ["input", "prediction", "ground truth"]
    for i in range(len(panels)):
        cv2.putText(strip, titles[i], (i * size[0] + 6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 2,
                    cv2.LINE_AA)
        cv2.putText(strip, titles[i], (i * size[0] + 6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return np.concatenate([strip, _legend(strip.shape[1], taxonomy)], axis=0)
