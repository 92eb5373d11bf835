"""The shipped model, from the installed package with no network: by name in Python, predict, serve and export;
its SHA-256 checked on load; `faceseg models`; its card generated from its metadata; and the figures it still
gives on committed real photos."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from faceseg.cli import main
from support import cli_env, free_port, listener_of, run_faceseg

pytestmark = pytest.mark.usefixtures("ray_runtime")
SAMPLE = Path(__file__).parent / "data" / "fasseg-sample"      # 12 of FASSEG's photos, the model trained on them
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parser():
    import faceseg

    return faceseg.FaceParser.load("fasseg")


def test_the_shipped_model_loads_by_name_from_the_package(parser):
    from faceseg.model import zoo

    assert "fasseg" in zoo.shipped_names() and zoo.shipped_file("fasseg").local().is_relative_to(ROOT / "faceseg")
    assert parser.classes == ("background", "skin", "hair", "eyes", "nose", "mouth")
    photo = sorted((SAMPLE / "images").glob("*.jpg"))[0]
    ids = parser(photo)
    assert ids.shape == cv2.imread(str(photo)).shape[:2] and ids.dtype == np.uint8


def test_a_changed_shipped_file_is_refused(tmp_path, monkeypatch):
    from faceseg.model import zoo
    from faceseg.model.saved import inspect_model

    copy = tmp_path / "shipped"
    shutil.copytree(zoo.SHIPPED, copy)
    data = bytearray((copy / "fasseg.keras").read_bytes())
    data[len(data) // 2] ^= 0xFF                             # one byte of the weights
    (copy / "fasseg.keras").write_bytes(bytes(data))
    monkeypatch.setattr(zoo, "SHIPPED", copy)
    zoo._catalogue.cache_clear()
    try:
        with pytest.raises(zoo.ShippedModelError, match="SHA-256 .* is not the .* recorded for the shipped model"):
            inspect_model("fasseg")
    finally:
        zoo._catalogue.cache_clear()


def test_a_name_that_is_no_model_lists_the_shipped_ones(tmp_path, capsys):
    assert main(["predict", "--model", "fassegg", "--input", str(SAMPLE), "--output", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "fassegg: no model here" in err and "shipped model: fasseg" in err


def test_faceseg_models_lists_and_describes_them(capsys):
    from faceseg.model import zoo

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fasseg ") and "held-out people" in out
    assert main(["models", "--json"]) == 0
    (meta,) = json.loads(capsys.readouterr().out)
    assert meta["sha256"] == zoo.metadata("fasseg")["sha256"] and meta["heldout"]["all"]["images"] == 202
    assert main(["models", "fasseg"]) == 0
    card = capsys.readouterr().out
    assert card == (ROOT / "docs" / "models" / "fasseg.md").read_text()
    for words in ("FEI, MIT-CBCL and Pointing'04", "research use", "Khan", "IoU", "Not good at"):
        assert words in card


def test_predict_and_export_by_name(parser, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", "--model", "fasseg", "--input", str(SAMPLE), "--output", str(out)]) == 0
    for label in sorted((SAMPLE / "labels").glob("*.png"))[:3]:
        photo = SAMPLE / "images" / label.name.replace(".png", ".jpg")
        assert (cv2.imread(str(out / label.name), cv2.IMREAD_UNCHANGED) == parser(photo)).all()
    assert main(["export", "fasseg", "--format", "onnx", "--output", str(tmp_path / "fasseg.onnx")]) == 0
    assert (tmp_path / "fasseg.classes.txt").read_text().split() == list(parser.classes)


def _answers(url: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=10).status_code == 200:
                return True
        except requests.ConnectionError:
            pass
        time.sleep(1)
    return False


def test_serve_by_name_from_the_command_line(parser):
    """`faceseg serve --model fasseg` as a user starts it: on a runtime of its own, its one replica answers on
    --port itself (Serve's throughput-optimized mode), with FaceParser's label maps; a taken port is refused
    before anything starts; a killed replica's successor answers on the same port; SIGTERM stops it and frees
    the port. (The proxy's path, on a runtime already running, is tests/test_parser_serve_export.py's.)"""
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        refused = run_faceseg("serve", "--model", "fasseg", "--port", port, timeout=120)
    assert refused.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in refused.stderr, refused.stderr
    server = subprocess.Popen([sys.executable, "-m", "faceseg", "serve", "--model", "fasseg", "--port", str(port)],
                              env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        console = []
        for line in server.stdout:               # the test's timeout bounds this loop
            console.append(line)
            if line.startswith("serving fasseg at"):
                break
        assert f"at http://127.0.0.1:{port}/parse" in console[-1], "".join(console)
        replica, name = listener_of(port)
        assert name.startswith("ray::ServeRepl")                          # no proxy between client and replica
        url = f"http://127.0.0.1:{port}"
        os.kill(replica, signal.SIGKILL)                                  # Serve starts another on the same port
        assert _answers(f"{url}/healthz", within=100), "no replica came back on the port"
        assert requests.get(f"{url}/healthz", timeout=60).json()["classes"] == list(parser.classes)
        photo = sorted((SAMPLE / "images").glob("*.jpg"))[1]
        reply = requests.post(f"{url}/parse", data=photo.read_bytes(), headers={"Content-Type": "image/jpeg"},
                              timeout=120)
        assert reply.status_code == 200
        assert (cv2.imdecode(np.frombuffer(reply.content, np.uint8), cv2.IMREAD_UNCHANGED) == parser(photo)).all()
        assert requests.post(f"{url}/parse", data=b"no image", timeout=60).status_code == 400
        server.send_signal(signal.SIGTERM)
        rest, _ = server.communicate(timeout=90)
        assert server.returncode == 0 and rest.rstrip().endswith("stopped"), rest
        assert listener_of(port) is None
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_the_shipped_model_still_gives_its_recorded_figures_on_committed_photos(tmp_path):
    """The 12 committed photos were among the model's training photos: this checks that the shipped file,
    decoding and refinement still work as when the model was made (its figures here were recorded then), not
    how it does on people it never saw (its card's held-out figures)."""
    from faceseg.model import zoo

    out = tmp_path / "pred"
    assert main(["predict", "--model", "fasseg", "--input", str(SAMPLE), "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    recorded = zoo.metadata("fasseg")["sample"]
    assert report["images"] == recorded["images"] == 12
    # Tolerance: 0.5 points of pixel accuracy, 1 point of F1 per class (another CPU's kernels may move ties).
    assert report["pixel_accuracy"] == pytest.approx(recorded["pixel_accuracy"], abs=0.005)
    for name, value in recorded["f1"].items():
        assert report["f1"][name] == pytest.approx(value, abs=0.01), name


def test_label_maps_from_the_edges_only_equal_the_dense_computation(parser):
    """The label map is computed on the host, only where the classes around a pixel disagree (the rest read
    from a table of grid cells); on real photos it must equal the argmax of the whole resized (and refined)
    score maps, as TensorFlow computes them densely (predict/refine.py, what a SavedModel export runs).
    Differences are allowed only at float ties: 1 pixel in 10,000."""
    import tensorflow as tf

    import faceseg
    from faceseg.predict.refine import refine_probabilities

    plain = faceseg.FaceParser.load("fasseg", refine=False)
    for photo in sorted((SAMPLE / "images").glob("*.jpg"))[:4]:
        pixels, (height, width), detail = parser.read(photo)
        probs = parser.probabilities(pixels[None])[0]
        guide = parser.guide(detail, height, width)
        dense = np.argmax(refine_probabilities(tf, tf.constant(probs), tf.constant(pixels), tf.constant(guide)).numpy(), -1)
        assert np.mean(parser.label_map(probs, pixels, height, width, guide) != dense) <= 1e-4, photo.name
        resized = np.argmax(tf.image.resize(probs[None], (height, width)).numpy()[0], -1)
        assert np.mean(plain.label_map(probs, pixels, height, width) != resized) <= 1e-4, photo.name
        assert (dense != resized).mean() > 0.001          # refinement moved edges: the two paths differ

