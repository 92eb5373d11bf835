"""`faceseg tune --config tune_configs/NAME.yaml`.

The sweep file holds plain data:
  output: sweeps/NAME                       # the sweep's folder (--output overrides)
  data: {cache: DIR} | {data: DIR, size: S} | {synth: {train: N, test: N, size: S, seed: K}, size: S}
  base: {model: ..., train: ..., scaling: ...}    # a `faceseg train` config shared by every trial
  space: {"train.learning_rate": {loguniform: [1e-4, 1e-2]}, "model.depth": {choice: [3, 4, 5]}, ...}
  objective: {metric: val_f1_overall, mode: max}
  scheduler: {type: asha, grace_period: 2, reduction_factor: 2}
  num_samples: 8
  max_concurrent_trials: 2
  trial_cpus: 0.01                          # the trial itself only waits on its trainer (must be > 0)

The data cache is prepared ONCE into the sweep's folder and shared by every trial.
Outputs: results.csv, best_config.yaml (a valid `faceseg train --config`), best_model.keras, trials/.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from faceseg.config import Config
from faceseg.runtime import init_ray

SAMPLERS = {"loguniform", "uniform", "choice", "randint", "grid"}
CHECKPOINT_PATH = "checkpoint_path"   # the key TuneReportCallback adds to each report


@dataclass
class SweepSummary:
    folder: Path
    table: pd.DataFrame
    best: dict
    seconds: float

    def format(self) -> str:
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            table = self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
        return "\n".join([
            table, "",
            f"sweep of {len(self.table)} trials in {self.seconds / 60:.1f} min; best {self.best['metric']} = "
            f"{self.best['value']:.4f} ({self.best['trial']})",
            f"results:     {self.folder / 'results.csv'}",
            f"best config: {self.folder / 'best_config.yaml'}   (faceseg train --config ...)",
            f"best model:  {self.folder / 'best_model.keras'}",
        ])


def _sampler(spec: dict):
    from ray import tune

    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
        raise ValueError(f"a search-space entry must be one of {sorted(SAMPLERS)}, e.g. {{choice: [3, 4]}}; "
                         f"got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind in ("loguniform", "uniform", "randint"):
        return getattr(tune, kind)(*[float(a) if kind != "randint" else int(a) for a in args])
    return tune.grid_search(list(args)) if kind == "grid" else tune.choice(list(args))


def load_sweep(path: Path | str, output: str | None = None) -> dict:
    sweep = yaml.safe_load(Path(path).read_text()) or {}
    for key in ("data", "space"):
        if key not in sweep:
            raise ValueError(f"{path}: the sweep has no '{key}' section")
    Config.from_dict(sweep.get("base"))        # fail early on a bad base config
    options = Config().to_dict()
    for key, spec in sweep["space"].items():  # and on a search key or sampler that cannot work
        section, _, name = key.partition(".")
        if name not in options.get(section, {}):
            raise ValueError(f"{path}: search key {key!r} is no config option (section.option, "
                             "e.g. train.learning_rate)")
        _sampler(spec)
    sweep["output"] = str(Path(output or sweep.get("output") or f"sweeps/{Path(path).stem}").resolve())
    return sweep


def prepare_sweep_data(sweep: dict, folder: Path) -> Path:
    """The cache every trial reads: given, or prepared once into the sweep's folder."""
    data = sweep["data"]
    if data.get("cache"):
        return Path(data["cache"]).resolve()
    cache = folder / "cache"
    if (cache / "manifest.json").is_file():
        return cache
    from faceseg.data.layouts import discover
    from faceseg.data.prepare import prepare_cache

    source_dir = Path(data["data"]) if data.get("data") else folder / "data"
    if data.get("synth"):
        from faceseg.data.synth import write_synthetic_dataset

        write_synthetic_dataset(source_dir, **data["synth"])
    size = int(data.get("size", Config().data.size))
    print(prepare_cache(discover(source_dir), cache, size).format(), flush=True)
    return cache


def trial_config(base: dict, sampled: dict, cache: Path) -> Config:
    return Config.from_dict(base).with_overrides({**sampled, "data.cache": str(cache), "data.data": None})


def run_trial(trial: dict) -> None:
    """One Tune trial: a whole Ray Train run of the sampled config, reporting every epoch to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from faceseg.train import train

    context = ray.tune.get_context()
    config = trial_config(trial["base"], trial["sampled"], Path(trial["cache"]))
    run_dir = Path(trial["folder"]) / "trials" / context.get_trial_name()
    train(config, run_dir, callbacks=[TuneReportCallback()])


def _scheduler(spec: dict | None, metric: str, mode: str):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    spec = dict(spec or {"type": "fifo"})
    kind = spec.pop("type", "asha")
    if kind == "fifo":
        return FIFOScheduler()
    if kind == "asha":
        return ASHAScheduler(metric=metric, mode=mode, time_attr="epoch", **spec)
    raise ValueError(f"scheduler.type must be asha or fifo, not {kind!r}")


def _trial_table(results, space_keys: list[str], metric: str, mode: str) -> pd.DataFrame:
    rows = []
    for result in results:
        history = result.metrics_dataframe
        best = None
        if history is not None and metric in history:
            best = history[metric].max() if mode == "max" else history[metric].min()
        sampled = result.config["sampled"] if result.config else {}
        metrics = result.metrics or {}
        planned = trial_config(result.config["base"], sampled, Path(result.config["cache"])).train.epochs
        epochs = int(metrics.get("epoch", 0))
        rows.append({
            "trial": metrics.get("trial_id") or (Path(result.path).name if result.path else "?"),
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


def _best_checkpoint(results, metric: str, mode: str):
    """(result, report row) of the best report across every trial and epoch."""
    best = None
    for result in results:
        history = result.metrics_dataframe
        if history is None or metric not in history or history[metric].isna().all():
            continue
        row = history.loc[history[metric].idxmax() if mode == "max" else history[metric].idxmin()]
        if best is None or (row[metric] > best[1][metric]) == (mode == "max"):
            best = (result, row)
    if best is None:
        raise RuntimeError("no trial reported any result; see the trial errors above")
    return best


def run_sweep(args) -> SweepSummary:
    import ray.tune

    sweep = load_sweep(args.config, getattr(args, "output", None))
    folder = Path(sweep["output"])
    folder.mkdir(parents=True, exist_ok=True)
    base = sweep.get("base") or {}
    scaling = Config.from_dict(base).scaling
    concurrent = int(sweep.get("max_concurrent_trials", 1))
    init_ray(getattr(args, "address", None), reserved_cpus=concurrent * scaling.num_workers * scaling.cpus_per_worker)
    start = time.perf_counter()
    cache = prepare_sweep_data(sweep, folder)

    objective = sweep.get("objective", {})
    metric, mode = objective.get("metric", "val_f1_overall"), objective.get("mode", "max")
    trial_cpus = float(sweep.get("trial_cpus", 0.01))
    if trial_cpus <= 0:
        raise ValueError(f"{args.config}: trial_cpus must be > 0 (Tune cannot place an empty trial); use 0.01")
    trainable = ray.tune.with_resources(run_trial, {"CPU": trial_cpus})
    space = {"base": base, "cache": str(cache), "folder": str(folder),
             "sampled": {key: _sampler(spec) for key, spec in sweep["space"].items()}}
    storage = str(folder)
    if getattr(args, "resume", False):
        if not ray.tune.Tuner.can_restore(str(folder / "tune")):
            raise FileNotFoundError(f"{folder / 'tune'}: no sweep to resume here")
        tuner = ray.tune.Tuner.restore(str(folder / "tune"), trainable=trainable, resume_errored=True)
    else:
        tuner = ray.tune.Tuner(
            trainable, param_space=space,
            tune_config=ray.tune.TuneConfig(num_samples=int(sweep.get("num_samples", 1)),
                                            max_concurrent_trials=concurrent,
                                            scheduler=_scheduler(sweep.get("scheduler"), metric, mode)),
            run_config=ray.tune.RunConfig(name="tune", storage_path=storage,
                                          failure_config=ray.tune.FailureConfig(max_failures=0)),
        )
    results = tuner.fit()
    table = _trial_table(results, list(sweep["space"]), metric, mode)
    table.to_csv(folder / "results.csv", index=False)

    result, row = _best_checkpoint(results, metric, mode)
    best_config = trial_config(base, result.config["sampled"], cache)
    best_config.to_yaml(folder / "best_config.yaml")
    shutil.copyfile(Path(row[CHECKPOINT_PATH]) / "model.keras", folder / "best_model.keras")
    best = {"metric": metric, "value": float(row[metric]), "trial": result.metrics.get("trial_id", "?"),
            "epoch": int(row["epoch"])}
    return SweepSummary(folder, table, best, time.perf_counter() - start)
