"""`ray job submit` against a real Ray head on 127.0.0.1, started and stopped by the test."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A separate single-node cluster (own ports and temp dir), its processes in one process group."""
    gcs, dashboard, agent, agent_grpc, metrics, runtime_env_agent = (free_port() for _ in range(6))
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=6", "--include-dashboard=true",
         f"--temp-dir={temp_dir}", "--disable-usage-stats",
         # the tests' own runtime already holds Ray's default agent ports on this machine
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env_agent}",
         "--min-worker-port=21000", "--max-worker-port=21999"],
        env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while time.time() < deadline:  # ready when the job agent takes a job, not merely when the API answers
        probe = subprocess.run([RAY, "job", "submit", "--address", address, "--no-wait", "--", "true"],
                               env=cli_env(), capture_output=True, text=True)
        if probe.returncode == 0:
            break
        assert head.poll() is None, "ray start --head exited"
        time.sleep(2)
    else:
        pytest.fail(f"the Ray head at {address} took no job within 120 s: {probe.stderr[-2000:]}")
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    finally:
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_train_as_a_ray_job(ray_head, synth_dir, tmp_path):
    run = tmp_path / "job-run"
    job_id = f"faceseg-test-{uuid.uuid4().hex[:8]}"
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head, "--submission-id", job_id, "--working-dir", str(ROOT), "--",
         "python", "-m", "faceseg", "train", "--data", str(synth_dir), "--size", "64", "--num-workers", "2",
         "--epochs", "1", "--output", str(run)],
        env=cli_env(), capture_output=True, text=True, timeout=900)
    log = submit.stdout + submit.stderr
    assert submit.returncode == 0, log[-4000:]
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(ray_head).get_job_status(job_id) == JobStatus.SUCCEEDED, log[-4000:]
    for name in ("config.yaml", "metrics.jsonl", "model.keras", "cache/manifest.json"):
        assert (run / name).exists(), name
