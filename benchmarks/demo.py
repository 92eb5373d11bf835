"""The README's demo, timed as a user runs it: `faceseg demo` in a new folder, as a subprocess of its own.

    python benchmarks/demo.py [--work W]

Writes benchmarks/results/demo.json (minutes, F1 `overall`, pixel accuracy on the synthetic test faces);
the README's demo line is generated from it (docs/generate.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="where the demo writes (default: a new temporary folder, removed after)")
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="faceseg-demo-bench-")) / "demo"
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "faceseg", "demo", "--workdir", str(work)], env=env)
    minutes = (time.perf_counter() - start) / 60
    if done.returncode != 0:
        return done.returncode
    report = json.loads((work / "predictions" / "report.json").read_text())
    result = {"minutes": minutes, "f1_overall": report["f1"]["overall"], "pixel_accuracy": report["pixel_accuracy"],
              "test_images": report["images"], "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (ROOT / "results" / "demo.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    if not args.work:
        shutil.rmtree(work.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
