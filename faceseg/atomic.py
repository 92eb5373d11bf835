"""Files that appear whole or not at all: written under a temporary name, then renamed."""
from __future__ import annotations

from pathlib import Path


def write_atomic(path: Path | str, data: bytes | str) -> None:
    """A killed writer or a full/read-only disk never leaves a half-written `path` (nor the temporary)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        tmp.replace(path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OSError(error.errno, f"{path}: cannot write ({error.strerror or error})") from None
