"""Peak memory of one FaceParser call with and without edge refinement, for photos of several sizes.

    python benchmarks/refine_memory.py --model RUN [--sides 1000 4000 8000]

Each (side, mode) runs in a fresh process: load the model, trace it on a tiny photo, then parse one JPEG of
side x 3/4 side. Prints a markdown table of the peak resident memory (ru_maxrss) before and after the call;
the difference is the call's working set (decode, guide, probabilities, banded resize, ids).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

ONE_CALL = """
import json, resource, sys
import cv2, numpy as np
from faceseg.predict.parser import FaceParser
model, side, refine = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "refine"
parser = FaceParser.load(model, refine=refine)
rng = np.random.default_rng(0)
small = rng.integers(0, 255, (64, 48, 3), np.uint8)
parser(cv2.imencode(".jpg", small)[1].tobytes())                  # traced on a tiny photo
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
photo = cv2.resize(small, (side * 3 // 4, side), interpolation=cv2.INTER_LINEAR)
ids = parser(cv2.imencode(".jpg", photo)[1].tobytes())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_mib": before / 1024, "peak_mib": after / 1024, "shape": list(ids.shape),
                  "grid": parser.size, "classes": len(parser.classes)}))
"""


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--model", required=True, help="a run folder or .keras file")
    cli.add_argument("--sides", type=int, nargs="+", default=[1000, 4000, 8000], help="the photos' long sides")
    args = cli.parse_args()
    rows = []
    for side in args.sides:
        for mode in ("plain", "refine"):
            done = subprocess.run([sys.executable, "-c", ONE_CALL, args.model, str(side), mode],
                                  capture_output=True, text=True)
            if done.returncode:
                sys.exit(done.stderr[-2000:])
            rows.append({"side": side, "mode": mode, **json.loads(done.stdout.strip().splitlines()[-1])})
    grid, classes = rows[0]["grid"], rows[0]["classes"]
    print(f"model {args.model}: {grid} px grid, {classes} classes\n")
    print("| photo | mode | peak RSS MiB | before the call | the call's working set |")
    print("|---|---|---|---|---|")
    for row in rows:
        h, w = row["shape"]
        print(f"| {w}x{h} | {row['mode']} | {row['peak_mib']:.0f} | {row['before_mib']:.0f} | "
              f"{row['peak_mib'] - row['before_mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
