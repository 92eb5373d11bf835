"""`faceseg predict --input clip.mp4`: every frame of a video through the batch job.

  blocks of frame numbers --> load (open the video, seek, decode batch_size frames)   [CPU tasks]
                          --> Predictor (the same FaceParser actors as for images)    [actors, GPUs optional]
                          --> write (label PNG and overlay frame per video frame)     [CPU tasks]
  then the driver joins the overlay frames, in order, into OUT/overlay.mp4.

OUT/frames/frame_000000.png ... hold the label maps (ids 0..N-1) at the video's size.
"""
from __future__ import annotations

import time

import cv2
import numpy as np

from faceseg.data.decode import BadFileError, encode_png, resize_image
from faceseg.model.saved import ModelInfo
from faceseg.parser import guide_image
from faceseg.predict.job import object_column
from faceseg.runtime import Needs, connect
from faceseg.storage import LocalCopy, Location

FRAMES = "frames"
OVERLAY_FRAMES = "overlays"
OVERLAY_VIDEO = "overlay.mp4"


def frame_name(index: int) -> str:
    return f"{FRAMES}/frame_{index:06d}.png"


def video_properties(video: Location) -> tuple[int, float, tuple[int, int]]:
    """(frames, frames per second, (height, width)); raises BadFileError when OpenCV cannot read it."""
    with LocalCopy(video) as path:
        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                raise BadFileError(str(video), "not a video OpenCV can read")
            fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            size = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
            count = 0
            while capture.grab():      # the container's frame count is a guess; count the frames
                count += 1
        finally:
            capture.release()
    if not count:
        raise BadFileError(str(video), "no frame could be decoded")
    return count, fps, size


def load_frames(batch: dict, video: str, size: int, frames_per_row: int, refine: bool = True) -> dict:
    """Rows of first-frame numbers -> one row per decoded frame: the model's input, the frame's size,
    the refinement's guide, the frame at the overlay's height (`picture`), its number."""
    from faceseg.predict.overlay import PANEL_HEIGHT, fit_height

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
    from faceseg.predict.overlay import make_overlay

    out = Location.of(output)
    errors = list(batch["error"])
    for i, index in enumerate(batch["index"]):
        name = frame_name(int(index))
        try:
            (out / name).write_bytes(encode_png(name, batch["ids"][i]))
            picture = make_overlay(batch["picture"][i], batch["ids"][i], taxonomy)
            (out / OVERLAY_FRAMES / name).write_bytes(encode_png(name, picture[..., ::-1]))
        except OSError as error:
            errors[i] = str(error)
    return {"index": batch["index"], "error": np.array(errors, dtype=object)}


def _join_overlays(output: Location, frames: int, fps: float) -> Location:
    """The overlay frames, in order, as one MP4 (written locally, then stored)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="faceseg-video-") as scratch:
        movie = Path(scratch) / OVERLAY_VIDEO
        writer = None
        for index in range(frames):
            frame = output / OVERLAY_FRAMES / frame_name(index)
            if not frame.is_file():
                continue
            picture = cv2.imdecode(np.frombuffer(frame.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
            if writer is None:
                writer = cv2.VideoWriter(str(movie), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (picture.shape[1], picture.shape[0]))
            writer.write(picture)
        if writer is not None:
            writer.release()
            (output / OVERLAY_VIDEO).upload_from(movie)
    return output / OVERLAY_VIDEO


def predict_video(model: ModelInfo, video: Location, output: Location, record: dict | None, *, batch_size: int,
                  concurrency: int, num_gpus: float, overwrite: bool, refine: bool, address: str | None):
    import ray.data

    from faceseg.predict.job import PredictSummary, Predictor, start_output

    start = time.perf_counter()
    frames, fps, (height, width) = video_properties(video)
    share = connect(address, Needs(cpus=0.0 if num_gpus else concurrency, gpus=concurrency * num_gpus,
                                   what=f"{concurrency} model actor(s)", flags="--concurrency / --num-gpus"))
    files = {frame_name(i): f"{video}#frame={i}" for i in range(frames)}
    start_output(model, video, output, record, "video", files, refine)
    done = set() if overwrite else {i for i in range(frames) if (output / frame_name(i)).is_file()}
    firsts = [first for first in range(0, frames, batch_size) if not set(range(first, min(first + batch_size, frames))) <= done]
    print(f"{video}: {frames} frames of {width}x{height} at {fps:g} fps; {len(done)} already predicted; "
          f"model {model.location} at {model.size} px, {model.taxonomy.num_classes} classes", flush=True)
    failed, predicted = [], 0
    if firsts:
        dataset = ray.data.from_items([{"first": f} for f in firsts], override_num_blocks=len(firsts))
        dataset = dataset.map_batches(load_frames, batch_size=1, fn_kwargs={
            "video": str(video), "size": model.size, "frames_per_row": batch_size, "refine": refine})
        dataset = dataset.map_batches(Predictor, fn_constructor_kwargs={"model": str(model.location),
                                                                        "sha256": model.sha256, "refine": refine},
                                      batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=concurrency),
                                      num_gpus=num_gpus or None, num_cpus=None if num_gpus else share)
        dataset = dataset.map_batches(write_frames, batch_size=batch_size, fn_kwargs={
            "output": str(output), "taxonomy": model.taxonomy})
        for result in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            failed += [error for error in result["error"] if error]
            predicted += int(sum(1 for error in result["error"] if not error))
    movie = _join_overlays(output, frames, fps)
    print(f"overlay video: {movie}", flush=True)
    return PredictSummary(output, predicted, len(done), failed, time.perf_counter() - start)
