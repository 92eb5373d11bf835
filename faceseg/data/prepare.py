"""`faceseg prepare`: Ray Data preprocessing of a data set into the Parquet cache (CONVENTIONS section 3).

   every split's samples --from_items--> map_batches(decode, resize) --write_parquet--> CACHE/split=<split>/
                                               |
                                               +--> Tally actor: bad files, rows, class pixel counts

One pipeline for all splits (Hive-partitioned by `split`): a Ray Data execution has a start and a tail
of idle cores, and a pipeline per split paid them once per split.

The cache is built in a temporary sibling folder and renamed into place at the end, so a failed or
interrupted run never leaves a half-written cache.
"""
from __future__ import annotations

import datetime
import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

import faceseg
from faceseg.data.cache import FORMAT, MANIFEST, PARQUET_OPTIONS, encode_tensor
from faceseg.data.decode import BadFileError, class_pixel_counts, load_sample
from faceseg.data.layouts import SPLITS, Sample, Source, hold_out_validation
from faceseg.labels import LABEL_NAMES, NUM_CLASSES

BATCH_SIZE = 16
ROWS_PER_TASK = 64   # many short equal tasks (each writes one file) keep every core busy to the end


class PrepareError(ValueError):
    pass


@ray.remote(num_cpus=0)
class Tally:
    """Collects what the decode tasks saw: bad files, good rows and class pixel counts per split."""

    def __init__(self):
        self.problems: list[tuple[str, str]] = []
        self.rows: dict[str, int] = {}
        self.pixels: dict[str, np.ndarray] = {}

    def add(self, rows: dict[str, int], pixels: dict[str, np.ndarray], problems: list) -> None:
        for split in rows:
            self.rows[split] = self.rows.get(split, 0) + rows[split]
            self.pixels[split] = self.pixels.get(split, np.zeros(NUM_CLASSES, np.int64)) + pixels[split]
        self.problems.extend(problems)

    def result(self) -> tuple[dict, dict, list]:
        return self.rows, self.pixels, self.problems


def decode_batch(batch: dict, source: Source, size: int, tally) -> pa.Table:
    """Ray Data map_batches: rows of sample fields -> rows of the cache; bad files go to the tally."""
    rows, problems = [], []
    for i in range(len(batch["name"])):
        sample = Sample.from_row({key: column[i] for key, column in batch.items()})
        try:
            rows.append(load_sample(sample, source.remap, size))
        except BadFileError as error:
            problems.append((error.path, error.reason))
    masks = np.stack([r["mask"] for r in rows]) if rows else np.zeros((0, size, size), np.uint8)  # (B, S, S)
    images = np.stack([r["image"] for r in rows]) if rows else np.zeros((0, size, size, 3), np.uint8)  # (B, S, S, 3)
    splits = np.array([r["split"] for r in rows], dtype=object)
    counts = {split: int((splits == split).sum()) for split in set(splits)}   # a batch may straddle two splits
    pixels = {split: class_pixel_counts(masks[splits == split]) for split in counts}
    ray.get(tally.add.remote(counts, pixels, problems))
    return pa.table({
        "image": encode_tensor(images), "mask": encode_tensor(masks),
        "name": pa.array([r["name"] for r in rows], pa.string()),
        "height": pa.array([r["height"] for r in rows], pa.int32()),
        "width": pa.array([r["width"] for r in rows], pa.int32()),
        "split": pa.array([r["split"] for r in rows], pa.string()),
    })


@dataclass
class PrepareSummary:
    cache: Path
    counts: dict[str, int]
    skipped: list[tuple[str, str]]
    bytes: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return sum(self.counts.values()) / max(self.seconds, 1e-9)

    def format(self) -> str:
        lines = [f"prepared {sum(self.counts.values())} images in {self.seconds:.1f} s "
                 f"({self.images_per_second:.1f} images/s), {self.bytes / 2**20:.1f} MiB"]
        lines += [f"  {split:<5} {n:>7} rows" for split, n in self.counts.items()]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} bad file(s) (listed in {MANIFEST})")
        lines.append(f"cache: {self.cache}")
        return "\n".join(lines)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _replace_folder(tmp: Path, out: Path) -> None:
    if out.exists():
        if not (out / MANIFEST).is_file() and any(out.iterdir()):
            raise PrepareError(f"{out}: exists and is not a faceseg cache; refusing to overwrite it")
        trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        out.rename(trash)
        tmp.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out)


def report_problems(problems: list[tuple[str, str]], strict: bool, what: str = "file") -> None:
    for path, reason in problems:
        print(f"  bad {what}: {path}: {reason}")
    if problems and strict:
        raise PrepareError(f"{len(problems)} bad {what}(s) and --strict is set; first: "
                           f"{problems[0][0]}: {problems[0][1]}")


def prepare_cache(source: Source, out: Path | str, size: int = 256, strict: bool = False) -> PrepareSummary:
    """Decode `source` into the Parquet cache at `out`; returns what was written."""
    out = Path(out).resolve()
    start = time.perf_counter()
    report_problems(source.problems, strict)
    samples = hold_out_validation(source.samples)
    if not samples:
        raise PrepareError(f"{source.root}: no usable image/label pairs found")
    print(f"{source.layout} data set at {source.root}: {len(samples)} pairs; {source.remap.describe()}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()   # here, not in a Ray task: an unwritable destination is a plain error before any work
    tally = Tally.remote()
    try:
        in_split_order = sorted(samples, key=lambda s: SPLITS.index(s.split))  # mostly one split per file
        dataset = ray.data.from_items([s.to_row() for s in in_split_order],
                                      override_num_blocks=max(1, -(-len(samples) // ROWS_PER_TASK)))
        dataset = dataset.map_batches(decode_batch, batch_size=BATCH_SIZE, batch_format="numpy",
                                      fn_kwargs={"source": source, "size": size, "tally": tally})
        dataset.write_parquet(str(tmp), partition_cols=["split"], **PARQUET_OPTIONS)
        rows, pixels, problems = ray.get(tally.result.remote())
        report_problems(problems, strict)
        counts = {split: rows[split] for split in SPLITS if rows.get(split)}
        if not counts:
            raise PrepareError(f"{source.root}: every file was bad; nothing to cache")
        _write_manifest(tmp, source, size, counts, pixels, source.problems + problems)
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ray.kill(tally)
    return PrepareSummary(out, counts, source.problems + problems, _folder_bytes(out),
                          time.perf_counter() - start)


def _write_manifest(folder: Path, source: Source, size: int, counts: dict, pixels: dict, skipped) -> None:
    train_pixels = pixels.get("train", sum(pixels.values()))
    frequency = train_pixels / max(train_pixels.sum(), 1)
    manifest = {
        "format": FORMAT, "source": str(source.root), "layout": source.layout, "size": size, "counts": counts,
        "class_pixel_frequency": {name: round(float(f), 6) for name, f in zip(LABEL_NAMES, frequency)},
        "label_names": list(LABEL_NAMES), "source_label_names": list(source.remap.source_names),
        "remap": source.remap.describe(),
        "skipped": [{"file": path, "reason": reason} for path, reason in skipped],
        "faceseg_version": faceseg.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
