"""`faceseg predict --input clip.mp4`: every frame of a video through the batch job's pipeline.

  blocks of frame numbers --> load_frames (open the video, seek, decode batch_size frames)   [CPU tasks or in the actors]
                          --> Predictor (the same FaceParser actors as for images)          [actors]
                          --> write_frames (label PNG and overlay frame per video frame)     [CPU tasks]
  then the driver joins the overlay frames, in order, into OUT/overlay.mp4.

OUT/frames/frame_000000.png ... hold the label maps (ids 0..N-1) at the video's size.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from faceseg.data.decode import BadFileError
from faceseg.model.saved import ModelInfo
from faceseg.predict.output import OVERLAY_VIDEO, OVERLAYS, PredictSummary, Record, start_output
from faceseg.predict.pipeline import prediction_needs, run_pipeline
from faceseg.predict.stages import frame_name, load_frames, write_frames
from faceseg.runtime import connect
from faceseg.storage import LocalCopy, Location


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


def _join_overlays(output: Location, frames: int, fps: float) -> Location:
    """The overlay frames, in order, as one MP4 (written locally, then stored)."""
    with tempfile.TemporaryDirectory(prefix="faceseg-video-") as scratch:
        movie = Path(scratch) / OVERLAY_VIDEO
        writer = None
        for index in range(frames):
            frame = output / OVERLAYS / frame_name(index)
            if not frame.is_file():
                continue
            picture = cv2.imdecode(np.frombuffer(frame.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
            if writer is None:
                writer = cv2.VideoWriter(str(movie), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (picture.shape[1], picture.shape[0]))
            writer.write(picture)
        if writer is not None:
            writer.release()
            (output / OVERLAY_VIDEO).write_bytes(movie.read_bytes())
    return output / OVERLAY_VIDEO


def predict_video(model: ModelInfo, video: Location, output: Location, record: Record | None, *, batch_size: int,
                  concurrency: int, num_gpus: float, overwrite: bool, refine: bool,
                  address: str | None) -> PredictSummary:
    start = time.perf_counter()
    frames, fps, (height, width) = video_properties(video)
    share = connect(address, prediction_needs(concurrency, num_gpus))
    files = {frame_name(i): f"{video}#frame={i}" for i in range(frames)}
    start_output(model, video, output, record, "video", files, refine)
    done = set() if overwrite else {i for i in range(frames) if (output / frame_name(i)).is_file()}
    firsts = [first for first in range(0, frames, batch_size) if not set(range(first, min(first + batch_size, frames))) <= done]
    print(f"{video}: {frames} frames of {width}x{height} at {fps:g} fps; {len(done)} already predicted; "
          f"model {model.location} at {model.size} px, {model.taxonomy.num_classes} classes", flush=True)
    failed, predicted = [], 0
    if firsts:
        results = run_pipeline([{"first": f} for f in firsts], model, refine, load=load_frames,
                               load_kwargs={"video": str(video), "size": model.size, "frames_per_row": batch_size,
                                            "refine": refine},
                               rows_per_load=1, write=write_frames,
                               write_kwargs={"output": str(output), "taxonomy": model.taxonomy},
                               batch_size=batch_size, concurrency=concurrency, num_gpus=num_gpus, cpu_share=share)
        for result in results:
            failed += [error for error in result["error"] if error]
            predicted += int(sum(1 for error in result["error"] if not error))
    movie = _join_overlays(output, frames, fps)
    print(f"overlay video: {movie}", flush=True)
    return PredictSummary(output, predicted, len(done), failed, time.perf_counter() - start)
