"""Photo to label map on real photos (FASSEG's, about 512 x 400, the 12 of tests/data/fasseg-sample repeated),
with the shipped model (128 px): the network alone (`model.predict` on tensors already decoded and resized),
FaceParser.batch and one photo at a time with and without edge refinement, and the `faceseg predict` job;
and where a photo's time goes, stage by stage."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from suite import SIZES

SAMPLE = Path(__file__).resolve().parents[2] / "tests" / "data" / "fasseg-sample" / "images"
BATCH = 16


def _photos(work: Path, count: int) -> Path:
    folder = work / f"photos{count}"
    if not folder.exists():
        folder.mkdir(parents=True)
        sources = sorted(SAMPLE.glob("*.jpg"))
        for i in range(count):
            shutil.copy(sources[i % len(sources)], folder / f"photo{i:03d}.jpg")
    return folder


def _best_rate(fn, images: int, runs: int) -> float:
    """images/s of the fastest of `runs` calls (timeit's rule, for every side alike)."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return images / best


def _stages(parser, datas: list[bytes]) -> dict:
    """Milliseconds a photo spends in each stage, each stage timed alone over every photo."""
    from faceseg.data.decode import decode_image, encode_png, resize_image
    from faceseg.predict.parser import guide_image
    from faceseg.predict.refine import REFINE_ZOOM

    decoded = [decode_image(np.frombuffer(d, np.uint8), "x", parser.size) for d in datas]
    detail = [decode_image(np.frombuffer(d, np.uint8), "x", parser.size * REFINE_ZOOM) for d in datas]
    pixels = np.stack([resize_image(image, parser.size) for image, _ in decoded])
    guides = [guide_image(image, *shape, parser.size) for (image, shape) in detail]
    probs = parser.probabilities(pixels)
    maps = [parser.label_map(probs[i], pixels[i], *decoded[i][1], guides[i]) for i in range(len(datas))]
    plain = [parser.label_map(probs[i], pixels[i], *decoded[i][1]) for i in range(len(datas))]
    n = len(datas)

    def ms(fn):
        return 1000 / _best_rate(fn, n, 3)

    return {
        "decode_ms": ms(lambda: [decode_image(np.frombuffer(d, np.uint8), "x", parser.size) for d in datas]),
        "resize_to_grid_ms": ms(lambda: [resize_image(image, parser.size) for image, _ in decoded]),
        "guide_decode_and_resize_ms": ms(lambda: [guide_image(decode_image(np.frombuffer(d, np.uint8), "x",
                                                                           parser.size * REFINE_ZOOM)[0],
                                                              *decode_image(np.frombuffer(d, np.uint8), "x",
                                                                            parser.size)[1], parser.size)
                                                  for d in datas]),
        "network_ms": ms(lambda: [parser.probabilities(pixels[i:i + BATCH]) for i in range(0, n, BATCH)]),
        "refined_label_map_ms": ms(lambda: [parser.label_map(probs[i], pixels[i], *decoded[i][1], guides[i])
                                            for i in range(n)]),
        "plain_resize_to_photo_ms": ms(lambda: [parser.label_map(probs[i], pixels[i], *decoded[i][1]) for i in range(n)]),
        "png_encode_ms": ms(lambda: [encode_png("x", label) for label in maps]),
        "refined_differs_from_plain": float(np.mean([(a != b).mean() for a, b in zip(maps, plain)])),
    }


def run(work: Path, quick: bool) -> dict:
    from faceseg.predict.job import predict_folder
    from faceseg.predict.parser import FaceParser

    count, runs = SIZES["predict_images"][not quick], SIZES["predict_runs"][not quick]
    folder = _photos(work, count)
    files = sorted(folder.glob("*.jpg"))
    datas = [path.read_bytes() for path in files]
    parsers = {refine: FaceParser.load("fasseg", refine=refine) for refine in (True, False)}
    model = parsers[True].model
    tensors = np.stack([parsers[True].read(d)[0] for d in datas])                 # decoded and resized already
    model.predict(tensors[:BATCH], batch_size=BATCH, verbose=0)
    result = {"photos": count, "distinct_photos": len(list(SAMPLE.glob("*.jpg"))), "model": "fasseg",
              "grid_px": parsers[True].size, "batch": BATCH, "runs": runs}
    result["network_images_per_s"] = _best_rate(lambda: model.predict(tensors, batch_size=BATCH, verbose=0),
                                                count, runs)
    for refine, parser in parsers.items():
        name = "refined" if refine else "plain"
        parser.batch(datas[:BATCH])                                                 # traced
        result[f"parser_batch_{name}_images_per_s"] = _best_rate(
            lambda: [parser.batch(datas[i:i + BATCH]) for i in range(0, count, BATCH)], count, runs)
        result[f"parser_one_at_a_time_{name}_images_per_s"] = _best_rate(
            lambda: [parser(d) for d in datas], count, runs)
        rates = []
        for _ in range(runs):
            out = work / f"predict-{name}"
            shutil.rmtree(out, ignore_errors=True)
            summary = predict_folder("fasseg", folder, out, batch_size=BATCH, refine=refine)
            assert summary.predicted == count and not summary.failed
            rates.append(summary.steady_images_per_second)
        result[f"job_{name}_images_per_s"] = max(rates)
    result["stages"] = _stages(parsers[True], datas[:min(count, 48)])
    network = result["network_images_per_s"]
    result["ratios"] = {
        "predict_refined_vs_model_predict": result["parser_batch_refined_images_per_s"] / network,
        "predict_plain_vs_model_predict": result["parser_batch_plain_images_per_s"] / network,
        "job_refined_vs_model_predict": result["job_refined_images_per_s"] / network,
        "one_at_a_time_vs_batch": result["parser_one_at_a_time_refined_images_per_s"]
                                  / result["parser_batch_refined_images_per_s"],
    }
    result["job_plain_vs_model_predict"] = result["job_plain_images_per_s"] / network
    return result
