"""faceseg on real photos: FASSEG, held out by person, with the FASSEG recipe (configs/fasseg.yaml).

    python benchmarks/real_photos.py --data PATH/TO/fasseg [--config configs/fasseg.yaml] [--folds 3]
                                     [--hold-out people|frontal] [--set model.base_filters=24 ...]

FASSEG's multi-pose photos repeat each person in 26 poses, so images are split by PERSON, never by image:
three folds by default (the shipped report; `--folds 5` for five), each holding out a third of the people
(frontal photos are one person each; `pose_personneNN*` are person NN in both of their series). Each fold
trains on the other people (with one more person's photos as the validation split), then `faceseg predict`
scores the held-out people at their label maps' own resolution. The report sums every fold's confusion
matrix (docs/metrics.md) and keeps each fold's figures; a few held-out overlays go to docs/images/.

`--hold-out frontal` holds out only the 20 frontal people (one photo each) in `--folds` groups and trains every
fold on all 7 multi-pose people as well: each model learns from all but a few people, as the shipped recipe
run on the whole data set does, and is scored on frontal photos of people it never saw, as the published
figures are. It writes real_photos_frontal.{json,md} and no overlays.

`--sweep-fold` writes the fold layout only (the data a `faceseg tune` sweep reads; tune_configs/real-photos.yaml).
`--rescore` rebuilds the report from the folds' existing predictions (no training). It gathers a fold only if
the run's own config.yaml (--config with every --set, as `faceseg train` resolved it) equals what --config and
--set resolve to now, but for where its data and cache live, and --folds and --hold-out are the fold's (recorded
in --work/fold<k>.json with the commit it trained at); so with `--only-fold`, folds can run one at a time, from
another clone or machine into one --work, and be gathered by `--rescore` (a one-fold run writes no report
and leaves docs/images/ alone).
Writes benchmarks/results/real_photos.{json,md}: all held-out photos, and the frontal and multi-pose ones apart
(published FASSEG figures are on frontal photos). A trial (`--set`, or another --config) writes its report
into --work instead and leaves benchmarks/results and docs/images alone; benchmarks/results/real_photos_trials.md
lists the trials measured.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OVERLAYS = ROOT / "docs" / "images"
SHIPPED_CONFIG = ROOT / "configs" / "fasseg.yaml"
# --hold-out: its own default work folder (the protocols' fold<k>/pred<k> names would overwrite each other's),
# report file stem, report title, report rows, and whether held-out overlays go to docs/images/.
PROTOCOLS = {
    "people": {"work": "real-photos", "stem": "real_photos", "held": "held out by person",
               "rows": ("all", "frontal", "pose"), "overlays": True},
    "frontal": {"work": "real-photos-frontal", "stem": "real_photos_frontal",
                "held": "of frontal people held out; every multi-pose person trains in every fold",
                "rows": ("frontal",), "overlays": False},
}


def person_of(name: str) -> str:
    match = re.match(r"pose_personne(\d\d)", name)
    return f"pose{match.group(1)}" if match else name          # a frontal photo is its own person


def folds(names: list[str], count: int) -> list[list[str]]:
    """People in `count` groups of about equal image counts, deterministically (largest first)."""
    people: dict[str, list[str]] = {}
    for name in sorted(names):
        people.setdefault(person_of(name), []).append(name)
    groups: list[list[str]] = [[] for _ in range(count)]
    for person in sorted(people, key=lambda p: (-len(people[p]), p)):
        smallest = min(range(count), key=lambda g: (sum(len(people[p]) for p in groups[g]), g))
        groups[smallest].append(person)
    return [sorted(n for p in group for n in people[p]) for group in groups]


def write_fold(data: Path, out: Path, test: list[str], val: list[str], train: list[str]) -> Path:
    """A lapa-layout folder of symlinks: train/ val/ test/ with images/ and labels/, and the class names."""
    shutil.rmtree(out, ignore_errors=True)
    for split, names in (("train", train), ("val", val), ("test", test)):
        for sub, suffix in (("images", ".jpg"), ("labels", ".png")):
            (out / split / sub).mkdir(parents=True)
            for name in names:
                os.symlink(data / sub / f"{name}{suffix}", out / split / sub / f"{name}{suffix}")
    shutil.copy(data / "label_names.txt", out / "label_names.txt")
    return out


def split_fold(groups: list[list[str]], k: int, always_train: tuple[str, ...] = ()
               ) -> tuple[list[str], list[str], list[str]]:
    """(test, val, train) of fold k: the k-th group is held out; one multi-pose person of the other groups
    (if they hold any) and two frontal people validate; `always_train` photos are in no group and train."""
    test = groups[k]
    rest = sorted(n for g, names in enumerate(groups) if g != k for n in names)
    pose_people = sorted({person_of(n) for n in rest if n.startswith("pose_")})
    val = [n for n in rest if pose_people and person_of(n) == pose_people[k % len(pose_people)]]
    val += [n for n in rest if n.startswith("frontal")][-2:]          # and two frontal people
    train = sorted([n for n in rest if n not in val] + list(always_train))
    return test, val, train


def grouped(names: list[str], count: int, hold_out: str) -> tuple[list[list[str]], tuple[str, ...]]:
    """The fold groups and the photos that always train. `people`: every person is held out in one fold.
    `frontal`: only the frontal people are, and every multi-pose person trains in every fold, so a model
    learns from all but a few people, as one trained on the whole data set would (published FASSEG figures
    are on frontal test photos of a model trained on all the training photos)."""
    if hold_out == "people":
        return folds(names, count), ()
    return folds([n for n in names if n.startswith("frontal")], count), tuple(n for n in names if n.startswith("pose_"))


def copy_overlays(work: Path, held_out: list[list[str]], count: int) -> None:
    """A few held-out overlays into docs/images/: frontal photos, a three-quarter view and a profile. All of
    them are found before the committed ones go, so a missing one leaves docs/images/ as it was."""
    if not count:
        return
    wanted = lambda n: n.startswith("frontal") or n.endswith(("p0m45", "p0p90"))          # noqa: E731
    picks = [(k, n) for k, names in enumerate(held_out) for n in names if wanted(n)]
    picks = sorted(picks, key=lambda kn: (not kn[1].startswith("frontal"), kn[1]))
    chosen = picks[:count // 2] + [kn for kn in picks if not kn[1].startswith("frontal")][:count - count // 2]
    overlays = {name: work / f"pred{k}" / "overlays" / f"{name}.png" for k, name in chosen}
    missing = [str(path) for path in overlays.values() if not path.is_file()]
    if missing:
        sys.exit(f"no held-out overlay {', '.join(missing)} (faceseg predict --overlay writes them); "
                 f"{OVERLAYS} left as it was")
    OVERLAYS.mkdir(parents=True, exist_ok=True)
    for old in OVERLAYS.glob("fasseg-heldout-*.png"):
        old.unlink()
    for name, path in overlays.items():
        shutil.copy(path, OVERLAYS / f"fasseg-heldout-{name}.png")


def trained_otherwise(record: Path, run: Path, asked, folds: int, hold_out: str) -> str | None:
    """Why a fold cannot be gathered into a report of the `asked` Config (None if it can): another fold
    layout, or a run whose resolved config differs other than in where its data and cache live."""
    from faceseg.config import Config, ConfigError
    from faceseg.storage import Location
    from faceseg.train.layout import CONFIG_FILE, RunError, saved_config

    if not record.is_file():
        return f"{record}: no record of this fold's training; train it first (without --rescore)"
    recorded = json.loads(record.read_text())
    layout = (recorded.get("folds"), recorded.get("hold_out", "people"))   # records before --hold-out held out people
    if layout != (folds, hold_out):
        return f"{record}: trained as fold of --folds {layout[0]} --hold-out {layout[1]}, not --folds {folds} --hold-out {hold_out}"
    try:
        trained = saved_config(Location.of(run))
    except (RunError, ConfigError) as error:         # no run there, or an option since removed
        return f"{error}; train it first (without --rescore)"
    raw = asked.to_dict()
    asked = Config.from_dict({**raw, "data": {**raw["data"], "data": trained.data.data, "cache": trained.data.cache}})
    mine, theirs = trained.to_dict(), asked.to_dict()
    shown = []
    for key in trained.differences(asked):
        section, _, name = key.partition(".")
        shown.append(f"{key}={mine[section][name]!r} (asked {theirs[section][name]!r})")
    if shown:
        return f"{run / CONFIG_FILE}: trained with {', '.join(shown)}; rescore with that --config/--set"
    return None


def commit() -> str | None:
    """The code a fold trains with (git describe --dirty), None outside a git checkout."""
    done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def faceseg(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "faceseg", *args], capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"faceseg {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the FASSEG folder: images/ labels/ label_names.txt")
    parser.add_argument("--config", default=str(SHIPPED_CONFIG))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a change to the config for every fold, as `faceseg train --set`")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--hold-out", choices=tuple(PROTOCOLS), default="people",
                        help="people: every person in one fold (the shipped report); frontal: only the frontal "
                             "people, the multi-pose ones always train (report: real_photos_frontal.md)")
    parser.add_argument("--only-fold", type=int, help="run this fold alone")
    parser.add_argument("--sweep-fold", type=int, help="write this fold's layout for a sweep and stop")
    parser.add_argument("--work", help="folds, models and predictions (default benchmarks/work/real-photos, "
                                        "or real-photos-frontal with --hold-out frontal)")
    parser.add_argument("--overlays", type=int, default=4, help="held-out overlays copied to docs/images/")
    parser.add_argument("--rescore", action="store_true", help="score the existing predictions again, no training")
    args = parser.parse_args()
    protocol = PROTOCOLS[args.hold_out]
    data, work = Path(args.data).resolve(), Path(args.work or ROOT / "benchmarks" / "work" / protocol["work"])
    names = sorted(p.stem for p in (data / "images").glob("*.jpg"))
    groups, always_train = grouped(names, args.folds, args.hold_out)
    if args.sweep_fold is not None:
        test, val, train = split_fold(groups, args.sweep_fold, always_train)
        out = write_fold(data, work / f"fold{args.sweep_fold}", test, val, train)
        print(f"fold {args.sweep_fold}: {len(train)} train / {len(val)} val / {len(test)} held-out photos -> {out}")
        return 0

    from faceseg.config import Config, parse_assignment
    from faceseg.data.decode import read_label
    from faceseg.data.layouts import discover
    from faceseg.labels import Taxonomy, build_remap
    from faceseg.metrics import ConfusionMatrix, format_report
    from faceseg.data.decode import read_ids
    from faceseg.storage import Location

    config = Path(args.config).resolve()
    # What --rescore checks each fold's run against (another fold count holds out other people under the
    # same pred<k> names, so the layout is checked too).
    asked = Config.from_yaml(config).with_overrides(dict(parse_assignment(change) for change in args.set))
    recipe = {"config": str(config), "set": args.set, "folds": args.folds, "hold_out": args.hold_out}
    # Only the shipped recipe's figures and overlays go into the repository; a trial's stay in its --work folder.
    shipped = not args.set and config == SHIPPED_CONFIG
    taxonomy = Taxonomy(tuple(n.strip() for n in (data / "label_names.txt").read_text().split()))
    # The report names the data set and config without this machine's paths.
    shown_config = str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config)
    total, report = ConfusionMatrix(taxonomy), {"data": data.name, "config": shown_config, "set": args.set,
                                                "hold_out": args.hold_out, "folds": []}
    by_kind = {"frontal": ConfusionMatrix(taxonomy), "pose": ConfusionMatrix(taxonomy)}
    seconds = 0.0                                   # train + predict, summed over the folds
    for k in ([args.only_fold] if args.only_fold is not None else range(args.folds)):
        test, val, train = split_fold(groups, k, always_train)
        run, pred = work / f"run{k}", work / f"pred{k}"
        record = work / f"fold{k}.json"          # the recipe and what training took, kept for --rescore
        if args.rescore:                         # checked before the fold's layout is written again
            refusal = trained_otherwise(record, run, asked, args.folds, args.hold_out)
            if refusal:
                sys.exit(f"fold {k}: {refusal}")
            fold_times = json.loads(record.read_text())
        fold = write_fold(data, work / f"fold{k}", test, val, train)
        if not args.rescore:
            shutil.rmtree(pred, ignore_errors=True)
            fold_start = time.time()
            faceseg("train", "--config", str(config), *(f"--set={change}" for change in args.set),
                    "--data", str(fold), "--output", str(run), "--overwrite", "--local")
            train_seconds = time.time() - fold_start
            faceseg("predict", "--model", str(run), "--input", str(fold / "test"), "--output", str(pred), "--overlay")
            fold_times = {**recipe, "commit": commit(), "train_seconds": train_seconds,
                          "seconds": time.time() - fold_start}
            record.write_text(json.dumps(fold_times))
        train_seconds, seconds = fold_times["train_seconds"], seconds + fold_times["seconds"]
        scored = json.loads((pred / "report.json").read_text())
        source = discover(fold / "test")
        remap = build_remap(source.taxonomy)
        for sample in source.samples:
            truth = read_label(sample, remap)
            predicted = read_ids(str(Location.of(pred) / sample.prediction_name))
            total.add(truth, predicted)
            by_kind["frontal" if sample.name.startswith("frontal") else "pose"].add(truth, predicted)
        people = sorted({person_of(n) for n in test})
        report["folds"].append({"fold": k, "held_out_people": people, "train": len(train), "val": len(val),
                                "test": len(test), "commit": fold_times.get("commit"), "train_seconds": train_seconds,
                                "pixel_accuracy": scored["pixel_accuracy"], "mean_f1": scored["mean_f1"],
                                "f1": scored["f1"]})
        print(f"fold {k}: {len(test)} photos of {len(people)} people held out; pixel accuracy "
              f"{100 * scored['pixel_accuracy']:.2f}%, mean F1 {100 * scored['mean_f1']:.2f}% "
              f"(trained in {train_seconds / 60:.1f} min)", flush=True)
    report["all"] = total.report()
    report.update({kind: matrix.report() for kind, matrix in by_kind.items()})
    report["seconds"] = seconds
    summary = format_report(report["all"])
    print(summary)
    for kind in ("frontal", "pose"):
        if report[kind]["images"]:
            print(f"{kind}: {report[kind]['images']} photos, pixel accuracy {100 * report[kind]['pixel_accuracy']:.2f}%, "
                  f"mean F1 {100 * report[kind]['mean_f1']:.2f}%")
    if args.only_fold is None:                  # a report, and its overlays, only of every fold together
        if shipped and protocol["overlays"]:
            copy_overlays(work, groups, args.overlays)
        out = RESULTS if shipped else work
        out.mkdir(parents=True, exist_ok=True)
        stem = protocol["stem"]
        (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
        changes = "".join(f" `--set {change}`" for change in args.set)
        lines = [f"# faceseg on real photos (FASSEG, {args.folds} folds {protocol['held']})", "",
                 f"Config: `{shown_config}`{changes}; {len(names)} photos; "
                 f"{report['seconds'] / 60:.0f} min in all on this machine.", "",
                 "All held-out photos together (one confusion matrix over every fold):", "", "```", summary, "```", "",
                 "| held-out photos | images | pixel accuracy | mean F1 | " + " | ".join(taxonomy.names) + " |",
                 "|---|---|---|---|" + "---|" * taxonomy.num_classes]
        for kind in protocol["rows"]:
            figures = report[kind]
            lines.append(f"| {kind} | {figures['images']} | {100 * figures['pixel_accuracy']:.2f} | "
                         f"{100 * figures['mean_f1']:.2f} | "
                         + " | ".join(f"{100 * figures['f1'][name]:.1f}" for name in taxonomy.names) + " |")
        lines += ["", "F1 per class in %; mean F1 is over the classes other than background.", "",
                 "| fold | held-out people | photos | pixel accuracy | mean F1 | train min | trained at |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {f['fold']} | {len(f['held_out_people'])} | {f['test']} | {100 * f['pixel_accuracy']:.2f} | "
                  f"{100 * f['mean_f1']:.2f} | {f['train_seconds'] / 60:.1f} | {f['commit'] or 'not recorded'} |"
                  for f in report["folds"]]
        (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
        print(f"report: {out / f'{stem}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
