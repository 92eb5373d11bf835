"""Joining or starting the Ray runtime, and fitting a command's workers into it so that nothing waits forever.

Every command calls `connect(address, needs)` once, after its arguments and files were checked:
- `--address` (or RAY_ADDRESS) joins that cluster, or fails within CONNECT_TIMEOUT_S naming the address;
- otherwise faceseg starts its own runtime on 127.0.0.1, even when another Ray cluster runs on this
  machine (Ray's plain `ray.init()` would join that one instead).
`needs` is what the command holds for its whole run (train workers, Tune trials, model actors). Ray Data's
tasks need CPUs beside them: a runtime faceseg starts advertises the cores PLUS what the workers hold,
and on a joined cluster too small for both, the workers ask a fraction of a CPU each (logical CPUs are a
scheduling budget; the kernel shares the real cores either way), or the command stops with the figures.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from faceseg import logs
from faceseg.errors import FacesegError
from faceseg.logs import VERBOSE_ENV, verbose  # noqa: F401  (the CLI's --verbose sets it)



def worker_runtime_env() -> dict:
    """Workers of a runtime faceseg starts: as quiet as this process (their lines bury the epoch table). A
    joined cluster keeps its own settings: passing env vars to ray.init inside a job clashes with the job's
    runtime env, and faceseg's own modules set what TensorFlow needs on import."""
    return logs.worker_runtime_env()


def train_worker_runtime_env() -> dict:
    """Ray Train's workers, on any cluster. Ray starts worker processes at nice 15 so that work cannot starve
    its control plane, and a job's driver at 0. A train worker IS the training process, as this process is
    with --local: it runs at nice 0 like a driver, while Ray Data tasks and Ray Train's helper actors stay
    at 15 and yield to it. And a worker's print goes to its stdout only: Ray Train's print patch also sends
    it through the root logger, which printed every line of the epoch table twice."""
    env = logs.worker_runtime_env()
    env["env_vars"] = {"RAY_worker_niceness": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **env["env_vars"]}
    return env

RAY_DATA_LIMITS_REFRESH_S = 0.1
CONNECT_TIMEOUT_S = float(os.environ.get("FACESEG_CONNECT_TIMEOUT_S", 30))
DATA_CPUS = 1.0         # what Ray Data's read and decode tasks need free beside the workers


# glibc returns a freed block of 128 KiB or more to the kernel at once (mmap/munmap, and the threshold only
# grows to the largest block freed so far); TensorFlow allocates fresh multi-MiB tensors for every batch
# and step, so each one is page-faulted in again: half of an input pipeline's time went to the kernel
# (benchmarks/results/design.md). Blocks up to 32 MiB (glibc's ceiling) from the heap, and up to 512 MiB of
# freed heap kept for reuse, stop that. Only the processes that run a model ask for it.
MALLOC_OPTIONS = {-3: 32 << 20, -1: 512 << 20, -2: 64 << 20}    # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD


def available_cores() -> int:
    """The cores this process may run on: its affinity mask (taskset, a container's cpuset), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                              # not Linux
        return os.cpu_count() or 1


def keep_freed_memory() -> bool:
    """Tune this process's glibc malloc (MALLOC_OPTIONS) to reuse big freed blocks; False where it is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all(libc.mallopt(option, value) == 1 for option, value in MALLOC_OPTIONS.items())
    except (OSError, AttributeError):
        return False


class ClusterTooSmall(FacesegError):
    pass


@dataclass(frozen=True)
class Needs:
    """What a command holds for its whole run, beside Ray Data's tasks."""

    cpus: float = 0.0
    gpus: float = 0.0
    what: str = ""            # "2 train workers x 1 CPU"
    flags: str = ""           # what to change when it cannot fit
    resources: dict = field(default_factory=dict)   # custom Ray resources, in all: {"big_node": 2}


def start_ray_data_at_full_width() -> None:
    """Let every Ray Data execution of this process use the cluster's CPUs from its start.

    Ray Data 2.60 sizes an execution from the cluster's resources, which it asks the autoscaling
    coordinator for asynchronously and caches; the cache is empty (zero CPUs) until the next refresh,
    GLOBAL_LIMITS_UPDATE_INTERVAL_S = 1 s later, and until then the execution runs one task at a time.
    A refresh is one small call to the coordinator.
    """
    from ray.data._internal.execution.resource_manager import ResourceManager

    # Only a speed-up: where a Ray without this attribute is installed nothing changes here, and
    # tests/test_runtime.py fails (Ray is pinned to 2.60.x).
    interval = getattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", None)
    if interval is not None:
        ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = min(interval, RAY_DATA_LIMITS_REFRESH_S)


def setup_worker() -> None:
    """Ray's worker_process_setup_hook in the runtimes and train workers faceseg starts: TensorFlow imported
    quietly (faceseg/logs.py), and Ray Data's executions there (a train split's SplitCoordinator starts one
    every epoch) at full width from their start, as in this process."""
    logs.quiet_imports()
    start_ray_data_at_full_width()


def _gcs_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) to probe for a GCS or Ray Client address; None for 'auto'."""
    if address == "auto":
        return None
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    if parts.scheme in ("http", "https"):
        raise FacesegError(f"--address {address}: that is a dashboard/job-server URL, for `ray job submit`; "
                         "faceseg joins a cluster by its GCS address, e.g. HEAD:6379 (or run it as a Ray job)")
    if not parts.hostname or not parts.port:
        raise FacesegError(f"--address {address}: expected HOST:PORT (a Ray cluster's GCS address), "
                         "ray://HOST:PORT or auto")
    return parts.hostname, parts.port


def wait_for_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within `timeout` seconds, naming the address, when nothing listens there."""
    target = _gcs_host_port(address)
    if target is None:
        return
    deadline, reason = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(target, timeout=min(5.0, timeout)):
                return
        except OSError as error:
            reason = error.strerror or str(error)
        time.sleep(0.5)
    raise ConnectionError(f"no Ray cluster reachable at {address} within {timeout:g} s ({reason}); "
                          "check --address / RAY_ADDRESS, or drop both to run on this machine")


@contextlib.contextmanager
def _loopback_kept():
    """Ray replaces a loopback address (a node's, or the GCS address a driver joins) by the machine's
    network address unless multi-machine clusters are off; this turns them off for the duration, so
    that 127.0.0.1 stays 127.0.0.1."""
    from ray._private import ray_constants

    saved, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _is_loopback(address: str) -> bool:
    target = _gcs_host_port(address)
    return target is not None and (target[0] in ("localhost", "::1") or target[0].startswith("127."))


def _start_local(reserved_cpus: float) -> None:
    """A private runtime on 127.0.0.1 (reachable from nowhere else): the cores plus what long-lived
    workers hold. Its GCS port is chosen here and given to its workers as RAY_ADDRESS: Ray's own actors
    look their cluster up as "auto", which fails when another Ray runs on this machine."""
    import ray

    port = free_port()
    saved = os.environ.get(GCS_PORT_ENV)
    os.environ[GCS_PORT_ENV] = str(port)
    try:
        with _loopback_kept():
            ray.init(address="local", num_cpus=math.ceil((os.cpu_count() or 1) + reserved_cpus),
                     _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
                     logging_level=logging.INFO if verbose() else logging.ERROR,
                     runtime_env=_with_address(worker_runtime_env(), f"127.0.0.1:{port}"))
    finally:
        if saved is None:
            os.environ.pop(GCS_PORT_ENV, None)
        else:
            os.environ[GCS_PORT_ENV] = saved


GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"


def _with_address(runtime_env: dict, address: str) -> dict:
    """The runtime's own address for its workers, and (one machine is never preempted) no preemption watcher."""
    return {**runtime_env, "env_vars": {**runtime_env["env_vars"], "RAY_ADDRESS": address,
                                        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}}


def free_port(host: str = "127.0.0.1", port: int = 0) -> int:
    """A port on `host` that nothing listens on: `port` itself (OSError when it is taken), or with 0 any."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, port))
        return probe.getsockname()[1]


def _join(address: str) -> None:
    import ray

    wait_for_address(address)
    with _loopback_kept() if _is_loopback(address) else contextlib.nullcontext():
        ray.init(address=address, logging_level=logging.WARNING)


def can_add_nodes() -> bool:
    """Whether the cluster was launched with node types an autoscaler can add (the cluster launcher, KubeRay):
    their nodes carry the node-group label (from RAY_NODE_TYPE_NAME). A head started by hand with
    `ray start --head`, or a runtime faceseg starts, has no node group and never grows: on those, asking for
    more than there is waits forever."""
    import ray

    return any("ray.io/node-group" in (node.get("Labels") or {}) for node in ray.nodes() if node.get("Alive"))


def fit(needs: Needs) -> float:
    """The share of its CPU request each worker may ask so that `needs` and Ray Data's tasks fit the
    cluster as it is now (1.0 when they fit as asked); raises ClusterTooSmall when they never can. Only on
    a cluster that can add nodes, and only when what is missing is not there at all (GPUs, a custom
    resource, any CPU beside Ray Data's), does the command wait for the autoscaler instead."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    lacking = {name: amount for name, amount in needs.resources.items() if total.get(name, 0.0) < amount}
    if needs.gpus > gpus:
        lacking["GPU"] = needs.gpus
    growing = bool(lacking) and can_add_nodes()
    if lacking and not growing:
        raise ClusterTooSmall(f"{needs.what} need "
                              + ", ".join(f"{name} x {amount:g} (the cluster has {total.get(name, 0.0):g})"
                                          for name, amount in lacking.items())
                              + "; no node offers them and the cluster cannot add nodes. Change "
                              + (needs.flags or "the resource flags") + (", or scaling.worker_resources, or start "
                                 "nodes with `ray start --resources`" if set(lacking) - {"GPU"} else ""))
    if growing:
        print(f"the cluster lacks {', '.join(f'{name} x {amount:g}' for name, amount in lacking.items())} for "
              f"{needs.what}: waiting for its autoscaler to add nodes", flush=True)
        return 1.0
    if needs.cpus <= 0 or needs.cpus + DATA_CPUS <= cpus:
        return 1.0
    room = cpus - DATA_CPUS
    if room < 0.05 * needs.cpus:
        if can_add_nodes():
            print(f"the cluster has {cpus:g} CPU(s): too few for {needs.what} and Ray Data's tasks; waiting "
                  "for its autoscaler to add nodes", flush=True)
            return 1.0
        raise ClusterTooSmall(f"the cluster has {cpus:g} CPU(s): too few for {needs.what} and Ray Data's tasks "
                              f"({DATA_CPUS:g} CPU); change {needs.flags or 'the worker counts'}")
    share = room / needs.cpus
    print(f"the cluster has {cpus:g} CPU(s): {needs.what} would leave none for Ray Data's tasks; each asks "
          f"{share:.2f} of its CPU request instead ({needs.cpus * share:.2f} CPUs in all)", flush=True)
    return share


def connect(address: str | None = None, needs: Needs = Needs()) -> float:
    """Join `address` (or RAY_ADDRESS), or start a local runtime; returns fit(needs)."""
    import ray

    start_ray_data_at_full_width()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            _join(address)
        else:
            _start_local(needs.cpus)
        total = ray.cluster_resources()
        where = f"joined the cluster at {address}" if address else "started a private runtime on 127.0.0.1"
        print(f"Ray: {where} ({total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs, "
              f"{len(ray.nodes())} node(s))", flush=True)
    quiet_ray_data()
    return fit(needs)


def quiet_ray_data() -> None:
    """Ray Data's progress bars belong on a terminal: in a log file they are lines of escape codes. A dataset
    keeps the DataContext it was made with, so this holds for every dataset made after it."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty() or verbose()
