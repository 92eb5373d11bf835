"""`faceseg tune --config tune_configs/NAME.yaml`: a Ray Tune sweep, one Ray Train run per trial.

The sweep file holds plain data (docs/tune.md):
  output: sweeps/NAME                       # the sweep's folder or a URI (--output overrides)
  data: {cache: DIR} | {data: DIR, size: S, classes: own} | {synth: {train: N, test: N, size: S, seed: K}, size: S}
  base: {model: ..., train: ..., scaling: ...}    # a `faceseg train` config shared by every trial
  space: {"train.learning_rate": {loguniform: [1e-4, 1e-2]}, "model.depth": {choice: [3, 4, 5]}, ...}
  objective: {metric: auto, mode: max}      # auto: val_f1_overall for Helen's classes, else val_f1_mean
  scheduler: {type: asha, grace_period: 2, reduction_factor: 2}
  num_samples: 8
  max_concurrent_trials: 2
  trial_cpus: 0.01                          # the trial itself only waits on its trainer (must be > 0)
  max_failures: 1                           # a failed trial runs again this often, resuming its checkpoints

The data cache is prepared ONCE into the sweep's folder and shared by every trial.
Outputs: results.csv, best_config.yaml (a valid `faceseg train --config`), best_model.keras, trials/.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from faceseg.config import Config, ConfigError, choices, default, load_yaml, read_text_file
from faceseg.data.cache import MANIFEST, Cache
from faceseg.model.saved import MODEL_FILE
from faceseg.runtime import Needs, connect
from faceseg.storage import Location, check_writable

CHECKPOINT_PATH = "checkpoint_path"   # the key TuneReportCallback adds to each report
EXPERIMENT = "tune"                   # Ray Tune's experiment folder inside the sweep's
# What a sweep writes into its folder, by name: --overwrite removes these and nothing else.
SWEEP_FILES = (EXPERIMENT, "trials", "results.csv", "best_config.yaml", "best_model.keras", "cache", "data")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthData(_Strict):
    train: int = Field(ge=0, le=1_000_000)
    test: int = Field(0, ge=0, le=1_000_000)
    size: int = Field(256, ge=32, le=4096)
    seed: int = Field(0, ge=0)


class SweepData(_Strict):
    """Where the trials' data comes from: a cache, a data set prepared once, or synthetic faces."""

    cache: str | None = None
    data: str | None = None
    synth: SynthData | None = None
    size: int = Field(default("data.size"), ge=16, le=2048)
    classes: Literal[choices("data.classes")] = "own"

    @model_validator(mode="after")
    def _one_source(self):
        given = [name for name in ("cache", "data", "synth") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of cache, data or synth (got {', '.join(given) or 'none'})")
        return self


class Sampler(_Strict):
    """One search-space entry: exactly one of its fields."""

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None          # [low, high)
    choice: list[Any] | None = None
    grid: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(kinds) != 1:
            raise ValueError(f"one of {', '.join(type(self).model_fields)}, e.g. {{choice: [3, 4]}}")
        low_high = self.loguniform or self.uniform or self.randint
        if low_high and not low_high[0] < low_high[1]:
            raise ValueError(f"[low, high] with low < high, not {list(low_high)}")
        if self.loguniform and self.loguniform[0] <= 0:
            raise ValueError("loguniform needs low > 0")
        if (self.choice is not None or self.grid is not None) and not (self.choice or self.grid):
            raise ValueError("an empty list of values")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    def values(self) -> list:
        """Values it can give, checked as config values before any trial starts."""
        args = getattr(self, self.kind)
        if self.kind in ("choice", "grid"):
            return list(args)
        return [args[0], args[1] - 1] if self.kind == "randint" else list(args)

    def tune(self):
        from ray import tune

        args = getattr(self, self.kind)
        if self.kind == "grid":
            return tune.grid_search(list(args))
        if self.kind == "choice":
            return tune.choice(list(args))
        return getattr(tune, self.kind)(*args)


class Objective(_Strict):
    metric: str = "auto"                  # auto: val_f1_overall for Helen's classes, else val_f1_mean
    mode: Literal["max", "min"] = "max"


class Scheduler(_Strict):
    type: Literal["asha", "fifo"] = "fifo"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)
    max_t: int | None = Field(None, ge=1)


class Sweep(_Strict):
    """A sweep file (docs/tune.md), checked whole before Ray starts."""

    output: str | None = None
    data: SweepData
    base: dict = {}                        # a `faceseg train` config shared by every trial
    space: dict[str, Sampler]
    objective: Objective = Objective()
    scheduler: Scheduler = Scheduler()
    num_samples: int = Field(1, ge=1, le=100_000)
    max_concurrent_trials: int = Field(1, ge=1, le=10_000)
    trial_cpus: float = Field(0.01, gt=0.0)     # the trial itself only waits on its trainer
    max_failures: int = Field(1, ge=0, le=1000)

    @field_validator("space")
    @classmethod
    def _not_empty(cls, space):
        if not space:
            raise ValueError("an empty search space; name at least one config key")
        return space

    @model_validator(mode="after")
    def _keys_and_values(self):
        base = Config.from_dict(self.base)
        for key, sampler in self.space.items():
            for value in sampler.values():
                base.with_overrides({key: value})
        return self

    @property
    def config(self) -> Config:
        return Config.from_dict(self.base)


def _errors(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item["loc"] if not str(part).startswith(("function-", "tuple[")))
        message = str(item["ctx"]["error"]) if item["type"] == "value_error" else item["msg"]
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


@dataclass
class SweepSummary:
    folder: Location
    table: object                 # a pandas DataFrame
    best: dict
    seconds: float

    def format(self) -> str:
        import pandas as pd

        with pd.option_context("display.width", 200, "display.max_columns", 20):
            table = self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
        return "\n".join([
            table, "",
            f"sweep of {len(self.table)} trials in {self.seconds / 60:.1f} min; best {self.best['metric']} = "
            f"{self.best['value']:.4f} ({self.best['trial']}, epoch {self.best['epoch']})",
            f"results:     {self.folder / 'results.csv'}",
            f"best config: {self.folder / 'best_config.yaml'}   (faceseg train --config ...)",
            f"best model:  {self.folder / 'best_model.keras'}",
        ])



def load_sweep(spec: str | dict, output: str | None = None) -> Sweep:
    """The sweep file (or its dict), checked: its keys, the base config, every search key and every value
    a sampler can give; `output` (or the file's, or sweeps/<name>) resolved."""
    where = str(spec) if isinstance(spec, str) else "the sweep"
    raw = load_yaml(read_text_file(spec, "sweep"), where) if isinstance(spec, str) else spec
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with data, space, ...")
    try:
        sweep = Sweep.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{where}: {_errors(error)}") from None
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    name = Location.of(spec).stem if isinstance(spec, str) else "sweep"
    return sweep.model_copy(update={"output": str(Location.of(output or sweep.output or f"sweeps/{name}"))})


def open_sweep(folder: Location, resume: bool, overwrite: bool) -> None:
    """A sweep's folder is never reused silently: --resume continues it, --overwrite removes what a sweep
    wrote there (by name) and starts again; a folder holding anything else is refused."""
    there = folder.is_dir() and folder.list()
    is_sweep = (folder / EXPERIMENT).is_dir()
    if resume:
        if not is_sweep:
            raise FileNotFoundError(f"{folder / EXPERIMENT}: no sweep to resume here")
        return
    if is_sweep and not overwrite:
        raise ConfigError(f"--output {folder}: a sweep is there already; add --resume to continue it, --overwrite "
                          "to start it again, or choose another folder")
    if there and not is_sweep:
        raise ConfigError(f"--output {folder}: exists and is not a faceseg sweep (no {EXPERIMENT}/); choose a new or "
                          "empty folder")
    if is_sweep:
        for name in SWEEP_FILES:
            (folder / name).delete()
    check_writable(folder, "--output")


def prepare_sweep_data(sweep: Sweep, folder: Location) -> Cache:
    """The cache every trial reads: given, or prepared once into the sweep's folder."""
    data = sweep.data
    if data.cache:
        return Cache.open(data.cache)
    cache = folder / "cache"
    if (cache / MANIFEST).is_file():
        return Cache.open(cache)
    from faceseg.data.prepare import find_source, prepare_cache

    source_dir = Location.of(data.data) if data.data else folder / "data"
    if data.synth:
        from faceseg.data.synth import write_synthetic_dataset

        write_synthetic_dataset(source_dir.local(), **data.synth.model_dump())
    print(prepare_cache(find_source(str(source_dir)), cache, data.size, classes=data.classes).format(), flush=True)
    return Cache.open(cache)


def trial_config(base: dict, sampled: dict, cache: str) -> Config:
    return Config.from_dict(base).with_overrides({**sampled, "data.cache": cache, "data.data": None})


def run_trial(trial: dict) -> None:
    """One Tune trial: a whole Ray Train run of the sampled config, reporting every epoch to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from faceseg.train.run import fit_run

    config = trial_config(trial["base"], trial["sampled"], trial["cache"])
    run = Location.of(trial["folder"]) / "trials" / ray.tune.get_context().get_trial_name()
    fit_run(config, run, Cache.open(trial["cache"]), cpu_share=trial["cpu_share"], callbacks=[TuneReportCallback()])


def _scheduler(spec: Scheduler, metric: str, mode: str):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.type == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(metric=metric, mode=mode, time_attr="epoch", grace_period=spec.grace_period,
                         reduction_factor=spec.reduction_factor, **({"max_t": spec.max_t} if spec.max_t else {}))


def _trial_table(results, space_keys: list[str], metric: str, mode: str):
    import pandas as pd

    rows = []
    for result in results:
        history = result.metrics_dataframe
        best = None
        if history is not None and metric in history:
            best = history[metric].max() if mode == "max" else history[metric].min()
        sampled = result.config["sampled"] if result.config else {}
        metrics = result.metrics or {}
        planned = trial_config(result.config["base"], sampled, result.config["cache"]).train.epochs
        epochs = int(metrics.get("epoch", 0))
        rows.append({
            "trial": metrics.get("trial_id") or (result.path.rstrip("/").rsplit("/", 1)[-1] if result.path else "?"),
            **{key: sampled.get(key) for key in space_keys},
            "status": "failed" if result.error else "ok" if epochs >= planned else "stopped early",
            "epochs": epochs,
            "loss": metrics.get("loss"),
            "val_loss": metrics.get("val_loss"),
            f"final_{metric}": metrics.get(metric),
            f"best_{metric}": best,
            "error": str(result.error).strip().splitlines()[-1][:300] if result.error else "",
        })
    return pd.DataFrame(rows)


def _best_report(results, metric: str, mode: str, folder: Location):
    """(result, report row) of the best report across every trial and epoch whose checkpoint Ray Train kept.

    Train keeps each trial's best checkpoints by the same metric, but among equal values it keeps the later
    epochs, so the later epoch wins a tie here too, and reports whose checkpoint is gone are passed over.
    A trial with train.final_model `last` competes with its last epoch only: what its model.keras holds.
    """
    best = None
    for result in results:
        history = result.metrics_dataframe
        if history is None or metric not in history or CHECKPOINT_PATH not in history or not result.config:
            continue
        reports = history.dropna(subset=[metric, CHECKPOINT_PATH])
        config = trial_config(result.config["base"], result.config["sampled"], result.config["cache"])
        if config.train.final_model == "last":
            reports = reports.iloc[-1:]
        # Best first, the later epoch first among equal values; the first whose checkpoint is still there.
        ranked = reports.iloc[::-1].sort_values(metric, ascending=mode == "min", kind="stable")
        row = next((report for _, report in ranked.iterrows()
                    if (folder.sibling_path(report[CHECKPOINT_PATH]) / MODEL_FILE).is_file()), None)
        if row is None:
            continue
        if best is None or (row[metric] > best[1][metric] if mode == "max" else row[metric] < best[1][metric]):
            best = (result, row)
    if best is None:
        from faceseg.train.run import TrainingError

        raise TrainingError(f"no trial finished an epoch with a kept checkpoint; {folder / 'results.csv'} lists "
                            "each trial's error")
    return best


def sweep(spec: str | dict, *, output: str | None = None, resume: bool = False, overwrite: bool = False,
          address: str | None = None) -> SweepSummary:
    """Run the sweep `spec` (a sweep file or its dict) into its folder; everything is checked before Ray starts."""
    import ray.tune

    from faceseg.train.run import resolve_metric

    sweep_ = load_sweep(spec, output)
    folder = Location.of(sweep_.output)
    base = sweep_.base
    scaling = sweep_.config.scaling
    concurrent = sweep_.max_concurrent_trials
    open_sweep(folder, resume, overwrite)
    if sweep_.data.cache:
        Cache.open(sweep_.data.cache).check_files()      # a missing or wrong cache fails now, not in every trial
    share = connect(address, Needs(cpus=concurrent * (sweep_.trial_cpus + scaling.num_workers * scaling.cpus_per_worker),
                                   gpus=concurrent * scaling.num_workers * scaling.gpus_per_worker if scaling.use_gpu else 0,
                                   resources={name: concurrent * scaling.num_workers * amount
                                              for name, amount in scaling.worker_resources.items()},
                                   what=f"{concurrent} trial(s) of {scaling.num_workers} train worker(s)",
                                   flags="max_concurrent_trials or base.scaling in the sweep file"))
    start = time.perf_counter()
    folder.mkdir()
    cache = prepare_sweep_data(sweep_, folder)

    objective = sweep_.objective
    metric = resolve_metric(sweep_.config.with_overrides({"train.metric": objective.metric}), cache.taxonomy)
    mode = objective.mode
    trainable = ray.tune.with_resources(run_trial, {"CPU": sweep_.trial_cpus})
    space = {"base": base, "cache": str(cache.location), "folder": str(folder), "cpu_share": share,
             "sampled": {key: sampler.tune() for key, sampler in sweep_.space.items()}}
    storage = {"storage_path": folder.uri if folder.is_local else folder.path,
               "storage_filesystem": None if folder.is_local else folder.filesystem}
    if resume:
        experiment = folder / EXPERIMENT
        tuner = ray.tune.Tuner.restore(experiment.uri if folder.is_local else experiment.path, trainable=trainable,
                                       resume_errored=True, storage_filesystem=storage["storage_filesystem"])
    else:
        tuner = ray.tune.Tuner(
            trainable, param_space=space,
            tune_config=ray.tune.TuneConfig(num_samples=sweep_.num_samples, max_concurrent_trials=concurrent,
                                            scheduler=_scheduler(sweep_.scheduler, metric, mode)),
            # A trial whose process dies (a lost node, a crash inside Ray) runs again into its own run folder,
            # where Ray Train resumes it from its last checkpoint, as `faceseg train --resume` would.
            run_config=ray.tune.RunConfig(name=EXPERIMENT, **storage, failure_config=ray.tune.FailureConfig(
                max_failures=sweep_.max_failures)),
        )
    results = tuner.fit()
    table = _trial_table(results, list(sweep_.space), metric, mode)
    (folder / "results.csv").write_text(table.to_csv(index=False))

    result, row = _best_report(results, metric, mode, folder)     # after results.csv: it says why, if none
    best_config = trial_config(base, result.config["sampled"], str(cache.location))
    (folder / "best_config.yaml").write_text(best_config.to_yaml())
    (folder / "best_model.keras").write_bytes((folder.sibling_path(row[CHECKPOINT_PATH]) / MODEL_FILE).read_bytes())
    best = {"metric": metric, "value": float(row[metric]), "trial": result.metrics.get("trial_id", "?"),
            "epoch": int(row["epoch"])}
    return SweepSummary(folder, table, best, time.perf_counter() - start)
