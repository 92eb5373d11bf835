"""The code paths meant for GPUs, run here on the CPU: mixed precision (bfloat16 where the device is a CPU),
XLA, augmentation inside the train step, and `--local` with MirroredStrategy over two logical devices.
Each trains a few epochs; its loss must be finite and its validation F1 within TOLERANCE of the plain run."""
import json
import math
import subprocess
import sys

import pytest
import yaml

from conftest import cli_env, tiny_config
from faceseg.cli import main

EPOCHS = 4
TOLERANCE = 0.15      # absolute val_f1_overall after EPOCHS epochs: other numerics, same learning


def _history(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def plain(cache_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-paths")
    config = folder / "plain.yaml"
    config.write_text(yaml.safe_dump(tiny_config(cache_dir, epochs=EPOCHS, augment="flip")))
    assert main(["train", "--config", str(config), "--local", "--output", str(folder / "plain")]) == 0
    return folder, config, _history(folder / "plain")


def _check_against(plain_history, history):
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    assert all(math.isfinite(row["loss"]) and math.isfinite(row["val_loss"]) for row in history)
    assert history[-1]["loss"] < history[0]["loss"]
    assert abs(history[-1]["val_f1_overall"] - plain_history[-1]["val_f1_overall"]) <= TOLERANCE, \
        (history[-1]["val_f1_overall"], plain_history[-1]["val_f1_overall"])


@pytest.mark.parametrize("flags", [["--set", "train.mixed_precision=true"], ["--set", "train.jit=true"],
                                   ["--set", "train.augment_on=device"]],
                         ids=["mixed-bfloat16", "xla", "augment-in-step"])
def test_gpu_path_trains_like_the_plain_run(plain, flags):
    folder, config, plain_history = plain
    run = folder / flags[1].split("=")[0].split(".")[1]
    assert main(["train", "--config", str(config), "--local", "--output", str(run), *flags]) == 0
    _check_against(plain_history, _history(run))
    if "mixed_precision" in flags[1]:
        from faceseg.model.saved import load_model

        model = load_model(run)               # the saved model computes in bfloat16, answers float32 logits
        assert model.get_layer("down0_conv1").compute_dtype == "bfloat16" and model.output.dtype == "float32"


MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from faceseg.cli import main
sys.exit(main(["train", "--config", sys.argv[1], "--local", "--output", sys.argv[2], "--address", sys.argv[3],
               "--batch-size", "2"]))
"""


def test_local_mirrored_strategy_over_two_logical_devices(plain, ray_runtime):
    folder, config, plain_history = plain
    run = folder / "mirrored"
    done = subprocess.run([sys.executable, "-c", MIRRORED, str(config), str(run),
                           ray_runtime.get_runtime_context().gcs_address],
                          env=cli_env(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    history = _history(run)
    _check_against(plain_history, history)
    # two replicas of 2 images: the plain run's 4 images a step, and its 54 steps an epoch
    assert history[0]["steps"] == 54 == plain_history[0]["steps"]
