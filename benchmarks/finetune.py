"""What starting from a trained model buys where data is scarce: `faceseg train --init` against training from
scratch, with 10, 20 and 40 photos of new people, scored on people neither model saw.

    python benchmarks/finetune.py --data PATH/TO/fasseg [--work W]

FASSEG's people, split three ways (no person in two): the held-out people of fold 0 of the 3-fold person split
(3 multi-pose people, 78 photos) are scored; 2 other multi-pose people and the 20 frontal people train the
starting model (configs/fasseg.yaml); the 2 remaining multi-pose people are the "new data set", from which 10,
20 and 40 photos train both ways. Every small run sees the same number of images (about 2,400: 300 steps of
8), with the recipe's other settings. Writes benchmarks/results/finetune.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from real_photos import folds, person_of  # noqa: E402

CONFIG = ROOT / "configs" / "fasseg.yaml"
SIZES = (10, 20, 40)
IMAGES_SEEN = 2400
RESULTS = ROOT / "benchmarks" / "results"


def lapa(data: Path, out: Path, train: list[str], val: list[str], test: list[str]) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    for split, names in (("train", train), ("val", val), ("test", test)):
        for sub, suffix in (("images", ".jpg"), ("labels", ".png")):
            (out / split / sub).mkdir(parents=True)
            for name in names:
                os.symlink(data / sub / f"{name}{suffix}", out / split / sub / f"{name}{suffix}")
    shutil.copy(data / "label_names.txt", out / "label_names.txt")
    return out


def faceseg(*args: str) -> float:
    start = time.time()
    subprocess.run([sys.executable, "-m", "faceseg", *map(str, args)], check=True, stdout=subprocess.DEVNULL)
    return (time.time() - start) / 60


def score(run: Path, test: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    faceseg("predict", "--model", run, "--input", test, "--output", out)
    report = json.loads((out / "report.json").read_text())
    return {"pixel_accuracy": report["pixel_accuracy"], "mean_f1": report["mean_f1"], "f1": report["f1"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "work" / "finetune"))
    args = parser.parse_args()
    data, work = Path(args.data).resolve(), Path(args.work)
    names = sorted(p.stem for p in (data / "images").glob("*.jpg"))
    scored = folds(names, 3)[0]
    pose_people = sorted({person_of(n) for n in names if n.startswith("pose_")} - {person_of(n) for n in scored})
    base_people, new_people = pose_people[:2], pose_people[2:4]
    base = [n for n in names if n.startswith("frontal") or person_of(n) in base_people]
    new = [n for n in names if person_of(n) in new_people]
    rng = np.random.default_rng(0)
    order = [new[i] for i in rng.permutation(len(new))]
    val = order[-4:]                                         # never among the photos that train
    test = lapa(data, work / "scored", [], [], scored) / "test"

    result = {"scored_people": sorted({person_of(n) for n in scored}), "scored_photos": len(scored),
              "base_people": base_people + ["the 20 frontal people"], "new_people": new_people,
              "images_seen": IMAGES_SEEN, "config": str(CONFIG.relative_to(ROOT)), "runs": []}
    base_data = lapa(data, work / "base", [n for n in base if n not in ("frontal_train_1", "frontal_train_2")],
                     ["frontal_train_1", "frontal_train_2"], [])
    minutes = faceseg("train", "--config", CONFIG, "--data", base_data, "--output", work / "base-run", "--overwrite",
                      "--local")
    result["base"] = {"photos": len(base), "minutes": minutes, **score(work / "base-run", test, work / "pred-base")}
    print(f"starting model: {result['base']}", flush=True)
    for count in SIZES:
        chosen = order[:count]
        folder = lapa(data, work / f"new{count}", chosen, val, [])
        epochs = max(1, round(IMAGES_SEEN / count))
        for start in ("scratch", "init"):
            run = work / f"run-{start}-{count}"
            flags = ["--init", work / "base-run"] if start == "init" else []
            minutes = faceseg("train", "--config", CONFIG, "--data", folder, "--output", run, "--overwrite", "--local",
                              "--epochs", epochs, "--set", "train.repeat={}", *flags)
            row = {"photos": count, "start": start, "epochs": epochs, "minutes": minutes,
                   **score(run, test, work / f"pred-{start}-{count}")}
            result["runs"].append(row)
            print(row, flush=True)
    (RESULTS / "finetune.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Fine-tuning: from a trained model against from scratch, where photos are few", "",
             f"Scored on {result['scored_photos']} photos of {len(result['scored_people'])} people neither model saw; "
             f"the starting model trained on {result['base']['photos']} photos of other people "
             f"({result['base']['minutes']:.1f} min); each small run saw about {IMAGES_SEEN} images. "
             "`python benchmarks/finetune.py --data PATH/TO/fasseg`", "",
             "| training photos | start | pixel accuracy | mean F1 | eyes F1 | minutes |", "|---|---|---|---|---|---|",
             f"| 0 | the starting model alone | {100 * result['base']['pixel_accuracy']:.1f} | "
             f"{100 * result['base']['mean_f1']:.1f} | {100 * result['base']['f1']['eyes']:.1f} | – |"]
    lines += [f"| {r['photos']} | {'from scratch' if r['start'] == 'scratch' else '--init (starting model)'} | "
              f"{100 * r['pixel_accuracy']:.1f} | {100 * r['mean_f1']:.1f} | {100 * r['f1']['eyes']:.1f} | "
              f"{r['minutes']:.1f} |" for r in result["runs"]]
    (RESULTS / "finetune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
