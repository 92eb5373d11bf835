"""The local runtime faceseg starts: Ray Data executions use the cluster's CPUs from their start."""
from __future__ import annotations


def _task_starts(blocks: int) -> list[float]:
    """When each of `blocks` 2-second Ray Data tasks started, in order."""
    import time

    import numpy as np
    import ray

    def record_start(batch: dict) -> dict:   # local: pickled by value, workers cannot import tests/
        started = time.time()
        time.sleep(2.0)
        return {"started": np.array([started])}

    dataset = ray.data.range(blocks, override_num_blocks=blocks).map_batches(record_start, batch_size=None)
    return sorted(row["started"] for row in dataset.take_all())


def test_ray_data_runs_tasks_side_by_side_from_the_start(ray_runtime):
    from ray.data._internal.execution.resource_manager import ResourceManager

    from faceseg.runtime import RAY_DATA_LIMITS_REFRESH_S

    # The attribute faceseg lowers must still be the one Ray Data reads (a new Ray may rename it).
    assert "GLOBAL_LIMITS_UPDATE_INTERVAL_S" in vars(ResourceManager)
    assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == RAY_DATA_LIMITS_REFRESH_S
    _task_starts(4)   # worker processes up, so that a start measures scheduling, not a process launch
    first, second = _task_starts(4)[:2]
    # Ray 2.60's default: the second task waits for the first limits refresh, 1 s into the execution.
    assert second - first < 0.6, f"second task started {second - first:.2f} s after the first"
