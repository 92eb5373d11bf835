"""Typed configuration: the one place where defaults live. Loadable from and dumpable to YAML."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class DataConfig:
    cache: str | None = None        # a Parquet cache made by `faceseg prepare`
    data: str | None = None         # or a raw data set, prepared into <output>/cache first
    layout: str = "auto"
    size: int = 128                 # side of the square training grid, pixels
    in_memory: str = "auto"         # auto | yes | no: train workers keep their share of the train split in
                                    # memory after the first epoch (auto: when it takes under half of Ray's
                                    # free worker memory), else stream it from Parquet every epoch


@dataclass
class ModelConfig:
    depth: int = 4                  # down-sampling levels, 3..5
    base_filters: int = 16          # filters of the first level; doubled at each level down
    dropout: float = 0.1            # at the bottleneck
    batch_norm: bool = True
    upsampling: str = "transpose"   # transpose | resize (bilinear resize + conv)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 8             # per worker; the global batch is batch_size x workers
    learning_rate: float = 2e-3
    optimizer: str = "adam"         # adam | adamw
    weight_decay: float = 1e-4      # adamw only
    schedule: str = "cosine"        # cosine | step | constant
    loss: str = "ce+dice"           # ce | ce+dice
    class_weights: str = "sqrt-inverse"  # none | sqrt-inverse (of the cache's class pixel frequencies)
    augment: str = "flip"           # none | flip | geometric | full
    seed: int = 0
    mixed_precision: bool = False   # float16 compute on GPUs; logits stay float32
    jit: bool = False               # XLA compilation


@dataclass
class ScalingConfig:
    num_workers: int = 2
    use_gpu: bool = False
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 1.0
    max_failures: int = 3           # worker deaths survived by restoring the last checkpoint


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    @classmethod
    def from_dict(cls, raw: dict | None) -> "Config":
        raw = dict(raw or {})
        sections = {}
        for f in dataclasses.fields(cls):
            values = raw.pop(f.name, None) or {}
            section_type = f.default_factory
            known = {g.name for g in dataclasses.fields(section_type)}
            unknown = set(values) - known
            if unknown:
                raise ValueError(f"unknown {f.name} option(s): {', '.join(sorted(unknown))}; "
                                 f"known: {', '.join(sorted(known))}")
            sections[f.name] = section_type(**values)
        if raw:
            raise ValueError(f"unknown config section(s): {', '.join(sorted(raw))}; "
                             f"known: data, model, train, scaling")
        return cls(**sections)

    @classmethod
    def from_yaml(cls, path: Path | str) -> "Config":
        try:
            return cls.from_dict(yaml.safe_load(Path(path).read_text()))
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: {error}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, path: Path | str) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def with_overrides(self, overrides: dict) -> "Config":
        """Dotted keys, e.g. {"train.learning_rate": 1e-3, "model.depth": 3}; None values are ignored."""
        raw = self.to_dict()
        for key, value in overrides.items():
            if value is None:
                continue
            section, _, name = key.partition(".")
            if section not in raw or name not in raw[section]:
                raise ValueError(f"unknown config key {key!r}")
            raw[section][name] = value
        return Config.from_dict(raw)
