"""`faceseg prepare`: Ray Data preprocessing of a data set into the Parquet cache (docs/data.md).

   every split's samples --from_items--> map_batches(decode, resize) --write_parquet--> CACHE/split=<split>/
                                               |
                                               +--> one tally file per batch: bad files, rows, class pixel counts

One pipeline for all splits (Hive-partitioned by `split`): a Ray Data execution has a start and a tail
of idle cores, and a pipeline per split paid them once per split.

A cache is complete when its manifest.json is there, and the manifest is written last. On a local disk
the cache is built in a temporary sibling folder and renamed into place, so a failed run never touches
an existing cache; on an object store (no rename) the files are written in place and a reader refuses
the folder until the manifest appears.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

import faceseg
from faceseg.config import check_value, default
from faceseg.errors import FacesegError
from faceseg.data.cache import FORMAT, MANIFEST, PARQUET_OPTIONS, encode_tensor
from faceseg.data.decode import BadFileError, class_pixel_counts, load_sample
from faceseg.data.layouts import SPLITS, DatasetError, Sample, Source, discover, discover_pairs, hold_out_validation
from faceseg.labels import HELEN, Remap, build_remap
from faceseg.runtime import connect
from faceseg.storage import Location, check_writable, refuse_links_inside

BATCH_SIZE = 16
TASKS_PER_CPU = 4          # waves of tasks per core: the last wave leaves cores idle, so not too few
ROWS_PER_TASK = (16, 256)  # a task's rows, each task writes one file; at most ~70 MB of 256 px rows
TALLY_DIR = "_tally"


def rows_per_task(samples: int) -> int:
    """Few, long tasks: each task costs scheduling time in which its core can idle (design.md)."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0)
    low, high = ROWS_PER_TASK
    return int(min(high, max(low, math.ceil(samples / (TASKS_PER_CPU * cpus)))))


class PrepareError(FacesegError):
    pass


@dataclass
class Tally:
    """What the decode tasks saw: good rows and class pixel counts per split, and the bad files.

    Each batch leaves its tally as a file named after its samples, next to the cache being written (so
    on storage every node sees), which the driver sums after the write. A file rather than an actor: a
    retried task overwrites its own tally instead of counting twice, and no extra worker process starts.
    """
    rows: dict[str, int] = field(default_factory=dict)
    pixels: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def write(self, folder: Location, sample_paths) -> None:
        name = hashlib.sha1("\n".join(sample_paths).encode()).hexdigest()
        (folder / f"{name}.json").write_text(json.dumps({
            "rows": self.rows, "pixels": {split: counts.tolist() for split, counts in self.pixels.items()},
            "problems": self.problems}))

    @classmethod
    def read(cls, folder: Location) -> "Tally":
        total = cls()
        for path in folder.files():
            if path.suffix != ".json":
                continue
            part = json.loads(path.read_text())
            for split, rows in part["rows"].items():
                total.rows[split] = total.rows.get(split, 0) + rows
                total.pixels[split] = total.pixels.get(split, 0) + np.array(part["pixels"][split], np.int64)
            total.problems.extend(tuple(problem) for problem in part["problems"])
        return total


def decode_batch(batch: dict, remap: Remap, size: int, tally_dir: str) -> pa.Table:
    """Ray Data map_batches: rows of sample fields -> rows of the cache; bad files go to the tally."""
    rows, problems = [], []
    for i in range(len(batch["name"])):
        sample = Sample.from_row({key: column[i] for key, column in batch.items()})
        try:
            rows.append(load_sample(sample, remap, size))
        except BadFileError as error:
            problems.append((error.path, error.reason))
    masks = np.stack([r["mask"] for r in rows]) if rows else np.zeros((0, size, size), np.uint8)  # (B, S, S)
    images = np.stack([r["image"] for r in rows]) if rows else np.zeros((0, size, size, 3), np.uint8)  # (B, S, S, 3)
    splits = np.array([r["split"] for r in rows], dtype=object)
    counts = {split: int((splits == split).sum()) for split in set(splits)}   # a batch may straddle two splits
    pixels = {split: class_pixel_counts(masks[splits == split], remap.target.num_classes) for split in counts}
    Tally(counts, pixels, problems).write(Location.of(tally_dir), batch["image"])
    return pa.table({
        "image": encode_tensor(images), "mask": encode_tensor(masks),
        "name": pa.array([r["name"] for r in rows], pa.string()),
        "height": pa.array([r["height"] for r in rows], pa.int32()),
        "width": pa.array([r["width"] for r in rows], pa.int32()),
        "split": pa.array([r["split"] for r in rows], pa.string()),
    })


@dataclass
class PrepareSummary:
    cache: Location
    counts: dict[str, int]
    skipped: list[tuple[str, str]]
    seconds: float
    classes: tuple[str, ...] = ()

    @property
    def images_per_second(self) -> float:
        return sum(self.counts.values()) / max(self.seconds, 1e-9)

    def format(self) -> str:
        lines = [f"prepared {sum(self.counts.values())} images in {self.seconds:.1f} s "
                 f"({self.images_per_second:.1f} images/s), {len(self.classes)} classes"]
        lines += [f"  {split:<5} {n:>7} rows" for split, n in self.counts.items()]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} bad file(s) (listed in {MANIFEST})")
        lines.append(f"cache: {self.cache}")
        return "\n".join(lines)


def report_problems(problems: list[tuple[str, str]], strict: bool, what: str = "file") -> None:
    for path, reason in problems:
        print(f"  bad {what}: {path}: {reason}")
    if problems and strict:
        raise PrepareError(f"{len(problems)} bad {what}(s) and --strict is set; first: "
                           f"{problems[0][0]}: {problems[0][1]}")


def cache_remap(source: Source, classes: str) -> Remap:
    """The data set's own classes, or Helen's 11 by name (classes without a counterpart -> background)."""
    check_value("data.classes", classes)
    return build_remap(source.taxonomy, HELEN if classes == "helen" else None, allow_unmapped=True)


def _check_destination(out: Location, source: Source) -> None:
    if out.contains(source.root):
        raise PrepareError(f"{out}: the cache would replace the data set itself; choose another --out")
    if out.is_file():
        raise PrepareError(f"{out}: is a file; --out names the cache folder to write")
    if out.is_dir() and not (out / MANIFEST).is_file() and not _is_partial_cache(out) and out.list():
        raise PrepareError(f"{out}: exists and is not a faceseg cache; refusing to overwrite it")
    foreign = [entry.name for entry, _ in out.list() if not _is_cache_entry(entry.name)] if out.is_dir() else []
    if foreign:
        raise PrepareError(f"{out}: a cache folder that also holds {', '.join(foreign[:3])}, which faceseg did not "
                           "write; refusing to replace it")
    refuse_links_inside(out, "--out")


def _is_cache_entry(name: str) -> bool:
    return name == MANIFEST or name.startswith("split=") or name == TALLY_DIR


def _is_partial_cache(folder: Location) -> bool:
    """What an interrupted prepare leaves on an object store: split folders and tallies, no manifest."""
    names = [entry.name for entry, _ in folder.list()]
    return bool(names) and all(_is_cache_entry(n) for n in names if n != MANIFEST)


def prepare_cache(source: Source, out: Location | str, size: int = default("data.size"), strict: bool = False,
                  classes: str = "own", val_fraction: float = default("data.val_fraction")) -> PrepareSummary:
    """Decode `source` into the Parquet cache at `out` (Ray must be up); returns what was written."""
    import ray.data

    out = Location.of(out)
    start = time.perf_counter()
    remap = cache_remap(source, classes)
    _check_destination(out, source)
    report_problems(source.problems, strict)
    samples = hold_out_validation(source.samples, val_fraction)
    if not samples:
        raise PrepareError(f"{source.root}: no usable image/label pairs found")
    print(f"{source.layout} data set at {source.root}: {len(samples)} pairs; classes from {source.names_from}; "
          f"{remap.describe()}; {remap.target.describe_flip()}", flush=True)

    if out.is_local:
        out.parent.mkdir()
        work = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    else:
        (out / MANIFEST).delete()     # from here on, readers see no cache here until the new manifest
        for entry, _ in out.list():
            entry.delete()
        work = out
    work.mkdir()   # here, not in a Ray task: an unwritable destination is a plain error before any work
    tally_dir = work / TALLY_DIR
    tally_dir.mkdir()
    try:
        in_split_order = sorted(samples, key=lambda s: SPLITS.index(s.split))  # mostly one split per file
        dataset = ray.data.from_items([s.to_row() for s in in_split_order],
                                      override_num_blocks=math.ceil(len(samples) / rows_per_task(len(samples))))
        # Every task unpickles its arguments: the remap, not the Source with its list of every sample.
        dataset = dataset.map_batches(decode_batch, batch_size=BATCH_SIZE, batch_format="numpy",
                                      fn_kwargs={"remap": remap, "size": size, "tally_dir": str(tally_dir)})
        dataset.write_parquet(work.path, filesystem=work.filesystem, partition_cols=["split"], **PARQUET_OPTIONS)
        tally = Tally.read(tally_dir)
        tally_dir.delete()
        report_problems(tally.problems, strict)
        counts = {split: tally.rows[split] for split in SPLITS if tally.rows.get(split)}
        if not counts:
            raise PrepareError(f"{source.root}: every file was bad; nothing to cache")
        _write_manifest(work, source, remap, size, classes, counts, tally.pixels, source.problems + tally.problems,
                        val_fraction)
        if out.is_local:
            _replace_folder(work, out)
    except BaseException:
        if out.is_local:
            work.delete()
        raise
    return PrepareSummary(out, counts, source.problems + tally.problems, time.perf_counter() - start,
                          remap.target.names)


def _replace_folder(work: Location, out: Location) -> None:
    """Rename the finished cache into place; an old cache there goes only once the new one is in."""
    import os

    if out.exists():
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out.uri, trash.uri)
        os.rename(work.uri, out.uri)
        trash.delete()
    else:
        os.rename(work.uri, out.uri)


def _write_manifest(folder: Location, source: Source, remap: Remap, size: int, classes: str, counts: dict,
                    pixels: dict, skipped, val_fraction: float) -> None:
    train_pixels = pixels.get("train", sum(pixels.values()))
    frequency = train_pixels / max(train_pixels.sum(), 1)
    taxonomy = remap.target
    manifest = {
        "format": FORMAT, "source": str(source.root), "layout": source.layout, "size": size, "classes": classes,
        "val_fraction": val_fraction, "counts": counts, "label_names": list(taxonomy.names),
        "class_pixel_frequency": [round(float(f), 6) for f in frequency],
        "source_label_names": list(source.taxonomy.names), "remap": remap.describe(),
        "flip_pairs": [[taxonomy.names[a], taxonomy.names[b]] for a, b in taxonomy.flip_pairs],
        "skipped": [{"file": path, "reason": reason} for path, reason in skipped],
        "faceseg_version": faceseg.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def find_source(data: str | None = None, *, layout: str = "auto", label_names: str | None = None,
                images: str | None = None, masks: str | None = None) -> Source:
    """A data set folder of any layout, or two folders of images and label maps paired by name."""
    if images:
        return discover_pairs(images, masks, label_names)
    if not data:
        raise DatasetError("give a data set folder, or --images DIR --masks DIR")
    return discover(data, layout, label_names)


def prepare(data: str | None, out: str, *, size: int = default("data.size"), layout: str = "auto",
            label_names: str | None = None, classes: str = "own", images: str | None = None,
            masks: str | None = None, strict: bool = False, address: str | None = None) -> PrepareSummary:
    """`faceseg prepare`: find the data set, check the destination, then decode it on Ray."""
    size = check_value("data.size", size)
    source = find_source(data, layout=layout, label_names=label_names, images=images, masks=masks)
    _check_destination(Location.of(out), source)
    check_writable(Location.of(out), "--out")
    cache_remap(source, classes)
    connect(address)
    return prepare_cache(source, out, size, strict, classes)
