"""Rewrite every generated block of the README and docs from where its figures live.

    python docs/generate.py            # rewrite the blocks
    python docs/generate.py --check    # exit 1, naming the blocks, when a file differs from its sources

A block sits between `<!-- generated: NAME -->` and `<!-- end: NAME -->`; NAME says what writes it:
the config options (faceseg/config.py), the benchmark results (benchmarks/results/*.json), the shipped
models' metadata (faceseg/model/shipped/*.json). Nothing in a block is typed by hand: change the source
and run this. tests/test_docs.py runs the check.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
FILES = [ROOT / "README.md", ROOT / "docs" / "runs.md", ROOT / "benchmarks" / "README.md"]
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


def _json(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def config_options() -> str:
    from faceseg.config import options_table

    return options_table()


def _heldout_rows(report: dict, rows: tuple[str, ...], label: str) -> str:
    names = report["all" if "all" in report else rows[0]]["label_names"]
    foreground = [n for n in names if n not in ("background", "bg")]
    lines = [f"| {label} | images | pixel accuracy | mean F1 | " + " | ".join(foreground) + " |",
             "|---|---|---|---|" + "---|" * len(foreground)]
    for row in rows:
        figures = report[row]
        lines.append(f"| {row} | {figures['images']} | {100 * figures['pixel_accuracy']:.1f} | "
                     f"{100 * figures['mean_f1']:.1f} | "
                     + " | ".join(f"{100 * figures['f1'][n]:.1f}" for n in foreground) + " |")
    return "\n".join(lines)


def real_photos() -> str:
    report = _json("real_photos")
    return _heldout_rows(report, ("all", "frontal", "pose"), "held-out people") + "\n"


def real_photos_frontal() -> str:
    return _heldout_rows(_json("real_photos_frontal"), ("frontal",), "held-out frontal people") + "\n"


def shipped_models() -> str:
    from faceseg.model import zoo

    lines = ["| name | classes | input | size | held-out pixel accuracy | held-out mean F1 |", "|---|---|---|---|---|---|"]
    for name in zoo.shipped_names():
        meta = zoo.metadata(name)
        heldout = meta["heldout"]["all"]
        lines.append(f"| `{name}` ([card](docs/models/{name}.md)) | {', '.join(meta['classes'])} | {meta['size']} px | "
                     f"{meta['bytes'] / 2**20:.1f} MiB | {100 * heldout['pixel_accuracy']:.1f}% | "
                     f"{100 * heldout['mean_f1']:.1f}% |")
    return "\n".join(lines) + "\n"


def demo() -> str:
    run = _json("demo")
    return (f"On 2 CPU cores the demo took {run['minutes']:.1f} minutes (install not counted) and scored F1 "
            f"`overall` {100 * run['f1_overall']:.1f}% on its {run['test_images']} synthetic test faces "
            f"(`python benchmarks/demo.py`).\n")


def finetune() -> str:
    report = _json("finetune")
    runs = {(run["photos"], run["start"]): run for run in report["runs"]}
    pairs = ", ".join(f"{photos} photos {100 * runs[photos, 'init']['mean_f1']:.1f} against "
                      f"{100 * runs[photos, 'scratch']['mean_f1']:.1f}"
                      for photos in sorted({photos for photos, _ in runs}))
    return (f"On {report['scored_photos']} FASSEG photos of people neither model saw, mean F1 (%) with `--init` "
            f"against from scratch: {pairs}; the starting model alone scored "
            f"{100 * report['base']['mean_f1']:.1f} ([benchmarks/results/finetune.md](benchmarks/results/finetune.md)).\n")


def benchmark_ratios() -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from suite import GOALS, met

    report = _json("full")
    lines = [f"`python benchmarks/run.py`, {report['machine']['cpus']} CPU cores; each benchmark's date is when it "
             "last ran (`--only` re-runs some):", "",
             "| ratio (same run, same machine) | measured | goal | met | benchmark, date |", "|---|---|---|---|---|"]
    for bench, result in report.items():
        if not isinstance(result, dict) or "ratios" not in result or bench == "ratios":
            continue
        for name, value in result["ratios"].items():
            op, goal = GOALS.get(name, ("", "–"))
            lines.append(f"| {name} | {value:.4g} | {op} {goal} | {met(name, value)} | {bench}, "
                         f"{result['measured'][:10]} |")
    return "\n".join(lines) + "\n"


GENERATORS = {"config-options": config_options, "real-photos": real_photos, "real-photos-frontal": real_photos_frontal,
              "shipped-models": shipped_models, "demo": demo, "finetune": finetune,
              "benchmark-ratios": benchmark_ratios}


def model_cards() -> dict[Path, str]:
    from faceseg.model import zoo

    return {ROOT / "docs" / "models" / f"{name}.md": zoo.model_card(zoo.metadata(name)) for name in zoo.shipped_names()}


def rendered(text: str) -> str:
    def block(match: re.Match) -> str:
        body = GENERATORS[match["name"]]()
        return f"{match.group(1)}{body if body.endswith(chr(10)) else body + chr(10)}{match.group(4)}"
    return BLOCK.sub(block, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    wanted = {path: rendered(path.read_text()) for path in FILES if path.is_file()}
    wanted.update(model_cards())
    stale = [path for path, text in wanted.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)}: differs from its sources; run python docs/generate.py")
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
