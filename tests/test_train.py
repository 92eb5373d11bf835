"""Training for real: 2-worker MultiWorkerMirroredStrategy on Ray Train, local mode, resume, repeats, held and
streamed splits, and starting from another model (--init). Killed workers: reliability/test_faults.py."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import TEST_SIZE, tiny_config
from faceseg.cli import main
from faceseg.data.augment import Augmentation
from faceseg.data.cache import Cache
from faceseg.labels import HELEN
from faceseg.model.saved import inspect_model, load_model
from faceseg.train.input import make_train_dataset

pytestmark = pytest.mark.usefixtures("ray_runtime")

RUN_FILES = ("config.yaml", "metrics.jsonl", "model.keras", "checkpoints", "tensorboard")
METRIC_KEYS = {"epoch", "loss", "val_loss", "val_pixel_accuracy", "val_mean_iou", "val_f1_overall"}


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_workers_learn(trained_run):
    for name in RUN_FILES:
        assert (trained_run / name).exists(), name
    rows = history(trained_run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert METRIC_KEYS <= set(rows[0])
    assert rows[-1]["loss"] < rows[0]["loss"]                                  # the loss falls
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]                          # on held-out faces too
    # and the held-out label maps improve. Not F1 "overall": its classes are the small ones (eyes, brows,
    # nose, mouth), which a model this tiny may not find within 4 epochs (a clean-clone run stayed at 0).
    assert rows[-1]["val_mean_iou"] > rows[0]["val_mean_iou"]
    assert rows[-1]["val_pixel_accuracy"] > rows[0]["val_pixel_accuracy"]
    # equal shards of 108 / 2 = 54 rows; a worker reads 4 x 2 rows a batch, 6 batches, 2 steps each
    assert rows[0]["steps"] == 12
    # model.keras is the best epoch by val_f1_overall, loadable in safe mode
    best = max(rows, key=lambda r: r["val_f1_overall"])
    assert inspect_model(trained_run / "model.keras").meta["epoch"] == best["epoch"]
    assert inspect_model(trained_run).size == TEST_SIZE and inspect_model(trained_run).taxonomy == HELEN
    assert load_model(trained_run).output_shape == (None, TEST_SIZE, TEST_SIZE, 11)
    saved = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert saved["scaling"]["num_workers"] == 2 and saved["data"]["size"] == TEST_SIZE


def test_resume_continues_without_repeating_epochs(trained_run, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(trained_run, run)
    assert main(["train", "--resume", str(run), "--epochs", "5"]) == 0
    rows = history(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[:4] == history(trained_run)               # the first four epochs were restored, not re-run


def test_local_mode_same_outputs(cache_dir, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(cache_dir, epochs=2)))
    assert main(["train", "--config", str(config), "--local", "--output", str(tmp_path / "run")]) == 0
    for name in RUN_FILES:
        assert (tmp_path / "run" / name).exists(), name
    rows = history(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["steps"] == 27   # 108 // 4 steps, one process
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
    epoch = _epoch_images(make_train_dataset(data, 1, Augmentation("none", HELEN.flip_lut), seed=1, hold=True,
                                             size=TEST_SIZE))
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
                                                seed=seed, hold=True, size=TEST_SIZE))

    epochs = [held_epoch(seed=1) for _ in range(4)]
    assert all(epoch == epochs[0] for epoch in epochs[1:])
    other_seed = held_epoch(seed=2)
    assert other_seed != epochs[0] and sorted(other_seed) != sorted(epochs[0])   # another order, other flips


def test_the_train_splits_files_come_in_a_new_order_every_epoch_the_same_for_a_seed(cache_dir):
    """A streamed epoch shuffles within a window of the rows as they arrive, so which rows can meet depends
    on the files' order: new every epoch, the same orders for the same seed (rows kept in read order here,
    so that only the shuffle moves them)."""
    from faceseg.train.run import train_split

    cache = Cache.open(cache_dir)

    def file_orders(seed: int) -> list[list[str]]:
        dataset = train_split(cache, {}, seed)[0]
        dataset.context.execution_options.preserve_order = True
        return [[str(block.column("name")[0]) for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow")]
                for _ in range(3)]

    orders = file_orders(seed=1)
    assert len(orders[0]) > 3 and all(sorted(order) == sorted(orders[0]) for order in orders)
    assert orders[0] != orders[1] != orders[2]
    assert file_orders(seed=1) == orders and file_orders(seed=2) != orders


def _epoch_images(dataset) -> list[bytes]:
    return [image.tobytes() for images, _ in dataset.as_numpy_iterator() for image in images]


def test_split_held_in_memory_is_read_once_and_reshuffled(cache_dir, tmp_path):
    shutil.copytree(cache_dir, tmp_path / "cache")
    cache = Cache.open(tmp_path / "cache")
    stored = cache.dataset("train", decoded=False)
    held = make_train_dataset(stored, 4, Augmentation("none", HELEN.flip_lut), seed=1, hold=True, size=TEST_SIZE)
    streamed = make_train_dataset(stored, 4, Augmentation("none", HELEN.flip_lut), seed=1, hold=False, size=TEST_SIZE)
    first, streamed_first = _epoch_images(held), _epoch_images(streamed)
    assert len(first) == len(streamed_first) == 108
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
    dataset = make_train_dataset(cache.dataset("train", decoded=False), 8, Augmentation("flip", HELEN.flip_lut),
                                 seed=3, hold=hold, size=TEST_SIZE)
    mirrored = seen = 0
    for images, masks in dataset.as_numpy_iterator():
        for image, mask in zip(images, masks):
            key, seen = image.tobytes(), seen + 1
            if key in by_image:
                np.testing.assert_array_equal(mask, by_image[key])
            else:
                mirrored += 1
                np.testing.assert_array_equal(mask, by_mirror[key])
    assert seen == 108 // 8 * 8                   # whole batches of 8
    assert 0.3 < mirrored / seen < 0.7


def test_geometric_batches_are_warped_by_train_augment_scale(cache_dir):
    """The scale range reaches the warp: zooming out down to 0.6 uncovers more black border over an epoch
    than no scaling at all (the sizes themselves: tests/test_synth_augment.py)."""
    cache = Cache.open(cache_dir)

    def black_share(scale_range):
        augmentation = Augmentation("geometric", HELEN.flip_lut, scale_range=scale_range)
        dataset = make_train_dataset(cache.dataset("train", decoded=False), 8, augmentation, seed=3, hold=True,
                                     size=TEST_SIZE)
        images = np.concatenate([images for images, _ in dataset.as_numpy_iterator()])
        return float((images.max(axis=3) == 0).mean())

    fixed, wide = black_share(0.0), black_share(0.4)
    assert wide > fixed + 0.05, (fixed, wide)


# --- train --init: starting from another model -------------------------------------------------------------------

SAMPLE = Path(__file__).parent / "data" / "fasseg-sample"     # 12 real photos, 6 classes


@pytest.fixture(scope="module")
def six_class_cache(ray_runtime, tmp_path_factory):
    folder = tmp_path_factory.mktemp("six")
    assert main(["prepare", str(SAMPLE), "--out", str(folder / "cache"), "--size", str(TEST_SIZE)]) == 0
    return folder / "cache"


def test_init_keeps_every_tensor_of_the_same_classes_and_all_but_the_last_layer_of_others(trained_run):
    from faceseg.config import ModelConfig
    from faceseg.labels import Taxonomy
    from faceseg.model.unet import build_unet
    from faceseg.train.loop import start_from

    source = load_model(trained_run)
    architecture = ModelConfig(depth=3, base_filters=8)
    same = build_unet(architecture, 64, 11)              # another grid: a U-Net's weights do not depend on it
    start_from(same, str(trained_run), HELEN)
    for layer in (layer for layer in same.layers if layer.weights):
        for mine, theirs in zip(layer.get_weights(), source.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    other = build_unet(architecture, TEST_SIZE, 6)
    fresh = [w.copy() for w in other.get_layer("classifier").get_weights()]
    start_from(other, str(trained_run), Taxonomy(("background", "skin", "hair", "eyes", "nose", "mouth")))
    kept = [layer for layer in other.layers if layer.weights and layer.name != "classifier"]
    assert len(kept) > 10
    for layer in kept:
        for mine, theirs in zip(layer.get_weights(), source.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    for mine, before in zip(other.get_layer("classifier").get_weights(), fresh):
        np.testing.assert_array_equal(mine, before)                   # a new last layer, as built
    assert other.get_layer("classifier").get_weights()[0].shape[-1] == 6


def test_train_init_says_what_it_keeps_and_takes_the_models_architecture(trained_run, cache_dir, six_class_cache,
                                                                         tmp_path, capsys):
    flags = ["--local", "--epochs", "1", "--set", "model.dropout=0.0"]
    assert main(["train", "--cache", str(six_class_cache), "--init", str(trained_run), *flags,
                 "--output", str(tmp_path / "six")]) == 0
    out = capsys.readouterr().out
    assert "a new last layer for the data's 6 classes" in out and "instead of the model's 11" in out
    trained = yaml.safe_load((tmp_path / "six" / "config.yaml").read_text())["model"]
    assert (trained["depth"], trained["base_filters"]) == (3, 8)       # the defaults are 4 and 16
    assert main(["train", "--cache", str(cache_dir), "--init", str(trained_run / "model.keras"), *flags,
                 "--output", str(tmp_path / "same")]) == 0
    assert "every layer (the same 11 classes)" in capsys.readouterr().out
    assert main(["train", "--cache", str(cache_dir), "--init", str(trained_run), *flags, "--set", "model.depth=5",
                 "--output", str(tmp_path / "deeper")]) == 2
    assert "model.depth=3 (asked 5)" in capsys.readouterr().err and not (tmp_path / "deeper").exists()
    assert main(["train", "--resume", str(tmp_path / "same"), "--init", str(trained_run)]) == 2
    assert main(["train", "--cache", str(cache_dir), "--init", "no-such-model", *flags,
                 "--output", str(tmp_path / "none")]) == 2
    assert "no-such-model: no model here" in capsys.readouterr().err
