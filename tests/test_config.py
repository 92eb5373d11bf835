"""The typed config (faceseg/config.py): coercion and refusals, the one place options are declared (the CLI's
choices, the sweep schema and docs/runs.md's table come from it), and every shipped config file."""
import re
from pathlib import Path

import pytest

from faceseg.config import Config, ConfigError, choices, options_table, parse_assignment

ROOT = Path(__file__).resolve().parents[1]


def test_config_yaml_round_trip_and_unknown_keys(tmp_path):
    config = Config().with_overrides({"train.learning_rate": 0.01, "model.depth": 3, "train.epochs": None})
    (tmp_path / "c.yaml").write_text(config.to_yaml())
    again = Config.from_yaml(tmp_path / "c.yaml")
    assert again == config and again.train.epochs == Config().train.epochs
    (tmp_path / "bad.yaml").write_text("train:\n  learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rat"):
        Config.from_yaml(tmp_path / "bad.yaml")


def test_config_values_are_coerced_where_yaml_surprises_and_checked(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  learning_rate: 1e-3\n  epochs: '2'\n  jit: 'yes'\n")
    config = Config.from_yaml(tmp_path / "c.yaml")
    assert config.train.learning_rate == 0.001 and config.train.epochs == 2 and config.train.jit is True
    for raw, message in [({"train": {"epochs": 0}}, r"train.epochs: 0 is out of range \(must be >= 1"),
                         ({"train": {"schedule": "cosin"}}, "train.schedule: 'cosin' is not one of cosine, step, constant"),
                         ({"train": {"epochs": 2.5}}, "not a whole number"),
                         ({"train": {"learning_rate": "fast"}}, "not a number"),
                         ({"train": {"learning_rate": 0}}, r"must be > 0"),
                         ({"data": {"size": 100}}, "not divisible by 2\\*\\*model.depth"),
                         ({"scaling": {"num_workers": True}}, "not a number"),
                         ({"train": {"warmup_epochs": 2, "schedule": "step"}}, "warm-up"),
                         ({"model": [1]}, "expected a mapping"),
                         ({"train": {"repeat": ["frontal_*"]}}, "train.repeat: .* is not a mapping"),
                         ({"train": {"repeat": {"frontal_*": 0}}}, r"train.repeat.frontal_\*: 0 is out of range"),
                         ({"train": {"repeat": {"": 2}}}, "is not a file-name pattern"),
                         ({"train": {"final_model": "first"}}, "not one of best, last")]:
        with pytest.raises(ConfigError, match=message):
            Config.from_dict(raw)
    assert Config.from_dict({"train": {"repeat": {"frontal_*": "5"}}}).train.repeat == {"frontal_*": 5}
    assert parse_assignment("train.learning_rate=1e-3") == ("train.learning_rate", "1e-3")
    with pytest.raises(ConfigError, match="section.option=value"):
        parse_assignment("learning_rate")


def test_the_cli_takes_its_choices_from_the_config():
    from faceseg.cli import build_parser

    actions = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["prepare"]._actions}
    assert tuple(actions["layout"].choices) == choices("data.layout") and "pairs" in choices("data.layout")
    assert tuple(actions["classes"].choices) == choices("data.classes")


def test_docs_runs_md_holds_the_options_table_as_the_config_declares_it():
    text = (ROOT / "docs" / "runs.md").read_text()
    assert options_table() in text
    for section, model in (("data", "DataConfig"), ("train", "TrainConfig")):
        assert f"| `{section}." in options_table()
    keys = [line.split("`")[1] for line in options_table().splitlines()[2:]]
    assert keys == list(Config().flat())               # every option once, in declaration order


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = Config.from_yaml(path)
    assert config.to_dict() == Config.from_yaml_text(config.to_yaml(), "again").to_dict()
    comments = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert comments and len(comments) <= 6                      # a short header: what it is and how to run it
    assert not any(re.search(r"\b(round|trial)s?\b", line) for line in comments)


@pytest.mark.parametrize("path", sorted((ROOT / "tune_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_loads(path):
    from faceseg.tune.sweep import load_sweep

    sweep = load_sweep(str(path))
    assert sweep.space and sweep.config is not None
