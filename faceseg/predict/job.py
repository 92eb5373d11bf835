"""`faceseg predict`: the batch-prediction job over a folder of images, a data set of any layout, or a video.

  samples --> load (decode + resize as training did; the ground truth, if any)     [CPU tasks or in the actors]
          --> Predictor (a FaceParser per actor)                                    [actors, GPUs optional]
          --> write (PNG, overlay, per-image confusion matrix against the truth)    [CPU tasks]
          --> the driver sums the confusion matrices into report.json
(predict/pipeline.py; the folder's rules: predict/output.py)
"""
from __future__ import annotations

import time

import numpy as np

from faceseg.data.decode import BadFileError, read_ids, read_label
from faceseg.data.layouts import DatasetError, Sample, Source, discover, discover_images
from faceseg.errors import FacesegError
from faceseg.labels import Remap, Taxonomy, build_remap
from faceseg.metrics import ConfusionMatrix, write_report
from faceseg.metrics.confusion import LabelMapError
from faceseg.model.saved import ModelInfo, inspect_model
from faceseg.predict.output import OVERLAYS, REPORT, PredictSummary, check_output, start_output
from faceseg.predict.pipeline import prediction_needs, run_pipeline, steady_rate
from faceseg.predict.stages import load_batch, write_batch
from faceseg.runtime import connect
from faceseg.storage import Location, check_writable

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def find_inputs(folder: Location, layout: str) -> Source:
    """A data set of any layout (scored when it has labels), or else a bare folder of images."""
    try:
        return discover(folder, layout, require_labels=False)
    except DatasetError:
        if layout != "auto":
            raise
        source = discover_images(folder)
        if not source.samples:
            raise DatasetError(f"{folder}: no images found"
                               + (f" ({len(source.problems)} files skipped: {source.problems[0][0]}: "
                                  f"{source.problems[0][1]})" if source.problems else "")) from None
        return source


def truth_remap(source: Source, model: Taxonomy) -> Remap | None:
    """How the data set's labels map onto the model's classes (by name); None when it has no labels."""
    if not any(s.has_label for s in source.samples):
        return None
    return build_remap(source.taxonomy, model, what=f"the data set at {source.root}")


def _score_existing(samples: list[Sample], output: Location, remap: Remap, confusion: ConfusionMatrix) -> list[str]:
    """Images done by an earlier run (of the same model) still count in the report: score their PNGs."""
    errors = []
    for sample in samples:
        if sample.has_label:
            path = output / sample.prediction_name
            try:
                confusion.add(read_label(sample, remap), read_ids(str(path)))
            except LabelMapError as error:
                errors.append(f"{path}: {error}")
            except BadFileError as error:
                errors.append(str(error))
    return errors


def predict_folder(model: str | Location, input: str | Location, output: str | Location, *, overlay: bool = False,
                   layout: str = "auto", batch_size: int = 16, concurrency: int = 1, num_gpus: float = 0.0,
                   overwrite: bool = False, refine: bool = True, address: str | None = None) -> PredictSummary:
    """Predict every image of `input` (a data set of any layout, a folder of images, or a video) into `output`.

    Everything is checked before Ray starts: the model file, the input, the output folder, and that the
    data set's classes map onto the model's.
    """
    start = time.perf_counter()
    if batch_size < 1 or concurrency < 1 or num_gpus < 0:
        raise FacesegError("--batch-size and --concurrency must be >= 1 and --num-gpus >= 0")
    info = inspect_model(model)
    input_, output = Location.of(input), Location.of(output)
    if not input_.exists():
        raise FileNotFoundError(f"--input {input_}: no such file or folder")
    record = check_output(info, input_, output, overwrite, refine)
    check_writable(output, "--output")
    if input_.suffix.lower() in VIDEO_SUFFIXES:
        from faceseg.predict.video import predict_video

        return predict_video(info, input_, output, record, batch_size=batch_size, concurrency=concurrency,
                             num_gpus=num_gpus, overwrite=overwrite, refine=refine, address=address)
    if input_.is_file():
        raise DatasetError(f"--input {input_}: a file that is not a video ({', '.join(VIDEO_SUFFIXES)}); "
                           "give a folder of images, a data set, or a video")
    source = find_inputs(input_, layout)
    remap = truth_remap(source, info.taxonomy)
    share = connect(address, prediction_needs(concurrency, num_gpus))

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
    for path, reason in source.problems:
        print(f"  skipped: {path}: {reason}", flush=True)

    confusion, failed, steady = ConfusionMatrix(info.taxonomy), [], 0.0
    if todo:
        steady = _predict(todo, info, output, overlay, remap, refine, batch_size, concurrency, num_gpus, share,
                          confusion, failed)
    predicted = len(todo) - len(failed)
    if remap is not None:
        failed += _score_existing(done, output, remap, confusion)
    summary = PredictSummary(output, predicted, len(done), failed, time.perf_counter() - start, steady)
    if remap is not None and confusion.images:
        summary.report = {**confusion.report(), "model": str(info.location), "model_sha256": info.sha256,
                          "files": files}
        write_report(summary.report, output / REPORT)
    return summary


def _predict(todo: list[Sample], model: ModelInfo, output: Location, overlay: bool, remap: Remap | None,
             refine: bool, batch_size: int, concurrency: int, num_gpus: float, cpu_share: float,
             confusion: ConfusionMatrix, failed: list[str]) -> float:
    n = model.taxonomy.num_classes
    model_ready_at, warm = [], []
    results = run_pipeline([s.to_row() for s in todo], model, refine,
                           load=load_batch, load_kwargs={"size": model.size, "remap": remap, "refine": refine},
                           rows_per_load=batch_size, write=write_batch,
                           write_kwargs={"output": str(output), "overlay": overlay, "taxonomy": model.taxonomy},
                           batch_size=batch_size, concurrency=concurrency, num_gpus=num_gpus, cpu_share=cpu_share)
    for result in results:
        model_ready_at += list(result["model_ready_at"])
        warm += list(result["warm"])
        for error, has_truth, counts in zip(result["error"], result["has_truth"], result["confusion"]):
            if error:
                failed.append(error)
            elif has_truth:
                confusion.merge(ConfusionMatrix(model.taxonomy, np.asarray(counts).reshape(n, n).copy(), images=1))
    return steady_rate(model_ready_at, warm)
