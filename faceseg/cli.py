"""The `faceseg` command line: turn arguments into typed values and call one library function
(faceseg.api). Every check happens in those functions, before Ray starts."""
from __future__ import annotations

import argparse
import os
import sys

import faceseg
from faceseg.config import choices, default
from faceseg.runtime import VERBOSE_ENV
from faceseg.serve import MAX_BATCH_SIZE

# Everyday train flags, each a short name for one config key (`--set` reaches every key).
TRAIN_ALIASES = {
    "epochs": "train.epochs", "batch_size": "train.batch_size", "learning_rate": "train.learning_rate",
    "num_workers": "scaling.num_workers", "size": "data.size",
}


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
    """--config (or the resumed run's config), then --data/--cache, the aliases, then every --set, in that order."""
    from faceseg.config import Config, parse_assignment
    from faceseg.storage import Location
    from faceseg.train.layout import saved_config

    if args.config:
        config = Config.from_yaml(args.config)
    elif args.resume:
        config = saved_config(Location.of(args.resume))
    else:
        config = Config()
    overrides = {key: getattr(args, name) for name, key in TRAIN_ALIASES.items()}
    if args.data or args.cache:   # one replaces the other (they are mutually exclusive flags)
        raw = config.to_dict()
        config = Config.from_dict({**raw, "data": {**raw["data"], "data": args.data, "cache": args.cache}})
    if args.use_gpu:
        overrides["scaling.use_gpu"] = True
    config = config.with_overrides(overrides)
    return config.with_overrides(dict(parse_assignment(text) for text in args.set))


def cmd_train(args) -> int:
    from faceseg.api import train
    from faceseg.train.layout import RunError

    if args.resume and args.output and args.output != args.resume:
        raise RunError("--resume RUN continues RUN in place; leave out --output")
    summary = train(train_config(args), args.resume or args.output, resume=bool(args.resume),
                    overwrite=args.overwrite, local=args.local, init=args.init, address=args.address)
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

    print(sweep(args.config, output=args.output, resume=args.resume, overwrite=args.overwrite,
                address=args.address).format())
    return 0


def cmd_serve(args) -> int:
    from faceseg.api import serve

    serve(args.model, host=args.host, port=args.port, replicas=args.replicas, num_gpus=args.num_gpus,
          max_batch_size=args.max_batch_size, address=args.address, block=True)
    return 0


def cmd_export(args) -> int:
    from faceseg.api import export

    print(f"exported {args.format}: {export(args.model, args.format, args.output, overwrite=args.overwrite)}")
    return 0


def cmd_models(args) -> int:
    import json

    from faceseg.model import zoo

    if args.name:
        meta = zoo.metadata(args.name)
        print(json.dumps(meta, indent=1) if args.json else zoo.model_card(meta), end="\n" if args.json else "")
        return 0
    catalogue = [zoo.metadata(name) for name in zoo.shipped_names()]
    if args.json:
        print(json.dumps(catalogue, indent=1))
    else:
        print("\n".join(zoo.summary_line(meta) for meta in catalogue) or "no shipped models")
        print("the card of one: faceseg models NAME; use one: faceseg predict --model NAME ...")
    return 0


def cmd_demo(args) -> int:
    from faceseg.demo import run_demo

    return run_demo(args.workdir, args.train_images, args.test_images, args.epochs, args.address)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help=f"show every library's log lines, TensorFlow's too (or set {VERBOSE_ENV}=1)")
    ray_flags = argparse.ArgumentParser(add_help=False, parents=[common])
    ray_flags.add_argument("--address", help="join this Ray cluster, HOST:PORT of its GCS (default: $RAY_ADDRESS, "
                                             "else a private runtime on this machine)")

    parser = argparse.ArgumentParser(prog="faceseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"faceseg {faceseg.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", parents=[common], help="write a synthetic face-parsing data set (helenstar layout)")
    p.add_argument("out")
    p.add_argument("--train", type=int, default=200)
    p.add_argument("--test", type=int, default=40)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", parents=[ray_flags], help="preprocess a data set into the Parquet cache (Ray Data)")
    p.add_argument("data", nargs="?", help="data set folder or URI")
    p.add_argument("--out", required=True, help="cache folder (or URI) to write")
    p.add_argument("--layout", default="auto", choices=choices("data.layout"))
    p.add_argument("--images", help="pairs layout: folder of images")
    p.add_argument("--masks", help="pairs layout: folder of grey label PNGs, paired by file stem")
    p.add_argument("--label-names", help="file naming the label ids, one a line")
    p.add_argument("--classes", default="own", choices=choices("data.classes"),
                   help="own: keep the data set's classes (default); helen: remap them by name into Helen's 11")
    p.add_argument("--size", default=default("data.size"),
                   help=f"training grid side in pixels (default {default('data.size')})")
    p.add_argument("--strict", action="store_true", help="any bad file is fatal")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", parents=[ray_flags], help="train the U-Net (Ray Train, or --local)")
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
    p.add_argument("--init", metavar="MODEL", help="start from this model's weights: a shipped name (faceseg models), "
                                                   "a run folder or a .keras file; other classes get a new last layer")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", parents=[ray_flags],
                       help="batch prediction job: label-map PNGs (+ F1 when ground truth exists)")
    p.add_argument("--model", required=True, help="a shipped model's name, a run folder or a .keras file (or URI)")
    p.add_argument("--input", required=True, help="data set folder, a folder of images, or a video file")
    p.add_argument("--output", required=True, help="folder (or URI) for the label maps; never inside --input")
    p.add_argument("--overlay", action="store_true", help="also write side-by-side overlays")
    p.add_argument("--layout", default="auto", choices=choices("data.layout"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=1, help="model actors")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per model actor")
    p.add_argument("--overwrite", action="store_true", help="redo every image, replacing another model's output")
    p.add_argument("--no-refine", dest="refine", action="store_false",
                   help="resize the probabilities only; by default class edges follow the photo's (a guided filter)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", parents=[common], help="F1 report of predicted label maps against ground truth")
    p.add_argument("gt")
    p.add_argument("pred")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--layout", default="auto", choices=choices("data.layout"))
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("tune", parents=[ray_flags], help="Ray Tune sweep")
    p.add_argument("--config", required=True)
    p.add_argument("--output", help="the sweep's folder or URI (overrides the sweep file's)")
    p.add_argument("--resume", action="store_true", help="continue the sweep in its folder")
    p.add_argument("--overwrite", action="store_true", help="start the sweep in its folder again")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("serve", parents=[ray_flags], help="an HTTP endpoint on Ray Serve: POST an image to /parse")
    p.add_argument("--model", required=True, help="a shipped model's name, a run folder or a .keras file (or URI)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica")
    p.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE, help="images a replica's forward pass takes at most")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", parents=[common], help="export a model: TF SavedModel, TFLite or ONNX")
    p.add_argument("model", help="a shipped model's name, a run folder or a .keras file")
    p.add_argument("--format", required=True, choices=["saved_model", "tflite", "onnx"])
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an export faceseg wrote there")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("models", parents=[common], help="the trained models shipped inside faceseg")
    p.add_argument("name", nargs="?", help="show this model's card")
    p.add_argument("--json", action="store_true", help="the metadata, as JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("demo", parents=[ray_flags], help="synth -> prepare -> train -> predict -> F1 on synthetic faces")
    p.add_argument("--workdir", default="faceseg-demo")
    p.add_argument("--train-images", type=int, default=None, help="synthetic training faces (default: the demo's)")
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
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
