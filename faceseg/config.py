"""Typed configuration, declared once: every option's default, allowed values and meaning live here.

The four sections are pydantic models. A YAML file, a dict or `--set section.option=value` go through
`Config.from_dict`, which coerces what YAML is known to surprise with (`1e-3` and `"2"` are strings to
PyYAML) and refuses an unknown key, a wrong type, a value out of range or not among the allowed ones,
naming the key, the value and what is allowed. The command line's choices, the sweep file's search keys
and the table in docs/runs.md (`options_table`) are read from these models. All of it happens in the
driver, before Ray starts.
"""
from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from faceseg.errors import FacesegError, shown

MAX_YAML_BYTES = 1 << 20     # a config or sweep file; anything larger is not one


class ConfigError(FacesegError):
    """A config value that cannot be used; the message names the key(s)."""


def _number(value):
    """YAML's numbers as numbers: '1e-3' and '2' are strings to PyYAML; true is not a number."""
    if isinstance(value, bool):
        raise ValueError("is not a number")
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                raise ValueError("is not a number") from None
    return value


Number = BeforeValidator(_number)
Count = Annotated[int, Number]
Real = Annotated[float, Number]


def option(default, description: str, allowed: str | None = None, **limits):
    """A field with its meaning (docs/runs.md) and, where the bounds do not say it, the allowed values."""
    return Field(default, description=description, json_schema_extra={"allowed": allowed} if allowed else None,
                 **limits)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, coerce_numbers_to_str=True)


class DataConfig(Section):
    cache: str | None = option(None, "a cache from `faceseg prepare`", "folder or URI")
    data: str | None = option(None, "or a raw data set, prepared into `RUN/cache` first", "folder or URI")
    layout: Literal["auto", "helenstar", "lapa", "celebamask-hq", "pairs"] = option("auto", "for `data.data`")
    classes: Literal["own", "helen"] = option(
        "own", "for `data.data`: keep the data set's classes, or map them onto Helen's 11")
    size: Count = option(128, "training grid side (a cache has its own)", "16..2048, divisible by 2^depth",
                         ge=16, le=2048)
    val_fraction: Real = option(0.1, "for `data.data` without a val split: the share of the train split held out "
                                     "to validate, chosen by a hash of each image's name", ge=0.0, le=0.5)
    in_memory: Literal["auto", "yes", "no"] = option(
        "auto", "workers read their share of the train split once, before the first epoch, and keep it in "
        "memory, twice over when the flip runs on the CPU (as stored and mirrored; auto: when that takes under "
        "half of Ray's free memory); else it streams from Parquet every epoch")


class ModelConfig(Section):
    depth: Count = option(4, "U-Net levels", ge=3, le=5)
    base_filters: Count = option(16, "filters of the first level, doubled at each level down", ge=4, le=256)
    dropout: Real = option(0.1, "at the bottleneck", ge=0.0, le=0.9)
    batch_norm: bool = option(True, "batch normalisation after each convolution")
    batch_norm_momentum: Real = option(
        0.99, "weight of the old moving statistics per step; 0.9 suits small data sets (few steps an epoch)",
        ge=0.0, le=0.999)
    upsampling: Literal["transpose", "resize"] = option(
        "transpose", "the decoder's upsampling: transposed convolutions, or bilinear resize + convolution")


class TrainConfig(Section):
    epochs: Count = option(10, "passes over the train split", ge=1, le=100_000)
    batch_size: Count = option(8, "per worker (per replica with `--local` on several devices)", ge=1, le=4096)
    learning_rate: Real = option(2e-3, "peak rate", gt=0.0, le=10.0)
    optimizer: Literal["adam", "adamw"] = option("adam", "")
    weight_decay: Real = option(1e-4, "adamw only", ge=0.0, le=1.0)
    schedule: Literal["cosine", "step", "constant"] = option("cosine", "the learning rate over the run")
    warmup_epochs: Count = option(0, "linear warm-up before the cosine decay", ge=0, le=1000)
    loss: Literal["ce", "ce+dice"] = option("ce+dice", "pixel cross-entropy, plus soft Dice")
    class_weights: Literal["none", "sqrt-inverse"] = option("sqrt-inverse", "CE weights from the train pixel shares")
    augment: Literal["none", "flip", "geometric", "full"] = option("flip", "see below")
    augment_scale: Real = option(0.2, "`geometric`/`full` scale photos by 1 ± this; wider copes with faces "
                                      "framed smaller or larger than the training photos'", ge=0.0, le=0.9)
    augment_background: Real = option(
        0.0, "`full`: the share of photos whose background (the class named background, else class 0) becomes "
        "a random wall (smooth colours around a random grey, dark to bright) before the colour changes",
        ge=0.0, le=1.0)
    augment_on: Literal["auto", "cpu", "device"] = option(
        "auto", "where augmentation runs; auto: in the train step on GPUs, in tf.data on CPUs")
    seed: Count = option(
        0, "weights, batch order, augmentation. A one-worker run whose train split is held in memory "
        "(`data.in_memory`) repeats itself for a seed (on CPUs to the last digit; GPU kernels may not); with "
        "several workers, which images each worker gets follows Ray Data's timing", ge=0, le=2**31 - 1)
    metric: str = option("auto", "picks the best epoch (docs/metrics.md)", "auto or a `val_*` metric")
    final_model: Literal["best", "last"] = option(
        "best", "the epoch `RUN/model.keras` holds: the best by `train.metric`, or the last")
    repeat: dict[str, int] = option(
        {}, "train images whose name (file stem) matches a glob, dealt that many times an epoch (the largest "
        "matching pattern wins); `train` prints what each pattern matched", "glob: 1..1000")
    mixed_precision: bool = option(False, "float16 compute on GPUs, bfloat16 on CPUs; logits stay float32")
    jit: bool = option(False, "XLA compilation")

    @field_validator("repeat", mode="before")
    @classmethod
    def _repeat(cls, value):
        if not isinstance(value, dict):
            raise ValueError("is not a mapping, e.g. {'frontal_*': 5}")
        checked = {}
        for pattern, times in value.items():
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"{shown(pattern)} is not a file-name pattern, e.g. 'frontal_*'")
            checked[pattern] = check_number(f"train.repeat.{pattern}", times, int, 1, 1000)
        return checked

    @field_validator("metric")
    @classmethod
    def _metric(cls, value):
        if value != "auto" and not value.startswith("val_"):
            raise ValueError("is not a validation metric (auto, val_f1_mean, val_f1_overall, val_mean_iou, "
                             "val_pixel_accuracy, val_f1_<class>)")
        return value


class ScalingConfig(Section):
    num_workers: Count = option(2, "Ray Train workers (one per GPU)", ge=1, le=4096)
    use_gpu: bool = option(False, "one GPU per worker")
    gpus_per_worker: Real = option(1.0, "", gt=0.0, le=64.0)
    cpus_per_worker: Real = option(
        1.0, "on a cluster too small for the workers and Ray Data, faceseg asks a fraction (and says so)",
        gt=0.0, le=1024.0)
    max_failures: Count = option(3, "worker or node losses survived by restoring the last checkpoint", ge=-1, le=1000)
    worker_resources: dict[str, float] = option(
        {}, "custom Ray resources a worker asks, to pin workers to some nodes", "name: amount")

    @field_validator("worker_resources", mode="before")
    @classmethod
    def _resources(cls, value):
        if not isinstance(value, dict):
            raise ValueError("is not a mapping, e.g. {name: 1}")
        checked = {}
        for name, amount in value.items():
            if str(name) in ("CPU", "GPU", "memory"):
                raise ValueError(f"{name} is set by cpus_per_worker / gpus_per_worker, not here")
            checked[str(name)] = check_number(f"scaling.worker_resources.{name}", amount, float, 0.0, 1e9)
        return checked


SECTIONS: dict[str, type[Section]] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                                      "scaling": ScalingConfig}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    scaling: ScalingConfig = ScalingConfig()

    @model_validator(mode="after")
    def _together(self):
        if self.data.size % 2 ** self.model.depth:
            raise ValueError(f"data.size: {self.data.size} is not divisible by 2**model.depth = "
                             f"{2 ** self.model.depth} (the U-Net halves it {self.model.depth} times)")
        if self.train.warmup_epochs and self.train.schedule != "cosine":
            raise ValueError("train.warmup_epochs: warm-up is part of the cosine schedule; "
                             f"train.schedule is {self.train.schedule!r}")
        return self

    @classmethod
    def from_dict(cls, raw: dict | None) -> "Config":
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError(f"expected a mapping with sections {', '.join(SECTIONS)}, got {shown(raw)}")
        unknown = sorted(map(str, set(raw) - set(SECTIONS)))
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
        for name, section in raw.items():
            if section is not None and not isinstance(section, dict):
                raise ConfigError(f"{name}: expected a mapping of options, got {shown(section)}")
            unknown = sorted(map(str, set(section or {}) - set(SECTIONS[name].model_fields)))
            if unknown:
                raise ConfigError(f"unknown {name} option(s): {', '.join(unknown)}; "
                                  f"known: {', '.join(SECTIONS[name].model_fields)}")
        try:
            return cls.model_validate({name: section or {} for name, section in raw.items()})
        except ValidationError as error:
            raise ConfigError(_message(error, raw)) from None

    @classmethod
    def from_yaml(cls, path: Path | str) -> "Config":
        return cls.from_yaml_text(read_text_file(path, "config"), str(path))

    @classmethod
    def from_yaml_text(cls, text: str, where: str) -> "Config":
        try:
            return cls.from_dict(load_yaml(text, where))
        except ConfigError as error:
            message = str(error)
            raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None

    def to_dict(self) -> dict:
        return self.model_dump()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """{"section.option": value} of every option."""
        return {f"{section}.{key}": value for section, values in self.to_dict().items() for key, value in values.items()}

    def with_overrides(self, overrides: dict) -> "Config":
        """Dotted keys, e.g. {"train.learning_rate": 1e-3, "model.depth": 3}; None values are ignored."""
        raw = self.to_dict()
        for key, value in overrides.items():
            if value is None:
                continue
            section, _, name = key.partition(".")
            if section not in raw or name not in raw[section]:
                raise ConfigError(f"unknown config key {shown(key)} (section.option, e.g. train.learning_rate)")
            raw[section][name] = value
        return Config.from_dict(raw)

    def differences(self, other: "Config") -> list[str]:
        """Dotted keys whose values differ between two configs."""
        mine, theirs = self.flat(), other.flat()
        return [key for key in mine if mine[key] != theirs[key]]


def _field(key: str):
    section, _, name = key.partition(".")
    if section not in SECTIONS or name not in SECTIONS[section].model_fields:
        raise ConfigError(f"unknown config key {shown(key)} (section.option, e.g. train.learning_rate)")
    return SECTIONS[section].model_fields[name]


def choices(key: str) -> tuple[str, ...]:
    """The allowed values of an option with a fixed list (e.g. data.layout), for the command line."""
    return typing.get_args(_field(key).annotation)


def default(key: str):
    return _field(key).default


def _limits(info) -> tuple[float | None, bool, float | None]:
    """(low, low is open, high) of a numeric field."""
    low, low_open, high = None, False, None
    for limit in info.metadata:
        if isinstance(limit, annotated_types.Ge):
            low = limit.ge
        elif isinstance(limit, annotated_types.Gt):
            low, low_open = limit.gt, True
        elif isinstance(limit, annotated_types.Le):
            high = limit.le
    return low, low_open, high


def _range(low, low_open, high) -> str:
    return f"must be {'>' if low_open else '>='} {low:g} and <= {high:g}"


def check_number(key: str, value, kind: type, low: float, high: float):
    """One number of a mapping option (train.repeat, scaling.worker_resources), checked as a field would be."""
    try:
        number = _number(value)
    except ValueError:
        raise ValueError(f"{key}: {shown(value)} is not a number") from None
    if not isinstance(number, (int, float)) or (isinstance(number, float) and not math.isfinite(number)):
        raise ValueError(f"{key}: {shown(value)} is not a finite number")
    if kind is int and number != int(number):
        raise ValueError(f"{key}: {shown(value)} is not a whole number")
    if not low <= number <= high:
        raise ValueError(f"{key}: {shown(value)} is out of range ({_range(low, False, high)})")
    return kind(number)


def _message(error: ValidationError, raw: dict) -> str:
    """pydantic's errors as faceseg's: the key, the value as given, and what is allowed."""
    lines = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        key = ".".join(loc[:2])
        value = item.get("input")
        kind = item["type"]
        if kind == "value_error":
            text = str(item["ctx"]["error"])
            if text.startswith(tuple(f"{section}." for section in SECTIONS)) or not key:
                lines.append(text)
            else:
                lines.append(f"{key}: {shown(value)} {text}" if text.startswith("is ") else f"{key}: {text}")
        elif kind.startswith(("greater_than", "less_than")):
            low, low_open, high = _limits(SECTIONS[loc[0]].model_fields[loc[1]])
            lines.append(f"{key}: {shown(_as_given(raw, loc, value))} is out of range ({_range(low, low_open, high)})")
        elif kind == "literal_error":
            allowed = ", ".join(map(str, choices(key)))
            lines.append(f"{key}: {shown(value)} is not one of {allowed}")
        elif kind == "int_from_float":
            lines.append(f"{key}: {shown(value)} is not a whole number")
        elif kind in ("finite_number",):
            lines.append(f"{key}: {shown(value)} is not a finite number")
        elif kind.startswith(("int_", "float_")):
            lines.append(f"{key}: {shown(value)} is not a number")
        elif kind.startswith("bool"):
            lines.append(f"{key}: {shown(value)} is not true or false")
        elif kind.startswith("string"):
            lines.append(f"{key}: {shown(value)} is not a string")
        else:
            lines.append(f"{key or 'config'}: {item['msg']}")
    return "; ".join(lines)


def _as_given(raw: dict, loc: list[str], value):
    """The value as the user wrote it (pydantic hands back the coerced one for range errors)."""
    try:
        return raw[loc[0]][loc[1]]
    except (KeyError, TypeError, IndexError):
        return value


def check_value(key: str, value):
    """One option's value, coerced and checked as a config file's would be (e.g. `prepare --size`)."""
    section, _, name = key.partition(".")
    _field(key)
    try:
        return getattr(SECTIONS[section].model_validate({name: value}), name)
    except ValidationError as error:
        raise ConfigError(_message(error, {section: {name: value}})) from None


def parse_assignment(text: str) -> tuple[str, object]:
    """`--set train.learning_rate=1e-3` -> ("train.learning_rate", "1e-3"); the value is read as YAML
    (true, 3, null, ...) and then checked like any config value."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"--set {shown(text)}: expected section.option=value, e.g. train.learning_rate=1e-3")
    try:
        return key.strip(), load_yaml(value, f"--set {key.strip()}")
    except ConfigError:
        return key.strip(), value


# --- YAML, read safely ---------------------------------------------------------------------------------------------

class _NoAliases(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases: a 429-byte "billion laughs" expands to gigabytes,
    and no faceseg file needs to repeat itself."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not accepted in faceseg files",
                                              event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str, where: str):
    """A YAML document as plain data; aliases, and more than MAX_YAML_BYTES, refused with `where` named."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters; a faceseg config is at most {MAX_YAML_BYTES}")
    try:
        return yaml.load(text, Loader=_NoAliases)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML ({shown(str(error), 300)})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a faceseg config") from None


def read_text_file(path: Path | str, what: str) -> str:
    """A small text file (a config, sweep or list of names), its name in every refusal."""
    from faceseg.storage import Location

    location = Location.of(path)
    info = location.info()
    if info.size is not None and info.size > MAX_YAML_BYTES:
        raise ConfigError(f"{location}: {info.size} bytes is too large for a {what} file (at most {MAX_YAML_BYTES})")
    try:
        return location.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{location}: not a text {what} file (not UTF-8 at byte {error.start})") from None
    except IsADirectoryError:
        raise ConfigError(f"{location}: is a folder, not a {what} file") from None


# --- the table in docs/runs.md ---------------------------------------------------------------------------------------

def _allowed(info) -> str:
    extra = info.json_schema_extra or {}
    if "allowed" in extra:
        return extra["allowed"]
    if typing.get_origin(info.annotation) is Literal:
        return ", ".join(typing.get_args(info.annotation))
    if info.annotation is bool:
        return "true, false"
    low, low_open, high = _limits(info)
    if low is None:
        return ""
    return f"> {low:g}, ≤ {high:g}" if low_open else f"{low:g}..{high:g}"


def _shown_default(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def options_table() -> str:
    """Every option as a Markdown table: key, default, allowed values, meaning (docs/runs.md)."""
    lines = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for section, model in SECTIONS.items():
        for name, info in model.model_fields.items():
            lines.append(f"| `{section}.{name}` | {_shown_default(info.default)} | {_allowed(info)} | "
                         f"{info.description or ''} |")
    return "\n".join(lines)
