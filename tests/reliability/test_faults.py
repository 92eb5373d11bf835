"""Faults for real: a train worker SIGKILLed mid-run; the whole train driver SIGKILLed then resumed; a Tune
trial that raises; a Tune trial's process SIGKILLed mid-run."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import tiny_config
from support import cli_env
from faceseg.cli import main
from faceseg.model.saved import inspect_model


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_runtime")]


def _train_worker_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith("ray::RayTrainWorker"):
                pids.add(int(entry.name))
    return pids


def test_killed_worker_is_replaced_mid_run_and_no_epoch_is_lost_or_repeated(cache_dir, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(cache_dir, epochs=6)))
    run = tmp_path / "run"
    result, seen = {}, set()
    thread = threading.Thread(target=lambda: result.update(
        code=main(["train", "--config", str(config), "--output", str(run)])))
    thread.start()
    deadline = time.time() + 600
    while time.time() < deadline and not epochs(run):
        time.sleep(0.2)
    victims = _train_worker_pids()
    assert len(victims) == 2, "expected the run's two Ray Train workers"
    os.kill(max(victims), signal.SIGKILL)
    done_at_kill = epochs(run)
    while thread.is_alive():                          # the workers that train after the kill
        seen |= _train_worker_pids()
        time.sleep(0.2)
    thread.join()
    assert 1 <= len(done_at_kill) < 6, "the worker should die mid-run"
    assert seen - victims, "no new worker replaced the killed one"
    assert result.get("code") == 0
    assert epochs(run) == [1, 2, 3, 4, 5, 6]


def epochs(run):
    path = run / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.is_file() else []


def test_killed_driver_then_resume_continues_from_last_checkpoint(ray_runtime, cache_dir, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(cache_dir, epochs=3)))
    run = tmp_path / "run"
    driver = subprocess.Popen(
        [sys.executable, "-m", "faceseg", "train", "--config", str(config), "--output", str(run),
         "--address", ray_runtime.get_runtime_context().gcs_address],
        env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not epochs(run):
        time.sleep(0.5)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    done_before = epochs(run)
    assert 1 <= len(done_before) < 3, "the driver should die mid-run"
    time.sleep(3)   # let Ray reap the dead driver's trainer and workers
    assert main(["train", "--resume", str(run)]) == 0
    assert epochs(run) == [1, 2, 3]


def test_a_failing_trial_is_reported_and_the_sweep_finishes(cache_dir, tmp_path):
    sweep = {
        "data": {"cache": str(cache_dir)},
        "base": {"model": {"base_filters": 8, "dropout": 0.0}, "train": {"epochs": 1, "batch_size": 8},
                 "scaling": {"num_workers": 1}},
        # a metric these classes do not report is refused inside the trial, when its data is known
        "space": {"train.metric": {"grid": ["auto", "val_f1_nonsense"]}},
        "scheduler": {"type": "fifo"}, "num_samples": 1, "max_concurrent_trials": 2,
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["tune", "--config", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "sweep")]) == 0
    results = pd.read_csv(tmp_path / "sweep" / "results.csv").set_index("train.metric")
    assert results.loc["auto", "status"] == "ok" and results.loc["val_f1_nonsense", "status"] == "failed"
    assert "val_f1_nonsense" in results.loc["val_f1_nonsense", "error"]
    assert (tmp_path / "sweep" / "best_model.keras").is_file()
    sweep["space"] = {"train.metric": {"grid": ["val_f1_nonsense"]}}     # every trial fails: exit 1, and why
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["tune", "--config", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "sweep1")]) == 1
    assert list(pd.read_csv(tmp_path / "sweep1" / "results.csv")["status"]) == ["failed"]
    assert not (tmp_path / "sweep1" / "best_model.keras").exists()
    sweep["space"] = {"model.depth": {"grid": [3, 9]}}      # values a trial could never train: refused up front
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["tune", "--config", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "sweep2")]) == 2
    assert not (tmp_path / "sweep2").exists()


def test_a_trial_whose_process_dies_runs_again_and_resumes_its_checkpoints(cache_dir, tmp_path):
    import ray
    from ray.util.state import list_actors

    sweep = {
        "data": {"cache": str(cache_dir)},
        "base": {"model": {"depth": 3, "base_filters": 8, "dropout": 0.0},
                 "train": {"epochs": 4, "batch_size": 8, "final_model": "last"}, "scaling": {"num_workers": 1}},
        "space": {"train.learning_rate": {"grid": [0.002]}},
        "scheduler": {"type": "fifo"}, "num_samples": 1, "max_concurrent_trials": 1,
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    trials = tmp_path / "sweep" / "trials"
    done_before = []

    def kill_the_trial_after_its_first_epoch():
        deadline = time.time() + 600
        while time.time() < deadline:
            runs = list(trials.glob("*/metrics.jsonl"))
            if runs and epochs(runs[0].parent):
                # This sweep's own runtime by address: another Ray on the machine makes "auto" ambiguous.
                alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")])
                # Tune's function trainable: Ray names it `ImplicitFunc` or `wrap_function.<locals>.ImplicitFunc`
                trial = [a for a in alive if a.class_name.rsplit(".", 1)[-1] == "ImplicitFunc"]
                done = epochs(runs[0].parent)
                os.kill(trial[0].pid, signal.SIGKILL)
                done_before.extend(done)        # only once the kill happened: no kill fails the test below
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_trial_after_its_first_epoch, daemon=True)
    killer.start()
    assert main(["tune", "--config", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "sweep")]) == 0
    killer.join()
    assert 1 <= len(done_before) < 4, "the trial should die mid-run"
    results = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert list(results["status"]) == ["ok"] and list(results["epochs"]) == [4]
    (run,) = trials.iterdir()
    assert epochs(run) == [1, 2, 3, 4]
    assert inspect_model(tmp_path / "sweep" / "best_model.keras").meta["epoch"] == 4    # final_model: last
