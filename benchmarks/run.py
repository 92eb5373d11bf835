"""faceseg benchmarks: each figure is measured against its baseline in the SAME run, on the same files.

    python benchmarks/run.py            # the full run (the documented figures)
    python benchmarks/run.py --quick    # the same benchmarks, smaller
    python benchmarks/run.py --only serve stages    # re-measure some, keep the others of that mode

Writes benchmarks/results/{full,quick}.json and the .md generated from it. One module per benchmark in
benchmarks/suite/, each run in a process and Ray runtime of its own (what one leaves behind in a runtime,
idle workers and object-store pages, slowed the next); methodology in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
BENCHMARKS = ("prepare", "train", "memory", "predict", "ingest", "stages", "serve")


def main() -> int:
    from suite import machine, markdown

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS)
    parser.add_argument("--work", default=str(ROOT / "work"))
    parser.add_argument("--suite", choices=BENCHMARKS, help=argparse.SUPPRESS)     # one suite, in this process
    parser.add_argument("--into", help=argparse.SUPPRESS)                          # ... its JSON written here
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.suite:
        return run_one(args.suite, work, args.quick, Path(args.into))
    results = ROOT / "results"
    mode = "quick" if args.quick else "full"
    earlier = results / f"{mode}.json"
    report = json.loads(earlier.read_text()) if args.only and earlier.is_file() else {}
    report.update({"quick": args.quick, "machine": machine()})
    for name in args.only or BENCHMARKS:
        start = time.perf_counter()
        print(f"=== {name}", flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            into = Path(scratch) / "result.json"
            subprocess.run([sys.executable, __file__, "--suite", name, "--into", str(into), "--work", str(work)]
                           + ["--quick"] * args.quick, check=True)
            report[name] = json.loads(into.read_text())
        report[name]["seconds"] = time.perf_counter() - start
        report[name]["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
        print(json.dumps(report[name], indent=1), flush=True)
    report["ratios"] = {key: value for name in BENCHMARKS if name in report
                        for key, value in report[name]["ratios"].items()}
    (results / f"{mode}.json").write_text(json.dumps(report, indent=2))
    (results / f"{mode}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def run_one(name: str, work: Path, quick: bool, into: Path) -> int:
    """One suite on a fresh runtime: the serve suite's `faceseg serve` starts its own, as a user's does."""
    if name != "serve":
        from faceseg.runtime import Needs, connect

        connect(needs=Needs(cpus=2))
    into.write_text(json.dumps(importlib.import_module(f"suite.{name}").run(work, quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
