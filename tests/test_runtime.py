"""The runtime faceseg sets up: Ray Data executions use the cluster's CPUs from their start, and train
workers run at the priority of a driver."""
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


def test_train_workers_run_at_a_drivers_priority_and_ray_data_tasks_below_it(ray_runtime, tmp_path):
    import os

    import ray
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    from faceseg.runtime import TRAIN_WORKER_ENV

    written = tmp_path / "niceness"

    def write_niceness():   # one machine: the worker writes where the test reads
        written.write_text(str(os.nice(0)))

    trainer = TensorflowTrainer(
        write_niceness, scaling_config=ray.train.ScalingConfig(num_workers=1),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path), worker_runtime_env={"env_vars": TRAIN_WORKER_ENV}))
    trainer.fit()
    assert int(written.read_text()) == 0
    task_niceness = ray.data.range(1).map(lambda row: {"niceness": os.nice(0)}).take_all()[0]["niceness"]
    assert task_niceness > 0, "Ray no longer lowers its workers' priority; TRAIN_WORKER_ENV's reason is gone"
