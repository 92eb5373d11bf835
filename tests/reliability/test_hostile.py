"""Hostile and careless input, one test per row of the table in docs/security.md: no silent wrong
result, no lost file, no code run from a model file, no hang."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from cluster import RayNode, user_env
from conftest import tiny_config
from support import cli_env, tree_digest
from datasets import face, save_grey, save_rgb, write_lapa
from faceseg.cli import main
from faceseg.predict.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("ray_runtime")


def pngs(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png") if "overlays" not in p.parts)


def small_helen(root: Path, n: int = 3) -> Path:
    for i in range(n):
        image, label = face(40 + i)
        save_rgb(root / "test" / f"f{i}_image.jpg", image)
        save_grey(root / "test" / f"f{i}_label.png", label)
    return root


# --- 1, 2: predictions never touch their inputs -----------------------------------------------------------------

@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_1_2_output_that_is_or_holds_or_lies_in_the_input_is_refused(trained_run, tmp_path, capsys, overwrite):
    data = small_helen(tmp_path / "d")
    before = tree_digest(data)
    flags = ["--overwrite"] if overwrite else []
    for output in (data / "test", data, data / "test" / "preds"):
        assert main(["predict", "--model", str(trained_run), "--input", str(data / "test"), "--output", str(output),
                     *flags]) == 2
        assert "must not touch their inputs" in capsys.readouterr().err
    assert tree_digest(data) == before                 # no ground truth replaced, nothing added


# --- 3: two images, one output name ------------------------------------------------------------------------------

def test_3_colliding_names_get_one_prediction_each(trained_run, tmp_path):
    bare = tmp_path / "bare"
    image = face(1)[0]
    save_rgb(bare / "a.jpg", image)
    save_rgb(bare / "a.png", face(2)[0])
    assert main(["predict", "--model", str(trained_run), "--input", str(bare), "--output", str(tmp_path / "p1")]) == 0
    assert pngs(tmp_path / "p1") == ["a.jpg.png", "a.png.png"]
    record = json.loads((tmp_path / "p1" / "predict.json").read_text())
    assert record["files"]["a.jpg.png"].endswith("a.jpg") and record["files"]["a.png.png"].endswith("a.png")

    lapa = tmp_path / "lapa"
    write_lapa(lapa)
    shutil.copy(lapa / "train" / "images" / "train_0.jpg", lapa / "test" / "images" / "face1.jpg")
    shutil.copy(lapa / "train" / "labels" / "train_0.png", lapa / "test" / "labels" / "face1.png")
    shutil.copy(lapa / "val" / "images" / "val_0.jpg", lapa / "train" / "images" / "face1.jpg")
    shutil.copy(lapa / "val" / "labels" / "val_0.png", lapa / "train" / "labels" / "face1.png")
    out = tmp_path / "p2"
    assert main(["predict", "--model", str(trained_run), "--input", str(lapa), "--output", str(out)]) == 0
    assert "train/face1.png" in pngs(out) and "test/face1.png" in pngs(out)
    first = json.loads((out / "report.json").read_text())
    assert first["images"] == 11                          # 9 + 2, every one scored once
    assert main(["predict", "--model", str(trained_run), "--input", str(lapa), "--output", str(out)]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["f1"] == first["f1"] and again["images"] == 11
    assert {k: first[k] for k in evaluate(lapa, out)} == evaluate(lapa, out)


# --- 4: another model's output folder -----------------------------------------------------------------------------

def test_4_another_models_predictions_are_not_reused(trained_run, tmp_path, capsys):
    data = small_helen(tmp_path / "d")
    other = tmp_path / "other.keras"
    from faceseg.model.saved import MODEL_FILE

    with zipfile.ZipFile(trained_run / MODEL_FILE) as source, zipfile.ZipFile(other, "w") as target:
        for item in source.infolist():      # the same model with a changed metadata file: another SHA-256
            data_ = source.read(item.filename)
            target.writestr(item, data_ + b" " if item.filename == "faceseg.json" else data_)
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(trained_run), "--input", str(data / "test"), "--output", str(out)]) == 0
    assert main(["predict", "--model", str(other), "--input", str(data / "test"), "--output", str(out)]) == 2
    assert "predictions of another model" in capsys.readouterr().err
    assert main(["predict", "--model", str(other), "--input", str(data / "test"), "--output", str(out),
                 "--overwrite"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == str(other) and "0 already done" in capsys.readouterr().out


# --- 5: other programs' temporary files --------------------------------------------------------------------------

def test_5_only_faceseg_temporaries_are_cleaned_by_exact_name(trained_run, tmp_path):
    from faceseg.storage import temp_name

    data = small_helen(tmp_path / "d")
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(trained_run), "--input", str(data / "test"), "--output", str(out)]) == 0
    (out / "f0_label.png").unlink()
    leftover = out / temp_name("f0_label.png")           # what a killed faceseg run leaves
    leftover.write_bytes(b"half a png")
    theirs = [out / ".editor.partial", out / "sub" / ".x.png.partial", out / ".f1_label.png.partial"]
    for path in theirs:
        path.parent.mkdir(exist_ok=True)
        path.write_text("someone else's")
    assert main(["predict", "--model", str(trained_run), "--input", str(data / "test"), "--output", str(out)]) == 0
    assert not leftover.exists() and (out / "f0_label.png").is_file()
    assert all(path.read_text() == "someone else's" for path in theirs)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["predict", "--model", str(trained_run), "--input", str(data / "test"), "--output", str(foreign)]) == 2
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


# --- 6: a model file that would run code -----------------------------------------------------------------------

def _with_lambda(model: Path, target: Path, marker: Path) -> None:
    """The model with a Lambda layer calling os.system, referenced by module and name (safe mode lets
    such references through; only lambdas' bytecode is refused)."""
    with zipfile.ZipFile(model) as source:
        members = {i.filename: source.read(i.filename) for i in source.infolist()}
    config = json.loads(members["config.json"])
    layers = config["config"]["layers"]
    layers.insert(2, {"module": "keras.layers", "class_name": "Lambda", "registered_name": None, "name": "evil",
                      "config": {"name": "evil", "trainable": True, "dtype": "float32",
                                 "function": {"module": "os", "class_name": "function", "config": "system",
                                              "registered_name": "function"},
                                 "arguments": {"command": f"touch {marker}"}},
                      "inbound_nodes": [[["normalise", 0, 0, {}]]]})
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_6_a_model_that_names_code_is_refused_before_loading(trained_run, synth_dir, tmp_path, capsys):
    evil, marker = tmp_path / "evil.keras", tmp_path / "pwned"
    _with_lambda(trained_run / "model.keras", evil, marker)
    assert main(["predict", "--model", str(evil), "--input", str(synth_dir / "test"), "--output",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "refusing to load the model" in err and "layer 'evil' (Lambda)" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    from faceseg.predict.parser import FaceParser

    with pytest.raises(ValueError, match="Lambda"):
        FaceParser.load(evil)


# --- 7, 8: a run folder is never silently reused ----------------------------------------------------------------

def test_7_8_an_existing_run_needs_resume_or_overwrite_and_resume_checks_the_config(trained_run, cache_dir, synth_dir,
                                                                                   tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = tree_digest(run)
    other_cache = tmp_path / "c32"
    assert main(["prepare", str(synth_dir), "--out", str(other_cache), "--size", "32"]) == 0
    assert main(["train", "--cache", str(other_cache), "--output", str(run)]) == 2
    assert "a faceseg run is there already" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--cache", str(other_cache)]) == 2
    assert "data.cache: the run has" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--set", "model.depth=4"]) == 2
    assert "model.depth" in capsys.readouterr().err
    assert tree_digest(run) == before                 # nothing trained, nothing rewritten

    data_run = tmp_path / "data-run"
    (data_run / "cache").mkdir(parents=True)
    (data_run / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"data": str(synth_dir), "size": 32}, "model": {"depth": 3}}))
    shutil.copytree(other_cache, data_run / "cache", dirs_exist_ok=True)
    assert main(["train", "--data", str(tmp_path / "elsewhere"), "--size", "64", "--output", str(data_run)]) == 2
    assert main(["train", "--resume", str(data_run), "--data", str(synth_dir / "test"), "--size", "32"]) == 2
    assert "data.data: the run has" in capsys.readouterr().err


# --- 9: config values ---------------------------------------------------------------------------------------------

def test_9_yaml_surprises_are_coerced_and_bad_values_named_before_ray_starts(cache_dir, tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_config(cache_dir, epochs=1)).replace("0.005", "1e-3").replace(
        "epochs: 1", "epochs: '1'"))
    from faceseg.config import Config

    config = Config.from_yaml(good)
    assert config.train.learning_rate == 0.001 and config.train.epochs == 1
    for args, words in ((["--epochs", "0"], "train.epochs: '0' is out of range"),
                        (["--set", "train.schedule=cosin"], "train.schedule: 'cosin' is not one of cosine, step, constant"),
                        (["--learning-rate", "fast"], "train.learning_rate: 'fast' is not a number")):
        # an unreachable --address shows that the refusal comes before any attempt to reach Ray
        code = main(["train", "--config", str(good), "--output", str(tmp_path / "r"), "--address", "127.0.0.1:1", *args])
        assert code == 2 and words in capsys.readouterr().err, words
    assert not (tmp_path / "r").exists()


# --- 10: damaged checkpoints --------------------------------------------------------------------------------------

def test_10_a_damaged_latest_checkpoint_falls_back_to_the_newest_whole_one(cache_dir, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(cache_dir, epochs=3)))
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--local", "--output", str(run)]) == 0
    checkpoints = sorted((run / "checkpoints" / "local").iterdir())
    assert len(checkpoints) >= 2
    latest = checkpoints[-1]
    state = next((latest / "train_state").glob("*.data-*"))
    state.write_bytes(state.read_bytes()[:100])            # truncated
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--local", "--epochs", "4"]) == 0
    out = capsys.readouterr().out
    assert f"skipping damaged checkpoint {latest}" in out and "train_state" in out
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]                          # epoch 3 done again from the whole checkpoint before it

    newest = sorted((run / "checkpoints" / "local").iterdir())[-1]
    (newest / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n')
    assert main(["train", "--resume", str(run), "--local", "--epochs", "5"]) == 0
    assert "metrics.jsonl" in capsys.readouterr().out
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5]


# --- 11: a full disk during a checkpoint ---------------------------------------------------------------------------

def test_11_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_scratch(cache_dir, tmp_path, mount, capsys):
    disk = mount("size=300k")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(cache_dir, epochs=2)))
    scratch_before = {p.name for p in Path("/tmp").glob("faceseg-ckpt-*")}
    assert main(["train", "--config", str(config), "--local", "--output", str(disk / "run")]) != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("faceseg train")]
    assert len(lines) == 1 and "disk full at" in lines[0] and "Traceback" not in err
    # None of ours left; another faceseg run on this machine may make or clear its own meanwhile.
    assert not {p.name for p in Path("/tmp").glob("faceseg-ckpt-*")} - scratch_before
    checkpoints = disk / "run" / "checkpoints" / "local"
    assert not checkpoints.exists() or not [p for p in checkpoints.iterdir() if not p.name.startswith(".")]
    assert not [p for p in disk.rglob("*") if p.is_file() and p.stat().st_size == 0 and "checkpoint" in str(p)]


# --- 12, 13, 14: Ray start-up ------------------------------------------------------------------------------------

def test_12_an_unreachable_address_fails_with_the_address(synth_dir, tmp_path):
    env = {**cli_env(), "FACESEG_CONNECT_TIMEOUT_S": "3"}
    done = subprocess.run([sys.executable, "-m", "faceseg", "prepare", str(synth_dir), "--out", str(tmp_path / "c"),
                           "--address", "127.0.0.1:1"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no Ray cluster reachable at 127.0.0.1:1 within 3 s" in done.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_13_a_cluster_on_this_machine_is_left_alone_without_address(synth_dir, tmp_path):
    head = RayNode(num_cpus=1)
    try:
        done = subprocess.run([sys.executable, "-m", "faceseg", "prepare", str(synth_dir), "--out",
                               str(tmp_path / "c"), "--size", "32"],
                              env=user_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Ray: started a private runtime on 127.0.0.1" in done.stdout
        assert head.process.poll() is None                   # the other cluster still runs, untouched
    finally:
        head.stop()


def test_14_arguments_and_files_are_checked_before_ray(trained_run, tmp_path, capsys):
    unreachable = ["--address", "127.0.0.1:1"]
    assert main(["predict", "--model", str(trained_run), "--input", str(tmp_path / "missing"),
                 "--output", str(tmp_path / "o"), *unreachable]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"PK\x03\x04 not a zip")
    assert main(["predict", "--model", str(junk), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 *unreachable]) == 2
    assert "junk.keras: not a faceseg .keras model" in capsys.readouterr().err
    assert main(["train", "--cache", str(tmp_path / "nocache"), "--output", str(tmp_path / "r"), *unreachable]) == 2
    assert "nocache: not a faceseg cache" in capsys.readouterr().err


# --- 15, 16: no false rejects ------------------------------------------------------------------------------------

def test_15_16_trailing_bytes_and_long_names_are_accepted(trained_run, tmp_path):
    data = tmp_path / "d"
    image, label = face(5)
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    (data / "train").mkdir(parents=True)
    (data / "train" / "tail_image.jpg").write_bytes(jpeg + os.urandom(100))     # what some cameras append
    save_grey(data / "train" / "tail_label.png", label)
    long_name = "n" * (250 - len("_image.jpg"))
    save_rgb(data / "train" / f"{long_name}_image.jpg", image)
    save_grey(data / "train" / f"{long_name}_label.png", label)
    from faceseg.data.decode import read_image

    decoded, _ = read_image(str(data / "train" / "tail_image.jpg"))
    assert (decoded == cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)).all()
    assert main(["prepare", str(data), "--out", str(tmp_path / "c"), "--size", "32", "--strict"]) == 0
    out = tmp_path / "p"
    assert main(["predict", "--model", str(trained_run), "--input", str(data / "train"), "--output", str(out)]) == 0
    assert sorted(pngs(out)) == sorted([f"{long_name}_label.png", "tail_label.png"])


# --- 17: damaged bookkeeping files name themselves -----------------------------------------------------------

def test_17_truncated_manifest_and_metrics_name_the_file(cache_dir, trained_run, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)
    manifest = cache / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    assert main(["train", "--cache", str(cache), "--output", str(tmp_path / "r")]) == 2
    assert f"{manifest}: damaged" in capsys.readouterr().err
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for checkpoint in (run / "checkpoints").glob("epoch_*"):
        (checkpoint / "metrics.jsonl").write_text('{"epoch": 1, "loss"')
    (run / "metrics.jsonl").write_text('{"epoch": 1, "loss"')
    code = main(["train", "--resume", str(run), "--local", "--epochs", "5"])
    out = capsys.readouterr().out
    assert "skipping damaged checkpoint" in out and "metrics.jsonl" in out
    assert code == 0 and "resumed from" not in out       # no whole checkpoint left: the run starts again
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5]


# --- 18: a huge image in bounded memory --------------------------------------------------------------------------

PEAK = """
import sys
import faceseg
from faceseg.data.decode import encode_png
from faceseg.predict.parser import FaceParser


def peak_kib():      # this process's own peak RSS: VmHWM starts afresh at exec, ru_maxrss keeps the parent's
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))


parser = FaceParser.load(sys.argv[1])
parser(sys.argv[3])                                   # warm: the model traced, TensorFlow's pools allocated
before = peak_kib()
ids = parser(sys.argv[2])
encode_png("x", ids)
print(ids.shape, (peak_kib() - before) / 1024)
"""


def test_18_an_8000_px_image_is_predicted_within_the_stated_bound(trained_run, tmp_path):
    small, huge = tmp_path / "small.jpg", tmp_path / "huge.jpg"
    image = face(3, size=512)[0]
    cv2.imwrite(str(small), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(huge), cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), (8000, 8000)), [cv2.IMWRITE_JPEG_QUALITY, 70])
    done = subprocess.run([sys.executable, "-c", PEAK, str(trained_run), str(huge), str(small)], env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    shape, grown_mb = done.stdout.strip().rsplit(")", 1)
    assert shape.strip() == "(8000, 8000" and float(grown_mb) < 600, done.stdout     # docs/security.md: < 600 MB
