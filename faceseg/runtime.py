"""Joining or starting the Ray runtime, sized so that train workers and Ray Data tasks cannot deadlock."""
from __future__ import annotations

import logging
import math
import os

import ray

# Workers: tf-keras, and quiet TensorFlow and Ray Data (their per-epoch INFO lines bury the epoch table).
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "RAY_DATA_LOG_LEVEL": "WARNING"}
# Ray starts worker processes at nice 15, so that work cannot starve its control plane, and a job's
# driver at nice 0 (its job manager sets RAY_worker_niceness=0 in the driver's runtime env). A train
# worker IS the training process, as this process is with --local: it runs at nice 0 too, like the
# driver, while Ray Data tasks and Ray Train's helper actors stay at 15 and yield to it. Measured on
# 2 cores (1 worker, 128 px, 3 pairs alternating): 225/215/217 -> 215/208/210 ms a step.
TRAIN_WORKER_ENV = {**WORKER_ENV, "RAY_worker_niceness": "0"}
RAY_DATA_LIMITS_REFRESH_S = 0.1


def start_ray_data_at_full_width() -> None:
    """Let every Ray Data execution of this process use the cluster's CPUs from its start.

    Ray Data 2.60 sizes an execution from the cluster's resources, which it asks the autoscaling
    coordinator for asynchronously and caches; the cache is empty (zero CPUs) until the next refresh,
    GLOBAL_LIMITS_UPDATE_INTERVAL_S = 1 s later, and until then the execution runs one task at a time.
    Measured on 2 cores, 2000 images: `prepare` spent its first second in one task and ran at
    522-541 images/s; refreshing every 0.1 s, 606-622. A refresh is one small call to the coordinator.
    """
    from ray.data._internal.execution.resource_manager import ResourceManager

    # Only a speed-up: where a Ray without this attribute is installed nothing changes here, and
    # tests/test_runtime.py fails (Ray is pinned to 2.60.x).
    interval = getattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", None)
    if interval is not None:
        ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = min(interval, RAY_DATA_LIMITS_REFRESH_S)


def init_ray(address: str | None = None, reserved_cpus: float = 0.0) -> bool:
    """Join `address` (or RAY_ADDRESS); else start a local runtime on 127.0.0.1.

    A local runtime advertises the machine's cores PLUS `reserved_cpus` (what trainer workers or Tune
    trials will hold), so Ray Data always has the real cores left for its tasks. Logical CPUs are
    only a scheduling budget: the kernel still shares the real cores among the processes.
    Returns True when this process started the runtime (a single machine, nothing autoscales).
    """
    start_ray_data_at_full_width()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": WORKER_ENV}
    if address:
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        return False
    num_cpus = (os.cpu_count() or 1) + reserved_cpus
    ray.init(num_cpus=math.ceil(num_cpus), _node_ip_address="127.0.0.1",
             dashboard_host="127.0.0.1", runtime_env=runtime_env, logging_level=logging.WARNING)
    return True


def require_gpus(needed: float) -> None:
    """Fail fast instead of waiting forever for GPUs a machine does not have."""
    have = ray.cluster_resources().get("GPU", 0)
    if have < needed:
        raise ValueError(f"this needs {needed:g} GPU(s) but the local Ray runtime has {have:g}; "
                         "drop --use-gpu, or join a GPU cluster with --address")
