"""Every kind of bad input through prepare, train --data and predict: named, skipped, truthful exit status."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets import face, save_grey, save_rgb
from faceseg.cli import main

pytestmark = pytest.mark.usefixtures("ray_runtime")

GOOD = ["plain", "rgba", "sixteen bit", "naïve ünïcode", "with space"]
BAD = {  # file -> words its reason must contain
    "truncated_image.jpg": "truncated",
    "zero_image.jpg": "0 bytes",
    "text_image.jpg": "not a decodable image",
    "squashed_label.png": "aspect ratio",
    "id255_label.png": "255",
    "loop_image.jpg": "cannot read file",
}


def make_messy_helen(root: Path) -> None:
    """A helenstar train/ folder with the good files of GOOD and one of each bad kind of BAD."""
    folder = root / "train"
    for i, name in enumerate(GOOD * 2):
        name = f"{name} {i}"
        image, label = face(i)
        if name.startswith("rgba"):
            save_grey(folder / f"{name}_image.png", cv2.cvtColor(image, cv2.COLOR_RGB2BGRA))
        elif name.startswith("sixteen"):
            save_grey(folder / f"{name}_image.png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
        else:
            save_rgb(folder / f"{name}_image.jpg", image)
        save_grey(folder / f"{name}_label.png", label)
    image, label = face(99)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    (folder / "truncated_image.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "zero_image.jpg").write_bytes(b"")
    (folder / "text_image.jpg").write_text("hello, I am not a JPEG")
    save_rgb(folder / "squashed_image.jpg", image)
    save_grey(folder / "squashed_label.png", cv2.resize(label, (96, 30), interpolation=cv2.INTER_NEAREST))
    save_rgb(folder / "id255_image.jpg", image)
    save_grey(folder / "id255_label.png", np.where(label == 6, 255, label).astype(np.uint8))
    os.symlink("loop_image.jpg", folder / "loop_image.jpg")
    for stem in ("truncated", "zero", "text", "loop"):
        save_grey(folder / f"{stem}_label.png", label)


def assert_named(text: str) -> None:
    for file, reason in BAD.items():
        lines = [line for line in text.splitlines() if file in line]
        assert lines, f"{file} is not named"
        assert any(reason in line for line in lines), f"{file}: reason {reason!r} missing in {lines}"


def test_prepare_names_every_bad_file_and_keeps_every_good_one(tmp_path, capsys):
    make_messy_helen(tmp_path / "helen")
    assert main(["prepare", str(tmp_path / "helen"), "--out", str(tmp_path / "cache"), "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert_named(out)
    assert "skipped 6 bad file(s)" in out
    assert "prepared 10 images" in out                                    # all 10 good pairs
    assert main(["prepare", str(tmp_path / "helen"), "--out", str(tmp_path / "strict"), "--strict"]) == 2
    assert not (tmp_path / "strict").exists()


def test_train_on_raw_data_skips_bad_files_and_trains(tmp_path, capsys):
    make_messy_helen(tmp_path / "helen")
    code = main(["train", "--data", str(tmp_path / "helen"), "--size", "32", "--local", "--epochs", "1",
                 "--batch-size", "4", "--output", str(tmp_path / "run")])
    assert code == 0
    assert_named(capsys.readouterr().out)
    assert (tmp_path / "run" / "model.keras").is_file()


def test_predict_names_bad_images_writes_the_rest_and_exits_non_zero(trained_run, tmp_path, capsys):
    make_messy_helen(tmp_path / "helen")
    out = tmp_path / "pred"
    code = main(["predict", "--model", str(trained_run), "--input", str(tmp_path / "helen" / "train"),
                 "--output", str(out)])
    assert code == 1
    text = capsys.readouterr().out
    for file in ("truncated_image.jpg", "zero_image.jpg", "text_image.jpg", "loop_image.jpg",
                 "id255_label.png", "squashed_label.png"):
        assert file in text, file
    written = sorted(p.name for p in out.glob("*.png"))
    assert len(written) == 10 and all(n.endswith("_label.png") for n in written)
    assert f"{GOOD[3]} 3_label.png" in written
