"""Real photos end to end: FASSEG's own 6 classes kept from prepare through training, predict and evaluate
(tests/data/fasseg-sample: 12 photos), and a model that refuses data of other classes."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from conftest import tiny_config
from faceseg.cli import main
from faceseg.data.cache import Cache

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_runtime")]

ROOT = Path(__file__).parents[1]
SAMPLE = Path(__file__).parent / "data" / "fasseg-sample"
FASSEG = ["background", "skin", "hair", "eyes", "nose", "mouth"]
SIZE = 64


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """prepare keeps FASSEG's classes; a one-worker run trains on the 12 photos."""
    folder = tmp_path_factory.mktemp("fasseg")
    assert main(["prepare", str(SAMPLE), "--out", str(folder / "cache"), "--size", str(SIZE)]) == 0
    config = tiny_config(folder / "cache", epochs=15, augment="flip")
    config["model"]["batch_norm_momentum"] = 0.9
    config["scaling"]["num_workers"] = 1
    (folder / "photos.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(folder / "photos.yaml"), "--local", "--output", str(folder / "run")]) == 0
    assert main(["predict", "--model", str(folder / "run"), "--input", str(SAMPLE), "--output",
                 str(folder / "pred"), "--overlay"]) == 0
    return folder


def _truth_and_prediction(photos: Path) -> tuple[np.ndarray, np.ndarray]:
    truth, pred = [], []
    for label in sorted((SAMPLE / "labels").glob("*.png")):
        truth.append(cv2.imread(str(label), cv2.IMREAD_UNCHANGED).ravel())
        pred.append(cv2.imread(str(photos / "pred" / label.name), cv2.IMREAD_UNCHANGED).ravel())
        assert pred[-1].shape == truth[-1].shape                  # at the label map's own size
    return np.concatenate(truth), np.concatenate(pred)


def test_prepare_keeps_the_six_classes(photos):
    cache = Cache.open(photos / "cache")
    assert list(cache.taxonomy.names) == FASSEG
    manifest = json.loads((photos / "cache" / "manifest.json").read_text())
    assert manifest["label_names"] == FASSEG and manifest["flip_pairs"] == []
    model_record = json.loads((photos / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val_f1_mean" in model_record and "val_f1_overall" not in model_record   # not Helen's groups


def test_predictions_are_six_class_ids_and_learnt_something(photos):
    truth, pred = _truth_and_prediction(photos)
    assert set(np.unique(pred)) <= set(range(6))
    accuracy = float((truth == pred).mean())
    majority = float(np.bincount(truth, minlength=6).max() / truth.size)
    assert accuracy > majority + 0.1, (accuracy, majority)        # well above "everything is background"
    assert len(set(np.unique(pred))) >= 4                         # face parts, not two blobs


def test_report_per_class_figures_equal_a_hand_computation(photos, tmp_path):
    truth, pred = _truth_and_prediction(photos)
    report = json.loads((photos / "pred" / "report.json").read_text())
    for k, name in enumerate(FASSEG):
        tp = np.sum((truth == k) & (pred == k))
        fp, fn = np.sum((truth != k) & (pred == k)), np.sum((truth == k) & (pred != k))
        assert report["f1"][name] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert report["iou"][name] == pytest.approx(tp / (tp + fp + fn))
    assert report["mean_f1"] == pytest.approx(np.mean([report["f1"][n] for n in FASSEG[1:]]))
    assert report["pixel_accuracy"] == pytest.approx(float((truth == pred).mean()))
    assert main(["evaluate", str(SAMPLE), str(photos / "pred"), "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["f1"] == report["f1"]


def test_overlay_has_a_legend_of_the_six_names(photos):
    overlay = cv2.imread(str(photos / "pred" / "overlays" / "frontal_train_1.png"))
    plain = cv2.imread(str(SAMPLE / "images" / "frontal_train_1.jpg"))
    assert overlay is not None and overlay.shape[1] > plain.shape[1]   # image | prediction | truth, legend below


def test_model_refuses_data_of_other_classes(photos, synth_dir, cache_dir, tmp_path, capsys):
    run = photos / "run"
    # predict on Helen-labelled data: eyes/brows/lips have no FASSEG counterpart by name
    assert main(["predict", "--model", str(run), "--input", str(synth_dir / "test"),
                 "--output", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "classes" in err and str(synth_dir / "test") in err
    assert not (tmp_path / "p").exists()
    # evaluate FASSEG predictions against Helen ground truth
    assert main(["evaluate", str(synth_dir / "test"), str(photos / "pred")]) == 2
    assert "classes" in capsys.readouterr().err
    # resume the 6-class run on an 11-class cache, all else equal
    config = yaml.safe_load((photos / "photos.yaml").read_text())
    config["data"]["cache"], config["train"]["epochs"] = str(cache_dir), 16
    (tmp_path / "helen.yaml").write_text(yaml.safe_dump(config))
    before = (run / "metrics.jsonl").read_text()
    assert main(["train", "--config", str(tmp_path / "helen.yaml"), "--local", "--resume", str(run)]) == 2
    assert "data.cache" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before


def _benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("real_photos", ROOT / "benchmarks" / "real_photos.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_folds_hold_out_whole_people():
    """benchmarks/real_photos.py: no person's photos on two sides of a fold (test, validation, training)."""
    bench = _benchmark()
    angles = ["m90", "m75", "m60", "m45", "m30", "m15", "p0", "p15", "p30", "p45", "p60", "p75", "p90"]
    names = [f"frontal_train_{i}" for i in range(1, 21)]
    names += [f"pose_personne{p:02d}{series}{40 + i}p0{a}" for p in range(1, 8) for series in (1, 2)
              for i, a in enumerate(angles)]
    for count in (3, 5):
        groups = bench.folds(names, count)
        assert sorted(n for g in groups for n in g) == sorted(names)           # every photo held out once
        for k in range(count):
            test, val, train = bench.split_fold(groups, k)
            assert sorted(test + val + train) == sorted(names)
            # pose_personneNN + series + pose: the person is NN, in both series
            people = [{n[:15] if n.startswith("pose") else n for n in side} for side in (test, val, train)]
            assert not (people[0] & people[1] or people[0] & people[2] or people[1] & people[2])
            assert len({p for p in people[1] if p.startswith("pose")}) == 1 and len(people[1]) == 3
    # --hold-out frontal: the frontal people held out once each, every multi-pose photo trains in every fold
    groups, always_train = bench.grouped(names, 5, "frontal")
    assert sorted(n for g in groups for n in g) == sorted(names[:20]) and len(always_train) == len(names) - 20
    for k in range(5):
        test, val, train = bench.split_fold(groups, k, always_train)
        assert sorted(test + val + train) == sorted(names) and len(test) == 4
        assert not set(test) & set(val + train) and not set(val) & set(train)
        assert set(always_train) <= set(train) and all(n.startswith("frontal") for n in val) and len(val) == 2


def test_rescore_gathers_a_fold_by_the_config_it_trained_with_not_by_the_file_s_path(tmp_path):
    """--rescore takes a fold's predictions into a report only if the fold's run resolved to the config asked
    now (whichever file and --set said it) and held out the same people."""
    from faceseg.config import Config

    bench = _benchmark()
    shipped = Config.from_yaml(bench.SHIPPED_CONFIG)
    walls = shipped.with_overrides({"train.augment_background": 0.3})
    plain = shipped.with_overrides({"train.augment_background": 0.0})
    # A fold trained elsewhere: `--set train.augment_background=0.3` on another clone's copy of the recipe.
    record, run = tmp_path / "fold0.json", tmp_path / "run0"
    run.mkdir()
    (run / "config.yaml").write_text(walls.with_overrides({"data.data": "/elsewhere/fold0",
                                                           "data.cache": "/elsewhere/run0/cache"}).to_yaml())
    record.write_text(json.dumps({"config": "/elsewhere/configs/real-photos.yaml",
                                  "set": ["train.augment_background=0.3"], "folds": 5, "hold_out": "frontal"}))

    assert bench.trained_otherwise(record, run, walls, 5, "frontal") is None
    # the same settings from a recipe file that says them itself, with no --set
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(walls.to_yaml())
    assert bench.trained_otherwise(record, run, Config.from_yaml(recipe), 5, "frontal") is None

    refusal = bench.trained_otherwise(record, run, plain, 5, "frontal")
    assert "train.augment_background=0.3 (asked 0.0)" in refusal and str(run) in refusal
    refusal = bench.trained_otherwise(record, run, walls.with_overrides({"train.seed": 1}), 5, "frontal")
    assert "train.seed=0 (asked 1)" in refusal
    assert "--folds 5 --hold-out frontal" in bench.trained_otherwise(record, run, walls, 3, "frontal")
    assert "--hold-out frontal, not" in bench.trained_otherwise(record, run, walls, 5, "people")
    (run / "config.yaml").unlink()
    assert "train it first" in bench.trained_otherwise(record, run, walls, 5, "frontal")


def _scored_folds(work: Path, bench, config) -> None:
    """What three trained folds of the shipped recipe leave in --work, without the training: each fold's run
    config and record, and predictions equal to the label maps (so every figure is 100%) with overlays."""
    names = sorted(p.stem for p in (SAMPLE / "images").glob("*.jpg"))
    groups = bench.folds(names, 3)
    for k in range(3):
        test, _, _ = bench.split_fold(groups, k)
        (work / f"run{k}").mkdir(parents=True)
        (work / f"run{k}" / "config.yaml").write_text(config.to_yaml())
        (work / f"fold{k}.json").write_text(json.dumps({"config": "configs/real-photos.yaml", "set": [], "folds": 3,
                                                        "hold_out": "people", "commit": "abc1234",
                                                        "train_seconds": 60.0, "seconds": 70.0}))
        (work / f"pred{k}" / "overlays").mkdir(parents=True)
        for name in test:
            label = cv2.imread(str(SAMPLE / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(work / f"pred{k}" / f"{name}.png"), label)
            cv2.imwrite(str(work / f"pred{k}" / "overlays" / f"{name}.png"), np.full((4, 4, 3), k, np.uint8))
        (work / f"pred{k}" / "report.json").write_text(json.dumps({"pixel_accuracy": 1.0, "mean_f1": 1.0,
                                                                   "f1": {n: 1.0 for n in FASSEG}}))


def test_shipped_report_replaces_the_overlays_only_from_every_fold_and_only_when_all_are_there(tmp_path):
    """The shipped recipe's report and its docs/images/ overlays come from all folds together: a one-fold
    run leaves them alone, and a missing overlay stops the report before a committed overlay is deleted."""
    import shutil
    import subprocess
    import sys

    from faceseg.config import Config

    # the benchmark in a scratch copy of the repository, so its results/ and docs/images/ are the test's
    repo, work = tmp_path / "repo", tmp_path / "work"
    (repo / "benchmarks").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "real_photos.py", repo / "benchmarks")
    shutil.copytree(ROOT / "configs", repo / "configs")
    bench = _benchmark()
    _scored_folds(work, bench, Config.from_yaml(bench.SHIPPED_CONFIG))
    shown = repo / "docs" / "images"
    shown.mkdir(parents=True)
    (shown / "fasseg-heldout-committed.png").write_bytes(b"committed")

    def rescore(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(repo / "benchmarks" / "real_photos.py"), "--data", str(SAMPLE),
                               "--work", str(work), "--rescore", *extra], capture_output=True, text=True)

    one = rescore("--only-fold", "0")
    assert one.returncode == 0, one.stderr
    assert sorted(p.name for p in shown.iterdir()) == ["fasseg-heldout-committed.png"]
    assert not (repo / "benchmarks" / "results").exists()

    missing = next(work.glob("pred*/overlays/pose_personne01143p0m45.png"))      # one the report shows
    kept = missing.read_bytes()
    missing.unlink()
    failed = rescore()
    assert failed.returncode != 0 and str(missing) in failed.stderr and "left as it was" in failed.stderr
    assert sorted(p.name for p in shown.iterdir()) == ["fasseg-heldout-committed.png"]
    assert not (repo / "benchmarks" / "results").exists()

    missing.write_bytes(kept)
    whole = rescore()
    assert whole.returncode == 0, whole.stderr
    # two frontal photos and the three-quarter view (the sample has no profile)
    overlays = sorted(p.name for p in shown.iterdir())
    assert overlays == ["fasseg-heldout-frontal_train_1.png", "fasseg-heldout-frontal_train_2.png",
                        "fasseg-heldout-pose_personne01143p0m45.png"]
    report = (repo / "benchmarks" / "results" / "real_photos.md").read_text()
    assert "| all | 12 | 100.00 | 100.00 |" in report and "abc1234" in report
