"""Layouts are discovered, decoded and cached for real (Ray Data on the session's runtime)."""
import json

import cv2
import numpy as np
import pyarrow.dataset as pa_dataset
import pyarrow.parquet as pq
import pytest

from datasets import face, save_grey, save_rgb, write_celebamask, write_lapa, write_pairs
from conftest import TEST_SIZE
from faceseg.cli import main
from faceseg.data.cache import Cache, CacheError
from faceseg.data.layouts import DatasetError, detect_layout, discover, discover_pairs, hold_out_validation
from faceseg.data.prepare import TALLY_DIR, PrepareError, Tally, prepare_cache
from faceseg.labels import CELEBAMASK_NAMES
from faceseg.storage import Location

pytestmark = pytest.mark.usefixtures("ray_runtime")

SIZE = 32


def cached_rows(cache, split):
    """All rows of a cache split, read back with plain pyarrow (not through faceseg)."""
    table = pq.read_table(cache / f"split={split}")
    masks = np.stack([np.frombuffer(m, np.uint8).reshape(SIZE, SIZE) for m in table.column("mask").to_pylist()])
    return table.column("name").to_pylist(), masks, table


def test_helenstar_prepare_splits_and_manifest(synth_dir, cache_dir):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["layout"] == "helenstar" and manifest["size"] == TEST_SIZE
    assert manifest["counts"] == {"train": 108, "val": 12, "test": 8}      # 10% of train held out
    assert abs(sum(manifest["class_pixel_frequency"]) - 1) < 1e-3 and manifest["classes"] == "own"
    assert manifest["flip_pairs"] == [["lb", "rb"], ["le", "re"]]
    assert manifest["label_names"][4] == "le" and manifest["faceseg_version"]
    # Plain pyarrow: every split in one table, the split column from the Hive folder names.
    table = pa_dataset.dataset(cache_dir, format="parquet", partitioning="hive", exclude_invalid_files=True).to_table()
    assert set(table.column_names) >= {"image", "mask", "name", "height", "width", "split"}
    assert sorted(table.column("split").to_pylist()).count("val") == 12 and table.num_rows == 128
    assert table.column("height").to_pylist()[0] == 64
    assert table.schema.field("image").type.byte_width == TEST_SIZE * TEST_SIZE * 3   # the uint8 tensor's bytes
    assert not (cache_dir / TALLY_DIR).exists()    # the decode tasks' tallies are summed, then removed
    cache = Cache.open(cache_dir)
    ds = cache.dataset("val")
    batch = next(iter(ds.iter_batches(batch_size=4, batch_format="numpy")))
    assert batch["image"].shape == (4, TEST_SIZE, TEST_SIZE, 3) and batch["mask"].dtype == np.uint8
    arrays = cache.arrays("val")
    first = table.filter(pa_dataset.field("split") == "val").column("image")[0].as_py()
    assert arrays["image"].shape == (12, TEST_SIZE, TEST_SIZE, 3)
    assert any((image == np.frombuffer(first, np.uint8).reshape(TEST_SIZE, TEST_SIZE, 3)).all() for image in arrays["image"])


def test_train_split_held_in_memory_when_it_fits(cache_dir):
    cache = Cache.open(cache_dir)
    assert cache.held_in_memory("train", "auto")                   # 108 rows of 32 px
    assert cache.held_in_memory("train", "yes") and not cache.held_in_memory("train", "no")
    huge = Cache(cache.location, {**cache.manifest, "counts": {"train": 10**7}})   # 41 GB at 32 px
    assert not huge.held_in_memory("train", "auto") and huge.held_in_memory("train", "yes")


def test_cache_of_another_format_is_a_clear_error(tmp_path, cache_dir):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    del manifest["format"]                              # what faceseg 0.1 caches (tensor columns) look like
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="written by another faceseg.*Rebuild it with `faceseg prepare`"):
        Cache.open(tmp_path)


def test_tally_of_a_retried_batch_counts_once(tmp_path):
    tmp_path = Location.of(tmp_path)
    first = Tally({"train": 2}, {"train": np.arange(11)}, [("/d/a_image.jpg", "empty file (0 bytes)")])
    first.write(tmp_path, ["/d/b_image.jpg", "/d/c_image.jpg"])
    first.write(tmp_path, ["/d/b_image.jpg", "/d/c_image.jpg"])     # the same batch, its task retried
    Tally({"train": 1, "val": 1}, {"train": np.ones(11, np.int64), "val": np.ones(11, np.int64)}, []).write(
        tmp_path, ["/d/e_image.jpg", "/d/f_image.jpg"])
    total = Tally.read(tmp_path)
    assert total.rows == {"train": 3, "val": 1}
    assert total.pixels["train"].tolist() == list(range(1, 12)) and total.pixels["val"].sum() == 11
    assert total.problems == [("/d/a_image.jpg", "empty file (0 bytes)")]


def test_hold_out_is_deterministic(synth_dir):
    samples = discover(synth_dir).samples
    a = {s.name for s in hold_out_validation(samples) if s.split == "val"}
    b = {s.name for s in hold_out_validation(list(reversed(samples))) if s.split == "val"}
    assert a == b and len(a) == 12


def test_lapa_grey_rgba_and_smaller_labels(tmp_path):
    labels = write_lapa(tmp_path / "lapa")
    assert detect_layout(tmp_path / "lapa") == "lapa"
    summary = prepare_cache(discover(tmp_path / "lapa"), tmp_path / "cache", size=SIZE)
    assert summary.counts == {"train": 3, "val": 3, "test": 3} and not summary.skipped
    names, masks, table = cached_rows(tmp_path / "cache", "train")
    for name, mask in zip(names, masks):
        expected = cv2.resize(labels[name], (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        assert (mask == expected).all()
    assert sorted(table.column("width").to_pylist()) == [96, 96, 96]


@pytest.mark.parametrize("raw", [False, True], ids=["merged", "raw-parts"])
def test_celebamask_keeps_its_19_classes(tmp_path, raw):
    write_celebamask(tmp_path / "celeba", raw=raw)
    summary = prepare_cache(discover(tmp_path / "celeba"), tmp_path / "cache", size=SIZE)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert tuple(manifest["label_names"]) == CELEBAMASK_NAMES and summary.counts == {"train": 3, "val": 1}
    assert ["l_ear", "r_ear"] in manifest["flip_pairs"]
    necks = sum(int((cached_rows(tmp_path / "cache", split)[1] == CELEBAMASK_NAMES.index("neck")).sum())
                for split in summary.counts)
    assert necks > 0                                   # the neck is a class of its own, not background


@pytest.mark.parametrize("raw", [False, True], ids=["merged", "raw-parts"])
def test_celebamask_remapped_to_helen(tmp_path, raw):
    labels = write_celebamask(tmp_path / "celeba", raw=raw)
    source = discover(tmp_path / "celeba")
    assert source.layout == "celebamask-hq" and "neck" in source.taxonomy.names
    summary = prepare_cache(source, tmp_path / "cache", size=SIZE, classes="helen")
    assert summary.counts == {"train": 3, "val": 1} and len(summary.classes) == 11
    rows = {}
    for split in summary.counts:
        names, masks, _ = cached_rows(tmp_path / "cache", split)
        rows.update(zip(names, masks))
    for name, mask in rows.items():
        expected = cv2.resize(labels[name], (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        expected[SIZE * 60 // 64:, : SIZE * 8 // 64] = 0   # the neck patch became background
        assert (mask == expected).mean() > 0.97


def test_pairs_with_label_names_file(tmp_path):
    write_pairs(tmp_path / "img", tmp_path / "msk")
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(["background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose",
                                     "u_lip", "mouth", "l_lip", "hair"]))
    code = main(["prepare", "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "msk"),
                 "--label-names", str(names_file), "--out", str(tmp_path / "cache"), "--size", str(SIZE)])
    assert code == 0
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["counts"] == {"train": 4, "val": 1}


def test_unknown_layout_and_empty_folder_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot tell the layout"):
        discover(tmp_path / "empty")
    assert main(["prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()


def _helen_with_bad_files(root):
    for i in range(6):
        image, label = face(i)
        save_rgb(root / "train" / f"ok{i}_image.jpg", image)
        save_grey(root / "train" / f"ok{i}_label.png", label)
    image, label = face(42)
    (root / "train" / "empty_image.jpg").write_bytes(b"")
    save_grey(root / "train" / "empty_label.png", label)
    (root / "train" / "text_image.jpg").write_text("this is not a JPEG")
    save_grey(root / "train" / "text_label.png", label)
    save_rgb(root / "train" / "nolabel_image.jpg", image)
    save_rgb(root / "train" / "badid_image.jpg", image)
    save_grey(root / "train" / "badid_label.png", np.where(label == 1, 255, label).astype(np.uint8))
    save_rgb(root / "train" / "squashed_image.jpg", image)
    save_grey(root / "train" / "squashed_label.png", cv2.resize(label, (96, 40)))
    data = (root / "train" / "ok0_image.jpg").read_bytes()
    (root / "train" / "cut_image.jpg").write_bytes(data[: len(data) // 2])
    save_grey(root / "train" / "cut_label.png", label)


def test_bad_files_are_named_skipped_and_counted(tmp_path, capsys):
    _helen_with_bad_files(tmp_path / "helen")
    summary = prepare_cache(discover(tmp_path / "helen"), tmp_path / "cache", size=SIZE)
    out = capsys.readouterr().out
    assert sum(summary.counts.values()) == 6
    reasons = {p.split("/")[-1]: r for p, r in summary.skipped}
    assert set(reasons) == {"empty_image.jpg", "text_image.jpg", "nolabel_image.jpg", "badid_label.png",
                            "squashed_label.png", "cut_image.jpg"}
    assert "0 bytes" in reasons["empty_image.jpg"] and "missing label" in reasons["nolabel_image.jpg"]
    assert "255" in reasons["badid_label.png"] and "aspect" in reasons["squashed_label.png"]
    assert "truncated" in reasons["cut_image.jpg"]
    for name in reasons:
        assert name in out
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert len(manifest["skipped"]) == 6


def test_strict_makes_bad_files_fatal_and_writes_nothing(tmp_path):
    _helen_with_bad_files(tmp_path / "helen")
    with pytest.raises(PrepareError, match="--strict"):
        prepare_cache(discover(tmp_path / "helen"), tmp_path / "cache", size=SIZE, strict=True)
    assert not (tmp_path / "cache").exists()
    assert not list(tmp_path.glob(".cache.tmp-*"))


def test_all_bad_is_an_error_not_an_empty_cache(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a_image.jpg").write_bytes(b"")
    save_grey(tmp_path / "d" / "a_label.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "d" / "b_image.jpg").write_bytes(b"")
    save_grey(tmp_path / "d" / "b_label.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(PrepareError, match="nothing to cache"):
        prepare_cache(discover(tmp_path / "d"), tmp_path / "cache", size=SIZE)
    assert not (tmp_path / "cache").exists()


def test_pairs_requires_a_folder(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        discover_pairs(tmp_path / "missing", tmp_path)


def test_data_val_fraction_chooses_how_much_of_train_validates(synth_dir, tmp_path):
    from faceseg.config import Config

    assert hold_out_validation(discover(synth_dir).samples, 0.25)
    config = Config.from_dict({"data": {"val_fraction": "0.25"}})
    prepare_cache(discover(synth_dir), tmp_path / "c", size=TEST_SIZE, val_fraction=config.data.val_fraction)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 90, "val": 30, "test": 8} and manifest["val_fraction"] == 0.25
