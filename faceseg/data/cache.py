"""The Parquet cache that `faceseg prepare` writes and training reads (docs/data.md, "The cache").

On disk, `image` and `mask` are Parquet FIXED_LEN_BYTE_ARRAY columns holding each uint8 tensor's
row-major bytes; the shape comes from the manifest's `size`. Not Ray's tensor extension type: that is
stored as a list<uint8>, which Parquet encodes value by value and which cost more to write and read
than the decoding itself (benchmarks/results/design.md). `Cache.dataset` turns the bytes back into
(B, S, S, 3) / (B, S, S) uint8 tensor columns in the read tasks (zero-copy views of the Arrow buffers).

A cache is complete when its manifest.json exists: prepare writes it last, and a reader refuses a
folder without one (an object store has no rename to commit with).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from faceseg.errors import FacesegError
from faceseg.labels import Taxonomy
from faceseg.storage import Location

MANIFEST = "manifest.json"
FORMAT = "faceseg-cache-3"          # fixed-size binary tensor columns; the data set's own classes
TENSOR_COLUMNS = ("image", "mask")
IN_MEMORY_SHARE = 0.5   # of Ray's free worker memory that `auto` lets one split take
# Images barely compress and are read every epoch; masks are mostly runs of a few ids.
PARQUET_OPTIONS = {"use_dictionary": False, "compression": {"image": "none", "mask": "zstd"}}


class CacheError(FacesegError):
    pass


class Manifest(BaseModel):
    """manifest.json, checked before anything in it is used (prepare writes more keys; they ride along)."""

    model_config = ConfigDict(extra="allow")
    format: str
    size: int = Field(ge=16, le=2048)
    counts: dict[str, int]
    label_names: list[str]
    class_pixel_frequency: list[float]

    @model_validator(mode="after")
    def _consistent(self):
        Taxonomy(tuple(self.label_names))
        if len(self.class_pixel_frequency) != len(self.label_names):
            raise ValueError(f"{len(self.class_pixel_frequency)} class pixel frequencies for "
                             f"{len(self.label_names)} label names")
        unknown = set(self.counts) - {"train", "val", "test"}
        if unknown or any(n < 0 for n in self.counts.values()):
            raise ValueError(f"counts {self.counts} are not rows of the train, val and test splits")
        return self


def tensor_shapes(size: int) -> dict[str, tuple[int, ...]]:
    return {"image": (size, size, 3), "mask": (size, size)}


def encode_tensor(array: np.ndarray) -> pa.FixedSizeBinaryArray:
    """(N, ...) uint8 -> N fixed-size binary values sharing the array's memory."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    width = int(np.prod(array.shape[1:]))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(array), [None, pa.py_buffer(array)])


def decode_tensor(column: pa.Array | pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    """N fixed-size binary values -> (N, *shape) uint8, a read-only view where the column is one chunk."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = int(np.prod(shape))
    if column.type != pa.binary(width):
        raise CacheError(f"expected {width}-byte tensors of shape {shape}, found a column of {column.type}")
    data = np.frombuffer(column.buffers()[1], np.uint8, count=len(column) * width, offset=column.offset * width)
    return data.reshape((len(column), *shape))


def decode_tensor_columns(batch: pa.Table, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Ray Data map_batches over read blocks: binary tensor columns -> numpy tensors, other columns as is."""
    return {name: decode_tensor(batch.column(name), shapes[name]) if name in shapes
            else batch.column(name).to_numpy(zero_copy_only=False) for name in batch.column_names}


def _read_parquet_v1(location: Location, columns: list[str], shuffle_seed: int | None = None):
    """read_parquet through Ray Data's first Parquet reader, a block per file.

    Ray 2.60's default (DataSource V2) starts fresh FooterReader actors, new worker processes, on every
    execution, i.e. on every epoch, seconds before the first batch of a small split (design.md). The
    dataset keeps the context it was made with, so the switch only needs to hold while it is built. And
    Ray Data splits a read into at least 200 blocks by default: a 256-px file of 84 rows became 19 blocks of
    4 rows, each a task output and an object to fetch; a cache file is already a block's worth (prepare).
    With `shuffle_seed` the files come in a new order every execution (epoch), the same orders every run.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    saved, context.use_datasource_v2 = context.use_datasource_v2, False
    files = [info for info in location.filesystem.get_file_info(
        pafs.FileSelector(location.path, recursive=True)) if info.path.endswith(".parquet")]
    try:
        shuffle = None if shuffle_seed is None else ray.data.FileShuffleConfig(seed=shuffle_seed)
        return ray.data.read_parquet(location.path, filesystem=location.filesystem, columns=columns,
                                     override_num_blocks=max(1, len(files)), shuffle=shuffle)
    finally:
        context.use_datasource_v2 = saved


@dataclass(frozen=True)
class Cache:
    location: Location
    manifest: dict

    @classmethod
    def open(cls, where: Location | str) -> "Cache":
        location = Location.of(where)
        manifest_file = location / MANIFEST
        if not manifest_file.is_file():
            what = (f"no {MANIFEST} (an unfinished cache, or another folder)" if location.is_dir()
                    else "no such folder")
            raise CacheError(f"{location}: not a faceseg cache: {what}; build one with `faceseg prepare`")
        try:
            manifest = json.loads(manifest_file.read_text())
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            raise CacheError(f"{manifest_file}: damaged ({str(error)[:200]}); rebuild the cache with "
                             "`faceseg prepare`") from None
        if manifest.get("format") != FORMAT:
            raise CacheError(f"{location}: cache format {str(manifest.get('format', 'faceseg-cache-1'))[:40]!r} was "
                             f"written by another faceseg; this one reads {FORMAT!r}. Rebuild it with `faceseg prepare`")
        try:
            Manifest.model_validate(manifest)
        except (ValidationError, ValueError) as error:
            reason = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}"[:200] for e in error.errors()[:3]) \
                if isinstance(error, ValidationError) else str(error)[:200]
            raise CacheError(f"{manifest_file}: damaged ({reason}); rebuild the cache with `faceseg prepare`") from None
        return cls(location, manifest)

    def check_files(self, splits=("train", "val")) -> None:
        """The Parquet files agree with the manifest: tensors of its size, its row counts, and no mask id
        beyond its class names. Read before training starts (masks only; they are small), so that a wrong
        manifest stops at once, naming it, not mid-run inside a Ray task."""
        import pyarrow.dataset as pads

        width = {"image": self.size * self.size * 3, "mask": self.size * self.size}
        classes = len(self.manifest["label_names"])
        for split in splits:
            if not self.count(split):
                continue
            location = self._split_location(split)
            try:
                dataset = pads.dataset(location.path, filesystem=location.filesystem, format="parquet")
                for column, bytes_ in width.items():
                    kind = dataset.schema.field(column).type
                    if kind != pa.binary(bytes_):
                        raise CacheError(f"{location}: column {column} holds {kind}, not the {bytes_}-byte tensors of a "
                                         f"{self.size}-px cache; {self.location / MANIFEST} says size {self.size}")
                rows, highest = 0, 0
                for batch in dataset.to_batches(columns=["mask"], batch_size=256):
                    masks = decode_tensor(batch.column(0), (self.size, self.size))
                    rows += len(masks)
                    highest = max(highest, int(masks.max()) if len(masks) else 0)
            except (OSError, KeyError, pa.ArrowException) as error:
                raise CacheError(f"{location}: cannot read the split ({str(error)[:200]}); rebuild the cache") from None
            if rows != self.count(split):
                raise CacheError(f"{location}: {rows} rows, but {self.location / MANIFEST} counts {self.count(split)}")
            if highest >= classes:
                raise CacheError(f"{location}: masks hold class id {highest}, but {self.location / MANIFEST} names "
                                 f"{classes} classes (ids 0..{classes - 1}); rebuild the cache")

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def taxonomy(self) -> Taxonomy:
        return Taxonomy(tuple(self.manifest["label_names"]))

    @property
    def class_frequency(self) -> list[float]:
        """Each class's share of the train split's pixels, in id order."""
        return [float(f) for f in self.manifest["class_pixel_frequency"]]

    def count(self, split: str) -> int:
        return int(self.manifest["counts"].get(split, 0))

    def _split_location(self, split: str) -> Location:
        if not self.count(split):
            raise CacheError(f"{self.location}: the cache has no {split!r} split "
                             f"(it has {', '.join(self.manifest['counts'])})")
        return self.location / f"split={split}"   # Hive partitioning: readers recover the `split` column

    def dataset(self, split: str, columns=TENSOR_COLUMNS, decoded: bool = True, shuffle_seed: int | None = None):
        """The split as a streaming Ray Dataset: with uint8 tensor columns, or (decoded=False) with the
        stored fixed-size binary columns, which a reader turns into tensors itself with `tensors` (the train
        input does: Ray Data's conversion of a tensor column costs it a copy per stage). With `shuffle_seed`,
        its files in a new order every epoch."""
        dataset = _read_parquet_v1(self._split_location(split), list(columns), shuffle_seed)
        if not decoded:
            return dataset
        return dataset.map_batches(decode_tensor_columns, batch_format="pyarrow", batch_size=None,
                                   zero_copy_batch=True, fn_kwargs={"shapes": tensor_shapes(self.size)})

    def split_bytes(self, split: str) -> int:
        return self.count(split) * self.size * self.size * 4      # image: 3 bytes a pixel, mask: 1

    def held_in_memory(self, split: str, in_memory: str = "auto", copies: float = 1) -> bool:
        """Whether train workers keep `split` in their own memory after reading it once.

        Yes for `in_memory` yes, or auto and `copies` of the split (2 with a mirrored copy for the flip)
        take under IN_MEMORY_SHARE of the memory Ray has free for workers; else the loop streams it from
        Parquet every epoch, so memory stays flat however large the data set. Why hold it: each streamed
        epoch starts a Ray Data execution and re-reads the files, time that training then lacks.
        """
        import ray

        free = ray.available_resources().get("memory", 0)
        return in_memory == "yes" or (in_memory == "auto" and copies * self.split_bytes(split) < IN_MEMORY_SHARE * free)

    def arrays(self, split: str, columns=TENSOR_COLUMNS) -> dict[str, np.ndarray]:
        """The whole split in this process's memory: for small splits, tests and in-memory baselines."""
        location = self._split_location(split)
        table = pq.read_table(location.path, filesystem=location.filesystem, columns=list(columns))
        return decode_tensor_columns(table, tensor_shapes(self.size))
