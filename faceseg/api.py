"""faceseg as a library: the functions the command line calls, with typed arguments.

    from faceseg.api import Config, prepare, train, predict, evaluate, sweep, FaceParser

    prepare("data/fasseg", "data/fasseg-cache", size=128)
    run = train(Config.from_yaml("configs/real-photos.yaml").with_overrides({"data.cache": "data/fasseg-cache"}),
                "runs/r1")
    print(run.history[-1])                            # the last epoch's metrics: model.keras, with this config
    predict("runs/r1", "photos/", "preds/r1", overlay=True)
    parser = FaceParser.load("runs/r1")
    ids = parser("photo.jpg")                         # (H, W) uint8 class ids, names in parser.classes

Each function checks its arguments and files first, then joins the Ray cluster at `address` (or
RAY_ADDRESS), or starts a private runtime on this machine.
"""
from faceseg.config import Config
from faceseg.data.prepare import prepare
from faceseg.export import export
from faceseg.predict.evaluate import evaluate
from faceseg.predict.parser import FaceParser
from faceseg.predict.job import predict_folder
from faceseg.serve.app import serve
from faceseg.train.run import train
from faceseg.tune.sweep import sweep

predict = predict_folder

__all__ = ["Config", "FaceParser", "evaluate", "export", "predict", "predict_folder", "prepare", "serve", "sweep",
           "train"]
