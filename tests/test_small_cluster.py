"""The smallest cluster a user has: `ray start --head --num-cpus 2` (a laptop's default) and a 2-worker train
job submitted to it (docs/security.md, row 34). The job fits, train workers, Ray Data's read and the driver
sized together, or stops at once naming the figures; it never waits forever."""
from __future__ import annotations

import time
import uuid

import pytest

from cluster import ROOT, RayNode, ray_cli, user_env, wait_for_job_server, wait_for_nodes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def head():
    node = RayNode(num_cpus=2)
    client = user_env(RAY_AUTH_MODE="token")
    try:
        wait_for_nodes(node, 1, client)
        wait_for_job_server(node, client)
        yield node, client
    finally:
        node.stop()


def test_a_two_worker_job_fits_a_two_cpu_head(head, tmp_path):
    from faceseg.data.synth import write_synthetic_dataset

    node, client = head
    write_synthetic_dataset(tmp_path / "data", train=40, test=2, size=64, seed=1)
    start = time.monotonic()
    done = ray_cli("job", "submit", "--address", node.dashboard, "--submission-id", f"small-{uuid.uuid4().hex[:6]}",
                   "--working-dir", str(ROOT), "--", "python", "-m", "faceseg", "train", "--data",
                   str(tmp_path / "data"), "--size", "32", "--set", "model.depth=3", "--set", "model.base_filters=8",
                   "--num-workers", "2", "--epochs", "1", "--output", str(tmp_path / "run"),
                   env=client, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    assert "each asks 0.50 of its CPU request" in log, log[-5000:]
    assert (tmp_path / "run" / "model.keras").is_file()
    assert time.monotonic() - start < 900


def test_a_job_asking_for_what_the_cluster_lacks_stops_at_once(head, tmp_path):
    from faceseg.data.synth import write_synthetic_dataset

    node, client = head
    write_synthetic_dataset(tmp_path / "data", train=20, test=2, size=64, seed=2)
    start = time.monotonic()
    done = ray_cli("job", "submit", "--address", node.dashboard, "--working-dir", str(ROOT), "--", "python", "-m",
                   "faceseg", "train", "--data", str(tmp_path / "data"), "--num-workers", "2", "--epochs", "1",
                   "--set", 'scaling.worker_resources={"gpu_box": 1}', "--output", str(tmp_path / "run"),
                   env=client, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode != 0 and time.monotonic() - start < 300
    assert "gpu_box x 2 (the cluster has 0)" in log, log[-3000:]
