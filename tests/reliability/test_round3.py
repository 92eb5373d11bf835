"""Hostile input, round 3 (docs/security.md, rows 19-): nothing deleted or overwritten outside what faceseg
wrote, bounded work per file, right answers, and messages that name the file and the reason."""
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

from datasets import face, save_grey, save_rgb
from faceseg.cli import main
from support import cli_env, pngs, tree_digest

pytestmark = pytest.mark.usefixtures("ray_runtime")


def small_helen(root: Path, n: int = 3) -> Path:
    for i in range(n):
        image, label = face(40 + i, size=64)
        save_rgb(root / "test" / f"f{i}_image.jpg", image)
        save_grey(root / "test" / f"f{i}_label.png", label)
    return root


def victim(root: Path) -> Path:
    (root / "victim_dir").mkdir(parents=True)
    (root / "victim_dir" / "precious.txt").write_text("mine")
    (root / "victim.txt").write_text("mine too")
    return root


# --- files faceseg did not write ------------------------------------------------------------------------------

def test_19_predict_overwrite_uses_no_name_from_an_edited_record(trained_run, tmp_path, capsys):
    data = small_helen(tmp_path / "d")
    victim(tmp_path)
    before = tree_digest(tmp_path / "victim_dir"), (tmp_path / "victim.txt").read_text()
    out = tmp_path / "preds"
    assert main(["predict", "--model", str(trained_run), "--input", str(data / "test"), "--output", str(out)]) == 0
    record = json.loads((out / "predict.json").read_text())
    for hostile in ("../victim_dir", str(tmp_path / "victim.txt"), "a/../../victim.txt"):
        edited = {**record, "files": {**record["files"], hostile: "x"}, "model": {**record["model"], "sha256": "0" * 64}}
        (out / "predict.json").write_text(json.dumps(edited))
        assert main(["predict", "--model", str(trained_run), "--input", str(data / "test"), "--output", str(out),
                     "--overwrite"]) == 2
        assert "predict.json: damaged or not faceseg's" in capsys.readouterr().err
    assert (tree_digest(tmp_path / "victim_dir"), (tmp_path / "victim.txt").read_text()) == before


def test_20_export_overwrite_replaces_only_an_export_faceseg_wrote(trained_run, tmp_path, capsys):
    docs = tmp_path / "mydocs"
    docs.mkdir()
    (docs / "thesis.tex").write_text("years of work")
    assert main(["export", str(trained_run), "--format", "tflite", "--output", str(docs), "--overwrite"]) == 2
    assert "not an export faceseg wrote" in capsys.readouterr().err
    assert (docs / "thesis.tex").read_text() == "years of work"
    run = tmp_path / "run1c"
    shutil.copytree(trained_run, run)
    before = tree_digest(run)
    for target in (run, run / "model.keras", run / "exports" / "m.onnx"):
        assert main(["export", str(run), "--format", "saved_model", "--output", str(target), "--overwrite"]) == 2
        assert "the model being exported" in capsys.readouterr().err
    assert tree_digest(run) == before
    mine = tmp_path / "m.tflite"
    assert main(["export", str(trained_run), "--format", "tflite", "--output", str(mine)]) == 0
    assert main(["export", str(trained_run), "--format", "tflite", "--output", str(mine), "--overwrite"]) == 0
    mine.write_bytes(mine.read_bytes() + b"edited by hand")
    assert main(["export", str(trained_run), "--format", "tflite", "--output", str(mine), "--overwrite"]) == 2
    assert "changed since faceseg wrote it" in capsys.readouterr().err


def test_21_links_planted_in_an_output_are_refused_not_followed(trained_run, tmp_path, capsys):
    data = small_helen(tmp_path / "d")
    truth = tree_digest(data)
    out = tmp_path / "preds"
    assert main(["predict", "--model", str(trained_run), "--input", str(data / "test"), "--output", str(out),
                 "--overlay"]) == 0
    shutil.rmtree(out / "overlays")
    os.symlink(data / "test", out / "overlays")                       # overlays would land in the ground truth
    (out / "f0_label.png").unlink()
    os.symlink(data / "test" / "f1_label.png", out / "f0_label.png")  # a prediction over a label map
    for flags in ([], ["--overwrite"]):
        assert main(["predict", "--model", str(trained_run), "--input", str(data / "test"), "--output", str(out),
                     "--overlay", *flags]) == 2
        assert "is a symbolic link" in capsys.readouterr().err
    assert tree_digest(data) == truth

    from faceseg.storage import Location, UnsafePathError

    with pytest.raises(UnsafePathError, match="symbolic link"):
        (Location.of(out) / "overlays" / "x.png").write_bytes(b"x")   # the one rule, for every writer
    with pytest.raises(UnsafePathError, match="symbolic link"):
        (Location.of(out) / "f0_label.png").delete()
    assert tree_digest(data) == truth


def test_22_every_other_writer_keeps_to_the_rule(trained_run, synth_dir, cache_dir, tmp_path, capsys):
    mine = victim(tmp_path / "mine")
    (mine / "notes.txt").write_text("mine as well")
    before = tree_digest(mine)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"data": {"cache": str(cache_dir)}, "space": {"train.epochs": {"choice": [1]}}}))
    refusals = [  # a folder holding anything else is refused, --overwrite or not
        (["evaluate", synth_dir / "test", synth_dir / "test", "--json", mine / "notes.txt"], "not a faceseg report"),
        (["evaluate", synth_dir / "test", synth_dir / "test", "--json", synth_dir / "test" / "r.json"],
         "inside the ground truth"),
        (["synth", mine, "--train", "2", "--test", "1", "--size", "32"], "`faceseg synth` did not write"),
        (["prepare", synth_dir, "--out", mine, "--size", "32"], "is not a faceseg cache"),
        (["train", "--cache", cache_dir, "--output", mine, "--overwrite", "--local"], "is not a faceseg run folder"),
        (["tune", "--config", sweep, "--output", mine], "is not a faceseg sweep"),
        (["tune", "--config", sweep, "--output", mine, "--overwrite"], "is not a faceseg sweep"),
    ]
    for args, words in refusals:
        assert main([str(arg) for arg in args]) == 2, args
        assert words in capsys.readouterr().err, args
    assert tree_digest(mine) == before and not (synth_dir / "test" / "r.json").exists()
    # a cache folder with someone's file inside is not replaced whole
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)
    (cache / "README.txt").write_text("my notes on this cache")
    assert main(["prepare", str(synth_dir), "--out", str(cache), "--size", "32"]) == 2
    assert "README.txt, which faceseg did not" in capsys.readouterr().err
    assert (cache / "README.txt").is_file()


def test_23_synth_again_replaces_its_own_files_and_nothing_else(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", str(out), "--train", "4", "--test", "2", "--size", "32"]) == 0
    assert main(["synth", str(out), "--train", "2", "--test", "1", "--size", "32"]) == 0
    assert len(list((out / "train").glob("*_image.jpg"))) == 2 and len(list((out / "test").glob("*_image.jpg"))) == 1
    for size in ("0", "10", "100000"):
        assert main(["synth", str(tmp_path / "z"), "--size", size]) == 2
        assert "synthetic faces are 32 to 4096 px" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "z"), "--train", "-1"]) == 2


# --- bounded work -----------------------------------------------------------------------------------------------

def test_24_a_fifo_in_the_input_is_skipped_with_a_reason_and_nothing_hangs(ray_runtime, trained_run, tmp_path):
    data = small_helen(tmp_path / "d")
    os.mkfifo(data / "test" / "pipe_image.jpg")
    # A subprocess, so that a hang ends at the timeout; it joins the tests' runtime to start quicker.
    done = subprocess.run([sys.executable, "-m", "faceseg", "predict", "--model", str(trained_run),
                           "--input", str(data / "test"), "--output", str(tmp_path / "p"),
                           "--address", ray_runtime.get_runtime_context().gcs_address],
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "pipe_image.jpg: not a regular file (a named pipe (FIFO))" in done.stdout
    assert pngs(tmp_path / "p") == ["f0_label.png", "f1_label.png", "f2_label.png"]


def _rewrite_zip(source: Path, target: Path, **members: bytes) -> None:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            new.writestr(item.filename, members.pop(item.filename, None) or old.read(item.filename))
        for name, data in members.items():
            new.writestr(name, data)


# The peak RSS of this process alone: VmHWM starts afresh at exec, where ru_maxrss keeps the parent's (pytest's).
INSPECT = """
import sys
from faceseg.model.saved import ModelError, inspect_model
try:
    inspect_model(sys.argv[1])
except ModelError as error:
    print(error)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) // 1024)
"""


def test_25_a_model_file_cannot_make_faceseg_allocate_or_recurse_without_bound(trained_run, tmp_path):
    from faceseg.model.saved import ModelError, inspect_model

    model = trained_run / "model.keras"
    config = json.loads(zipfile.ZipFile(model).read("config.json"))
    bomb = tmp_path / "bomb.keras"             # faceseg.json: 512 MB of spaces in under 1 MB on disk
    with zipfile.ZipFile(model) as old, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            if item.filename != "faceseg.json":
                new.writestr(item.filename, old.read(item.filename))
        with new.open("faceseg.json", "w") as stream:
            chunk = b" " * (1 << 24)
            for _ in range(32):
                stream.write(chunk)
    assert bomb.stat().st_size < 2 << 20
    done = subprocess.run([sys.executable, "-c", INSPECT, str(bomb)], env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    message, peak_mb = done.stdout.strip().rsplit("\n", 1)
    assert "faceseg.json unpacks to more than" in message and int(peak_mb) < 300, done.stdout + done.stderr

    huge = json.loads(json.dumps(config))
    huge["config"]["layers"][0]["config"]["batch_input_shape"] = [None, 60000, 60000, 3]
    _rewrite_zip(model, tmp_path / "huge.keras", **{"config.json": json.dumps(huge).encode()})
    with pytest.raises(ModelError, match="60000 px is outside 16..2048"):
        inspect_model(tmp_path / "huge.keras")

    deep = b'{"a": ' * 200_000 + b"1" + b"}" * 200_000
    _rewrite_zip(model, tmp_path / "deep.keras", **{"config.json": deep})
    with pytest.raises(ModelError, match="deep.keras"):
        inspect_model(tmp_path / "deep.keras")
    _rewrite_zip(model, tmp_path / "deepmeta.keras", **{"faceseg.json": deep})
    with pytest.raises(ModelError, match="deepmeta.keras"):
        inspect_model(tmp_path / "deepmeta.keras")


def test_26_yaml_aliases_and_huge_values_are_refused_shortly(cache_dir, tmp_path, capsys):
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    (tmp_path / "laughs.yaml").write_text(laughs)
    assert main(["train", "--config", str(tmp_path / "laughs.yaml"), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "aliases (*name) are not accepted" in err and len(err) < 2000
    assert main(["tune", "--config", str(tmp_path / "laughs.yaml")]) == 2
    assert "aliases" in capsys.readouterr().err
    digits = "9" * 400
    assert main(["train", "--cache", str(cache_dir), "--set", f"train.epochs={digits}", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "train.epochs:" in err and "out of range" in err and len(err) < 400 and "Traceback" not in err
    (tmp_path / "binary.yaml").write_bytes(os.urandom(64) + b"\xff\xfe")
    assert main(["train", "--config", str(tmp_path / "binary.yaml"), "--output", str(tmp_path / "r")]) == 2
    assert f"{tmp_path / 'binary.yaml'}: not a text config file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_27_resources_the_cluster_lacks_stop_at_once_naming_them(ray_runtime, cache_dir, tmp_path, capsys):
    import time

    start = time.monotonic()
    assert main(["train", "--cache", str(cache_dir), "--epochs", "1", "--output", str(tmp_path / "r"),
                 "--set", 'scaling.worker_resources={"gpu_box": 1}']) == 2
    assert time.monotonic() - start < 60
    err = capsys.readouterr().err
    assert "gpu_box x 2 (the cluster has 0)" in err and "scaling.worker_resources" in err


# --- right answers and clear messages ------------------------------------------------------------------------------

def test_28_evaluate_reads_16_bit_predictions_exactly_as_ground_truth(tmp_path):
    from faceseg.predict.evaluate import evaluate

    truth, pred = tmp_path / "gt", tmp_path / "pred"
    labels = [face(60 + i, size=64)[1] for i in range(3)]
    for i, label in enumerate(labels):
        save_rgb(truth / "test" / f"f{i}_image.jpg", face(60 + i, size=64)[0])
        save_grey(truth / "test" / f"f{i}_label.png", label)
        wrong = (label + 1) % 11                                   # every pixel off by one class
        wrong[:8] = label[:8]                                      # but the top rows
        save_grey(pred / f"f{i}_label.png", wrong.astype(np.uint16))        # 16-bit PNG
    report = evaluate(truth, pred)
    expected = float(np.mean([(label[:8] == label[:8]).sum() / label.size for label in labels]))
    assert report["pixel_accuracy"] == pytest.approx(expected)
    save_grey(pred / "f0_label.png", np.full((64, 64), 200, np.uint16))
    with pytest.raises(ValueError, match=r"f0_label.png: class id 200 is outside 0..10"):
        evaluate(truth, pred)


def test_29_class_names_in_any_script(tmp_path):
    from faceseg.labels import Taxonomy, TaxonomyError, build_remap, read_label_names

    (tmp_path / "names.txt").write_text("背景\n肌\n髪\n目\n", encoding="utf-8")
    taxonomy = read_label_names(tmp_path / "names.txt")
    assert taxonomy.names == ("背景", "肌", "髪", "目") and build_remap(taxonomy).is_identity
    assert "val_f1_髪" in taxonomy.metric_names()
    with pytest.raises(TaxonomyError, match="must differ"):
        Taxonomy(("Haut", "haut", "x"))


def test_30_face_parser_checks_its_arguments(trained_run, synth_dir):
    from PIL import Image

    from faceseg.predict.parser import FaceParser, ImageArgumentError

    parser = FaceParser.load(trained_run)
    image = sorted((synth_dir / "test").glob("*_image.jpg"))[0]
    with pytest.raises(ImageArgumentError, match="2 images but 1 sizes"):
        parser.batch([image, image], sizes=[(10, 10)])
    for size in [(0, 0), (10, -1), (1.5, 3), "ab"]:
        with pytest.raises(ImageArgumentError, match="sizes\\[0\\]"):
            parser.batch([image], sizes=[size])
    with pytest.raises(ImageArgumentError, match="cannot parse a NoneType"):
        parser(None)
    with pytest.raises(ImageArgumentError, match="a list of images"):
        parser.batch(str(image))
    pil = Image.open(image)
    assert (parser(pil) == parser(np.asarray(pil.convert("RGB")))).all()


def test_31_a_cache_manifest_is_checked_against_its_files_before_training(cache_dir, tmp_path, capsys):
    cases = {"no names": lambda m: m.pop("label_names"),
             "wrong size": lambda m: m.update(size=64),
             "fewer names": lambda m: m.update(label_names=m["label_names"][:3],
                                               class_pixel_frequency=m["class_pixel_frequency"][:3])}
    words = {"no names": "label_names", "wrong size": "not the 12288-byte tensors", "fewer names": "masks hold class id"}
    for case, edit in cases.items():
        cache = tmp_path / case.replace(" ", "_")
        shutil.copytree(cache_dir, cache)
        manifest = json.loads((cache / "manifest.json").read_text())
        edit(manifest)
        (cache / "manifest.json").write_text(json.dumps(manifest))
        run = tmp_path / f"run_{cache.name}"
        assert main(["train", "--cache", str(cache), "--local", "--epochs", "1", "--output", str(run)]) == 2, case
        err = capsys.readouterr().err
        assert str(cache) in err and words[case] in err and "Traceback" not in err, (case, err)
        assert not run.exists(), case


def test_32_messages_name_the_file_and_the_reason(trained_run, cache_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["base_filters"] = 16                       # edited by hand: the checkpoints have 8
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--resume", str(run), "--epochs", "5", "--local"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.yaml'} differs from the config its checkpoints were trained with" in err
    assert "model.base_filters" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["train", "--cache", str(cache_dir), "--output", str(blocker / "run"), "--address", "127.0.0.1:1"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err       # before any attempt to reach Ray
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "no_extension").write_bytes(cv2.imencode(".jpg", face(5, size=64)[0])[1].tobytes())
    cv2.imwrite(str(photos / "x.jpg"), face(6, size=64)[0])
    (photos / "notes.txt").write_text("not a photo")
    assert main(["predict", "--model", str(trained_run), "--input", str(photos), "--output", str(tmp_path / "p")]) == 0
    assert pngs(tmp_path / "p") == ["no_extension.png", "x.png"]
    assert "notes.txt: not an image faceseg reads" in capsys.readouterr().out
