"""Real Ray Tune sweeps: trials are Ray Train runs sharing one cache; its outputs re-train; ASHA stops weak
trials; a killed sweep resumes; every shipped sweep file runs."""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from faceseg.cli import main
from faceseg.config import Config
from faceseg.model.saved import inspect_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_runtime")]
ROOT = Path(__file__).resolve().parents[1]


def test_tiny_sweep_writes_results_and_a_best_config_that_retrains(cache_dir, tmp_path, capsys):
    sweep = {
        "data": {"cache": str(cache_dir)},
        "base": {"model": {"depth": 3, "base_filters": 8, "dropout": 0.0},
                 "train": {"epochs": 2, "batch_size": 8},
                 "scaling": {"num_workers": 1}},
        "space": {"train.augment": {"grid": ["none", "flip"]},
                  "train.learning_rate": {"loguniform": [1e-3, 5e-3]}},
        "objective": {"metric": "val_f1_overall", "mode": "max"},
        "scheduler": {"type": "fifo"},
        "num_samples": 1,
        "max_concurrent_trials": 2,
    }
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "sweep"
    assert main(["tune", "--config", str(config), "--output", str(out)]) == 0

    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 and set(results["train.augment"]) == {"none", "flip"}
    assert (results["status"] == "ok").all() and (results["epochs"] == 2).all()
    assert results["train.learning_rate"].between(1e-3, 5e-3).all()
    # best_model.keras is the best epoch of any trial (train.final_model: best)
    picked = inspect_model(out / "best_model.keras").meta["metrics"]["val_f1_overall"]
    assert picked == results["best_val_f1_overall"].max()
    best = Config.from_yaml(out / "best_config.yaml")
    assert best.train.augment in {"none", "flip"} and best.data.cache == str(cache_dir)
    assert "best config" in capsys.readouterr().out

    assert main(["train", "--config", str(out / "best_config.yaml"), "--epochs", "1",
                 "--output", str(tmp_path / "retrain")]) == 0
    assert (tmp_path / "retrain" / "model.keras").is_file()


def test_bad_sweep_files_are_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"cache": "x"}, "space": {"train.learning_rat": {"choice": [1]}}}))
    assert main(["tune", "--config", str(bad)]) == 2
    assert "learning_rat" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({"data": {"cache": "x"}, "space": {"train.epochs": [1, 2]}}))
    assert main(["tune", "--config", str(bad)]) == 2


def _epochs(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.is_file() else []


def test_asha_stops_the_weak_trials_early(cache_dir, tmp_path):
    sweep = {
        "data": {"cache": str(cache_dir)},
        "base": {"model": {"depth": 3, "base_filters": 8, "dropout": 0.0, "batch_norm_momentum": 0.9},
                 "train": {"epochs": 2, "batch_size": 4}, "scaling": {"num_workers": 1}},
        # A strong rate first, then one that cannot learn, then another strong one. ASHA's only rung is
        # epoch 1 (its last, epoch 2, ends every trial anyway): the weak trial falls below what the strong
        # one before it reached there, the last strong one above the median of the two before it. Pixel
        # accuracy, because after one epoch of a tiny model F1 "overall" (eyes, brows, nose, mouth) can still
        # be 0 for any rate.
        "space": {"train.learning_rate": {"grid": [5e-3, 1e-7, 4e-3]}},
        "objective": {"metric": "val_pixel_accuracy", "mode": "max"},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2, "max_t": 2},
        "num_samples": 1, "max_concurrent_trials": 1,
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["tune", "--config", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "sweep")]) == 0
    results = pd.read_csv(tmp_path / "sweep" / "results.csv").set_index("train.learning_rate")
    assert list(results.loc[[5e-3, 4e-3], "status"]) == ["ok", "ok"]
    assert results.loc[1e-7, "status"] == "stopped early" and results.loc[1e-7, "epochs"] == 1


def test_a_killed_sweep_resumes_where_it_stopped(ray_runtime, cache_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from support import cli_env

    sweep = {
        "data": {"cache": str(cache_dir)},
        "base": {"model": {"depth": 3, "base_filters": 8, "dropout": 0.0},
                 "train": {"epochs": 4, "batch_size": 8}, "scaling": {"num_workers": 1}},
        "space": {"train.learning_rate": {"grid": [3e-3, 4e-3]}},
        # both trials at once: the kill lands while each is mid-run or not yet started
        "scheduler": {"type": "fifo"}, "num_samples": 1, "max_concurrent_trials": 2,
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    out = tmp_path / "sweep"
    driver = subprocess.Popen([sys.executable, "-m", "faceseg", "tune", "--config", str(tmp_path / "s.yaml"),
                               "--output", str(out), "--address", ray_runtime.get_runtime_context().gcs_address],
                              env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not any(_epochs(run) for run in (out / "trials").glob("*")):
        time.sleep(0.3)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    done = {run.name: _epochs(run) for run in (out / "trials").glob("*")}
    assert done and all(len(epochs) < 4 for epochs in done.values()), "the sweep should die mid-run"
    time.sleep(3)
    assert main(["tune", "--config", str(tmp_path / "s.yaml"), "--output", str(out)]) == 2     # not silently again
    assert main(["tune", "--config", str(tmp_path / "s.yaml"), "--output", str(out), "--resume"]) == 0
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 and (results["status"] == "ok").all() and (results["epochs"] == 4).all()
    for run in (out / "trials").glob("*"):
        assert _epochs(run) == [1, 2, 3, 4]


@pytest.mark.parametrize("name", ["smoke", "augment", "real-photos", "helen"])
def test_every_shipped_sweep_runs_an_epoch_at_tiny_size(name, cache_dir, tmp_path):
    """Each tune_configs/ file as written, on the tiny cache: one epoch a trial, one sample, a grid's ends, on
    the CPU."""
    spec = yaml.safe_load((ROOT / "tune_configs" / f"{name}.yaml").read_text())
    base = spec.get("base", {})
    base.setdefault("train", {}).update(epochs=1, batch_size=4, mixed_precision=False, jit=False, augment_on="auto")
    base.setdefault("model", {}).update(depth=3)
    base["scaling"] = {"num_workers": 1}
    space = {key: value for key, value in spec["space"].items() if key not in ("model.depth", "train.batch_size")}
    for sampler in space.values():            # a grid's first and last values: its ends, half the trials
        if "grid" in sampler and len(sampler["grid"]) > 2:
            sampler["grid"] = [sampler["grid"][0], sampler["grid"][-1]]
    spec.update(data={"cache": str(cache_dir)}, base=base, space=space, num_samples=1, max_concurrent_trials=1,
                output=str(tmp_path / name))
    if spec.get("scheduler", {}).get("type") == "asha":
        spec["scheduler"].update(grace_period=1, max_t=1)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert main(["tune", "--config", str(tmp_path / "s.yaml")]) == 0
    results = pd.read_csv(tmp_path / name / "results.csv")
    assert (results["status"] == "ok").all() and (results["epochs"] == 1).all()
