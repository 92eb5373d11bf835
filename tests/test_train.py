"""Training for real: 2-worker MultiWorkerMirroredStrategy on Ray Train, local mode, resume, worker kill,
and a split held in memory read from its files once."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import cli_env, tiny_config
from faceseg.cli import main
from faceseg.data.augment import Augmentation
from faceseg.data.cache import Cache
from faceseg.labels import HELEN
from faceseg.model.saved import inspect_model, load_model
from faceseg.train.loop import make_train_dataset

RUN_FILES = ("config.yaml", "metrics.jsonl", "model.keras", "checkpoints", "tensorboard")
METRIC_KEYS = {"epoch", "loss", "val_loss", "val_pixel_accuracy", "val_mean_iou", "val_f1_overall"}


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_workers_learn(trained_run):
    for name in RUN_FILES:
        assert (trained_run / name).exists(), name
    rows = history(trained_run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert METRIC_KEYS <= set(rows[0])
    assert rows[-1]["loss"] < rows[0]["loss"]                                  # the loss falls
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]                          # on held-out faces too
    assert max(r["val_f1_overall"] for r in rows[1:]) > rows[0]["val_f1_overall"]   # and val F1 rises
    # equal shards of 216 / 2 = 108 rows; a worker reads 4 x 2 rows a batch, 13 batches, 2 steps each
    assert rows[0]["steps"] == 26
    # model.keras is the best epoch by val_f1_overall, loadable in safe mode
    assert inspect_model(trained_run / "model.keras").size == 64
    assert inspect_model(trained_run).taxonomy == HELEN
    assert load_model(trained_run).output_shape == (None, 64, 64, 11)
    saved = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert saved["scaling"]["num_workers"] == 2 and saved["data"]["size"] == 64


def test_a_users_log_shows_the_epoch_table_once_without_per_report_lines(cache_dir, tmp_path):
    """`faceseg train` in a user's shell (its own Ray runtime): the chief's table, each row once. Ray Train's
    print patch printed every row twice, and each epoch added Ray Train's report line (every metric, from
    every worker), TF's checkpoint-save line and Ray Data's progress bars of the train split's reader."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**tiny_config(cache_dir, epochs=2), "scaling": {"num_workers": 1}}))
    done = subprocess.run([sys.executable, "-m", "faceseg", "train", "--config", str(config),
                           "--output", str(tmp_path / "run")], env=cli_env(), capture_output=True, text=True,
                          timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "trained 2 epochs" in log
    assert len(re.findall(r"epoch\s+loss\s+val_loss", log)) == 1, log[-4000:]
    assert re.findall(r"RayTrainWorker pid=\d+\)\S*\s+(\d+)\s+-?\d+\.\d{4}\s", log) == ["1", "2"], log[-4000:]
    for noise in ("Reporting training result", "Sharding callback duration", "split(1, equal=True): Tasks"):
        assert noise not in log, noise


def test_resume_continues_without_repeating_epochs(trained_run, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(trained_run, run)
    assert main(["train", "--resume", str(run), "--epochs", "7"]) == 0
    rows = history(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[:6] == history(trained_run)               # the first six epochs were restored, not re-run


def test_local_mode_same_outputs(cache_dir, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(cache_dir, epochs=2)))
    assert main(["train", "--config", str(config), "--local", "--output", str(tmp_path / "run")]) == 0
    for name in RUN_FILES:
        assert (tmp_path / "run" / name).exists(), name
    rows = history(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["steps"] == 54   # 216 // 4 steps, one process
    assert main(["train", "--resume", str(tmp_path / "run"), "--local", "--epochs", "3"]) == 0
    assert [r["epoch"] for r in history(tmp_path / "run")] == [1, 2, 3]


def test_repeat_deals_matching_images_more_often_and_last_keeps_the_last_epoch(cache_dir, tmp_path, capsys):
    from faceseg.train.run import train_split

    cache = Cache.open(cache_dir)
    names = [str(name) for name in cache.arrays("train", columns=("name",))["name"]]
    repeated = [name for name in names if name.endswith("3")]
    assert 0 < len(repeated) < len(names)
    data, rows = train_split(cache, {"*3": 3, "no such image*": 2})
    assert rows == len(names) + 2 * len(repeated)
    printed = capsys.readouterr().out
    assert f"'*3' x3 matches {len(repeated)} of {len(names)}" in printed and "'no such image*' x2 matches 0" in printed
    # One held epoch deals each matching image three times, every other image once.
    epoch = _epoch_images(make_train_dataset(data, 1, Augmentation("none", HELEN.flip_lut), seed=1, hold=True))
    images = dict(zip(names, (image.tobytes() for image in cache.arrays("train")["image"])))
    assert sorted(epoch) == sorted(images[name] for name in names for _ in range(3 if name in repeated else 1))

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(cache_dir, epochs=3, learning_rate=0.03, final_model="last",
                                                 repeat={"*3": 3})))
    assert main(["train", "--config", str(config), "--local", "--output", str(tmp_path / "run")]) == 0
    assert history(tmp_path / "run")[0]["steps"] == rows // 4
    assert inspect_model(tmp_path / "run" / "model.keras").meta["epoch"] == 3
    (last,) = (tmp_path / "run" / "checkpoints" / "local").glob("epoch_00003_*")
    assert (tmp_path / "run" / "model.keras").read_bytes() == (last / "model.keras").read_bytes()
    assert "(epoch 3, the last:" in capsys.readouterr().out


def test_a_held_split_deals_the_same_batches_for_a_seed_whatever_order_ray_data_reads_it(cache_dir):
    """Ray Data hands a split's rows over in the order its read tasks finish (here, 3 reads in 4 came in
    another order than the first); the held shard sorts them by name, so a seed gives the same epoch."""
    from faceseg.train.run import train_split

    cache = Cache.open(cache_dir)

    def held_epoch(seed: int) -> list[bytes]:               # a fresh read of the split each time
        return _epoch_images(make_train_dataset(train_split(cache, {})[0], 4, Augmentation("flip", HELEN.flip_lut),
                                                seed=seed, hold=True))

    epochs = [held_epoch(seed=1) for _ in range(4)]
    assert all(epoch == epochs[0] for epoch in epochs[1:])
    other_seed = held_epoch(seed=2)
    assert other_seed != epochs[0] and sorted(other_seed) != sorted(epochs[0])   # another order, other flips


def _train_worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith("ray::RayTrainWorker"):
                pids.append(int(entry.name))
    return pids


def test_killed_worker_is_replaced_and_no_epoch_is_lost_or_repeated(cache_dir, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(cache_dir, epochs=3)))
    run = tmp_path / "run"
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        code=main(["train", "--config", str(config), "--output", str(run)])))
    thread.start()
    deadline = time.time() + 600
    while time.time() < deadline and not ((run / "metrics.jsonl").is_file() and history(run)):
        time.sleep(0.5)
    victims = _train_worker_pids()
    assert len(victims) == 2, "expected the run's two Ray Train workers"
    os.kill(victims[-1], signal.SIGKILL)
    thread.join(timeout=900)
    assert result.get("code") == 0
    assert [r["epoch"] for r in history(run)] == [1, 2, 3]
    assert set(_train_worker_pids()).isdisjoint(victims)


def _epoch_images(dataset) -> list[bytes]:
    return [image.tobytes() for images, _ in dataset.as_numpy_iterator() for image in images]


def test_split_held_in_memory_is_read_once_and_reshuffled(cache_dir, tmp_path):
    shutil.copytree(cache_dir, tmp_path / "cache")
    cache = Cache.open(tmp_path / "cache")
    held = make_train_dataset(cache.dataset("train"), 4, Augmentation("none", HELEN.flip_lut), seed=1, hold=True)
    streamed = make_train_dataset(cache.dataset("train"), 4, Augmentation("none", HELEN.flip_lut), seed=1)
    first, streamed_first = _epoch_images(held), _epoch_images(streamed)
    assert len(first) == len(streamed_first) == 216
    for parquet in (tmp_path / "cache").rglob("*.parquet"):   # later epochs must not read the files again
        parquet.unlink()
    second = _epoch_images(held)
    assert sorted(second) == sorted(first) and second != first          # every row again, in a new order
    with pytest.raises(Exception, match="parquet|No such file|FileNotFound"):
        _epoch_images(streamed)                                         # the streamed split reads them again


@pytest.mark.parametrize("hold", [True, False])
def test_flipped_batches_mirror_images_and_swap_sides(cache_dir, hold):
    """Every row of an epoch once, each either as stored or mirrored with its left/right classes swapped."""
    cache = Cache.open(cache_dir)
    stored = cache.arrays("train")
    by_image = {image.tobytes(): mask for image, mask in zip(stored["image"], stored["mask"])}
    by_mirror = {image[:, ::-1].tobytes(): HELEN.flip_lut[mask[:, ::-1]]
                 for image, mask in zip(stored["image"], stored["mask"])}
    dataset = make_train_dataset(cache.dataset("train"), 8, Augmentation("flip", HELEN.flip_lut), seed=3, hold=hold,
                                 size=64)
    mirrored = seen = 0
    for images, masks in dataset.as_numpy_iterator():
        for image, mask in zip(images, masks):
            key, seen = image.tobytes(), seen + 1
            if key in by_image:
                np.testing.assert_array_equal(mask, by_image[key])
            else:
                mirrored += 1
                np.testing.assert_array_equal(mask, by_mirror[key])
    assert seen == 216
    assert 0.3 < mirrored / seen < 0.7


def test_geometric_batches_are_warped_by_train_augment_scale(cache_dir):
    """The scale range reaches the warp: zooming out down to 0.6 uncovers more black border over an epoch
    than no scaling at all (the sizes themselves: tests/test_synth_augment.py)."""
    cache = Cache.open(cache_dir)

    def black_share(scale_range):
        augmentation = Augmentation("geometric", HELEN.flip_lut, scale_range=scale_range)
        dataset = make_train_dataset(cache.dataset("train"), 8, augmentation, seed=3, hold=True, size=64)
        images = np.concatenate([images for images, _ in dataset.as_numpy_iterator()])
        return float((images.max(axis=3) == 0).mean())

    fixed, wide = black_share(0.0), black_share(0.4)
    assert wide > fixed + 0.05, (fixed, wide)
