"""`faceseg train`: resolve the config and data, run the loop (Ray Train or local), export the run folder.

RUN/ config.yaml, metrics.jsonl, model.keras (best val_f1_overall), checkpoints/, tensorboard/
"""
from __future__ import annotations

import datetime
import shutil
from dataclasses import dataclass
from pathlib import Path

import ray.data

import faceseg  # noqa: F401
from faceseg.config import Config
from faceseg.data.cache import Cache
from faceseg.runtime import TRAIN_WORKER_ENV, init_ray, require_gpus
from faceseg.model.saved import MODEL_FILE
from faceseg.train.loop import HISTORY_FILE, read_history, train_loop, write_history
from faceseg.train.session import BEST_METRIC, LocalSession, RaySession

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    best: dict

    def format(self) -> str:
        best = self.best
        return "\n".join([
            f"trained {len(self.history)} epochs; best epoch {best['epoch']}: val F1 overall "
            f"{100 * best[BEST_METRIC]:.2f}%, pixel accuracy {100 * best['val_pixel_accuracy']:.2f}%, "
            f"mean IoU {100 * best['val_mean_iou']:.2f}%",
            f"run:      {self.run_dir}",
            f"model:    {self.run_dir / MODEL_FILE}",
            f"metrics:  {self.run_dir / HISTORY_FILE}",
            f"logs:     tensorboard --logdir {self.run_dir / 'tensorboard'}",
        ])


def _cli_overrides(args) -> dict:
    get = lambda name: getattr(args, name, None)  # noqa: E731
    return {
        "data.cache": get("cache"), "data.data": get("data"), "data.size": get("size"),
        "train.epochs": get("epochs"), "train.batch_size": get("batch_size"),
        "train.learning_rate": get("learning_rate"), "train.mixed_precision": get("mixed_precision"),
        "train.jit": get("jit"), "scaling.num_workers": get("num_workers"), "scaling.use_gpu": get("use_gpu"),
        "scaling.gpus_per_worker": get("gpus_per_worker"), "scaling.cpus_per_worker": get("cpus_per_worker"),
    }


def resolve_run(args) -> tuple[Config, Path]:
    """The run folder and its config: a resumed run's saved config, else YAML + command-line flags."""
    if getattr(args, "resume", None):
        run_dir = Path(args.resume).resolve()
        if not (run_dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{run_dir}: not a run folder (no {CONFIG_FILE}); nothing to resume")
        config = Config.from_yaml(run_dir / CONFIG_FILE)
        return config.with_overrides({"train.epochs": args.epochs}), run_dir
    config = Config.from_yaml(args.config) if getattr(args, "config", None) else Config()
    config = config.with_overrides(_cli_overrides(args))
    if args.cache:
        config = config.with_overrides({"data.data": None}) if config.data.data else config
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(getattr(args, "output", None) or f"runs/{stamp}").resolve()
    return config, run_dir


def ensure_cache(config: Config, run_dir: Path) -> Cache:
    """Open the configured cache, or prepare `data.data` into RUN/cache (once; reused on resume)."""
    if config.data.cache:
        return Cache.open(config.data.cache)
    if not config.data.data:
        raise ValueError("no training data: give --cache CACHE (from `faceseg prepare`) or --data DATA")
    cache_dir = run_dir / "cache"
    if not (cache_dir / "manifest.json").is_file():
        from faceseg.data.layouts import discover
        from faceseg.data.prepare import prepare_cache

        summary = prepare_cache(discover(Path(config.data.data), config.data.layout), cache_dir, config.data.size)
        print(summary.format())
    return Cache.open(cache_dir)


def _fit_ray(loop_config: dict, config: Config, cache: Cache, run_dir: Path, callbacks=()):
    """Ray Train: one worker per replica, MultiWorkerMirroredStrategy across them."""
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    # Workers print the epoch table; per-epoch Ray Data progress bars from every worker would bury it.
    ray.data.DataContext.get_current().enable_progress_bars = False

    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    trainer = TensorflowTrainer(
        ray_worker_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=resources),
        datasets={"train": cache.dataset("train"), "val": cache.dataset("val")},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(
            name=CHECKPOINTS, storage_path=str(run_dir),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=BEST_METRIC, checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            worker_runtime_env={"env_vars": TRAIN_WORKER_ENV},
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks),
        ),
    )
    result = trainer.fit()
    best_checkpoint, _ = max(result.best_checkpoints, key=lambda pair: pair[1][BEST_METRIC])
    return Path(best_checkpoint.path), Path(result.checkpoint.path)


def train_in_memory(cache: Cache, config: Config) -> bool:
    in_memory = cache.held_in_memory("train", config.data.in_memory)
    where = ("read from the Parquet cache once, then held in the train workers' memory" if in_memory
             else "streamed from the Parquet cache every epoch")
    print(f"train split: {cache.count('train')} images, {cache.split_bytes('train') / 2**20:.0f} MiB, {where} "
          f"(data.in_memory: {config.data.in_memory})", flush=True)
    return in_memory


def ray_worker_loop(loop_config: dict) -> None:
    train_loop(loop_config, RaySession())


def _fit_local(loop_config: dict, config: Config, cache: Cache, run_dir: Path):
    ray.data.DataContext.get_current().enable_progress_bars = False  # tqdm shows the epoch's progress
    session = LocalSession(cache.dataset("train"), cache.dataset("val"), run_dir / CHECKPOINTS / "local")
    train_loop(loop_config, session)
    return session.best_checkpoint(), session.latest_checkpoint()


def run_training(args) -> TrainResult:
    """`faceseg train`: the command line's config and run folder, on a joined or local Ray runtime."""
    config, run_dir = resolve_run(args)
    local = bool(getattr(args, "local", False))
    reserved = 0.0 if local else config.scaling.num_workers * config.scaling.cpus_per_worker
    started_here = init_ray(getattr(args, "address", None), reserved_cpus=reserved)
    if started_here and config.scaling.use_gpu and not local:
        require_gpus(config.scaling.num_workers * config.scaling.gpus_per_worker)
    return train(config, run_dir, local)


def train(config: Config, run_dir: Path, local: bool = False, callbacks=()) -> TrainResult:
    """Train `config` into `run_dir` (Ray must be up); `callbacks` are Ray Train callbacks (Tune's)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cache = ensure_cache(config, run_dir)
    config = config.with_overrides({"data.cache": str(cache.path), "data.size": cache.size})
    config.to_yaml(run_dir / CONFIG_FILE)
    mode = "local, one process" if local else f"Ray Train, {config.scaling.num_workers} worker(s)"
    print(f"training {mode}: {cache.count('train')} train / {cache.count('val')} val images at "
          f"{cache.size} px, {config.train.epochs} epochs -> {run_dir}", flush=True)
    loop_config = {"config": config.to_dict(), "train_rows": cache.count("train"), "run_dir": str(run_dir),
                   "train_in_memory": train_in_memory(cache, config),
                   "class_frequency": list(cache.manifest["class_pixel_frequency"].values())}

    if local:
        best, latest = _fit_local(loop_config, config, cache, run_dir)
    else:
        best, latest = _fit_ray(loop_config, config, cache, run_dir, callbacks)
    shutil.copyfile(best / MODEL_FILE, run_dir / MODEL_FILE)
    history = read_history(latest)
    write_history(run_dir / HISTORY_FILE, history)
    best_row = max(history, key=lambda row: row[BEST_METRIC])
    return TrainResult(run_dir, history, best_row)
