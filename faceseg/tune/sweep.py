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

import yaml

from faceseg.config import Config, ConfigError
from faceseg.data.cache import MANIFEST, Cache
from faceseg.model.saved import MODEL_FILE
from faceseg.runtime import Needs, connect
from faceseg.storage import Location

SAMPLERS = {"loguniform", "uniform", "choice", "randint", "grid"}
SWEEP_KEYS = {"output", "data", "base", "space", "objective", "scheduler", "num_samples", "max_concurrent_trials",
              "trial_cpus", "max_failures"}
CHECKPOINT_PATH = "checkpoint_path"   # the key TuneReportCallback adds to each report


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


def _sampler(spec: dict):
    from ray import tune

    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
        raise ConfigError(f"a search-space entry must be one of {sorted(SAMPLERS)}, e.g. {{choice: [3, 4]}}; "
                          f"got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind in ("loguniform", "uniform", "randint"):
        return getattr(tune, kind)(*[float(a) if kind != "randint" else int(a) for a in args])
    return tune.grid_search(list(args)) if kind == "grid" else tune.choice(list(args))


def _values(spec: dict) -> list:
    """Values a sampler can give, to check them as config values before any trial starts."""
    kind, args = next(iter(spec.items()))
    return list(args) if kind in ("choice", "grid") else [args[0], args[1]] if kind != "randint" else [args[0], args[1] - 1]


def load_sweep(spec: str | dict, output: str | None = None) -> dict:
    """The sweep file, checked: its keys, the base config, every search key and the values it can take."""
    where = spec if isinstance(spec, str) else "the sweep"
    sweep = yaml.safe_load(Location.of(spec).read_text()) if isinstance(spec, str) else dict(spec)
    if not isinstance(sweep, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = sorted(set(sweep) - SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(SWEEP_KEYS))}")
    for key in ("data", "space"):
        if key not in sweep:
            raise ConfigError(f"{where}: the sweep has no '{key}' section")
    try:
        base = Config.from_dict(sweep.get("base"))
        for key, spec_ in sweep["space"].items():
            _sampler(spec_)
            for value in _values(spec_):
                base.with_overrides({key: value})
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    retries = sweep.setdefault("max_failures", 1)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ConfigError(f"{where}: max_failures must be a whole number >= 0, not {retries!r}")
    if float(sweep.get("trial_cpus", 0.01)) <= 0:
        raise ConfigError(f"{where}: trial_cpus must be > 0 (Tune cannot place an empty trial); use 0.01")
    name = Location.of(spec).stem if isinstance(spec, str) else "sweep"
    sweep["output"] = str(Location.of(output or sweep.get("output") or f"sweeps/{name}"))
    return sweep


def prepare_sweep_data(sweep: dict, folder: Location) -> Cache:
    """The cache every trial reads: given, or prepared once into the sweep's folder."""
    data = sweep["data"]
    if data.get("cache"):
        return Cache.open(data["cache"])
    cache = folder / "cache"
    if (cache / MANIFEST).is_file():
        return Cache.open(cache)
    from faceseg.data.prepare import find_source, prepare_cache

    source_dir = Location.of(data["data"]) if data.get("data") else folder / "data"
    if data.get("synth"):
        from faceseg.data.synth import write_synthetic_dataset

        write_synthetic_dataset(source_dir.local(), **data["synth"])
    size = int(data.get("size", Config().data.size))
    print(prepare_cache(find_source(str(source_dir)), cache, size, classes=data.get("classes", "own")).format(),
          flush=True)
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


def _scheduler(spec: dict | None, metric: str, mode: str):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    spec = dict(spec or {"type": "fifo"})
    kind = spec.pop("type", "asha")
    if kind == "fifo":
        return FIFOScheduler()
    if kind == "asha":
        return ASHAScheduler(metric=metric, mode=mode, time_attr="epoch", **spec)
    raise ConfigError(f"scheduler.type must be asha or fifo, not {kind!r}")


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


def sweep(spec: str | dict, *, output: str | None = None, resume: bool = False,
          address: str | None = None) -> SweepSummary:
    """Run the sweep `spec` (a sweep file or its dict) into its folder; everything is checked before Ray starts."""
    import ray.tune

    from faceseg.train.run import resolve_metric

    sweep_ = load_sweep(spec, output)
    folder = Location.of(sweep_["output"])
    base = sweep_.get("base") or {}
    scaling = Config.from_dict(base).scaling
    concurrent = int(sweep_.get("max_concurrent_trials", 1))
    trial_cpus = float(sweep_.get("trial_cpus", 0.01))
    if resume and not (folder / "tune").is_dir():
        raise FileNotFoundError(f"{folder / 'tune'}: no sweep to resume here")
    if sweep_["data"].get("cache"):
        Cache.open(sweep_["data"]["cache"])          # a missing cache fails now, not in every trial
    share = connect(address, Needs(cpus=concurrent * (trial_cpus + scaling.num_workers * scaling.cpus_per_worker),
                                   gpus=concurrent * scaling.num_workers * scaling.gpus_per_worker if scaling.use_gpu else 0,
                                   what=f"{concurrent} trial(s) of {scaling.num_workers} train worker(s)",
                                   flags="max_concurrent_trials or base.scaling in the sweep file"))
    start = time.perf_counter()
    folder.mkdir()
    cache = prepare_sweep_data(sweep_, folder)

    objective = sweep_.get("objective", {})
    metric = objective.get("metric", "auto")
    metric = resolve_metric(Config.from_dict(base).with_overrides({"train.metric": metric}), cache.taxonomy)
    mode = objective.get("mode", "max")
    trainable = ray.tune.with_resources(run_trial, {"CPU": trial_cpus})
    space = {"base": base, "cache": str(cache.location), "folder": str(folder), "cpu_share": share,
             "sampled": {key: _sampler(spec_) for key, spec_ in sweep_["space"].items()}}
    storage = {"storage_path": folder.uri if folder.is_local else folder.path,
               "storage_filesystem": None if folder.is_local else folder.filesystem}
    if resume:
        experiment = folder / "tune"
        tuner = ray.tune.Tuner.restore(experiment.uri if folder.is_local else experiment.path, trainable=trainable,
                                       resume_errored=True, storage_filesystem=storage["storage_filesystem"])
    else:
        tuner = ray.tune.Tuner(
            trainable, param_space=space,
            tune_config=ray.tune.TuneConfig(num_samples=int(sweep_.get("num_samples", 1)),
                                            max_concurrent_trials=concurrent,
                                            scheduler=_scheduler(sweep_.get("scheduler"), metric, mode)),
            # A trial whose process dies (a lost node, a crash inside Ray) runs again into its own run folder,
            # where Ray Train resumes it from its last checkpoint, as `faceseg train --resume` would.
            run_config=ray.tune.RunConfig(name="tune", **storage, failure_config=ray.tune.FailureConfig(
                max_failures=sweep_["max_failures"])),
        )
    results = tuner.fit()
    table = _trial_table(results, list(sweep_["space"]), metric, mode)
    (folder / "results.csv").write_text(table.to_csv(index=False))

    result, row = _best_report(results, metric, mode, folder)     # after results.csv: it says why, if none
    best_config = trial_config(base, result.config["sampled"], str(cache.location))
    (folder / "best_config.yaml").write_text(best_config.to_yaml())
    (folder / "best_model.keras").write_bytes((folder.sibling_path(row[CHECKPOINT_PATH]) / MODEL_FILE).read_bytes())
    best = {"metric": metric, "value": float(row[metric]), "trial": result.metrics.get("trial_id", "?"),
            "epoch": int(row["epoch"])}
    return SweepSummary(folder, table, best, time.perf_counter() - start)
