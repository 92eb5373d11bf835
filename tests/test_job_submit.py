"""`ray job submit` against a real Ray head on 127.0.0.1, started and stopped by the test."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
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
    gcs, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=6", "--include-dashboard=true",
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while time.time() < deadline:
        probe = subprocess.run([RAY, "job", "list", "--address", address], env=cli_env(),
                               capture_output=True, text=True)
        if probe.returncode == 0:
            break
        assert head.poll() is None, "ray start --head exited"
        time.sleep(2)
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
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head, "--working-dir", str(ROOT), "--",
         "python", "-m", "faceseg", "train", "--data", str(synth_dir), "--size", "64", "--num-workers", "2",
         "--epochs", "1", "--output", str(run)],
        env=cli_env(), capture_output=True, text=True, timeout=900)
    log = submit.stdout + submit.stderr
    assert submit.returncode == 0, log[-4000:]
    assert "SUCCEEDED" in log, log[-4000:]
    for name in ("config.yaml", "metrics.jsonl", "model.keras", "cache/manifest.json"):
        assert (run / name).exists(), name
