"""A real Ray Tune sweep: trials are Ray Train runs sharing one cache; its outputs re-train."""
import pandas as pd
import yaml

from faceseg.cli import main
from faceseg.config import Config
from faceseg.model.saved import inspect_model


def test_tiny_sweep_writes_results_and_a_best_config_that_retrains(cache_dir, tmp_path, capsys):
    sweep = {
        "data": {"cache": str(cache_dir)},
        "base": {"model": {"depth": 3, "base_filters": 8, "dropout": 0.0},
                 "train": {"epochs": 2, "batch_size": 8},
                 "scaling": {"num_workers": 1}},
        "space": {"train.augment": {"grid": ["none", "flip"]},
                  "train.learning_rate": {"loguniform": [1e-3, 5e-3]}},
        "objective": {"metric": "val_f1_overall", "mode": "max"},
        "scheduler": {"type": "fifo"},
        "num_samples": 1,
        "max_concurrent_trials": 2,
    }
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "sweep"
    assert main(["tune", "--config", str(config), "--output", str(out)]) == 0

    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 and set(results["train.augment"]) == {"none", "flip"}
    assert (results["status"] == "ok").all() and (results["epochs"] == 2).all()
    assert results["train.learning_rate"].between(1e-3, 5e-3).all()
    # best_model.keras is the best epoch of any trial (train.final_model: best)
    picked = inspect_model(out / "best_model.keras").meta["metrics"]["val_f1_overall"]
    assert picked == results["best_val_f1_overall"].max()
    best = Config.from_yaml(out / "best_config.yaml")
    assert best.train.augment in {"none", "flip"} and best.data.cache == str(cache_dir)
    assert "best config" in capsys.readouterr().out

    assert main(["train", "--config", str(out / "best_config.yaml"), "--epochs", "1",
                 "--output", str(tmp_path / "retrain")]) == 0
    assert (tmp_path / "retrain" / "model.keras").is_file()


def test_bad_sweep_files_are_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"cache": "x"}, "space": {"train.learning_rat": {"choice": [1]}}}))
    assert main(["tune", "--config", str(bad)]) == 2
    assert "learning_rat" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({"data": {"cache": "x"}, "space": {"train.epochs": [1, 2]}}))
    assert main(["tune", "--config", str(bad)]) == 2
