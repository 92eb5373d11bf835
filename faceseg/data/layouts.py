"""Find the (image, label map) pairs of a data set on disk, for each layout of CONVENTIONS section 2.

Discovery only lists files and decides splits and output names; decoding happens in `faceseg.data.decode`.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from faceseg.labels import CELEBAMASK_NAMES, LABEL_NAMES, Remap, build_remap, read_label_names

LAYOUTS = ("helenstar", "lapa", "celebamask-hq", "pairs")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.1


class DatasetError(ValueError):
    """A data set that cannot be used as given; the message names the path and the reason."""


@dataclass(frozen=True)
class Sample:
    name: str                          # the image's stem, unique within a split
    split: str
    image: str                         # path of the image file
    label: str | None = None           # grey PNG of source class ids
    parts: tuple[tuple[int, str], ...] = ()  # CelebAMask-HQ raw masks: (source id, path)
    prediction_name: str = ""          # file name of this image's label-map PNG (CONVENTIONS section 4)

    @property
    def has_label(self) -> bool:
        return self.label is not None or bool(self.parts)

    @property
    def label_path(self) -> str:
        """The file a label problem is reported against: the label map, or the first raw part mask."""
        return self.label or self.parts[0][1]

    def to_row(self) -> dict:
        """Plain strings only, so Ray Data's Arrow blocks hold it whatever the layout ("" = no label)."""
        return {"name": self.name, "split": self.split, "image": self.image, "label": self.label or "",
                "parts": json.dumps(self.parts), "prediction_name": self.prediction_name}

    @classmethod
    def from_row(cls, row: dict) -> "Sample":
        return cls(str(row["name"]), str(row["split"]), str(row["image"]), str(row["label"]) or None,
                   tuple((int(k), str(p)) for k, p in json.loads(row["parts"])), str(row["prediction_name"]))


@dataclass
class Source:
    """A discovered data set: its samples, how its labels map to ours, and files that had no pair."""

    root: Path
    layout: str
    samples: list[Sample]
    remap: Remap
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def split_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.samples:
            counts[s.split] = counts.get(s.split, 0) + 1
        return counts


def _images_in(folder: Path) -> list[Path]:
    """Image files, and symlinks named like images even when broken or looping: decoding then names
    the problem instead of the file silently vanishing from the data set."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink()))


def _split_of(folder: Path) -> str:
    return folder.name.lower() if folder.name.lower() in SPLITS else "train"


def _find_label_names(*folders: Path) -> Path | None:
    for folder in folders:
        if (folder / "label_names.txt").is_file():
            return folder / "label_names.txt"
    return None


def _remap_from(path: Path | None, default: tuple[str, ...]) -> Remap:
    return build_remap(read_label_names(path) if path else list(default))


# --- helenstar: DIR/<name>_image.jpg + DIR/<name>_label.png, optionally under train/ test/ ----------

def _helenstar_folders(root: Path) -> list[Path]:
    has_own = any(p.stem.endswith("_image") for p in _images_in(root))
    subs = [d for d in sorted(root.iterdir()) if d.is_dir()
            and any(p.stem.endswith("_image") for p in _images_in(d))]
    return ([root] if has_own else []) + subs


def discover_helenstar(root: Path, require_labels: bool = True) -> Source:
    folders = _helenstar_folders(root)
    if not folders:
        raise DatasetError(f"{root}: no '<name>_image.<ext>' files here or in its sub-folders (helenstar layout)")
    samples, problems = [], []
    for folder in folders:
        for image in _images_in(folder):
            if not image.stem.endswith("_image"):
                continue
            name = image.stem[: -len("_image")]
            label = folder / f"{name}_label.png"
            if not label.is_file():
                if require_labels:
                    problems.append((str(image), f"missing label map {label.name}"))
                    continue
                label = None
            samples.append(Sample(name, _split_of(folder), str(image), str(label) if label else None,
                                  prediction_name=f"{name}_label.png"))
    names_file = _find_label_names(root, root.parent, *folders)
    return Source(root, "helenstar", samples, _remap_from(names_file, LABEL_NAMES), problems)


# --- lapa: DIR/{train,val,test}/images/<name>.jpg + .../labels/<name>.png ----------------------------

def _lapa_split_folders(root: Path) -> list[Path]:
    if (root / "images").is_dir():
        return [root]
    return [root / s for s in SPLITS if (root / s / "images").is_dir()]


def _paired_by_stem(images_dir: Path, labels_dir: Path | None, split: str, require_labels: bool,
                    problems: list) -> list[Sample]:
    labels = {}
    if labels_dir is not None and labels_dir.is_dir():
        labels = {p.stem: p for p in labels_dir.iterdir() if p.suffix.lower() == ".png"}
    samples = []
    for image in _images_in(images_dir):
        label = labels.get(image.stem)
        if label is None and require_labels:
            problems.append((str(image), f"missing label map {image.stem}.png in {labels_dir}"))
            continue
        samples.append(Sample(image.stem, split, str(image), str(label) if label else None,
                              prediction_name=f"{image.stem}.png"))
    return samples


def discover_lapa(root: Path, require_labels: bool = True) -> Source:
    folders = _lapa_split_folders(root)
    if not folders:
        raise DatasetError(f"{root}: no {{train,val,test}}/images folders (lapa layout)")
    samples, problems = [], []
    for folder in folders:
        samples += _paired_by_stem(folder / "images", folder / "labels", _split_of(folder),
                                   require_labels, problems)
    names_file = _find_label_names(root, root.parent)
    return Source(root, "lapa", samples, _remap_from(names_file, LABEL_NAMES), problems)


# --- celebamask-hq: CelebA-HQ-img/<k>.jpg + merged CelebAMask-HQ-mask/<k>.png or raw part masks -----

MERGED_MASK_DIRS = ("CelebAMask-HQ-mask", "CelebAMaskHQ-mask")
RAW_MASK_DIR = "CelebAMask-HQ-mask-anno"


def _raw_parts(anno: Path, k: int) -> tuple[tuple[int, str], ...]:
    folder = anno / str(k // 2000)
    parts = []
    for source_id, part in enumerate(CELEBAMASK_NAMES):
        path = folder / f"{k:05d}_{part}.png"
        if source_id and path.is_file():
            parts.append((source_id, str(path)))
    return tuple(parts)


def discover_celebamask(root: Path, require_labels: bool = True) -> Source:
    images_dir = root / "CelebA-HQ-img"
    if not images_dir.is_dir():
        raise DatasetError(f"{root}: no CelebA-HQ-img folder (celebamask-hq layout)")
    merged = next((root / d for d in MERGED_MASK_DIRS if (root / d).is_dir()), None)
    anno = root / RAW_MASK_DIR
    samples, problems = [], []
    if merged is not None or not anno.is_dir():
        samples = _paired_by_stem(images_dir, merged, "train", require_labels, problems)
        names_file = _find_label_names(root)
        remap = _remap_from(names_file, CELEBAMASK_NAMES)
    else:
        for image in _images_in(images_dir):
            parts = _raw_parts(anno, int(image.stem)) if image.stem.isdigit() else ()
            if not parts and require_labels:
                problems.append((str(image), f"no part masks {image.stem.zfill(5)}_<part>.png under {anno}"))
                continue
            samples.append(Sample(image.stem, "train", str(image), parts=parts,
                                  prediction_name=f"{image.stem}.png"))
        remap = build_remap(CELEBAMASK_NAMES)  # raw parts are merged in the official order
    return Source(root, "celebamask-hq", samples, remap, problems)


# --- pairs: --images DIR --masks DIR, paired by stem ---------------------------------------------------

def discover_pairs(images: Path, masks: Path | None, label_names: Path | None = None,
                   require_labels: bool = True) -> Source:
    if not images.is_dir():
        raise DatasetError(f"{images}: not a folder of images")
    problems: list = []
    samples = _paired_by_stem(images, masks, "train", require_labels, problems)
    return Source(images, "pairs", samples, _remap_from(label_names, LABEL_NAMES), problems)


# --- dispatch --------------------------------------------------------------------------------------------

def detect_layout(root: Path) -> str:
    if (root / "CelebA-HQ-img").is_dir():
        return "celebamask-hq"
    if _lapa_split_folders(root):
        return "lapa"
    if _helenstar_folders(root):
        return "helenstar"
    raise DatasetError(
        f"{root}: cannot tell the layout: expected <name>_image.jpg files (helenstar), "
        "{train,val,test}/images/ (lapa) or CelebA-HQ-img/ (celebamask-hq); "
        "for two plain folders use --images DIR --masks DIR")


def discover(root: Path | str, layout: str = "auto", label_names: Path | None = None,
             require_labels: bool = True) -> Source:
    """List a data set's samples. With require_labels=False, images without labels are kept."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "helenstar":
        source = discover_helenstar(root, require_labels)
    elif layout == "lapa":
        source = discover_lapa(root, require_labels)
    elif layout == "celebamask-hq":
        source = discover_celebamask(root, require_labels)
    elif layout == "pairs":
        source = discover_pairs(root, None, label_names, require_labels)
    else:
        raise DatasetError(f"unknown layout {layout!r}; choose from auto, {', '.join(LAYOUTS)}")
    if label_names is not None and layout != "pairs":
        source.remap = build_remap(read_label_names(label_names))
    return source


def discover_images(folder: Path | str) -> Source:
    """A bare folder of images (no labels): every image file, named `<stem>.png` on output."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    samples = [Sample(p.stem, "test", str(p), prediction_name=f"{p.stem}.png") for p in _images_in(folder)]
    return Source(folder, "images", samples, build_remap(LABEL_NAMES))


def hold_out_validation(samples: list[Sample], fraction: float = VAL_FRACTION) -> list[Sample]:
    """Without a val split, move a deterministic `fraction` of train (by name hash) to `val`."""
    if any(s.split == "val" for s in samples):
        return samples
    train = [s for s in samples if s.split == "train"]
    n_val = max(1, round(len(train) * fraction)) if len(train) >= 2 else 0
    by_hash = sorted(train, key=lambda s: (zlib.crc32(s.name.encode()), s.name))
    chosen = {s.name for s in by_hash[:n_val]}
    return [replace(s, split="val") if s.split == "train" and s.name in chosen else s for s in samples]
