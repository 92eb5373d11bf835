"""The runtime faceseg sets up: Ray Data executions use the cluster's CPUs from their start, and train
workers run at the priority of a driver."""
from __future__ import annotations


def test_ray_data_reads_the_limits_refresh_faceseg_sets(ray_runtime):
    """Ray Data executions use the cluster's CPUs from their start: faceseg's runtime lowers the interval
    of Ray Data's first resource-limits refresh (faceseg/runtime.py). Its effect is a time, so it is
    measured by a benchmark (benchmarks/results/design.md, runtime.py row), not asserted here; this pins
    what it depends on: the attribute Ray Data 2.60 reads, set in a process faceseg started Ray in."""
    from ray.data._internal.execution.resource_manager import ResourceManager

    from faceseg.runtime import RAY_DATA_LIMITS_REFRESH_S

    # The attribute faceseg lowers must still be the one Ray Data reads (a new Ray may rename it).
    assert "GLOBAL_LIMITS_UPDATE_INTERVAL_S" in vars(ResourceManager)
    assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == RAY_DATA_LIMITS_REFRESH_S < 1.0


def test_train_workers_run_at_a_drivers_priority_and_ray_data_tasks_below_it(ray_runtime, tmp_path):
    import os

    import ray
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    from faceseg.runtime import train_worker_runtime_env

    written = tmp_path / "niceness"

    def write_niceness():   # one machine: the worker writes where the test reads
        written.write_text(str(os.nice(0)))

    trainer = TensorflowTrainer(
        write_niceness, scaling_config=ray.train.ScalingConfig(num_workers=1),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path), worker_runtime_env=train_worker_runtime_env()))
    trainer.fit()
    assert int(written.read_text()) == 0
    task_niceness = ray.data.range(1).map(lambda row: {"niceness": os.nice(0)}).take_all()[0]["niceness"]
    assert task_niceness > 0, "Ray no longer lowers its workers' priority; train_worker_runtime_env()'s reason is gone"
