"""Reading the Parquet cache that `faceseg prepare` writes."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import ray

from faceseg.data.prepare import MANIFEST


class CacheError(ValueError):
    pass


@dataclass(frozen=True)
class Cache:
    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: Path | str) -> "Cache":
        path = Path(path).resolve()
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise CacheError(f"{path}: not a faceseg cache (no {MANIFEST}); build one with `faceseg prepare`")
        return cls(path, json.loads(manifest_path.read_text()))

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    def count(self, split: str) -> int:
        return int(self.manifest["counts"].get(split, 0))

    def dataset(self, split: str, columns=("image", "mask")) -> ray.data.Dataset:
        if not self.count(split):
            raise CacheError(f"{self.path}: the cache has no {split!r} split "
                             f"(it has {', '.join(self.manifest['counts'])})")
        return ray.data.read_parquet(str(self.path / split)).select_columns(list(columns))
