"""Peak memory of prepare and train at 4x the data: it must stay flat."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


from suite import SIZES


def _tree_rss(root_pid: int) -> int:
    """Resident bytes of a process and all its descendants (Ray's raylet, GCS, workers included)."""
    children, rss = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def peak_rss(command: list[str]) -> int:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(process.pid))
        time.sleep(0.25)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode})")
    return peak


def run(work: Path, quick: bool) -> dict:
    from faceseg.data.synth import write_synthetic_dataset

    small, large = SIZES["memory_images"][not quick]
    result = {"train_px": 64, "source_px": 256}
    faceseg_cmd = [sys.executable, "-m", "faceseg"]
    for n in (small, large):
        data = work / f"mem{n}"
        if not data.exists():
            write_synthetic_dataset(data, train=n, test=0, size=256, seed=3)
        cache, run = work / f"cache-mem{n}", work / f"run-mem{n}"
        shutil.rmtree(run, ignore_errors=True)
        prep = peak_rss(faceseg_cmd + ["prepare", str(data), "--out", str(cache), "--size", "64"])
        config = work / "mem.yaml"
        config.write_text(json.dumps({"model": {"depth": 3, "base_filters": 8}, "train": {"batch_size": 16},
                                      "scaling": {"num_workers": 2}}))
        train = peak_rss(faceseg_cmd + ["train", "--cache", str(cache), "--config", str(config), "--epochs", "1",
                                        "--output", str(run)])
        result[f"peak_rss_mb_{n}"] = max(prep, train) / 2**20
        result[f"prepare_peak_rss_mb_{n}"] = prep / 2**20
        result[f"train_peak_rss_mb_{n}"] = train / 2**20
    result["images"] = [small, large]
    result["ratios"] = {"memory_8000_vs_2000": result[f"peak_rss_mb_{large}"] / result[f"peak_rss_mb_{small}"]}
    result["seed_onehot_masks_gb_at_large"] = large * 256 * 256 * 11 * 4 / 1e9
    return result
