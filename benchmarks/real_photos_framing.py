"""How a real_photos.py run's fold models cope with photos framed unlike FASSEG's: each fold's held-out photos
zoomed out (the photo shrunk to ZOOM of its size in the middle of a canvas of its size, the border black or
its edge pixels repeated) or cropped in (the middle 1/ZOOM of it), then parsed by the fold's model as
`faceseg predict` does (FaceParser, refined). Pixel accuracy over the photo's own pixels only (a border is
not scored), pooled over the folds like real_photos.py's report; frontal and multi-pose photos apart.

    python benchmarks/real_photos_framing.py --work benchmarks/work/real-photos [--zoom 0.6 0.8 1 1.25]

FASSEG's faces fill the frame; most photos frame a face looser. Figures: real_photos_trials.md, twelfth round.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NOT_SCORED = 255
BORDERS = {"black": cv2.BORDER_CONSTANT, "repeat": cv2.BORDER_REPLICATE}


def reframe(image: np.ndarray, label: np.ndarray, zoom: float, border: str) -> tuple[np.ndarray, np.ndarray]:
    """The photo and its label map at `zoom` (below 1 zoomed out onto a border, above 1 cropped in); the
    label map's border pixels are NOT_SCORED."""
    height, width = label.shape
    if zoom >= 1:
        crop_h, crop_w = round(height / zoom), round(width / zoom)
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        return image[top:top + crop_h, left:left + crop_w].copy(), label[top:top + crop_h, left:left + crop_w]
    small_h, small_w = round(height * zoom), round(width * zoom)
    top, left = (height - small_h) // 2, (width - small_w) // 2
    pad = (top, height - small_h - top, left, width - small_w - left)
    image = cv2.copyMakeBorder(cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA), *pad,
                               BORDERS[border], value=0)
    label = cv2.copyMakeBorder(cv2.resize(label, (small_w, small_h), interpolation=cv2.INTER_NEAREST), *pad,
                               cv2.BORDER_CONSTANT, value=NOT_SCORED)
    return image, label


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, type=Path, help="a real_photos.py --work folder (fold<k>, run<k>)")
    parser.add_argument("--zoom", type=float, nargs="+", default=[0.6, 0.8, 1.0, 1.25])
    args = parser.parse_args(argv)

    from faceseg.metrics.confusion import ConfusionMatrix
    from faceseg.predict.parser import FaceParser

    folds = sorted(int(p.name[3:]) for p in args.work.glob("run[0-9]*") if (p / "model.keras").is_file())
    if not folds:
        parser.error(f"--work {args.work}: no run<k>/model.keras; run benchmarks/real_photos.py first")
    kinds = [(border, zoom) for border in BORDERS for zoom in args.zoom if zoom < 1] \
        + [("-", zoom) for zoom in args.zoom if zoom >= 1]
    matrices = {}                                 # (border, zoom, "frontal" or "pose") -> ConfusionMatrix
    for fold in folds:
        model = FaceParser.load(args.work / f"run{fold}")
        for image_path in sorted((args.work / f"fold{fold}" / "test" / "images").iterdir()):
            label = cv2.imread(str(args.work / f"fold{fold}" / "test" / "labels" / f"{image_path.stem}.png"),
                               cv2.IMREAD_GRAYSCALE)
            image = cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            kind = "frontal" if image_path.stem.startswith("frontal") else "pose"
            for border, zoom in kinds:
                framed, truth = reframe(image, label, zoom, border)
                ids, scored = model(framed), truth != NOT_SCORED
                matrices.setdefault((border, zoom, kind), ConfusionMatrix(model.taxonomy)) \
                    .add(truth[scored][None], ids[scored][None])
        print(f"fold {fold} done", flush=True)

    def accuracy(border, zoom, kinds=("frontal", "pose")):
        found = [matrices[border, zoom, kind] for kind in kinds if (border, zoom, kind) in matrices]
        if not found:
            return "-"
        pooled = ConfusionMatrix(found[0].taxonomy)
        for matrix in found:
            pooled.merge(matrix)
        return f"{100 * pooled.pixel_accuracy():.2f}"

    print(f"\n{args.work}: pixel accuracy %, folds {', '.join(map(str, folds))}\n")
    print("| framing | border | all | frontal | pose |\n|---|---|---|---|---|")
    for border, zoom in kinds:
        framing = "as taken" if zoom == 1 else f"zoomed out to {zoom:g}" if zoom < 1 else f"cropped to 1/{zoom:g}"
        print(f"| {framing} | {border} | {accuracy(border, zoom)} | {accuracy(border, zoom, ['frontal'])} | "
              f"{accuracy(border, zoom, ['pose'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
