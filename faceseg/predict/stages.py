"""The stages of the batch-prediction pipeline (predict/pipeline.py), for images and for video frames.

    load_batch | load_frames     decode and resize as training did, the guide for refinement, the ground truth
    Predictor                    a FaceParser per actor: probabilities, then each label map at its own size
    write_batch | write_frames   label PNGs (and overlays), a confusion matrix per image against the truth

Each image carries its error message through the stages: a bad file is reported, never fatal.
"""
from __future__ import annotations

import time

import cv2
import numpy as np

from faceseg.data.decode import (BadFileError, check_same_aspect, encode_png, read_bytes, read_image, read_label,
                                 resize_image)
from faceseg.data.layouts import Sample
from faceseg.errors import FacesegError
from faceseg.labels import Remap, Taxonomy
from faceseg.metrics import ConfusionMatrix
from faceseg.model.saved import ModelError, inspect_model
from faceseg.predict.output import OVERLAYS
from faceseg.predict.overlay import PANEL_HEIGHT, fit_height, make_overlay
from faceseg.predict.parser import FaceParser, decode_photo, guide_image
from faceseg.runtime import keep_freed_memory
from faceseg.storage import LocalCopy, Location

FRAMES = "frames"


def frame_name(index: int) -> str:
    return f"{FRAMES}/frame_{index:06d}.png"


def object_column(items: list) -> np.ndarray:
    """A 1-D object array of arrays of any shapes (numpy would stack equal shapes into one array)."""
    column = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        column[i] = item
    return column


def load_batch(batch: dict, size: int, remap: Remap | None, refine: bool) -> dict:
    """Decode and resize as training did (and, when refining, the guide at the output's size), and read the
    ground truth; a bad file gets its error message (and empty arrays)."""
    n = len(batch["image"])
    pixels = np.zeros((n, size, size, 3), np.uint8)                       # (B, S, S, 3)
    target = np.zeros((n, 2), np.int32)                                   # (B, [H, W]) of the label map to write
    truths, guides, errors = [], [], []
    for i in range(n):
        sample = Sample.from_row({key: column[i] for key, column in batch.items()})
        truth, guide = np.zeros((0, 0), np.uint8), np.zeros((0, 0, 3), np.uint8)
        try:
            pixels[i], original, detail = decode_photo(read_bytes(sample.image), sample.image, size, refine)
            target[i] = original
            if sample.has_label and remap is not None:
                truth = read_label(sample, remap)
                check_same_aspect(original, truth.shape, sample.label_path)
                target[i] = truth.shape               # scored at the ground truth's resolution
            if refine:
                guide = guide_image(detail, int(target[i][0]), int(target[i][1]), size)
            errors.append("")
        except BadFileError as error:
            errors.append(str(error))
        truths.append(truth)
        guides.append(guide)
    loaded = {**batch, "pixels": pixels, "target": target, "truth": object_column(truths),
              "error": np.array(errors, dtype=object)}
    return {**loaded, "guide": object_column(guides)} if refine else loaded


class Predictor:
    """A FaceParser for the actor's lifetime: loading the model per batch would dominate the job."""

    def __init__(self, model: str, sha256: str, refine: bool = True):
        keep_freed_memory()
        info = inspect_model(model)
        if info.sha256 != sha256:
            raise ModelError(f"{model} changed while the job ran (SHA-256 {info.sha256}, checked {sha256})")
        self.parser = FaceParser(info, refine)
        self.ready_at = None   # wall clock when the first batch was through: start-up is over

    def __call__(self, batch: dict) -> dict:
        pixels, guides = batch.pop("pixels"), batch.pop("guide", None)   # no guides: not refining
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        ids = [np.zeros((0, 0), np.uint8)] * len(pixels)
        if ok.any():
            rows = np.flatnonzero(ok)
            inputs = pixels[rows]
            probs = self.parser.probabilities(inputs)
            sizes = [tuple(int(v) for v in batch["target"][i]) for i in rows]
            maps = self.parser.label_maps(probs, inputs, sizes, [None if guides is None else guides[i] for i in rows])
            for i, label_map in zip(rows, maps):
                ids[i] = label_map
        warm = self.ready_at is not None
        self.ready_at = self.ready_at or time.time()
        return {**batch, "ids": object_column(ids), "model_ready_at": np.full(len(pixels), self.ready_at),
                "warm": np.full(len(pixels), warm)}


def write_batch(batch: dict, output: str, overlay: bool, taxonomy: Taxonomy) -> dict:
    """Write PNGs (and overlays), score against the ground truth; returns small result rows."""
    out = Location.of(output)
    n = len(batch["image"])
    confusion = np.zeros((n, taxonomy.num_classes ** 2), np.int64)
    errors = list(batch["error"])
    for i in range(n):
        if errors[i]:
            continue
        sample = Sample.from_row({key: batch[key][i] for key in ("name", "split", "image", "label", "parts",
                                                                   "prediction_name")})
        pred, truth = batch["ids"][i], batch["truth"][i]
        truth = truth if truth.size else None
        try:
            if overlay:
                picture = read_image(sample.image, PANEL_HEIGHT)[0]
                (out / OVERLAYS / sample.prediction_name).write_bytes(
                    encode_png(sample.image, make_overlay(picture, pred, taxonomy, truth)[..., ::-1]))
            # The label PNG goes last: its presence is what marks the image done for a re-run.
            (out / sample.prediction_name).write_bytes(encode_png(sample.prediction_name, pred))
            if truth is not None:
                confusion[i] = ConfusionMatrix(taxonomy).add(truth, pred).counts.reshape(-1)
        except (FacesegError, OSError) as error:     # a full disk, a link where the PNG goes
            errors[i] = str(error)
    return {"image": batch["image"], "has_truth": np.array([t.size > 0 for t in batch["truth"]]),
            "error": np.array(errors, dtype=object), "confusion": confusion,
            "model_ready_at": batch["model_ready_at"], "warm": batch["warm"]}


def load_frames(batch: dict, video: str, size: int, frames_per_row: int, refine: bool = True) -> dict:
    """Rows of first-frame numbers -> one row per decoded frame: the model's input, the frame's size,
    the refinement's guide, the frame at the overlay's height (`picture`), its number."""
    pixels, guides, pictures, targets, indices, errors = [], [], [], [], [], []
    with LocalCopy(Location.of(video)) as path:
        capture = cv2.VideoCapture(str(path))
        try:
            for first in batch["first"]:
                capture.set(cv2.CAP_PROP_POS_FRAMES, int(first))
                for index in range(int(first), int(first) + frames_per_row):
                    ok, frame = capture.read()
                    if not ok:
                        break
                    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    pixels.append(resize_image(rgb, size))
                    if refine:
                        guides.append(guide_image(rgb, *rgb.shape[:2], size))
                    pictures.append(fit_height(rgb, PANEL_HEIGHT))
                    targets.append(rgb.shape[:2])
                    indices.append(index)
                    errors.append("")
        finally:
            capture.release()
    frames = {"pixels": np.array(pixels, np.uint8).reshape(-1, size, size, 3), "picture": np.array(pictures, np.uint8),
              "target": np.array(targets, np.int32), "index": np.array(indices, np.int64),
              "error": np.array(errors, dtype=object)}
    return {**frames, "guide": object_column(guides)} if refine else frames


def write_frames(batch: dict, output: str, taxonomy) -> dict:
    """Label PNG and overlay frame of each predicted frame."""
    out = Location.of(output)
    errors = list(batch["error"])
    for i, index in enumerate(batch["index"]):
        name = frame_name(int(index))
        try:
            (out / name).write_bytes(encode_png(name, batch["ids"][i]))
            picture = make_overlay(batch["picture"][i], batch["ids"][i], taxonomy)
            (out / OVERLAYS / name).write_bytes(encode_png(name, picture[..., ::-1]))
        except (FacesegError, OSError) as error:
            errors[i] = str(error)
    return {"index": batch["index"], "error": np.array(errors, dtype=object)}


