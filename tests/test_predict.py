"""The batch-prediction job for real: PNG names and sizes, scoring, bare folders, interruption."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from support import cli_env
from datasets import save_rgb, write_lapa
from faceseg.cli import main
from faceseg.predict.evaluate import evaluate
from faceseg.predict.pipeline import steady_rate

pytestmark = pytest.mark.usefixtures("ray_runtime")


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def test_one_png_per_image_at_original_size_and_report_equals_evaluate(trained_run, synth_dir, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(trained_run), "--input", str(synth_dir / "test"),
                 "--output", str(out), "--overlay", "--batch-size", "4"]) == 0
    expected = sorted(p.name for p in (synth_dir / "test").glob("*_label.png"))
    assert pngs(out) == expected and len(expected) == 8
    right = total = 0
    for name in expected:
        pred = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        truth = cv2.imread(str(synth_dir / "test" / name), cv2.IMREAD_UNCHANGED)
        assert pred.shape == truth.shape == (64, 64) and pred.dtype == np.uint8 and pred.max() <= 10
        right, total = right + int((pred == truth).sum()), total + truth.size
    assert len(list((out / "overlays").glob("*.png"))) == 8
    report = json.loads((out / "report.json").read_text())
    again = evaluate(synth_dir / "test", out)
    assert {key: report[key] for key in again} == again
    assert report["images"] == 8 and report["pixel_accuracy"] == pytest.approx(right / total)
    assert report["files"][expected[0]].endswith(expected[0].replace("_label.png", "_image.jpg"))


def test_steady_rate_counts_only_images_of_warm_actors():
    # Two actors ready at t=10 and t=12; their first batches (warm False) are start-up, not work.
    ready = [10.0] * 4 + [12.0] * 4 + [10.0] * 4
    warm = [False] * 4 + [False] * 4 + [True] * 4
    assert steady_rate(ready, warm, finished_at=12.0) == pytest.approx(4 / 2.0)
    assert steady_rate([], [], finished_at=1.0) == 0.0


def test_bare_folder_of_images_and_a_bad_one(trained_run, synth_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(sorted((synth_dir / "test").glob("*_image.jpg"))[:3]):
        shutil.copy(image, photos / f"photo {i}.jpg")          # names with spaces
    (photos / "broken.jpg").write_text("not an image")
    out = tmp_path / "pred"
    code = main(["predict", "--model", str(trained_run / "model.keras"), "--input", str(photos),
                 "--output", str(out)])
    assert code == 1                                            # the bad file makes the exit status say so
    assert pngs(out) == ["photo 0.png", "photo 1.png", "photo 2.png"]
    assert not (out / "report.json").exists()


def test_lapa_input_resizes_back_to_each_original(trained_run, tmp_path):
    write_lapa(tmp_path / "lapa")
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(trained_run), "--input", str(tmp_path / "lapa" / "test"),
                 "--output", str(out)]) == 0
    assert pngs(out) == ["test_0.png", "test_1.png", "test_2.png"]
    # test_0's label map is 48x48 for a 96x96 image: predictions are scored at the label's resolution
    assert cv2.imread(str(out / "test_0.png"), cv2.IMREAD_UNCHANGED).shape == (48, 48)
    assert json.loads((out / "report.json").read_text())["images"] == 3


def test_refinement_is_recorded_and_a_switch_is_refused_without_overwrite(trained_run, tmp_path, capsys):
    from faceseg.predict.parser import FaceParser

    write_lapa(tmp_path / "lapa")
    test = tmp_path / "lapa" / "test"
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(trained_run), "--input", str(test), "--output", str(out)]) == 0
    assert json.loads((out / "predict.json").read_text())["model"]["refine"] is True
    capsys.readouterr()
    # Mixing refined and unrefined label maps in one folder would be silently inconsistent.
    assert main(["predict", "--model", str(trained_run), "--input", str(test), "--output", str(out),
                 "--no-refine"]) == 2
    assert "with edge refinement" in capsys.readouterr().err
    assert main(["predict", "--model", str(trained_run), "--input", str(test), "--output", str(out),
                 "--no-refine", "--overwrite"]) == 0
    assert json.loads((out / "predict.json").read_text())["model"]["refine"] is False
    plain = FaceParser.load(trained_run, refine=False)
    image = next(test.glob("images/test_0.*"))
    assert (cv2.imread(str(out / "test_0.png"), cv2.IMREAD_UNCHANGED) == plain.batch([image], [(48, 48)])[0]).all()


@pytest.mark.slow
def test_killed_job_rerun_completes_without_rewriting(ray_runtime, trained_run, tmp_path):
    images = tmp_path / "many"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):
        save_rgb(images / f"img{i:03d}.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    out = tmp_path / "pred"
    command = [sys.executable, "-m", "faceseg", "predict", "--model", str(trained_run), "--input", str(images),
               "--output", str(out), "--batch-size", "1",
               "--address", ray_runtime.get_runtime_context().gcs_address]
    job = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(pngs(out) if out.exists() else []) < 3:
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    first = {name: (out / name).stat().st_mtime_ns for name in pngs(out)}
    assert 3 <= len(first) < 60, "the job should have been killed midway"
    for name in first:                                  # whatever exists is a complete PNG
        assert cv2.imread(str(out / name)) is not None
    assert main(["predict", "--model", str(trained_run), "--input", str(images), "--output", str(out)]) == 0
    assert len(pngs(out)) == 60 and not list(out.glob(".*.partial"))
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in first.items())


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "no model here" in capsys.readouterr().err


def test_evaluate_names_missing_and_mis_sized_predictions(synth_dir, tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    labels = sorted((synth_dir / "test").glob("*_label.png"))
    for label in labels[1:]:
        shutil.copy(label, pred / label.name)
    cv2.imwrite(str(pred / labels[2].name), np.zeros((10, 10), np.uint8))
    assert main(["evaluate", str(synth_dir / "test"), str(pred)]) == 2
    err = capsys.readouterr().err
    assert f"{labels[0].name}: missing prediction" in err
    assert f"{labels[2].name}: prediction is 10x10, ground truth is 64x64" in err
    for label in labels:
        shutil.copy(label, pred / label.name)
    assert main(["evaluate", str(synth_dir / "test"), str(pred), "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["f1"]["overall"] == pytest.approx(1.0)
