"""Two Ray nodes and an S3-compatible store on this machine, driven as a user would from a clean shell:
the README's `ray job submit` commands train, predict and sweep with every file in the bucket, and a
node that dies in the middle of training costs no epoch (none lost, none repeated)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid

import pytest
import yaml

from cluster import ROOT, RayNode, S3Server, ray_cli, user_env, wait_for_job_server, wait_for_nodes

pytestmark = pytest.mark.slow

# The train workers must run on the second node: only it has this resource.
TRAIN_NODE = "faceseg_train_node"
TINY = ["--size", "32", "--set", "model.depth=3", "--set", "model.base_filters=8", "--set", "model.dropout=0",
        "--batch-size", "4", "--set", f"scaling.worker_resources={{{TRAIN_NODE}: 1}}",
        "--set", "scaling.cpus_per_worker=0.5"]


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3):
    """A head (2 CPUs, runs the job drivers and Ray Data) and a node with the train resource (2 CPUs);
    both reach the store the way cloud nodes would, from their own environment."""
    head = RayNode(num_cpus=2, env=s3.env)
    node = RayNode(num_cpus=2, resources={TRAIN_NODE: 2}, head=head, env=s3.env)
    client = user_env(RAY_AUTH_MODE="token")        # what README.md tells a user to export
    try:
        wait_for_nodes(head, 2, client)
        wait_for_job_server(head, client)
        yield head, node, client
    finally:
        node.stop()
        head.stop()


@pytest.fixture(scope="module")
def bucket_data(s3, tmp_path_factory):
    from faceseg.data.synth import write_synthetic_dataset

    folder = tmp_path_factory.mktemp("s3data")
    write_synthetic_dataset(folder, train=60, test=4, size=64, seed=11)
    s3.upload_folder(folder, "data")
    return f"s3://{s3.bucket}/data"


def submit(head: RayNode, env: dict, *command: str, wait: bool = True) -> str:
    job = f"faceseg-{uuid.uuid4().hex[:8]}"
    done = ray_cli("job", "submit", "--address", head.dashboard, "--submission-id", job, "--working-dir", str(ROOT),
                   "--runtime-env", str(ROOT / "cluster" / "runtime_env.yaml"), *([] if wait else ["--no-wait"]),
                   "--", "python", "-m", "faceseg", *command, env=env, timeout=1500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return done.stdout + done.stderr


def epochs(s3: S3Server, key: str) -> list[int]:
    try:
        return [json.loads(line)["epoch"] for line in s3.read(key).decode().splitlines() if line.strip()]
    except s3.client.exceptions.NoSuchKey:
        return []


def test_train_predict_and_sweep_on_two_nodes_with_every_file_in_the_bucket(cluster, s3, bucket_data, tmp_path,
                                                                            monkeypatch):
    head, node, client = cluster
    bucket = f"s3://{s3.bucket}"
    monkeypatch.chdir(tmp_path)                   # anything written "locally" would land here
    log = submit(head, client, "train", "--data", bucket_data, "--num-workers", "2", "--epochs", "2",
                 "--output", f"{bucket}/runs/r1", *TINY)
    assert "trained 2 epochs" in log
    # The chief's per-epoch table reached the job's log, and Ray's per-report, TF's per-save and Ray Data's
    # progress-bar lines did not (test_train checks the table is printed once).
    assert re.search(r"epoch\s+loss\s+val_loss", log), log[-3000:]
    for noise in ("Reporting training result", "Sharding callback duration", "split(2, equal=True): Tasks"):
        assert noise not in log, (noise, log[-3000:])
    run = s3.keys("runs/r1/")
    for name in ("config.yaml", "metrics.jsonl", "model.keras", "cache/manifest.json"):
        assert f"runs/r1/{name}" in run, name
    assert any(k.startswith("runs/r1/checkpoints/epoch_00002_") and k.endswith("checkpoint.json") for k in run)
    assert any(k.startswith("runs/r1/tensorboard/") for k in run)
    assert epochs(s3, "runs/r1/metrics.jsonl") == [1, 2]

    # prediction from this shell, joining the cluster, model from and PNGs to the bucket
    predict = subprocess.run(
        [sys.executable, "-m", "faceseg", "predict", "--model", f"{bucket}/runs/r1", "--input", f"{bucket_data}/test",
         "--output", f"{bucket}/preds/r1", "--address", head.gcs],
        env=user_env(RAY_AUTH_MODE="token", **s3.env), capture_output=True, text=True, timeout=900)
    assert predict.returncode == 0, (predict.stdout + predict.stderr)[-4000:]
    preds = s3.keys("preds/r1/")
    assert sum(k.endswith("_label.png") for k in preds) == 4 and "preds/r1/report.json" in preds

    sweep = {"output": f"{bucket}/sweeps/s1", "data": {"cache": f"{bucket}/runs/r1/cache"},
             "base": {"model": {"depth": 3, "base_filters": 8, "dropout": 0.0}, "train": {"epochs": 1, "batch_size": 4},
                      "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "worker_resources": {TRAIN_NODE: 1}}},
             "space": {"train.learning_rate": {"grid": [0.001, 0.003]}}, "scheduler": {"type": "fifo"},
             "max_concurrent_trials": 2}
    s3.client.put_object(Bucket=s3.bucket, Key="sweeps/s1.yaml", Body=yaml.safe_dump(sweep).encode())
    submit(head, client, "tune", "--config", f"{bucket}/sweeps/s1.yaml")
    swept = s3.keys("sweeps/s1/")
    for name in ("results.csv", "best_config.yaml", "best_model.keras"):
        assert f"sweeps/s1/{name}" in swept, name
    assert sum(k.startswith("sweeps/s1/trials/") and k.endswith("/model.keras") for k in swept) >= 2
    assert list(tmp_path.iterdir()) == []           # nothing landed in a local folder
    for local in ("runs", "sweeps"):
        assert not (ROOT / local).exists() or not any((ROOT / local).iterdir())


def test_a_node_dies_mid_training_and_no_epoch_is_lost_or_repeated(cluster, s3, bucket_data):
    head, node, client = cluster
    bucket = f"s3://{s3.bucket}"
    epochs_total, result = 4, {}
    thread = threading.Thread(target=lambda: result.update(log=submit(
        head, client, "train", "--data", bucket_data, "--num-workers", "2", "--epochs", str(epochs_total),
        "--output", f"{bucket}/runs/r2", *TINY)))
    started = time.time()
    thread.start()
    deadline = time.time() + 900
    while time.time() < deadline and not epochs(s3, "runs/r2/metrics.jsonl"):
        time.sleep(1)
    done_before = epochs(s3, "runs/r2/metrics.jsonl")
    assert done_before and len(done_before) < epochs_total, "the node must die mid-run"
    killed_at = time.time()
    node.kill()
    time.sleep(5)
    node.start()
    thread.join(timeout=1500)
    assert "log" in result, "the job did not finish"
    assert epochs(s3, "runs/r2/metrics.jsonl") == list(range(1, epochs_total + 1))
    print(f"node killed after epoch {done_before[-1]}, {killed_at - started:.0f} s into the job; "
          f"the job finished {time.time() - killed_at:.0f} s after the kill")
