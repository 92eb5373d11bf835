"""Real clusters on this machine for the tests: Ray heads and extra Ray nodes started with `ray start`
(each its own temp dir, ports and process group, stopped by the test that started it, never with
`ray stop`), an S3-compatible server (moto), and the environment a user's shell would have."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from faceseg import runtime

BIN = Path(sys.executable).parent
# Ray rewrites 127.0.0.1 (and localhost) to the machine's network address, for nodes and for the GCS
# address they join, unless multi-node clusters are switched off. 127.0.0.2 is loopback too, and Ray
# takes it as it is: the test clusters' nodes all live there, reachable from this machine alone.
NODE_IP = "127.0.0.2"
RAY = str(BIN / "ray")
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    return runtime.free_port("")        # free on every address, 127.0.0.2 included


def user_env(**extra: str) -> dict:
    """What a user's shell has: PATH with this venv, HOME, a locale; no RAY_* or AWS_* variable of the
    test process (which has RAY_AUTH_MODE=token from its own ray.init). `extra` is what the README tells
    the user to export."""
    env = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


def _stop_group(process: subprocess.Popen) -> None:
    """End a process group this test started (SIGTERM, then SIGKILL), and reap its leader."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=30)
            if sig == signal.SIGTERM:
                time.sleep(1)      # children of the group may still be exiting
        except subprocess.TimeoutExpired:
            continue


class RayNode:
    """`ray start --block` in its own process group: a head, or a node joining `head`."""

    def __init__(self, num_cpus: float, resources: dict | None = None, head: "RayNode | None" = None,
                 env: dict | None = None):
        self.head, self.num_cpus, self.resources = head, num_cpus, resources or {}
        # token authentication on every node, as a cluster started where a token exists has it (the
        # token: ~/.ray/auth_token, shared by every node of this machine)
        self.env = {**user_env(), **(env or {}), "RAY_AUTH_MODE": "token"}
        # A folder of its own for every node, as every machine of a real cluster has: two nodes sharing one
        # unpack the same job's working_dir into one place, and Ray re-unpacks (deletes, then writes) it for
        # each node's first worker, so a job driver running from it on the head lost files mid-run.
        self.temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
        self.gcs_port = head.gcs_port if head else free_port()
        self.dashboard_port = head.dashboard_port if head else free_port()
        self.process = None
        self.start()

    @property
    def gcs(self) -> str:
        return f"{NODE_IP}:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://{NODE_IP}:{self.dashboard_port}"

    def start(self) -> None:
        ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                 f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]
        # Worker ports below Linux's ephemeral range (32768-60999), where free_port's ports come from: a
        # range reaching into it once took the object manager's port, and `ray start` refused to start.
        low = 12000 + (self.gcs_port % 100) * 200 + (100 if self.head else 0)
        common = ["--block", f"--node-ip-address={NODE_IP}", f"--num-cpus={self.num_cpus:g}", "--disable-usage-stats",
                  f"--resources={json.dumps(self.resources)}", f"--min-worker-port={low}", f"--max-worker-port={low + 99}"]
        if self.head is None:
            command = [RAY, "start", "--head", f"--port={self.gcs_port}", f"--dashboard-host={NODE_IP}",
                       f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true",
                       f"--temp-dir={self.temp_dir}", *common, *ports]
        else:
            command = [RAY, "start", f"--address={self.head.gcs}", f"--temp-dir={self.temp_dir}", *common, *ports]
        self.log = open(Path(self.temp_dir) / f"ray-start-{time.time_ns()}.log", "w")
        self.process = subprocess.Popen(command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def start_log(self) -> str:
        """What `ray start` printed (why a node did not come up)."""
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the node's whole process group at once, as a machine that loses power."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=60)

    def stop(self) -> None:
        _stop_group(self.process)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def ray_cli(*args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout)


def wait_for_job_server(head: RayNode, env: dict, timeout: float = 180) -> None:
    """Ready when the job agent takes a job, not merely when the API answers."""
    deadline, probe = time.time() + timeout, None
    while time.time() < deadline:
        probe = ray_cli("job", "submit", "--address", head.dashboard, "--no-wait", "--", "true", env=env, timeout=120)
        if probe.returncode == 0:
            return
        assert head.process.poll() is None, "ray start --head exited"
        time.sleep(2)
    raise AssertionError(f"the Ray head at {head.dashboard} took no job within {timeout} s: {probe.stderr[-2000:]}")


def wait_for_nodes(head: RayNode, count: int, env: dict, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = ray_cli("status", "--address", head.gcs, env=env, timeout=60)
        if status.returncode == 0 and status.stdout.count("node_") >= count:
            return
        time.sleep(2)
    exited = "" if head.process.poll() is None else f"ray start --head exited ({head.process.returncode}); "
    raise AssertionError(f"fewer than {count} Ray nodes came up: {exited}{status.stderr[-1000:]}\n"
                         f"its log {head.log.name}:\n{head.start_log()[-3000:]}")


class S3Server:
    """moto's standalone S3-compatible server on 127.0.0.1, in its own process group."""

    def __init__(self, bucket: str = "faceseg"):
        self.port, self.bucket = free_port(), bucket
        self.process = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        import boto3

        self.client = boto3.client("s3", **self.boto_options)
        self.client.create_bucket(Bucket=bucket)

    @property
    def env(self) -> dict:
        """What a user of this store exports (as for any S3 endpoint)."""
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", "AWS_EC2_METADATA_DISABLED": "true"}

    @property
    def boto_options(self) -> dict:
        return {"endpoint_url": f"http://127.0.0.1:{self.port}", "aws_access_key_id": "testing",
                "aws_secret_access_key": "testing", "region_name": "us-east-1"}

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def upload_folder(self, folder: Path, prefix: str) -> None:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.client.upload_file(str(path), self.bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def stop(self) -> None:
        _stop_group(self.process)
