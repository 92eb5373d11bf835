"""Shared fixtures: ONE real Ray runtime per test session (on 127.0.0.1), started by the first test that needs
it; small real data sets and tiny real models. Helpers shared by several test files are in support.py.

Tiers: `python -m pytest` runs the fast tier (every module, tiny models); `python -m pytest -m slow` the slow
one (a second Ray node, object storage, killed processes, fuzzing, GPU code paths, sweeps).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import faceseg  # noqa: F401  (TF_USE_LEGACY_KERAS before any test imports TensorFlow)

TEST_SIZE = 32          # px: the tiny models' grid
CONSOLE = "train-console.log"     # beside trained_run's folder: what its `faceseg train` printed


@pytest.fixture(scope="session")
def ray_runtime():
    import ray

    from faceseg.runtime import Needs, connect

    # 2 trainer workers + a Tune trial + model actors hold logical CPUs; Ray Data keeps the real cores.
    connect(needs=Needs(cpus=6))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from faceseg.data.synth import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(out, train=120, test=8, size=64, seed=3)
    return out


@pytest.fixture(scope="session")
def cache_dir(ray_runtime, synth_dir, tmp_path_factory) -> Path:
    from faceseg.data.layouts import discover
    from faceseg.data.prepare import prepare_cache

    out = tmp_path_factory.mktemp("cache") / "cache"
    prepare_cache(discover(synth_dir), out, size=TEST_SIZE)
    return out


def tiny_config(cache: Path, epochs: int = 2, **train) -> dict:
    """A U-Net small enough for CPU tests that still learns within a few epochs. Batch norm's moving
    statistics follow at 0.9: at the default 0.99 a short run validates with statistics still near their
    initial values, and its validation F1 goes up or down from epoch to epoch by chance."""
    return {
        "data": {"cache": str(cache), "size": TEST_SIZE},
        "model": {"depth": 3, "base_filters": 8, "dropout": 0.0, "batch_norm_momentum": 0.9},
        "train": {"epochs": epochs, "batch_size": 4, "learning_rate": 5e-3, "augment": "none", **train},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1.0},
    }


@pytest.fixture(scope="session")
def trained_run(cache_dir, tmp_path_factory) -> Path:
    """A real 2-worker Ray Train run, shared by the training, prediction and serving tests. It runs as a user
    runs it, `faceseg train` in a shell of its own (its own Ray runtime), so that test_logs can read its
    console (train_console) instead of paying for a second run."""
    import yaml

    from support import run_faceseg

    folder = tmp_path_factory.mktemp("runs")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(cache_dir, epochs=4)))
    done = run_faceseg("train", "--config", config, "--output", folder / "r1")
    console = done.stdout + done.stderr
    (folder / CONSOLE).write_text(console)
    assert done.returncode == 0, console[-4000:]
    return folder / "r1"


def train_console(run: Path) -> str:
    """What the user's shell showed while trained_run trained."""
    return (run.parent / CONSOLE).read_text()


@pytest.fixture
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs folder. Where this machine forbids mounting the test is skipped, but
    under CI (CI=true) it fails: CI must run what it claims to."""
    mounted = []

    def make(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            reason = f"cannot mount a tmpfs here: {done.stderr.decode().strip()}"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
