"""Shared fixtures: ONE real local Ray runtime per test session (on 127.0.0.1), small real data sets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import faceseg  # noqa: F401  (TF_USE_LEGACY_KERAS before any test imports TensorFlow)

TEST_SIZE = 64


@pytest.fixture(scope="session", autouse=True)
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
    write_synthetic_dataset(out, train=240, test=12, size=96, seed=3)
    return out


@pytest.fixture(scope="session")
def cache_dir(synth_dir, tmp_path_factory) -> Path:
    from faceseg.data.layouts import discover
    from faceseg.data.prepare import prepare_cache

    out = tmp_path_factory.mktemp("cache") / "cache"
    prepare_cache(discover(synth_dir), out, size=TEST_SIZE)
    return out


def tiny_config(cache: Path, epochs: int = 2, **train) -> dict:
    """A U-Net small enough for CPU tests that still learns within a few epochs. Batch norm's moving
    statistics follow at 0.9: at the default 0.99 a 6-epoch run (78 steps) validates with statistics still
    half their initial values, and its validation F1 went up or down from epoch to epoch by chance."""
    return {
        "data": {"cache": str(cache), "size": TEST_SIZE},
        "model": {"depth": 3, "base_filters": 16, "dropout": 0.0, "batch_norm_momentum": 0.9},
        "train": {"epochs": epochs, "batch_size": 4, "learning_rate": 3e-3, "augment": "none", **train},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1.0},
    }


@pytest.fixture(scope="session")
def trained_run(cache_dir, tmp_path_factory) -> Path:
    """A real 2-worker Ray Train run, shared by the training and prediction tests."""
    import yaml

    from faceseg.cli import main

    folder = tmp_path_factory.mktemp("runs")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(cache_dir, epochs=6)))
    assert main(["train", "--config", str(config), "--output", str(folder / "r1")]) == 0
    return folder / "r1"


@pytest.fixture
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs folder; skipped where this machine forbids mounting."""
    import subprocess

    mounted = []

    def make(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (symlinks as their targets' names) -> its SHA-256: to show nothing changed."""
    import hashlib

    digest = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            digest[str(path.relative_to(folder))] = "-> " + os.readlink(path)
        elif path.is_file():
            digest[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def cli_env() -> dict:
    """Environment for `faceseg` subprocesses: never join the tests' runtime by accident."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env
