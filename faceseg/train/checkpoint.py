"""Checkpoints that fail safe (docs/runs.md, "Checkpoints").

A checkpoint folder holds model.keras, train_state/ (weights, optimiser slots, step), metrics.jsonl (every
epoch so far), config.yaml and, written last, checkpoint.json: the epoch, the classes and size of the
data it was trained on, and the size and SHA-256 of every other file. A folder whose files do not match
its checkpoint.json (a write cut short by a full disk, a file truncated or lost later) is damaged: a
resumed run skips it with a warning naming it and restores the newest checkpoint that is whole.
"""
from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from faceseg.errors import FacesegError
from faceseg.storage import Location
from faceseg.train.layout import CHECKPOINT_MANIFEST as MANIFEST
from faceseg.train.layout import HISTORY_FILE


class CheckpointWriteError(OSError):
    pass


class CheckpointError(FacesegError):
    pass


def write_error(error: OSError, where) -> CheckpointWriteError:
    """One line for a failed checkpoint write, naming the place."""
    if error.errno == errno.ENOSPC or "No space left" in str(error):
        return CheckpointWriteError(errno.ENOSPC, f"disk full at {where}")
    return CheckpointWriteError(error.errno or errno.EIO, f"cannot write a checkpoint at {where}: "
                                                          f"{error.strerror or str(error).splitlines()[0]}")


def checkpoint_name(epoch: int) -> str:
    """Unique per write: after a fallback past a damaged checkpoint, the epoch after the restored one
    is written again, and must not land in (nor be deleted with) the damaged folder of that epoch."""
    return f"epoch_{epoch:05d}_{uuid.uuid4().hex[:8]}"


def epoch_of(name: str) -> int | None:
    match = re.fullmatch(r"epoch_(\d+)_[0-9a-f]{8}", name)
    return int(match.group(1)) if match else None


def read_history_text(text: str, where: str) -> list[dict]:
    """metrics.jsonl -> rows; raises CheckpointError naming `where` if a line is not a metrics row."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                raise ValueError("no epoch number")
        except (ValueError, RecursionError) as error:
            raise CheckpointError(f"{where}: line {number} is not a metrics row ({str(error)[:200]})") from None
        rows.append(row)
    if [row["epoch"] for row in rows] != list(range(1, len(rows) + 1)):
        raise CheckpointError(f"{where}: epochs {[row['epoch'] for row in rows]} are not 1, 2, ... in order")
    return rows


def history_text(history: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in history)


def seal(folder: Path, epoch: int, metrics: dict, identity: dict) -> None:
    """Write checkpoint.json last: what the folder must hold to count as whole."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        files[path.relative_to(folder).as_posix()] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / MANIFEST).write_text(json.dumps({"epoch": epoch, "metrics": metrics, **identity, "files": files},
                                              indent=1))


def check(folder: Path) -> str | None:
    """None when a local checkpoint folder is whole, else what is wrong with it."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        checked = {name: (Location.of(folder).child(name), int(expected["bytes"]), str(expected["sha256"]))
                   for name, expected in files.items()}
    except FileNotFoundError:
        return f"no {MANIFEST} (the write did not finish)"
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        return f"{MANIFEST} is damaged ({str(error)[:200]})"
    for name, (location, size, sha256) in checked.items():
        path = location.local()
        if not path.is_file() or path.is_symlink():
            return f"{name} is missing"
        data = path.read_bytes()
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
            return f"{name} is {len(data)} bytes, not the {size} written, or its content changed"
    try:
        history = read_history_text((folder / HISTORY_FILE).read_text(), HISTORY_FILE)
    except (OSError, ValueError) as error:
        return str(error)
    if len(history) != manifest.get("epoch"):
        return f"{HISTORY_FILE} has {len(history)} epochs, {MANIFEST} says {manifest.get('epoch')}"
    return None


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def candidates(root: Location | tuple[Location, ...], latest: Location | None = None) -> list[Location]:
    """Checkpoint folders under `root` (or several roots), the `latest` first, then newest epoch first."""
    roots = root if isinstance(root, tuple) else (root,)
    found = sorted((f for r in roots for f in r.folders() if epoch_of(f.name) is not None),
                   key=lambda f: epoch_of(f.name), reverse=True)
    if latest is not None:
        found = [latest] + [f for f in found if f.uri != latest.uri]
    return found


def restore_newest_whole(locations: list[Location], identity: dict) -> tuple[Path, dict] | None:
    """Download the candidates in turn and return (a local copy, its manifest) of the first that is
    whole; each damaged one is named in a warning. Raises CheckpointError when the newest whole checkpoint
    was trained on other classes or another size than `identity` says."""
    for location in locations:
        local = Path(tempfile.mkdtemp(prefix="faceseg-restore-"))
        try:
            if location.is_local:
                shutil.copytree(location.local(), local, dirs_exist_ok=True, symlinks=True)
            else:
                location.download_to(local)
            problem = check(local)
        except OSError as error:
            problem = f"cannot read it ({error})"
        if problem is None:
            manifest = manifest_of(local)
            for key, value in identity.items():
                if manifest.get(key) != value:
                    shutil.rmtree(local, ignore_errors=True)
                    raise CheckpointError(f"checkpoint {location} was trained with {key} = {manifest.get(key)}, "
                                     f"but the data now has {key} = {value}; it cannot be resumed on this cache")
            return local, {**manifest, "checkpoint": str(location)}
        shutil.rmtree(local, ignore_errors=True)
        print(f"warning: skipping damaged checkpoint {location}: {problem}", flush=True)
    return None


def newest_manifest(root: Location) -> dict | None:
    """checkpoint.json of the newest checkpoint under `root` that has one (no TensorFlow, no download
    of the checkpoint itself): what a driver checks before resuming."""
    for location in candidates(root):
        try:
            return json.loads((location / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
    return None
