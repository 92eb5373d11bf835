"""Helpers several test files share (fixtures are in conftest.py, data set builders in datasets.py)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from faceseg.runtime import free_port as free_port      # the tests' servers' ports too

ROOT = Path(__file__).resolve().parents[1]


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (symlinks as their targets' names) -> its SHA-256: to show nothing changed."""
    digest = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_symlink():
            digest[str(path.relative_to(folder))] = "-> " + os.readlink(path)
        elif path.is_file():
            digest[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def cli_env(**extra: str) -> dict:
    """Environment for `faceseg` subprocesses: never join the tests' runtime by accident."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_faceseg(*args: str, timeout: float = 600, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """`python -m faceseg ARGS` in a subprocess of its own (its own Ray runtime), output captured."""
    return subprocess.run([sys.executable, "-m", "faceseg", *map(str, args)], env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def pngs(folder: Path) -> list[str]:
    """The label maps under a prediction folder, overlays left out."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*.png") if "overlays" not in p.parts)




def listener_of(port: int) -> tuple[int, str] | None:
    """The process listening on TCP `port` of this machine, as (pid, name), from /proc (its socket's inode,
    then the process holding it); None when none is."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:      # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if inodes and os.readlink(fd) in inodes:
                return int(fd.parents[1].name), (fd.parents[1] / "comm").read_text().strip()
        except OSError:
            continue
    return None
