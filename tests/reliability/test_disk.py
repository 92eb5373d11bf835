"""A full or read-only output disk: a clear error and nothing half-written (real tmpfs mounts)."""
import pytest

from faceseg.cli import main

pytestmark = pytest.mark.usefixtures("ray_runtime")


def test_predict_into_a_full_disk_leaves_only_complete_pngs(trained_run, synth_dir, mount, capsys):
    out = mount("size=12k")          # three pages: the record and two PNGs
    code = main(["predict", "--model", str(trained_run), "--input", str(synth_dir / "test"), "--output", str(out)])
    assert code != 0
    captured = capsys.readouterr()
    assert "No space left on device" in captured.out + captured.err
    assert not list(out.glob(".*.partial"))
    for png in out.glob("*.png"):                   # whatever was written is whole
        import cv2

        assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED) is not None


def test_read_only_outputs_are_clear_errors(trained_run, synth_dir, cache_dir, mount, capsys):
    read_only = mount("ro,size=1m")
    assert main(["predict", "--model", str(trained_run), "--input", str(synth_dir / "test"),
                 "--output", str(read_only / "pred")]) == 2
    assert main(["train", "--cache", str(cache_dir), "--local", "--epochs", "1",
                 "--output", str(read_only / "run")]) == 2
    assert main(["prepare", str(synth_dir), "--out", str(read_only / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.count("Read-only file system") == 3
    assert list(read_only.iterdir()) == []
