"""`faceseg predict`: the batch-prediction job.

  samples --from_items--> load (decode + resize as training did; the ground truth, if any)   [CPU tasks]
          --> Predictor (a FaceParser per actor: probabilities, then resize + argmax to each
                         image's output size in the graph; uint8 ids come back)             [actors, GPUs optional]
          --> write (PNG, overlay, per-image confusion matrix against the ground truth)     [CPU tasks]
          --> the driver sums the confusion matrices into report.json

The output folder is faceseg's: `predict.json` records which model (its SHA-256) wrote it and which
image each PNG comes from. A re-run with the same model skips the PNGs already there (each one is
written whole or not at all); another model is refused unless --overwrite, so a report never mixes two
models. An output folder that is, holds or lies inside the input is refused: predictions never touch
their inputs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

from faceseg.data.decode import BadFileError, check_same_aspect, encode_png, read_bytes, read_image, read_label
from faceseg.data.layouts import DatasetError, Sample, Source, discover, discover_images
from faceseg.labels import Remap, Taxonomy, build_remap
from faceseg.metrics import ConfusionMatrix, format_report
from faceseg.metrics.evaluate import read_prediction, write_report
from faceseg.model.saved import ModelInfo, inspect_model
from faceseg.parser import decode_photo, guide_image
from faceseg.runtime import Needs, connect, keep_freed_memory
from faceseg.storage import Location

OVERLAYS = "overlays"
REPORT = "report.json"
RECORD = "predict.json"
RECORD_FORMAT = "faceseg-predict-1"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


class OutputError(ValueError):
    pass


@dataclass
class PredictSummary:
    output: Location
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


def find_inputs(folder: Location, layout: str) -> Source:
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


def truth_remap(source: Source, model: Taxonomy) -> Remap | None:
    """How the data set's labels map onto the model's classes (by name); None when it has no labels."""
    if not any(s.has_label for s in source.samples):
        return None
    return build_remap(source.taxonomy, model, what=f"the data set at {source.root}")


# --- the output folder -----------------------------------------------------------------------------------

def read_record(output: Location) -> dict | None:
    record = output / RECORD
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
        if data.get("format") != RECORD_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        return data
    except (ValueError, AttributeError, UnicodeDecodeError) as error:
        raise OutputError(f"{record}: damaged ({error}); remove the output folder or choose another") from None


def check_output(model: ModelInfo, input_: Location, output: Location, overwrite: bool,
                 refine: bool = True) -> dict | None:
    """Refuse an output that would touch the input, that another program filled, or that another
    model (or the same model with refinement switched) filled, without --overwrite; returns the earlier
    run's record, if any."""
    if output.contains(input_) or input_.contains(output):
        raise OutputError(f"--output {output} {'is' if output == input_ else 'contains' if output.contains(input_) else 'lies inside'} "
                          f"--input {input_}: predictions must not touch their inputs; choose another folder")
    if output.is_file():
        raise OutputError(f"--output {output}: is a file; expected a folder")
    record = read_record(output)
    if record is None:
        if output.is_dir() and output.list():
            raise OutputError(f"--output {output}: exists and holds files faceseg predict did not write "
                              f"(no {RECORD}); choose a new or empty folder")
        return None
    if record["model"]["sha256"] != model.sha256 and not overwrite:
        raise OutputError(f"--output {output}: holds predictions of another model ({record['model']['uri']}); "
                          "add --overwrite to replace them, or choose another folder")
    if _refined(record) != refine and not overwrite:
        raise OutputError(f"--output {output}: holds predictions made {'with' if _refined(record) else 'without'} "
                          f"edge refinement; this run is {'with' if refine else 'without (--no-refine)'}. Add "
                          "--overwrite to replace them, or choose another folder")
    return record


def _refined(record: dict) -> bool:
    return record["model"].get("refine", False)     # records from before refinement existed: not refined


def start_output(model: ModelInfo, input_: Location, output: Location, record: dict | None, layout: str,
                 files: dict, refine: bool = True) -> None:
    """Clear another model's (or refinement's) predictions (checked and allowed before), then record this run."""
    if record is not None and (record["model"]["sha256"] != model.sha256 or _refined(record) != refine):
        _forget(output, record)
    output.mkdir()
    (output / RECORD).write_text(json.dumps({
        "format": RECORD_FORMAT, "model": {"uri": str(model.location), "sha256": model.sha256,
                                           "classes": list(model.taxonomy.names), "refine": refine},
        "input": str(input_), "layout": layout, "files": files}, indent=1))


def _forget(output: Location, record: dict) -> None:
    """--overwrite: remove what the earlier run wrote, by its exact names."""
    for name in record.get("files", {}):
        (output / name).delete()
        (output / OVERLAYS / name).delete()
    (output / REPORT).delete()


# --- the pipeline stages -------------------------------------------------------------------------------------

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
        from faceseg.parser import FaceParser

        keep_freed_memory()
        info = inspect_model(model)
        if info.sha256 != sha256:
            raise ValueError(f"{model} changed while the job ran (SHA-256 {info.sha256}, checked {sha256})")
        self.parser = FaceParser(info, refine)
        self.ready_at = None   # wall clock when the first batch was through: start-up is over

    def __call__(self, batch: dict) -> dict:
        pixels, guides = batch.pop("pixels"), batch.pop("guide", None)   # no guides: not refining
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        ids = [np.zeros((0, 0), np.uint8)] * len(pixels)
        if ok.any():
            probs = self.parser.probabilities(pixels[ok])
            for j, i in enumerate(np.flatnonzero(ok)):
                height, width = (int(v) for v in batch["target"][i])
                ids[i] = self.parser.label_map(probs[j], height, width, None if guides is None else guides[i])
        warm = self.ready_at is not None
        self.ready_at = self.ready_at or time.time()
        return {**batch, "ids": object_column(ids), "model_ready_at": np.full(len(pixels), self.ready_at),
                "warm": np.full(len(pixels), warm)}


def write_batch(batch: dict, output: str, overlay: bool, taxonomy: Taxonomy) -> dict:
    """Write PNGs (and overlays), score against the ground truth; returns small result rows."""
    from faceseg.predict.overlay import PANEL_HEIGHT, make_overlay

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
        except (BadFileError, OSError) as error:
            errors[i] = str(error)
    return {"image": batch["image"], "has_truth": np.array([t.size > 0 for t in batch["truth"]]),
            "error": np.array(errors, dtype=object), "confusion": confusion,
            "model_ready_at": batch["model_ready_at"], "warm": batch["warm"]}


def steady_rate(model_ready_at: list[float], warm: list[bool], finished_at: float) -> float:
    """Images/s once running: from the first batch through a loaded, traced model to the last write.

    Only images predicted by an already warm actor count; each actor's first batch is start-up.
    """
    if not model_ready_at or finished_at <= min(model_ready_at):
        return 0.0
    return float(np.sum(warm)) / (finished_at - min(model_ready_at))


def _score_existing(samples: list[Sample], output: Location, remap: Remap, confusion: ConfusionMatrix) -> list[str]:
    """Images done by an earlier run (of the same model) still count in the report: score their PNGs."""
    errors = []
    for sample in samples:
        if sample.has_label:
            try:
                confusion.add(read_label(sample, remap), read_prediction(output / sample.prediction_name))
            except (BadFileError, ValueError) as error:
                errors.append(str(error))
    return errors


def _run_pipeline(todo: list[Sample], model: ModelInfo, output: Location, overlay: bool, remap: Remap | None,
                  refine: bool, batch_size: int, concurrency: int, num_gpus: float, cpu_share: float,
                  confusion: ConfusionMatrix, failed: list[str]) -> float:
    import ray.data

    # Blocks of at most batch_size rows: a larger block would leave a small remainder batch per block.
    dataset = ray.data.from_items([s.to_row() for s in todo], override_num_blocks=-(-len(todo) // batch_size))
    dataset = dataset.map_batches(load_batch, fn_kwargs={"size": model.size, "remap": remap, "refine": refine},
                                  batch_size=batch_size)
    dataset = dataset.map_batches(Predictor, fn_constructor_kwargs={"model": str(model.location), "sha256": model.sha256,
                                                                    "refine": refine}, batch_size=batch_size,
                                  compute=ray.data.ActorPoolStrategy(size=concurrency),
                                  num_gpus=num_gpus or None, num_cpus=None if num_gpus else cpu_share)
    dataset = dataset.map_batches(write_batch, batch_size=batch_size,
                                  fn_kwargs={"output": str(output), "overlay": overlay, "taxonomy": model.taxonomy})
    n = model.taxonomy.num_classes
    model_ready_at, warm = [], []
    for result in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        model_ready_at += list(result["model_ready_at"])
        warm += list(result["warm"])
        for error, has_truth, counts in zip(result["error"], result["has_truth"], result["confusion"]):
            if error:
                failed.append(error)
            elif has_truth:
                confusion.merge(ConfusionMatrix(model.taxonomy, counts.reshape(n, n).copy(), images=1))
    return steady_rate(model_ready_at, warm, time.time())


def predict_folder(model: str | Location, input: str | Location, output: str | Location, *, overlay: bool = False,
                   layout: str = "auto", batch_size: int = 16, concurrency: int = 1, num_gpus: float = 0.0,
                   overwrite: bool = False, refine: bool = True, address: str | None = None) -> PredictSummary:
    """Predict every image of `input` (a data set of any layout, or a folder of images) into `output`.

    Everything is checked before Ray starts: the model file, the input, the output folder, and that the
    data set's classes map onto the model's.
    """
    start = time.perf_counter()
    if batch_size < 1 or concurrency < 1 or num_gpus < 0:
        raise ValueError("--batch-size and --concurrency must be >= 1 and --num-gpus >= 0")
    info = inspect_model(model)
    input_, output = Location.of(input), Location.of(output)
    if not input_.exists():
        raise FileNotFoundError(f"--input {input_}: no such file or folder")
    record = check_output(info, input_, output, overwrite, refine)
    if input_.suffix.lower() in VIDEO_SUFFIXES:
        from faceseg.predict.video import predict_video

        return predict_video(info, input_, output, record, batch_size=batch_size, concurrency=concurrency,
                             num_gpus=num_gpus, overwrite=overwrite, refine=refine, address=address)
    if input_.is_file():
        raise DatasetError(f"--input {input_}: a file that is not a video ({', '.join(VIDEO_SUFFIXES)}); "
                           "give a folder of images, a data set, or a video")
    source = find_inputs(input_, layout)
    remap = truth_remap(source, info.taxonomy)
    share = connect(address, Needs(cpus=0.0 if num_gpus else concurrency, gpus=concurrency * num_gpus,
                                   what=f"{concurrency} model actor(s)", flags="--concurrency / --num-gpus"))

    files = {s.prediction_name: s.image for s in source.samples}
    start_output(info, input_, output, record, source.layout, files, refine)
    done = [] if overwrite else [s for s in source.samples if (output / s.prediction_name).is_file()]
    done_names = {s.prediction_name for s in done}
    todo = [s for s in source.samples if s.prediction_name not in done_names]
    for sample in todo:                       # a killed run's temporaries, by their exact names
        (output / sample.prediction_name).remove_leftover_temp()
        if overlay:
            (output / OVERLAYS / sample.prediction_name).remove_leftover_temp()
    print(f"{len(source.samples)} images in {input_} ({source.layout}); {len(done)} already predicted; "
          f"model {info.location} at {info.size} px, {info.taxonomy.num_classes} classes", flush=True)

    confusion, failed, steady = ConfusionMatrix(info.taxonomy), [], 0.0
    if todo:
        steady = _run_pipeline(todo, info, output, overlay, remap, refine, batch_size, concurrency, num_gpus,
                               share, confusion, failed)
    predicted = len(todo) - len(failed)
    if remap is not None:
        failed += _score_existing(done, output, remap, confusion)
    summary = PredictSummary(output, predicted, len(done), failed, time.perf_counter() - start, steady)
    if remap is not None and confusion.images:
        summary.report = {**confusion.report(), "model": str(info.location), "model_sha256": info.sha256,
                          "files": files}
        write_report(summary.report, output / REPORT)
    return summary
