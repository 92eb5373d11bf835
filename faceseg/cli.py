"""The `faceseg` command line (CONVENTIONS section 5). Thin: parse, call one function, print where."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import faceseg  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="join this Ray cluster (default: $RAY_ADDRESS, else a local runtime)")


def cmd_synth(args) -> int:
    from faceseg.data.synth import write_synthetic_dataset

    info = write_synthetic_dataset(Path(args.out), args.train, args.test, args.size, args.seed)
    print(f"wrote {args.train} train + {args.test} test synthetic faces ({args.size} px) in "
          f"{info['seconds']:.1f} s ({info['images_per_second']:.0f} images/s)\ndata: {args.out}")
    return 0


def cmd_prepare(args) -> int:
    from faceseg.data.layouts import discover, discover_pairs
    from faceseg.data.prepare import prepare_cache
    from faceseg.runtime import init_ray

    if args.images:
        source = discover_pairs(Path(args.images), Path(args.masks) if args.masks else None,
                                Path(args.label_names) if args.label_names else None)
    elif args.data:
        source = discover(Path(args.data), args.layout,
                          Path(args.label_names) if args.label_names else None)
    else:
        raise SystemExit("faceseg prepare: give a data set folder, or --images DIR --masks DIR")
    init_ray(args.address)
    summary = prepare_cache(source, Path(args.out), args.size, args.strict)
    print(summary.format())
    return 0


def cmd_evaluate(args) -> int:
    from faceseg.metrics import format_report
    from faceseg.metrics.evaluate import evaluate_folders, write_report

    report = evaluate_folders(Path(args.gt), Path(args.pred), args.layout)
    print(format_report(report))
    if args.json:
        write_report(report, args.json)
        print(f"report: {args.json}")
    return 0


def cmd_train(args) -> int:
    from faceseg.train import run_training

    result = run_training(args)
    print(result.format())
    return 0


def cmd_predict(args) -> int:
    from faceseg.predict import run_prediction

    summary = run_prediction(args)
    print(summary.format())
    return 0 if not summary.failed else 1


def cmd_tune(args) -> int:
    from faceseg.tune import run_sweep

    summary = run_sweep(args)
    print(summary.format())
    return 0


def cmd_demo(args) -> int:
    from faceseg.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"faceseg {faceseg.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic face-parsing data set (helenstar layout)")
    p.add_argument("out")
    p.add_argument("--train", type=int, default=200)
    p.add_argument("--test", type=int, default=40)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="preprocess a data set into the Parquet cache (Ray Data)")
    p.add_argument("data", nargs="?", help="data set folder")
    p.add_argument("--out", required=True, help="cache folder to write")
    p.add_argument("--layout", default="auto", choices=["auto", "helenstar", "lapa", "celebamask-hq", "pairs"])
    p.add_argument("--images", help="pairs layout: folder of images")
    p.add_argument("--masks", help="pairs layout: folder of grey label PNGs, paired by file stem")
    p.add_argument("--label-names", help="file naming the label ids, one a line")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--strict", action="store_true", help="any bad file is fatal")
    _add_address(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train the U-Net (Ray Train, or --local)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="raw data set; prepared into RUN/cache first")
    src.add_argument("--cache", help="Parquet cache from `faceseg prepare`")
    p.add_argument("--config", help="YAML config (sections data, model, train, scaling)")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--use-gpu", action="store_true", default=None)
    p.add_argument("--gpus-per-worker", type=float)
    p.add_argument("--cpus-per-worker", type=float)
    p.add_argument("--local", action="store_true", help="one process, no Ray Train workers")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--size", type=int, help="training grid size when preparing --data")
    p.add_argument("--mixed-precision", action="store_true", default=None)
    p.add_argument("--jit", action="store_true", default=None)
    p.add_argument("--output", help="run folder (default runs/<timestamp>)")
    p.add_argument("--resume", help="continue the run in this folder from its last checkpoint")
    _add_address(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="batch prediction job: label-map PNGs (+ F1 when ground truth exists)")
    p.add_argument("--model", required=True, help="run folder or .keras file")
    p.add_argument("--input", required=True, help="data set folder or a folder of images")
    p.add_argument("--output", required=True)
    p.add_argument("--overlay", action="store_true", help="also write side-by-side overlays")
    p.add_argument("--layout", default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=1, help="model actors")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per model actor")
    p.add_argument("--overwrite", action="store_true", help="redo images already predicted")
    _add_address(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="F1 report of predicted label maps against ground truth")
    p.add_argument("gt")
    p.add_argument("pred")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--layout", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("tune", help="Ray Tune sweep")
    p.add_argument("--config", required=True)
    p.add_argument("--output", help="the sweep's folder (overrides the config)")
    p.add_argument("--resume", action="store_true")
    _add_address(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("demo", help="synth -> prepare -> train -> predict -> F1 on synthetic faces")
    p.add_argument("--workdir", default="faceseg-demo")
    p.add_argument("--train-images", type=int, default=600)
    p.add_argument("--test-images", type=int, default=60)
    p.add_argument("--epochs", type=int, default=12)
    _add_address(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from faceseg.errors import USER_ERRORS

    try:
        return args.func(args)
    except USER_ERRORS as error:
        print(f"faceseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
