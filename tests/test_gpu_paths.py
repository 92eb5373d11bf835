"""The code paths meant for GPUs, run here on the CPU: mixed precision (bfloat16 where the device is a CPU),
XLA, augmentation inside the train step, and `--local` with MirroredStrategy over two logical devices.
Each trains a few epochs from the same seed; its loss must be finite, its last-epoch training loss within
LOSS_TOLERANCE of the plain run's (the numerics) and its validation F1 within F1_TOLERANCE (the learning).
With Keras' default batch-norm momentum (0.99) validation after so few steps sees stale statistics and its
F1 swings from run to run (0.16-0.41 for the plain run alone); these runs use momentum 0.9."""
import json
import math
import subprocess
import sys

import pytest
import yaml

from conftest import tiny_config
from support import cli_env
from faceseg.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_runtime")]

EPOCHS = 3
LOSS_TOLERANCE = 0.2  # relative, on the mean training loss of the last epoch
F1_TOLERANCE = 0.15   # absolute, on val_f1_overall after the last epoch


def _history(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def plain(cache_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-paths")
    config = folder / "plain.yaml"
    values = tiny_config(cache_dir, epochs=EPOCHS, augment="flip")
    values["model"]["batch_norm_momentum"] = 0.9
    config.write_text(yaml.safe_dump(values))
    assert main(["train", "--config", str(config), "--local", "--output", str(folder / "plain")]) == 0
    return folder, config, _history(folder / "plain")


def _check_against(plain_history, history):
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    assert all(math.isfinite(row["loss"]) and math.isfinite(row["val_loss"]) for row in history)
    assert history[-1]["loss"] < history[0]["loss"]
    last, plain_last = history[-1], plain_history[-1]
    assert abs(last["loss"] - plain_last["loss"]) <= LOSS_TOLERANCE * plain_last["loss"], (last, plain_last)
    assert abs(last["val_f1_overall"] - plain_last["val_f1_overall"]) <= F1_TOLERANCE, (last, plain_last)


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
    # two replicas of 2 images: the plain run's 4 images a step, and so its steps an epoch
    assert history[0]["steps"] == plain_history[0]["steps"] > 1
