"""`faceseg predict`: the batch-prediction job.

  samples --from_items--> load (decode + resize, the training code)          [CPU tasks]
          --> Predictor (model loaded ONCE per actor; softmax probabilities)  [actor pool, GPUs optional]
          --> write (probabilities resized to the ORIGINAL size, argmax, PNG written then renamed,
                     overlay, per-image confusion matrix against ground truth)  [CPU tasks]
          --> the driver sums the confusion matrices into report.json

A PNG only ever appears complete (temporary name + rename), so a re-run skips finished images safely.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import ray

import faceseg  # noqa: F401
from faceseg.data.decode import BadFileError, check_same_aspect, read_image, read_label, resize_image, write_png_atomic
from faceseg.data.layouts import DatasetError, Sample, Source, discover, discover_images
from faceseg.labels import NUM_CLASSES, Remap
from faceseg.metrics import ConfusionMatrix, format_report
from faceseg.metrics.evaluate import read_prediction, write_report
from faceseg.model.saved import load_model, model_input_size, resolve_model
from faceseg.runtime import init_ray

OVERLAYS = "overlays"
REPORT = "report.json"


@dataclass
class PredictSummary:
    output: Path
    predicted: int
    skipped: int
    failed: list[str] = field(default_factory=list)   # "file: reason", one per image not predicted
    seconds: float = 0.0
    steady_images_per_second: float = 0.0   # once the model is loaded and traced (see steady_rate)
    report: dict | None = None

    def format(self) -> str:
        rate = self.predicted / self.seconds if self.seconds else 0.0
        steady = f", {self.steady_images_per_second:.1f}/s once running" if self.steady_images_per_second else ""
        lines = [f"predicted {self.predicted} images in {self.seconds:.1f} s ({rate:.1f} images/s{steady}); "
                 f"{self.skipped} already done; {len(self.failed)} failed"]
        lines += [f"  bad file: {message}" for message in self.failed]
        if self.report:
            lines += [format_report(self.report), f"report:   {self.output / REPORT}"]
        lines.append(f"labels:   {self.output}")
        return "\n".join(lines)


def find_inputs(folder: Path, layout: str) -> Source:
    """A data set of any layout (scored when it has labels), or else a bare folder of images."""
    try:
        return discover(folder, layout, require_labels=False)
    except DatasetError:
        if layout != "auto":
            raise
        source = discover_images(folder)
        if not source.samples:
            raise DatasetError(f"{folder}: no images found") from None
        return source


def load_batch(batch: dict, size: int) -> dict:
    """Decode and resize as training did; a bad image gets a zero image and its error message."""
    images, errors = np.zeros((len(batch["image"]), size, size, 3), np.uint8), []   # (B, S, S, 3)
    original = np.zeros((len(batch["image"]), 2), np.int32)                          # (B, [H, W])
    for i, path in enumerate(batch["image"]):
        try:
            image, original[i] = read_image(path, size)
            images[i] = resize_image(image, size)
            errors.append("")
        except BadFileError as error:
            errors.append(str(error))
    return {**batch, "pixels": images, "original_size": original, "error": np.array(errors, dtype=object)}


class Predictor:
    """Holds the model for the actor's lifetime: loading it per batch would dominate the job."""

    def __init__(self, model_path: str, batch_size: int):
        import tensorflow as tf

        self.model, self.batch_size = load_model(model_path), batch_size
        self.forward = tf.function(lambda x: tf.nn.softmax(self.model(x, training=False)))
        self.ready_at = None   # wall clock when the first batch was through: start-up is over

    def __call__(self, batch: dict) -> dict:
        pixels = batch.pop("pixels")                                # (B, S, S, 3) uint8, B <= batch_size
        # Always batch_size rows, so the model is traced once: each new batch shape would re-trace it.
        # predict_folder makes blocks of at most batch_size rows, so padding costs under one batch a job.
        padded = np.zeros((self.batch_size, *pixels.shape[1:]), pixels.dtype)
        padded[:len(pixels)] = pixels
        probs = self.forward(padded).numpy()[:len(pixels)]         # (B, S, S, 11) float32
        warm = self.ready_at is not None
        self.ready_at = self.ready_at or time.time()
        return {**batch, "probs": probs.astype(np.float16),       # half the bytes to move, same argmax
                "model_ready_at": np.full(len(probs), self.ready_at), "warm": np.full(len(probs), warm)}


def _resize_probs(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """(S, S, C) -> (H, W) class ids: interpolate probabilities, THEN argmax (sharper than resizing ids)."""
    probs = probs.astype(np.float32)
    if probs.shape[:2] != (height, width):
        probs = cv2.resize(probs, (width, height), interpolation=cv2.INTER_LINEAR)   # all C channels at once
    return np.argmax(probs, axis=-1).astype(np.uint8)


def write_batch(batch: dict, output: str, overlay: bool, remap: Remap) -> dict:
    """Resize back, write PNGs (and overlays), score against ground truth; returns small result rows."""
    from faceseg.predict.overlay import PANEL_HEIGHT, make_overlay

    out = Path(output)
    samples = [Sample.from_row({key: column[i] for key, column in batch.items()}) for i in range(len(batch["image"]))]
    confusion = np.zeros((len(samples), NUM_CLASSES * NUM_CLASSES), np.int64)
    errors = list(batch["error"])
    for i, sample in enumerate(samples):
        if errors[i]:
            continue
        try:
            original = tuple(batch["original_size"][i])
            gt = read_label(sample, remap) if sample.has_label else None
            if gt is not None:
                check_same_aspect(original, gt.shape, sample.label_path)
            height, width = (gt.shape if gt is not None else original)  # score at the GT's resolution
            pred = _resize_probs(batch["probs"][i], height, width)
            if overlay:
                image = read_image(sample.image, PANEL_HEIGHT)[0]   # the overlay is PANEL_HEIGHT px high
                write_png_atomic(out / OVERLAYS / f"{Path(sample.prediction_name).stem}.png",
                                 cv2.cvtColor(make_overlay(image, pred, gt), cv2.COLOR_RGB2BGR))
            # The label PNG goes last: its presence is what marks the image done for a re-run.
            write_png_atomic(out / sample.prediction_name, pred)
            if gt is not None:
                confusion[i] = ConfusionMatrix().add(gt, pred).counts.reshape(-1)
        except (BadFileError, OSError) as error:
            errors[i] = str(error)
    return {"image": batch["image"], "has_label": np.array([s.has_label for s in samples]),
            "error": np.array(errors, dtype=object), "confusion": confusion,
            "model_ready_at": batch["model_ready_at"], "warm": batch["warm"]}


def steady_rate(model_ready_at: list[float], warm: list[bool], finished_at: float) -> float:
    """Images/s once running: from the first batch through a loaded, traced model to the last write.

    Only images predicted by an already warm actor count; each actor's first batch is start-up.
    """
    if not model_ready_at or finished_at <= min(model_ready_at):
        return 0.0
    return float(np.sum(warm)) / (finished_at - min(model_ready_at))


def _score_existing(samples: list[Sample], output: Path, remap: Remap, confusion: ConfusionMatrix) -> None:
    """Images done by an earlier run still count in the report: score their PNGs from disk."""
    for sample in samples:
        if sample.has_label:
            confusion.add(read_label(sample, remap), read_prediction(output / sample.prediction_name))


def predict_folder(model: Path | str, input_dir: Path | str, output: Path | str, overlay: bool = False,
                   layout: str = "auto", batch_size: int = 16, concurrency: int = 1, num_gpus: float = 0.0,
                   overwrite: bool = False) -> PredictSummary:
    start = time.perf_counter()
    model_path = resolve_model(model)
    source = find_inputs(Path(input_dir), layout)
    output = Path(output).resolve()
    (output / OVERLAYS if overlay else output).mkdir(parents=True, exist_ok=True)
    for stale in output.glob("**/.*.partial"):  # left by a killed run; the real PNGs are all complete
        stale.unlink()
    done = [] if overwrite else [s for s in source.samples if (output / s.prediction_name).is_file()]
    done_names = {s.prediction_name for s in done}
    todo = [s for s in source.samples if s.prediction_name not in done_names]
    size = model_input_size(model_path)
    print(f"{len(source.samples)} images in {input_dir} ({source.layout}); {len(done)} already predicted; "
          f"model {model_path} at {size} px", flush=True)

    confusion, failed, steady = ConfusionMatrix(), [], 0.0
    if todo:
        # Blocks of at most batch_size rows: a larger block would leave a small remainder batch per block,
        # and every batch costs a full-size forward pass (see Predictor).
        dataset = ray.data.from_items([s.to_row() for s in todo], override_num_blocks=-(-len(todo) // batch_size))
        dataset = dataset.map_batches(load_batch, fn_kwargs={"size": size}, batch_size=batch_size)
        dataset = dataset.map_batches(Predictor, fn_constructor_kwargs={"model_path": str(model_path),
                                                                        "batch_size": batch_size},
                                      batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=concurrency),
                                      num_gpus=num_gpus or None)
        dataset = dataset.map_batches(write_batch, batch_size=batch_size,
                                      fn_kwargs={"output": str(output), "overlay": overlay, "remap": source.remap})
        model_ready_at, warm = [], []
        for result in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            model_ready_at += list(result["model_ready_at"])
            warm += list(result["warm"])
            for error, has_label, counts in zip(result["error"], result["has_label"], result["confusion"]):
                if error:
                    failed.append(error)
                elif has_label:
                    confusion.merge(ConfusionMatrix(counts.reshape(NUM_CLASSES, NUM_CLASSES).copy(), images=1))
        steady = steady_rate(model_ready_at, warm, time.time())
    _score_existing(done, output, source.remap, confusion)
    summary = PredictSummary(output, len(todo) - len(failed), len(done), failed, time.perf_counter() - start, steady)
    if any(s.has_label for s in source.samples):
        summary.report = confusion.report()
        write_report(summary.report, output / REPORT)
    return summary


def run_prediction(args) -> PredictSummary:
    init_ray(getattr(args, "address", None), reserved_cpus=args.concurrency)
    return predict_folder(args.model, args.input, args.output, args.overlay, args.layout, args.batch_size,
                          args.concurrency, args.num_gpus, args.overwrite)
