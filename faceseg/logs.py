"""A console of faceseg's own lines: what it is doing, the epoch table, warnings that matter, the summary.

What other libraries print, and how it is kept out unless FACESEG_VERBOSE is set (`--verbose`):
- TensorFlow's C++ libraries log while they load (CUDA probing on a machine without GPUs, oneDNN notes),
  before absl's logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot stop those lines. `import tensorflow`
  runs with file descriptor 2 pointed at /dev/null instead, in every process that imports faceseg, and
  in Ray's worker processes through Ray's `worker_process_setup_hook` (Ray Train's own processes import
  TensorFlow before any faceseg code runs there). After the import, TF_CPP_MIN_LOG_LEVEL holds.
- Ray Data's console: without its INFO lines and progress-bar notices (faceseg/ray_data_logging.yaml);
  its progress bars only on a terminal (runtime.connect).
- Deprecation warnings raised inside libraries, in Ray's worker processes (PYTHONWARNINGS); Ray's
  driver-side warnings of a runtime faceseg starts, and there Ray Train's preemption watcher (one machine
  is never preempted; the watcher's actor logs an error line of Ray's own when it starts).
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys

VERBOSE_ENV = "FACESEG_VERBOSE"
RAY_DATA_LOGGING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ray_data_logging.yaml")
QUIET_MODULES = ("tensorflow",)


def verbose() -> bool:
    return bool(os.environ.get(VERBOSE_ENV))


@contextlib.contextmanager
def stderr_to_devnull():
    """File descriptor 2, the one C and C++ code writes to, pointed at /dev/null for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietLoader:
    """A module's own loader, run with stderr pointed at /dev/null; everything else is the loader's."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with stderr_to_devnull():
            self._loader.exec_module(module)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds QUIET_MODULES as Python would, then loads them quietly; gone after the first import."""

    def find_spec(self, name, path=None, target=None):
        if name not in QUIET_MODULES:
            return None
        sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _QuietImport)]
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_imports() -> None:
    """Load TensorFlow quietly whenever something in this process first imports it (unless verbose)."""
    if verbose() or any(name in sys.modules for name in QUIET_MODULES):
        return
    if not any(isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


class ProgressBarNotices(logging.Filter):
    """Ray Data's console notices that its progress bars are off (faceseg/ray_data_logging.yaml)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Progress bars disabled", "Progress bars for operators disabled"))


def quiet_env() -> dict[str, str]:
    """The environment of a quiet worker process (see the module docstring), or a verbose one."""
    if verbose():
        return {VERBOSE_ENV: "1", "TF_CPP_MIN_LOG_LEVEL": "0"}
    return {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
            "RAY_DATA_LOGGING_CONFIG": RAY_DATA_LOGGING, "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def worker_runtime_env() -> dict:
    """A Ray runtime_env that keeps worker processes as quiet as this one (and sets them up as faceseg does:
    runtime.setup_worker)."""
    return {"env_vars": quiet_env(), "worker_process_setup_hook": "faceseg.runtime.setup_worker"}
