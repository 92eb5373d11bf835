"""`faceseg demo` end to end (tiny, in the slow tier: its own Ray runtime and every stage), and every shipped
config file run for an epoch at tiny size."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from faceseg.cli import main
from support import run_faceseg

pytestmark = pytest.mark.usefixtures("ray_runtime")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_demo_runs_the_whole_pipeline_and_reports_f1(tmp_path):
    done = run_faceseg("demo", "--workdir", tmp_path / "demo", "--train-images", "24", "--test-images", "4",
                       "--epochs", "1", timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    for stage in ("synth", "prepare", "train", "predict"):
        assert f"--- {stage} done in" in done.stdout
    report = json.loads((tmp_path / "demo" / "predictions" / "report.json").read_text())
    assert report["images"] == 4 and "overall" in report["f1"] and f"overall {100 * report['f1']['overall']:.1f}" in done.stdout
    assert len(list((tmp_path / "demo" / "predictions" / "overlays").glob("*.png"))) == 4
    assert "wall time" in done.stdout and str(tmp_path / "demo" / "run") in done.stdout


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_trains_an_epoch(path, cache_dir, tmp_path):
    assert main(["train", "--config", str(path), "--cache", str(cache_dir), "--epochs", "1", "--local",
                 "--output", str(tmp_path / "run")]) == 0
    trained = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    written = yaml.safe_load(path.read_text())
    for section, values in written.items():
        for key, value in values.items():
            if (section, key) not in (("train", "epochs"), ("data", "size")):
                assert trained[section][key] == value, (section, key)
