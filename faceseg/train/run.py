"""`faceseg train`: check the config, the data and the run folder, run the loop (Ray Train or local), and
leave the run folder complete (docs/runs.md; the names are in train/layout.py).

RUN may be a local folder or a URI (s3://bucket/runs/r1): every file goes through pyarrow.fs, and Ray
Train's checkpoints go to RUN/checkpoints on the same storage.
"""
from __future__ import annotations

import datetime
import fnmatch
import json
from dataclasses import dataclass

import numpy as np

from faceseg.config import Config, ConfigError
from faceseg.data.cache import MANIFEST, TENSOR_COLUMNS, Cache
from faceseg.labels import Taxonomy
from faceseg.model.saved import architecture_of, inspect_model
from faceseg.runtime import Needs, connect, train_worker_runtime_env
from faceseg.storage import Location, check_writable
from faceseg.train.checkpoint import candidates, history_text, newest_manifest, read_history_text
from faceseg.train.layout import (CACHE_DIR, CHECKPOINT_MANIFEST, CHECKPOINTS, CONFIG_FILE, HISTORY_FILE,
                                  MODEL_FILE, RUN_FILES, TENSORBOARD, RunError, checkpoint_roots, is_run,
                                  saved_config)
from faceseg.train.spec import LoopSpec

RESUMABLE = ("train.epochs", "data.in_memory", "scaling.")   # what --resume may change
ARCHITECTURE = ("depth", "base_filters", "upsampling", "batch_norm")   # what the weights' shapes follow


@dataclass
class RunSummary:
    run: Location
    history: list[dict]
    best: dict
    metric: str
    final_model: str = "best"       # train.final_model: which epoch model.keras holds

    def format(self) -> str:
        best, last = self.best, self.history[-1]
        kept = best if self.final_model == "best" else last
        return "\n".join([
            f"trained {len(self.history)} epochs; best epoch {best['epoch']}: {self.metric} {100 * best[self.metric]:.2f}%, "
            f"pixel accuracy {100 * best['val_pixel_accuracy']:.2f}%, mean IoU {100 * best['val_mean_iou']:.2f}%",
            f"run:      {self.run}",
            f"model:    {self.run / MODEL_FILE} (epoch {kept['epoch']}, the {self.final_model}: {self.metric} "
            f"{100 * kept[self.metric]:.2f}%)",
            f"metrics:  {self.run / HISTORY_FILE}",
            f"logs:     tensorboard --logdir {self.run / TENSORBOARD}",
        ])


# --- the run folder -----------------------------------------------------------------------------------------

def _intent(config: Config) -> dict:
    """The config's keys that say what a run IS, with the values faceseg derives left out: a run from a
    raw data set records its cache (RUN/cache), a run from a cache records the cache's size."""
    flat = config.flat()
    if config.data.data:
        flat.pop("data.cache")
    else:
        flat.pop("data.size")
    return {key: value for key, value in flat.items() if not key.startswith(RESUMABLE)}


def _differences(mine: dict, theirs: dict) -> str:
    changed = [key for key in sorted(set(mine) | set(theirs)) if mine.get(key) != theirs.get(key)]
    return "; ".join(f"{key}: the run has {theirs.get(key)!r}, not {mine.get(key)!r}" for key in changed)


def open_run(run: Location, config: Config, resume: bool, overwrite: bool) -> Config:
    """The config to train with; refuses to reuse a run folder silently (docs/runs.md, "Run folders")."""
    if resume:
        saved = saved_config(run)
        details = _differences(_intent(config), _intent(saved))
        if details:
            raise RunError(f"--resume {run}: the config differs from the run's ({details}). Only train.epochs, "
                           "data.in_memory and scaling.* may change; train anew into another --output")
        newest = newest_checkpoint_config(run)
        if newest is not None and (differences := _differences(_intent(saved), _intent(newest))):
            raise RunError(f"--resume {run}: {run / CONFIG_FILE} differs from the config its checkpoints were "
                           f"trained with ({differences}); it was edited by hand? Put it back, or train anew")
        return saved.with_overrides({key: value for key, value in config.flat().items() if key.startswith(RESUMABLE)})
    if is_run(run):
        if not overwrite:
            raise RunError(f"--output {run}: a faceseg run is there already; add --resume to continue it, "
                           "--overwrite to start it again, or choose another folder")
        for name in RUN_FILES:      # faceseg's own files, by name; nothing else in the folder is touched
            (run / name).delete()
    elif run.is_file():
        raise RunError(f"--output {run}: is a file; expected a run folder")
    elif run.is_dir() and run.list():
        raise RunError(f"--output {run}: exists and is not a faceseg run folder (no {CONFIG_FILE}); "
                       "choose a new or empty folder")
    return config


def newest_checkpoint_config(run: Location) -> Config | None:
    """The config.yaml inside the run's newest checkpoint that has one."""
    for location in candidates(checkpoint_roots(run)):
        try:
            return Config.from_yaml(location / CONFIG_FILE)
        except (OSError, ConfigError):
            continue
    return None


def resolve_metric(config: Config, taxonomy: Taxonomy) -> str:
    """train.metric, with `auto` made concrete for these classes; refused when the run cannot report it."""
    metric = taxonomy.default_metric if config.train.metric == "auto" else config.train.metric
    allowed = [name for name in taxonomy.metric_names() if name != "val_loss"]
    if metric not in allowed:
        raise ConfigError(f"train.metric: {metric!r} is not reported for the classes {', '.join(taxonomy.names)}; "
                          f"choose from auto, {', '.join(allowed)}")
    return metric


def _data_plan(config: Config, run: Location) -> tuple[Taxonomy, int, object]:
    """(classes, size, Cache or Source) of the data a run will read, found without Ray."""
    if config.data.cache:
        cache = Cache.open(config.data.cache)
        cache.check_files()
        return cache.taxonomy, cache.size, cache
    if not config.data.data:
        raise ConfigError("no training data: give --cache CACHE (from `faceseg prepare`) or --data DATA")
    from faceseg.data.prepare import cache_remap, find_source

    existing = run / CACHE_DIR / MANIFEST
    if existing.is_file():     # a resumed run's own cache: reused only if it is what the config asks for
        cache = Cache.open(run / CACHE_DIR)
        wanted = {"source": str(Location.of(config.data.data)), "size": config.data.size, "classes": config.data.classes,
                  "val_fraction": config.data.val_fraction}
        found = {key: cache.manifest.get(key, 0.1 if key == "val_fraction" else None) for key in wanted}
        if found != wanted:
            raise RunError(f"{run / CACHE_DIR} was prepared from {found}, not {wanted}; train anew into another --output")
        cache.check_files()
        return cache.taxonomy, cache.size, cache
    source = find_source(config.data.data, layout=config.data.layout)
    return cache_remap(source, config.data.classes).target, config.data.size, source


def ensure_cache(config: Config, run: Location, plan) -> Cache:
    """The configured cache, or `data.data` prepared into RUN/cache (once; reused on resume)."""
    if isinstance(plan, Cache):
        return plan
    from faceseg.data.prepare import prepare_cache

    print(prepare_cache(plan, run / CACHE_DIR, config.data.size, classes=config.data.classes,
                        val_fraction=config.data.val_fraction).format(), flush=True)
    return Cache.open(run / CACHE_DIR)


def with_init(config: Config, init: str | None, taxonomy: Taxonomy) -> Config:
    """`train --init MODEL`: the run takes MODEL's architecture (the shapes its weights have), and says what
    it keeps: everything when the classes are the same, else all but the last layer. A config that asks
    for another architecture than both the default and MODEL's is refused."""
    if init is None:
        return config
    source = inspect_model(init)
    theirs = architecture_of(source)
    mine = {key: getattr(config.model, key) for key in ARCHITECTURE}
    default = {key: getattr(Config().model, key) for key in ARCHITECTURE}
    if mine != theirs and mine != default:
        details = ", ".join(f"model.{key}={theirs[key]!r} (asked {mine[key]!r})" for key in ARCHITECTURE
                            if mine[key] != theirs[key])
        raise ConfigError(f"--init {init}: the model's layers are {details}; its weights fit no other shapes. "
                          "Leave these options out (they are taken from the model) or train without --init")
    config = config.with_overrides({f"model.{key}": value for key, value in theirs.items()})
    if source.taxonomy == taxonomy:
        kept = f"every layer (the same {taxonomy.num_classes} classes)"
    else:
        kept = (f"the encoder and decoder; a new last layer for the data's {taxonomy.num_classes} classes "
                f"({', '.join(taxonomy.names)}) instead of the model's {source.taxonomy.num_classes} "
                f"({', '.join(source.taxonomy.names)})")
    print(f"--init {init}: starting from its weights: {kept}", flush=True)
    return config


# --- fitting ----------------------------------------------------------------------------------------------------

def repeat_rows(batch, times: dict[str, int]):
    """Ray Data map_batches over Arrow blocks: each row whose name is in `times` that many times, the others once."""
    counts = np.array([times.get(str(name), 1) for name in batch.column("name").to_pylist()])
    return batch.take(np.repeat(np.arange(batch.num_rows), counts))


def train_split(cache: Cache, repeat: dict[str, int], seed: int = 0):
    """(Ray Dataset, rows) of the train split, each image whose name matches a `train.repeat` glob in it as
    many times as the largest matching pattern says; prints what each pattern matched. Its files come in a
    new order every epoch (from `seed`): a streamed epoch's shuffle window mixes the rows it is given."""
    # "name" rides along so that a held shard can put its rows in a fixed order (input.read_shard).
    dataset = cache.dataset("train", columns=(*TENSOR_COLUMNS, "name"), decoded=False, shuffle_seed=seed)
    if not repeat:
        return dataset, cache.count("train")
    names = [str(name) for name in cache.arrays("train", columns=("name",))["name"]]
    times: dict[str, int] = {}
    for pattern, count in repeat.items():
        hits = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        for name in hits:
            times[name] = max(times.get(name, 1), count)
        print(f"train.repeat: {pattern!r} x{count} matches {len(hits)} of {len(names)} train images"
              + ("" if hits else "; nothing repeated (image names are file stems, e.g. " + repr(names[0]) + ")"),
              flush=True)
    rows = sum(times.get(name, 1) for name in names)
    return dataset.map_batches(repeat_rows, batch_format="pyarrow", batch_size=None, fn_kwargs={"times": times}), rows


def ray_worker_loop(spec: LoopSpec) -> None:
    from faceseg.train.loop import train_loop
    from faceseg.train.session import RaySession

    train_loop(spec, RaySession(Location.of(spec.run)))


def without_progress_bars(*datasets):
    """The datasets training reads, quiet: the epoch table (and --local's tqdm bar) is the progress report,
    and Ray Data's bars in a worker's log are lines of escape codes. A dataset runs with the DataContext
    it was made with, so the setting goes there (this process's current context is left alone)."""
    for dataset in datasets:
        dataset.context.enable_progress_bars = False
    return datasets


def _fit_ray(spec: LoopSpec, cache: Cache, train_data, run: Location, cpu_share: float,
             callbacks=()) -> tuple[Location, Location]:
    """Ray Train: one worker per replica, MultiWorkerMirroredStrategy across them."""
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    train_data, val_data = without_progress_bars(train_data, cache.dataset("val"))
    scaling = spec.config.scaling
    resources = {"CPU": scaling.cpus_per_worker * cpu_share, **scaling.worker_resources}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    trainer = TensorflowTrainer(
        ray_worker_loop,
        train_loop_config=spec,
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=resources),
        datasets={"train": train_data, "val": val_data},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(
            name=CHECKPOINTS, storage_path=run.path if not run.is_local else run.uri,
            storage_filesystem=None if run.is_local else run.filesystem,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=spec.metric, checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            worker_runtime_env=train_worker_runtime_env(),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as error:
        raise TrainingError(_root_cause(error)) from None
    best_checkpoint, _ = max(result.best_checkpoints, key=lambda pair: pair[1][spec.metric])
    return (run / CHECKPOINTS / best_checkpoint.path.rstrip("/").rsplit("/", 1)[-1],
            run / CHECKPOINTS / result.checkpoint.path.rstrip("/").rsplit("/", 1)[-1])


class TrainingError(RuntimeError):
    """Ray Train gave up (after max_failures); the message is the cause's last line."""


def _root_cause(error: BaseException) -> str:
    """The last line of the innermost error: 'disk full at ...', not a page of Ray's wrappers."""
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(" ")]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return f"training failed: {line.strip()}"
    return f"training failed: {lines[-1] if lines else error.__class__.__name__}"


def _fit_local(spec: LoopSpec, cache: Cache, train_data, run: Location) -> tuple[Location, Location]:
    from faceseg.train.loop import train_loop
    from faceseg.train.session import LocalSession

    session = LocalSession(*without_progress_bars(train_data, cache.dataset("val")), run, spec.metric)
    train_loop(spec, session)
    kept = candidates(session.checkpoint_root)     # the newest first
    scores = [json.loads((c / CHECKPOINT_MANIFEST).read_text())["metrics"][spec.metric] for c in kept]
    return kept[scores.index(max(scores))], kept[0]


def fit_run(config: Config, run: Location, plan, *, local: bool = False, cpu_share: float = 1.0,
            callbacks=(), init: str | None = None) -> RunSummary:
    """Train `config` into `run` on the Ray runtime this process is connected to (Tune trials call this)."""
    run.mkdir()
    cache = ensure_cache(config, run, plan)
    config = config.with_overrides({"data.cache": str(cache.location), "data.size": cache.size})
    (run / CONFIG_FILE).write_text(config.to_yaml())
    taxonomy = cache.taxonomy
    metric = resolve_metric(config, taxonomy)
    on_device = config.train.augment_on == "device" or (config.train.augment_on == "auto" and config.scaling.use_gpu)
    mode = "local, one process" if local else f"Ray Train, {config.scaling.num_workers} worker(s)"
    train_data, train_rows = train_split(cache, config.train.repeat, config.train.seed)
    print(f"training {mode}: {train_rows} train / {cache.count('val')} val images at {cache.size} px, "
          f"{taxonomy.num_classes} classes, {config.train.epochs} epochs, best epoch by {metric}, model.keras from "
          f"the {config.train.final_model} epoch -> {run}", flush=True)
    spec = LoopSpec(config=config, run=str(run), train_rows=train_rows,
                    train_in_memory=train_in_memory(cache, config, on_device, train_rows),
                    class_frequency=tuple(cache.class_frequency), classes=taxonomy.names, size=cache.size,
                    metric=metric, augment_on_device=on_device, init=init)
    if local:
        best, latest = _fit_local(spec, cache, train_data, run)
    else:
        best, latest = _fit_ray(spec, cache, train_data, run, cpu_share, callbacks)
    kept = latest if config.train.final_model == "last" else best
    (run / MODEL_FILE).write_bytes((kept / MODEL_FILE).read_bytes())
    history = read_history_text((latest / HISTORY_FILE).read_text(), str(latest / HISTORY_FILE))
    (run / HISTORY_FILE).write_text(history_text(history))
    return RunSummary(run, history, max(history, key=lambda row: row[metric]), metric, config.train.final_model)


def train_in_memory(cache: Cache, config: Config, augment_on_device: bool, rows: int) -> bool:
    # A held split flipped on the CPU is held twice, as stored and mirrored (train/input.py, read_shard);
    # train.repeat holds a repeated image as often as it is repeated.
    copies = 2 if config.train.augment != "none" and not augment_on_device else 1
    share = rows / cache.count("train")          # of the stored split
    in_memory = cache.held_in_memory("train", config.data.in_memory, copies * share)
    where = ("read from the Parquet cache once, then held in the train workers' memory"
             + (" with a mirrored copy" if copies == 2 else "") if in_memory
             else "streamed from the Parquet cache every epoch")
    print(f"train split: {rows} images, {cache.split_bytes('train') * share / 2**20:.0f} MiB, "
          f"{where} (data.in_memory: {config.data.in_memory})", flush=True)
    return in_memory


def training_needs(config: Config, local: bool) -> Needs:
    if local:
        return Needs()
    scaling = config.scaling
    return Needs(cpus=scaling.num_workers * scaling.cpus_per_worker,
                 gpus=scaling.num_workers * scaling.gpus_per_worker if scaling.use_gpu else 0.0,
                 resources={name: scaling.num_workers * amount for name, amount in scaling.worker_resources.items()},
                 what=f"{scaling.num_workers} train worker(s) x {scaling.cpus_per_worker:g} CPU",
                 flags="--num-workers, --set scaling.cpus_per_worker=... or --use-gpu")


def train(config: Config, output: str | Location | None = None, *, resume: bool = False, overwrite: bool = False,
          local: bool = False, init: str | None = None, address: str | None = None) -> RunSummary:
    """Train `config` into the run folder `output` (default runs/<timestamp>).

    Checked before Ray starts: the run folder (an existing run needs resume=True or overwrite=True, and a
    resume may change only train.epochs, data.in_memory and scaling.*), that it can be written, the data,
    the metric, `init` (a model to start from: a shipped name, a run folder or a .keras file), and that a
    resumed run's checkpoints were trained on the same classes and size.
    """
    run = Location.of(output or f"runs/{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if resume and init:
        raise RunError("--resume continues a run from its own checkpoints; --init starts a new one. Give one")
    config = open_run(run, config, resume, overwrite)
    check_writable(run, "--output")
    taxonomy, size, plan = _data_plan(config, run)
    resolve_metric(config, taxonomy)
    config = with_init(config, init, taxonomy)
    if resume:
        newest = newest_manifest(checkpoint_roots(run))
        if newest and (newest.get("classes") != list(taxonomy.names) or newest.get("size") != size):
            raise RunError(f"--resume {run}: its checkpoints were trained on {len(newest.get('classes', []))} classes "
                           f"({', '.join(newest.get('classes', []))}) at {newest.get('size')} px; the data has "
                           f"{taxonomy.num_classes} ({', '.join(taxonomy.names)}) at {size} px")
    share = connect(address, training_needs(config, local))
    return fit_run(config, run, plan, local=local, cpu_share=share, init=_portable(init))


def _portable(init: str | None) -> str | None:
    """What every worker can open: a shipped model's name as it is, anything else as a full URI."""
    from faceseg.model.zoo import is_shipped

    return init if init is None or is_shipped(init) else str(Location.of(init))
