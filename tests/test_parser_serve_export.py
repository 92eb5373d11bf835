"""The model as a library (FaceParser), as an HTTP endpoint (a real Ray Serve app on 127.0.0.1, a real
HTTP client), as exported files (SavedModel, TFLite, ONNX), and over a video."""
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import yaml

from conftest import TEST_SIZE
from datasets import face
from faceseg.cli import main
from faceseg.predict.parser import FaceParser
from support import free_port

pytestmark = pytest.mark.usefixtures("ray_runtime")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parser(trained_run) -> FaceParser:
    return FaceParser.load(trained_run)


def test_parser_gives_what_predict_writes(parser, trained_run, synth_dir, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(trained_run), "--input", str(synth_dir / "test"), "--output", str(out)]) == 0
    images = sorted((synth_dir / "test").glob("*_image.jpg"))[:4]
    for image in images:
        written = cv2.imread(str(out / image.name.replace("_image.jpg", "_label.png")), cv2.IMREAD_UNCHANGED)
        assert (parser(image) == written).all()
    rgb = cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB)
    big = cv2.resize(rgb, (300, 200))                      # any size, any aspect: ids at the image's own size
    ids = parser(big)
    assert ids.shape == (200, 300) and ids.dtype == np.uint8 and ids.max() < len(parser.classes)
    assert (parser(images[0].read_bytes()) == parser(images[0])).all()
    batch = parser.batch([images[0], big])
    assert (batch[0] == parser(images[0])).all() and (batch[1] == ids).all()
    overlay = parser.overlay(big, ids)
    assert overlay.ndim == 3 and overlay.shape[0] > 256 and parser.classes[1] == "face"


def _grid_input(photo: np.ndarray, grid: int) -> np.ndarray:
    """The model's input for `photo`: resized to the grid as faceseg does."""
    from faceseg.data.decode import resize_image

    return resize_image(photo, grid)


def test_refinement_moves_a_class_edge_onto_the_photos_edge_and_no_further():
    from faceseg.predict.labelmap import plain_label_map, refined_label_map

    grid, height, width, edge = 16, 64, 48, 21
    centres = (np.arange(grid) + 0.5) / grid * width                  # each grid column's centre, output pixels
    face = 1 / (1 + np.exp(-(centres - 26) / 3.0))                    # the model's edge: soft, 5 px right of the photo's
    probs = np.stack([1 - face, face], -1)[None].repeat(grid, 0).astype(np.float32)   # (16, 16, 2)
    photo = np.full((height, width, 3), 40, np.uint8)
    photo[:, edge:] = (200, 60, 60)
    plain = plain_label_map(probs, height, width)
    refined = refined_label_map(probs, _grid_input(photo, grid), photo, height, width)
    assert (plain.argmax(axis=1) == 26).all()                         # the plain resize keeps the model's edge
    # Refined: onto the photo's edge, every row, to within a pixel (a grid cell here is 3 pixels wide; the
    # filter's residual blur leaves the last pixel on the model's side, from either side: edges 21 and 27).
    assert (np.abs(refined.argmax(axis=1) - edge) <= 1).all()
    mirror = np.ascontiguousarray(photo[:, ::-1])
    mirrored = refined_label_map(probs[:, ::-1], _grid_input(mirror, grid), mirror, height, width)[:, ::-1]
    assert (np.abs(mirrored.argmax(axis=1) - edge) <= 1).all()
    flat = np.full_like(photo, 120)                                   # a photo with no edge moves nothing
    unmoved = refined_label_map(probs, _grid_input(flat, grid), flat, height, width)
    assert (np.abs(unmoved.argmax(axis=1) - 26) <= 1).all()
    # A guide of another size than the output is sampled at the output's pixels: the same edge, twice as far.
    wide = refined_label_map(probs, _grid_input(photo, grid), photo, 2 * height, 2 * width)
    assert (np.abs(wide.argmax(axis=1) - 2 * edge) <= 1).all()


def test_refinement_keeps_a_thin_confident_class_that_shares_its_neighbours_colour():
    import tensorflow as tf

    from faceseg.predict.labelmap import refined_label_map
    from faceseg.predict.refine import guided_filter

    grid, side = 16, 64
    lip = np.zeros((grid, grid), np.float32)
    lip[:, 7:9] = 0.95                                                # a 2-column band, as an upper lip
    probs = np.stack([1 - lip, lip], -1)
    photo = np.full((side, side, 3), 150, np.uint8)                   # lip and skin alike in colour
    refined = refined_label_map(probs, _grid_input(photo, grid), photo, side, side)
    # Kept where the model left skin under REFINE_MIN_PROBABILITY (the middle 4 of the band's 8 pixels).
    assert (refined[:, 30:34] == 1).all() and (refined[:, :28] == 0).all() and (refined[:, 36:] == 0).all()
    # The filter alone averages the band away; the model's own probabilities keep it.
    blended = guided_filter(tf, tf.constant(_grid_input(photo, grid)), tf.constant(photo), tf.constant(probs))
    assert (np.argmax(blended.numpy(), -1) == 0).all()


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, with one tiny (wrong) data chunk: a lying header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def endpoint(trained_run, ray_runtime):
    from ray import serve as ray_serve

    from faceseg.api import serve

    url = serve(str(trained_run), port=free_port(), max_batch_size=4, block=False)
    yield url
    ray_serve.shutdown()


def test_serve_parses_images_over_http(endpoint, parser, synth_dir):
    image = sorted((synth_dir / "test").glob("*_image.jpg"))[0]
    health = requests.get(f"{endpoint}/healthz", timeout=60)
    assert health.status_code == 200 and health.json()["classes"] == list(parser.classes)
    reply = requests.post(f"{endpoint}/parse", data=image.read_bytes(), headers={"Content-Type": "image/jpeg"},
                          timeout=120)
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
    ids = cv2.imdecode(np.frombuffer(reply.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (ids == parser(image)).all()                        # the same code path as FaceParser
    assert json.loads(reply.headers["X-Faceseg-Classes"]) == list(parser.classes)
    summary = requests.post(f"{endpoint}/parse?format=json", data=image.read_bytes(), timeout=120).json()
    assert summary["classes"] == list(parser.classes) and summary["size"] == [64, 64]
    assert abs(sum(summary["pixel_share"].values()) - 1) < 1e-3 and "val_f1_overall" in summary["metrics"]


def test_serve_refuses_bad_requests_and_keeps_serving(endpoint, synth_dir):
    cases = [
        (b"", {"Content-Type": "image/jpeg"}, 400, "empty body"),
        (b"not an image at all", {"Content-Type": "image/jpeg"}, 400, "not a usable image"),
        (b'{"a": 1}', {"Content-Type": "application/json"}, 415, "not an image"),
        (_png_header_claiming(30000, 30000), {"Content-Type": "image/png"}, 413, "30000x30000"),
    ]
    for body, headers, status, words in cases:
        reply = requests.post(f"{endpoint}/parse", data=body, headers=headers, timeout=60)
        assert reply.status_code == status, (status, reply.text)
        assert words in reply.json()["error"]
    assert requests.get(f"{endpoint}/parse", timeout=60).status_code == 405
    image = sorted((synth_dir / "test").glob("*_image.jpg"))[1]
    assert requests.post(f"{endpoint}/parse", data=image.read_bytes(), timeout=120).status_code == 200


def test_serve_config_file_is_a_valid_serve_deployment():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(config)
    app = schema.applications[0]
    assert app.import_path == "faceseg.serve.app:build_app" and "model" in app.args


def test_serve_config_args_are_the_ones_build_app_takes():
    from faceseg.errors import FacesegError
    from faceseg.serve.app import build_app

    args = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())["applications"][0]["args"]
    build_app({**args, "model": "fasseg"})                # the file's args, with a model this machine has
    for extra in ({"batch_wait_timeout_s": 0.01}, {"max_batch": 8}):
        with pytest.raises(FacesegError, match=next(iter(extra))):
            build_app({**args, "model": "fasseg", **extra})


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


@pytest.fixture(scope="module")
def sample_batch(synth_dir) -> np.ndarray:
    images = sorted((synth_dir / "test").glob("*_image.jpg"))[:4]
    return np.stack([cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (TEST_SIZE, TEST_SIZE),
                                interpolation=cv2.INTER_AREA) for p in images])           # the model's grid


@pytest.fixture(scope="module")
def keras_ids(trained_run, sample_batch) -> np.ndarray:
    from faceseg.model.saved import load_model

    return np.argmax(load_model(trained_run).predict(sample_batch, verbose=0), axis=-1).astype(np.uint8)


def test_saved_model_export_serves_uint8_in_ids_out(trained_run, parser, synth_dir, tmp_path, sample_batch,
                                                   keras_ids):
    import tensorflow as tf

    out = tmp_path / "saved"
    assert main(["export", str(trained_run), "--format", "saved_model", "--output", str(out)]) == 0
    signatures = tf.saved_model.load(str(out)).signatures
    plain = signatures["plain"](image=tf.constant(sample_batch))["class_ids"].numpy()
    assert plain.dtype == np.uint8 and _agreement(plain, keras_ids) >= 0.999

    # serving_default refines class edges along the photo's, as faceseg predict does: photos larger than the
    # model's grid, any aspect, ids at the photo's size
    photos = [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (4 * TEST_SIZE, 3 * TEST_SIZE))
              for p in sorted((synth_dir / "test").glob("*_image.jpg"))[:4]]
    refined = signatures["serving_default"](image=tf.constant(np.stack(photos)))["class_ids"].numpy()
    unrefined = signatures["plain"](image=tf.constant(np.stack(photos)))["class_ids"].numpy()
    assert refined.shape == (4, 3 * TEST_SIZE, 4 * TEST_SIZE) and refined.dtype == np.uint8
    expected = np.stack([parser(photo) for photo in photos])
    # Not to the pixel: the graph resizes scores whole and with TF's kernels; how many near-ties that moves
    # depends on the test model (99.4-99.8% for a 64-px model of 16 filters; 98.9% for this 32-px one of 8).
    assert _agreement(refined, expected) >= 0.98
    assert _agreement(refined, expected) - _agreement(unrefined, expected) >= 0.01   # not the plain resize
    assert (out / "assets" / "classes.txt").read_text().split() == list(parser.classes)
    assert main(["export", str(trained_run), "--format", "saved_model", "--output", str(out)]) == 2   # no clobber


def _tflite_ids(path, batch: np.ndarray) -> np.ndarray:
    """Class ids from a TFLite export, one image a call (its input is (1, S, S, 3))."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    ids = []
    for image in batch:
        interpreter.set_tensor(given["index"], image[None])
        interpreter.invoke()
        ids.append(interpreter.get_tensor(taken["index"])[0])
    return np.stack(ids)


def test_tflite_export(trained_run, tmp_path, sample_batch, keras_ids):
    out = tmp_path / "model.tflite"
    assert main(["export", str(trained_run), "--format", "tflite", "--output", str(out)]) == 0
    assert _agreement(_tflite_ids(out, sample_batch), keras_ids) >= 0.999
    assert (tmp_path / "model.classes.txt").read_text().split()[0] == "bg"


def test_onnx_export(trained_run, tmp_path, sample_batch, keras_ids):
    import onnxruntime

    out = tmp_path / "model.onnx"
    assert main(["export", str(trained_run), "--format", "onnx", "--output", str(out)]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ids = session.run(None, {session.get_inputs()[0].name: sample_batch})[0]
    assert ids.dtype == np.uint8 and _agreement(ids, keras_ids) >= 0.999


def test_a_bilinear_upsampling_model_exports_to_every_format(tmp_path, sample_batch):
    """configs/real-photos.yaml builds its decoder from UpSampling2D (bilinear) + Conv2D; each format must
    compute what Keras does (the tests above use transposed convolutions)."""
    import onnxruntime
    import tensorflow as tf

    from faceseg.config import ModelConfig
    from faceseg.model.saved import MODEL_FILE, add_metadata
    from faceseg.model.unet import build_unet

    tf.keras.utils.set_random_seed(0)
    model = build_unet(ModelConfig(depth=3, base_filters=8, upsampling="resize"), TEST_SIZE, 6)
    path = tmp_path / MODEL_FILE
    model.save(str(path), save_format="keras_v3")
    add_metadata(path, {"classes": ["background", "skin", "hair", "eyes", "nose", "mouth"], "size": TEST_SIZE})
    expected = np.argmax(model.predict(sample_batch, verbose=0), axis=-1).astype(np.uint8)
    assert len(np.unique(expected)) > 1                       # random weights still give several classes

    assert main(["export", str(path), "--format", "saved_model", "--output", str(tmp_path / "saved")]) == 0
    signature = tf.saved_model.load(str(tmp_path / "saved")).signatures["plain"]     # Keras' ids: unrefined
    assert _agreement(signature(image=tf.constant(sample_batch))["class_ids"].numpy(), expected) >= 0.999

    assert main(["export", str(path), "--format", "tflite", "--output", str(tmp_path / "m.tflite")]) == 0
    assert _agreement(_tflite_ids(tmp_path / "m.tflite", sample_batch), expected) >= 0.999

    assert main(["export", str(path), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert _agreement(session.run(None, {session.get_inputs()[0].name: sample_batch})[0], expected) >= 0.999


def test_video_frames_go_through_the_batch_job(trained_run, parser, tmp_path):
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 96))
    for i in range(12):
        writer.write(cv2.cvtColor(face(700 + i)[0], cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "video-pred"
    assert main(["predict", "--model", str(trained_run), "--input", str(clip), "--output", str(out),
                 "--batch-size", "5"]) == 0
    frames = sorted((out / "frames").glob("frame_*.png"))
    assert len(frames) == 12
    capture = cv2.VideoCapture(str(clip))
    for index in (0, 7, 11):
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        frame = cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB)
        written = cv2.imread(str(out / "frames" / f"frame_{index:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert written.shape == (96, 96) and (written == parser(frame)).all()
    movie = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert movie.isOpened() and int(movie.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
