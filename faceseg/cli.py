"""The `faceseg` command line: turn arguments into typed values and call one library function
(faceseg.api). Every check happens in those functions, before Ray starts."""
from __future__ import annotations

import argparse
import sys

import faceseg  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)
from faceseg.config import DataConfig
from faceseg.serve import MAX_BATCH_SIZE

# Everyday train flags, each a short name for one config key (`--set` reaches every key).
TRAIN_ALIASES = {
    "epochs": "train.epochs", "batch_size": "train.batch_size", "learning_rate": "train.learning_rate",
    "num_workers": "scaling.num_workers", "size": "data.size",
}


def _address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="join this Ray cluster, HOST:PORT of its GCS (default: $RAY_ADDRESS, "
                                     "else a private runtime on this machine)")


def cmd_synth(args) -> int:
    from faceseg.data.synth import write_synthetic_dataset

    info = write_synthetic_dataset(args.out, args.train, args.test, args.size, args.seed)
    print(f"wrote {args.train} train + {args.test} test synthetic faces ({args.size} px) in "
          f"{info['seconds']:.1f} s ({info['images_per_second']:.0f} images/s)\ndata: {args.out}")
    return 0


def cmd_prepare(args) -> int:
    from faceseg.api import prepare

    print(prepare(args.data, args.out, size=args.size, layout=args.layout, label_names=args.label_names,
                  classes=args.classes, images=args.images, masks=args.masks, strict=args.strict,
                  address=args.address).format())
    return 0


def train_config(args):
    """--config (or the resumed run's config), then the aliases, then every --set, in that order."""
    import dataclasses

    from faceseg.config import Config, parse_assignment
    from faceseg.storage import Location
    from faceseg.train.run import saved_config

    if args.config:
        config = Config.from_yaml(args.config)
    elif args.resume:
        config = saved_config(Location.of(args.resume))
    else:
        config = Config()
    if args.data or args.cache:   # one replaces the other (they are mutually exclusive flags)
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, data=args.data, cache=args.cache))
    overrides = {key: getattr(args, name) for name, key in TRAIN_ALIASES.items()}
    if args.use_gpu:
        overrides["scaling.use_gpu"] = True
    config = config.with_overrides(overrides)
    return config.with_overrides(dict(parse_assignment(text) for text in args.set))


def cmd_train(args) -> int:
    from faceseg.api import train

    if args.resume and args.output and args.output != args.resume:
        raise ValueError("--resume RUN continues RUN in place; leave out --output")
    summary = train(train_config(args), args.resume or args.output, resume=bool(args.resume),
                    overwrite=args.overwrite, local=args.local, address=args.address)
    print(summary.format())
    return 0


def cmd_predict(args) -> int:
    from faceseg.api import predict

    summary = predict(args.model, args.input, args.output, overlay=args.overlay, layout=args.layout,
                      batch_size=args.batch_size, concurrency=args.concurrency, num_gpus=args.num_gpus,
                      overwrite=args.overwrite, refine=args.refine, address=args.address)
    print(summary.format())
    return 0 if not summary.failed else 1


def cmd_evaluate(args) -> int:
    from faceseg.api import evaluate
    from faceseg.metrics import format_report

    print(format_report(evaluate(args.gt, args.pred, layout=args.layout, json_out=args.json)))
    if args.json:
        print(f"report: {args.json}")
    return 0


def cmd_tune(args) -> int:
    from faceseg.api import sweep

    print(sweep(args.config, output=args.output, resume=args.resume, address=args.address).format())
    return 0


def cmd_serve(args) -> int:
    from faceseg.api import serve

    serve(args.model, host=args.host, port=args.port, replicas=args.replicas, num_gpus=args.num_gpus,
          max_batch_size=args.max_batch_size, address=args.address, block=True)
    return 0


def cmd_export(args) -> int:
    from faceseg.api import export

    print(f"exported {args.format}: {export(args.run, args.format, args.output, overwrite=args.overwrite)}")
    return 0


def cmd_demo(args) -> int:
    from faceseg.demo import run_demo

    return run_demo(args.workdir, args.train_images, args.test_images, args.epochs, args.address)


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
    p.add_argument("data", nargs="?", help="data set folder or URI")
    p.add_argument("--out", required=True, help="cache folder (or URI) to write")
    p.add_argument("--layout", default="auto", choices=["auto", "helenstar", "lapa", "celebamask-hq", "pairs"])
    p.add_argument("--images", help="pairs layout: folder of images")
    p.add_argument("--masks", help="pairs layout: folder of grey label PNGs, paired by file stem")
    p.add_argument("--label-names", help="file naming the label ids, one a line")
    p.add_argument("--classes", default="own", choices=["own", "helen"],
                   help="own: keep the data set's classes (default); helen: remap them by name into Helen's 11")
    p.add_argument("--size", default=DataConfig.size, help=f"training grid side in pixels (default {DataConfig.size})")
    p.add_argument("--strict", action="store_true", help="any bad file is fatal")
    _address(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train the U-Net (Ray Train, or --local)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="raw data set; prepared into RUN/cache first")
    src.add_argument("--cache", help="Parquet cache from `faceseg prepare`")
    p.add_argument("--config", help="YAML config (sections data, model, train, scaling)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config value, e.g. --set train.learning_rate=1e-3 --set model.depth=5")
    for name, key in TRAIN_ALIASES.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, help=f"same as --set {key}=...")
    p.add_argument("--use-gpu", action="store_true", help="same as --set scaling.use_gpu=true")
    p.add_argument("--local", action="store_true", help="one process, no Ray Train workers")
    p.add_argument("--output", help="run folder or URI (default runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start an existing run folder again from scratch")
    _address(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="batch prediction job: label-map PNGs (+ F1 when ground truth exists)")
    p.add_argument("--model", required=True, help="run folder or .keras file (or URI)")
    p.add_argument("--input", required=True, help="data set folder, a folder of images, or a video file")
    p.add_argument("--output", required=True, help="folder (or URI) for the label maps; never inside --input")
    p.add_argument("--overlay", action="store_true", help="also write side-by-side overlays")
    p.add_argument("--layout", default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=1, help="model actors")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per model actor")
    p.add_argument("--overwrite", action="store_true", help="redo every image, replacing another model's output")
    p.add_argument("--no-refine", dest="refine", action="store_false",
                   help="resize the probabilities only; by default class edges follow the photo's (a guided filter)")
    _address(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="F1 report of predicted label maps against ground truth")
    p.add_argument("gt")
    p.add_argument("pred")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--layout", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("tune", help="Ray Tune sweep")
    p.add_argument("--config", required=True)
    p.add_argument("--output", help="the sweep's folder or URI (overrides the sweep file's)")
    p.add_argument("--resume", action="store_true")
    _address(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("serve", help="an HTTP endpoint on Ray Serve: POST an image to /parse")
    p.add_argument("--model", required=True, help="run folder or .keras file (or URI)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica")
    p.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE, help="images a replica's forward pass takes at most")
    _address(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="export a model: TF SavedModel, TFLite or ONNX")
    p.add_argument("run", help="run folder or .keras file")
    p.add_argument("--format", required=True, choices=["saved_model", "tflite", "onnx"])
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="synth -> prepare -> train -> predict -> F1 on synthetic faces")
    p.add_argument("--workdir", default="faceseg-demo")
    p.add_argument("--train-images", type=int, default=600)
    p.add_argument("--test-images", type=int, default=60)
    p.add_argument("--epochs", type=int, default=12)
    _address(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from faceseg.errors import USER_ERRORS
    from faceseg.train.run import TrainingError

    try:
        return args.func(args)
    except USER_ERRORS as error:
        print(f"faceseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"faceseg {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"faceseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
