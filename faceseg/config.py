"""Typed configuration: the one place where defaults live, and where every value is checked.

A YAML file, a dict or `--set section.key=value` go through `Config.from_dict`, which coerces what YAML
is known to surprise with (`1e-3` and `"2"` are strings to PyYAML) and refuses a wrong type, a value out
of range or not among the allowed ones, naming the key, the value and what is allowed. All of this
happens in the driver, before Ray starts.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

LAYOUTS = ("auto", "helenstar", "lapa", "celebamask-hq", "pairs")
CLASS_MODES = ("own", "helen")


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the key(s)."""


def option(default, *, choices: tuple | None = None, low: float | None = None, high: float | None = None,
           low_open: bool = False):
    """A config field with its allowed values: one of `choices`, or a number in [low, high] ((low, high]
    with low_open)."""
    return field(default=default, metadata={"choices": choices, "low": low, "high": high, "low_open": low_open})


@dataclass
class DataConfig:
    cache: str | None = None        # a cache made by `faceseg prepare` (a folder or a URI)
    data: str | None = None         # or a raw data set, prepared into RUN/cache first
    layout: str = option("auto", choices=LAYOUTS)
    classes: str = option("own", choices=CLASS_MODES)  # own: the data set's classes; helen: remap into Helen's 11
    size: int = option(128, low=16, high=2048)         # side of the square training grid, pixels
    in_memory: str = option("auto", choices=("auto", "yes", "no"))
    # auto | yes | no: train workers keep their share of the train split in memory after the first epoch
    # (auto: when it takes under half of Ray's free worker memory), else stream it from Parquet every epoch


@dataclass
class ModelConfig:
    depth: int = option(4, low=3, high=5)              # down-sampling levels
    base_filters: int = option(16, low=4, high=256)    # filters of the first level; doubled at each level down
    dropout: float = option(0.1, low=0.0, high=0.9)    # at the bottleneck
    batch_norm: bool = True
    # Weight of the old moving mean/variance per step. Keras' 0.99 averages over ~100 steps: on a small
    # data set (a few dozen steps an epoch) validation then sees stale statistics for several epochs.
    batch_norm_momentum: float = option(0.99, low=0.0, high=0.999)
    upsampling: str = option("transpose", choices=("transpose", "resize"))  # resize: bilinear + conv


@dataclass
class TrainConfig:
    epochs: int = option(10, low=1, high=100_000)
    batch_size: int = option(8, low=1, high=4096)      # per worker; the global batch is batch_size x workers
    learning_rate: float = option(2e-3, low=0.0, high=10.0, low_open=True)
    optimizer: str = option("adam", choices=("adam", "adamw"))
    weight_decay: float = option(1e-4, low=0.0, high=1.0)   # adamw only
    schedule: str = option("cosine", choices=("cosine", "step", "constant"))
    warmup_epochs: int = option(0, low=0, high=1000)  # linear learning-rate warm-up before the schedule
    loss: str = option("ce+dice", choices=("ce", "ce+dice"))
    class_weights: str = option("sqrt-inverse", choices=("none", "sqrt-inverse"))  # of the train pixel shares
    augment: str = option("flip", choices=("none", "flip", "geometric", "full"))
    augment_scale: float = option(0.2, low=0.0, high=0.9)   # geometric/full: photos scaled by 1 +- this
    augment_background: float = option(0.0, low=0.0, high=1.0)  # full: share of photos given a random wall
    augment_on: str = option("auto", choices=("auto", "cpu", "device"))  # auto: in the train step on GPUs
    seed: int = option(0, low=0, high=2**31 - 1)
    metric: str = "auto"            # picks the best epoch: auto = val_f1_overall (Helen classes), else val_f1_mean
    final_model: str = option("best", choices=("best", "last"))   # the epoch RUN/model.keras holds
    # Glob on train image names -> times each matching image is seen an epoch, e.g. {"frontal_*": 5}
    repeat: dict[str, int] = field(default_factory=dict)
    mixed_precision: bool = False   # float16 compute on GPUs (bfloat16 on CPUs); logits stay float32
    jit: bool = False               # XLA compilation


@dataclass
class ScalingConfig:
    num_workers: int = option(2, low=1, high=4096)
    use_gpu: bool = False
    gpus_per_worker: float = option(1.0, low=0.0, high=64.0, low_open=True)
    cpus_per_worker: float = option(1.0, low=0.0, high=1024.0, low_open=True)
    max_failures: int = option(3, low=-1, high=1000)   # worker deaths survived by restoring the last checkpoint
    worker_resources: dict = field(default_factory=dict)  # custom Ray resources a worker asks, e.g. {big_node: 1}


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "scaling": ScalingConfig}


def _coerce(key: str, value, kind, meta: dict):
    """`value` as `kind` (int, float, bool, str or str | None), checked against `meta`; raises ConfigError."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):   # `str | None`
        if value is None:
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
        if isinstance(value, bool):
            coerced = value
        elif isinstance(value, str) and value.strip().lower() in words:
            coerced = words[value.strip().lower()]
        else:
            raise ConfigError(f"{key}: {value!r} is not true or false")
    elif kind in (int, float):
        coerced = value
        if isinstance(value, str):
            try:
                coerced = float(value.strip())
            except ValueError:
                raise ConfigError(f"{key}: {value!r} is not a number") from None
        if isinstance(coerced, bool) or not isinstance(coerced, (int, float)):
            raise ConfigError(f"{key}: {value!r} is not a number")
        if not math.isfinite(coerced):
            raise ConfigError(f"{key}: {value!r} is not a finite number")
        if kind is int:
            if coerced != int(coerced):
                raise ConfigError(f"{key}: {value!r} is not a whole number")
            coerced = int(coerced)
        else:
            coerced = float(coerced)
    elif typing.get_origin(kind) is dict:          # train.repeat: glob -> whole number of times
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: {value!r} is not a mapping, e.g. {{'frontal_*': 5}}")
        coerced = {}
        for pattern, times in value.items():
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(f"{key}: {pattern!r} is not a file-name pattern, e.g. 'frontal_*'")
            coerced[pattern] = _coerce(f"{key}.{pattern}", times, int, {"low": 1, "high": 1000})
    elif kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: {value!r} is not a mapping, e.g. {{name: 1}}")
        coerced = {}
        for name, amount in value.items():
            if str(name) in ("CPU", "GPU", "memory"):
                raise ConfigError(f"{key}: {name} is set by cpus_per_worker / gpus_per_worker, not here")
            coerced[str(name)] = _coerce(f"{key}.{name}", amount, float, {"low": 0.0, "high": 1e9})
    elif kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} is not a string")
        coerced = str(value)
    else:
        raise TypeError(f"config field {key} has an unsupported type {kind}")
    choices, low, high = meta.get("choices"), meta.get("low"), meta.get("high")
    if choices and coerced not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
    if low is not None:
        too_low = coerced <= low if meta.get("low_open") else coerced < low
        if too_low or coerced > high:
            bound = f"> {low:g}" if meta.get("low_open") else f">= {low:g}"
            raise ConfigError(f"{key}: {value!r} is out of range (must be {bound} and <= {high:g})")
    return coerced


def _section(name: str, cls, values) -> object:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a mapping of options, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {name} option(s): {', '.join(map(str, unknown))}; known: {', '.join(fields)}")
    return cls(**{key: _coerce(f"{name}.{key}", value, hints[key], dict(fields[key].metadata))
                  for key, value in values.items()})


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    def __post_init__(self):
        if self.data.size % 2 ** self.model.depth:
            raise ConfigError(f"data.size: {self.data.size} is not divisible by 2**model.depth = "
                              f"{2 ** self.model.depth} (the U-Net halves it {self.model.depth} times)")
        if self.train.warmup_epochs and self.train.schedule != "cosine":
            raise ConfigError("train.warmup_epochs: warm-up is part of the cosine schedule; "
                              f"train.schedule is {self.train.schedule!r}")
        if self.train.metric != "auto" and not self.train.metric.startswith("val_"):
            raise ConfigError(f"train.metric: {self.train.metric!r} is not a validation metric "
                              "(auto, val_f1_mean, val_f1_overall, val_mean_iou, val_pixel_accuracy, val_f1_<class>)")

    @classmethod
    def from_dict(cls, raw: dict | None) -> "Config":
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError(f"expected a mapping with sections {', '.join(SECTIONS)}, got {raw!r}")
        unknown = sorted(set(raw) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(map(str, unknown))}; "
                              f"known: {', '.join(SECTIONS)}")
        return cls(**{name: _section(name, section, raw.get(name)) for name, section in SECTIONS.items()})

    @classmethod
    def from_yaml(cls, path: Path | str) -> "Config":
        return cls.from_yaml_text(Path(path).read_text(), str(path))

    @classmethod
    def from_yaml_text(cls, text: str, where: str) -> "Config":
        try:
            return cls.from_dict(yaml.safe_load(text))
        except yaml.YAMLError as error:
            raise ConfigError(f"{where}: not valid YAML ({error})") from None
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: dict) -> "Config":
        """Dotted keys, e.g. {"train.learning_rate": 1e-3, "model.depth": 3}; None values are ignored."""
        raw = self.to_dict()
        for key, value in overrides.items():
            if value is None:
                continue
            section, _, name = key.partition(".")
            if section not in raw or name not in raw[section]:
                raise ConfigError(f"unknown config key {key!r} (section.option, e.g. train.learning_rate)")
            raw[section][name] = value
        return Config.from_dict(raw)

    def differences(self, other: "Config") -> list[str]:
        """Dotted keys whose values differ between two configs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{section}.{key}" for section in mine for key in mine[section]
                if mine[section][key] != theirs[section][key]]


def check_value(key: str, value):
    """One option's value, coerced and checked as a config file's would be (e.g. `prepare --size`)."""
    section, _, name = key.partition(".")
    cls = SECTIONS[section]
    spec = {f.name: f for f in dataclasses.fields(cls)}[name]
    return _coerce(key, value, typing.get_type_hints(cls)[name], dict(spec.metadata))


def parse_assignment(text: str) -> tuple[str, object]:
    """`--set train.learning_rate=1e-3` -> ("train.learning_rate", "1e-3"); the value is read as YAML
    (true, 3, null, ...) and then checked like any config value."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"--set {text!r}: expected section.option=value, e.g. train.learning_rate=1e-3")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.strip(), value
