"""Find the (image, label map) pairs of a data set, for each layout of docs/data.md, on disk or a bucket.

Discovery only lists files and decides splits, class names and output names; decoding happens in
`faceseg.data.decode`.
"""
from __future__ import annotations

import json
import os
import stat
import zlib
from dataclasses import dataclass, field, replace

from faceseg.config import choices
from faceseg.errors import FacesegError
from faceseg.labels import CELEBAMASK_NAMES, HELEN_NAMES, LAPA_NAMES, Taxonomy
from faceseg.storage import Location

LAYOUTS = choices("data.layout")[1:]          # after "auto"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
LABEL_NAMES_FILE = "label_names.txt"


class DatasetError(FacesegError):
    """A data set that cannot be used as given; the message names the path and the reason."""


@dataclass(frozen=True)
class Sample:
    name: str                          # the image's stem, unique within a split
    split: str
    image: str                         # the image file (a path or URI)
    label: str | None = None           # grey PNG of source class ids
    parts: tuple[tuple[int, str], ...] = ()  # CelebAMask-HQ raw masks: (source id, path)
    prediction_name: str = ""          # this image's label-map PNG, relative to predict's output folder

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
    """A discovered data set: its samples, the classes its label ids name, and files that had no pair."""

    root: Location
    layout: str
    samples: list[Sample]
    taxonomy: Taxonomy
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    names_from: str = ""           # where the class names came from

    def split_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.samples:
            counts[s.split] = counts.get(s.split, 0) + 1
        return counts


# The first bytes of the image formats faceseg decodes: a photo saved without an extension is still one.
MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def _looks_like_image(location: Location) -> bool:
    """An extensionless regular file that starts like an image (a FIFO or device is never opened)."""
    try:
        if location.is_local:
            if not stat.S_ISREG(os.stat(location.uri).st_mode):
                return False
            with open(location.uri, "rb") as stream:
                head = stream.read(12)
        else:
            with location.filesystem.open_input_file(location.path) as stream:
                head = stream.read(12)
    except OSError:
        return False
    return head.startswith(MAGIC) and (not head.startswith(b"RIFF") or head[8:12] == b"WEBP")


def _images_in(folder: Location) -> list[Location]:
    return [f for f in folder.files()
            if f.suffix.lower() in IMAGE_SUFFIXES or (not f.suffix and _looks_like_image(f))]


def _split_of(folder: Location) -> str:
    return folder.name.lower() if folder.name.lower() in SPLITS else "train"


def _taxonomy(names_file: Location | None, default: tuple[str, ...], layout: str) -> tuple[Taxonomy, str]:
    if names_file is None:
        return Taxonomy(default), f"the {layout} layout's {len(default)} classes"
    try:
        if (names_file.info().size or 0) > 1 << 20:
            raise DatasetError(f"{names_file}: too large for a list of class names")
        with_names = names_file.read_bytes().decode("utf-8")
    except OSError as error:
        raise DatasetError(f"{names_file}: cannot read ({error})") from None
    except UnicodeDecodeError as error:
        raise DatasetError(f"{names_file}: not a text file of class names (not UTF-8 at byte {error.start})") from None
    names = [line.strip() for line in with_names.splitlines() if line.strip()]
    try:
        return Taxonomy(tuple(names)), str(names_file)
    except ValueError as error:
        raise DatasetError(f"{names_file}: {error}") from None


def _find_label_names(*folders: Location) -> Location | None:
    for folder in folders:
        if (folder / LABEL_NAMES_FILE).is_file():
            return folder / LABEL_NAMES_FILE
    return None


def _unique_by_stem(images: list[Location], labelled: bool, problems: list) -> list[Location]:
    """Images of one folder whose stems are unique; with labels, two images sharing a stem cannot
    tell which of them the label map belongs to, so both are reported and left out."""
    by_stem: dict[str, list[Location]] = {}
    for image in images:
        by_stem.setdefault(image.stem, []).append(image)
    kept = []
    for stem, group in by_stem.items():
        if len(group) > 1 and labelled:
            for image in group:
                problems.append((str(image), f"{len(group)} images share the name {stem!r} "
                                             f"({', '.join(i.name for i in group)}): which one is labelled?"))
            continue
        kept += group
    return kept


# --- helenstar: DIR/<name>_image.jpg + DIR/<name>_label.png, optionally under train/ test/ ----------

def _has_helen_images(folder: Location) -> bool:
    return any(p.stem.endswith("_image") for p in _images_in(folder))


def _helenstar_folders(root: Location) -> list[Location]:
    subs = [d for d in root.folders() if _has_helen_images(d)]
    return ([root] if _has_helen_images(root) else []) + subs


def discover_helenstar(root: Location, require_labels: bool = True) -> Source:
    folders = _helenstar_folders(root)
    if not folders:
        raise DatasetError(f"{root}: no '<name>_image.<ext>' files here or in its sub-folders (helenstar layout)")
    samples, problems = [], []
    for folder in folders:
        files = {f.name for f in folder.files()}
        images = [p for p in _images_in(folder) if p.stem.endswith("_image")]
        by_name = {}
        for image in images:
            by_name.setdefault(image.stem[: -len("_image")], []).append(image)
        for name, group in by_name.items():
            label = folder / f"{name}_label.png" if f"{name}_label.png" in files else None
            if len(group) > 1 and label is not None:
                problems += [(str(i), f"{len(group)} images for the label {label.name}: which one is labelled?")
                             for i in group]
                continue
            for image in group:
                if label is None and require_labels:
                    problems.append((str(image), f"missing label map {name}_label.png"))
                    continue
                prediction = f"{name}_label.png" if len(group) == 1 else f"{image.stem}{image.suffix}_label.png"
                samples.append(Sample(name if len(group) == 1 else f"{image.stem}{image.suffix}",
                                      _split_of(folder), str(image), str(label) if label else None,
                                      prediction_name=prediction))
    names_file = _find_label_names(root, root.parent, *folders)
    taxonomy, names_from = _taxonomy(names_file, HELEN_NAMES, "helenstar")
    return Source(root, "helenstar", samples, taxonomy, problems, names_from)


# --- lapa: DIR/{train,val,test}/images/<name>.jpg + .../labels/<name>.png ----------------------------

def _lapa_split_folders(root: Location) -> list[Location]:
    folders = {f.name: f for f in root.folders()}
    return [folders[s] for s in SPLITS if s in folders and (folders[s] / "images").is_dir()]


def _paired_by_stem(images_dir: Location, labels_dir: Location | None, split: str, require_labels: bool,
                    problems: list) -> list[Sample]:
    labels = {}
    if labels_dir is not None:
        labels = {p.stem: p for p in labels_dir.files() if p.suffix.lower() == ".png"}
    images = _images_in(images_dir)
    stems = [i.stem for i in images]
    samples = []
    for image in _unique_by_stem(images, bool(labels), problems):
        label = labels.get(image.stem)
        if label is None and require_labels:
            problems.append((str(image), f"missing label map {image.stem}.png in {labels_dir}"))
            continue
        # Two unlabelled images may share a stem (a.jpg, a.png): their predictions keep the extension.
        shared = stems.count(image.stem) > 1
        name = f"{image.stem}{image.suffix}" if shared else image.stem
        samples.append(Sample(name, split, str(image), str(label) if label else None, prediction_name=f"{name}.png"))
    return samples


def discover_lapa(root: Location, require_labels: bool = True) -> Source:
    folders = _lapa_split_folders(root)
    if not folders:
        raise DatasetError(f"{root}: no {{train,val,test}}/images folders (lapa layout)")
    samples, problems = [], []
    for folder in folders:
        samples += _paired_by_stem(folder / "images", folder / "labels", _split_of(folder), require_labels, problems)
    taxonomy, names_from = _taxonomy(_find_label_names(root, root.parent), LAPA_NAMES, "lapa")
    return Source(root, "lapa", samples, taxonomy, problems, names_from)


# --- celebamask-hq: CelebA-HQ-img/<k>.jpg + merged CelebAMask-HQ-mask/<k>.png or raw part masks -----

MERGED_MASK_DIRS = ("CelebAMask-HQ-mask", "CelebAMaskHQ-mask")
RAW_MASK_DIR = "CelebAMask-HQ-mask-anno"


def discover_celebamask(root: Location, require_labels: bool = True) -> Source:
    images_dir = root / "CelebA-HQ-img"
    if not images_dir.is_dir():
        raise DatasetError(f"{root}: no CelebA-HQ-img folder (celebamask-hq layout)")
    folders = {f.name: f for f in root.folders()}
    merged = next((folders[d] for d in MERGED_MASK_DIRS if d in folders), None)
    samples, problems = [], []
    if merged is not None or RAW_MASK_DIR not in folders:
        samples = _paired_by_stem(images_dir, merged, "train", require_labels, problems)
        taxonomy, names_from = _taxonomy(_find_label_names(root), CELEBAMASK_NAMES, "celebamask-hq")
    else:
        anno = folders[RAW_MASK_DIR]
        part_files = {}   # one listing per part folder <k//2000>/, not one existence check per part
        for sub in anno.folders():
            for f in sub.files():
                part_files[f.name] = f
        for image in _unique_by_stem(_images_in(images_dir), True, problems):
            parts = ()
            if image.stem.isdigit():
                k = int(image.stem)
                parts = tuple((i, str(part_files[f"{k:05d}_{part}.png"])) for i, part in enumerate(CELEBAMASK_NAMES)
                              if i and f"{k:05d}_{part}.png" in part_files
                              and part_files[f"{k:05d}_{part}.png"].parent.name == str(k // 2000))
            if not parts and require_labels:
                problems.append((str(image), f"no part masks {image.stem.zfill(5)}_<part>.png under {anno}"))
                continue
            samples.append(Sample(image.stem, "train", str(image), parts=parts, prediction_name=f"{image.stem}.png"))
        taxonomy, names_from = Taxonomy(CELEBAMASK_NAMES), "the official merge order of the raw part masks"
    return Source(root, "celebamask-hq", samples, taxonomy, problems, names_from)


# --- pairs: --images DIR --masks DIR, paired by stem ---------------------------------------------------

def discover_pairs(images: Location | str, masks: Location | str | None, label_names: Location | str | None = None,
                   require_labels: bool = True, root: Location | None = None) -> Source:
    images = Location.of(images)
    masks = Location.of(masks) if masks else None
    if not images.is_dir():
        raise DatasetError(f"{images}: not a folder of images")
    if masks is not None and not masks.is_dir():
        raise DatasetError(f"{masks}: not a folder of label maps")
    problems: list = []
    samples = _paired_by_stem(images, masks, "train", require_labels, problems)
    root = root or images
    names_file = (Location.of(label_names) if label_names
                  else _find_label_names(*dict.fromkeys((root, root.parent, images, images.parent))))
    taxonomy, names_from = _taxonomy(names_file, HELEN_NAMES, "pairs")
    return Source(root, "pairs", samples, taxonomy, problems, names_from)


# --- dispatch --------------------------------------------------------------------------------------------

def detect_layout(root: Location | str) -> str:
    root = Location.of(root)
    folders = {f.name for f in root.folders()}
    if "CelebA-HQ-img" in folders:
        return "celebamask-hq"
    if _lapa_split_folders(root):
        return "lapa"
    if "images" in folders and "labels" in folders:
        return "pairs"
    if _helenstar_folders(root):
        return "helenstar"
    raise DatasetError(
        f"{root}: cannot tell the layout: expected <name>_image.jpg files (helenstar), "
        "{train,val,test}/images/ (lapa), images/ + labels/ (pairs) or CelebA-HQ-img/ (celebamask-hq); "
        "for two other folders use --images DIR --masks DIR")


def discover(root: Location | str, layout: str = "auto", label_names: Location | str | None = None,
             require_labels: bool = True) -> Source:
    """List a data set's samples. With require_labels=False, images without labels are kept."""
    root = Location.of(root)
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
        labels = root / "labels" if (root / "labels").is_dir() else None
        images = root / "images" if (root / "images").is_dir() else root
        source = discover_pairs(images, labels, label_names, require_labels, root)
    else:
        raise DatasetError(f"unknown layout {str(layout)[:40]!r}; choose from auto, {', '.join(LAYOUTS)}")
    if label_names is not None and layout != "pairs":
        source.taxonomy, source.names_from = _taxonomy(Location.of(label_names), (), layout)
    return with_unique_prediction_names(source)


def discover_images(folder: Location | str) -> Source:
    """A bare folder of images (no labels): every image file, named `<stem>.png` on output."""
    folder = Location.of(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    problems: list = []
    samples = _paired_by_stem(folder, None, "test", False, problems)
    taken = {Location.of(s.image).name for s in samples}
    problems += [(str(f), f"not an image faceseg reads ({', '.join(IMAGE_SUFFIXES)}, or an image without an "
                          "extension)") for f in folder.files() if f.name not in taken and not f.name.startswith(".")]
    return Source(folder, "images", samples, Taxonomy(HELEN_NAMES), problems, names_from="(no labels)")


def with_unique_prediction_names(source: Source) -> Source:
    """Predictions of a data set with several splits go to one sub-folder per split: LaPa may use one
    name in train and in test, and one output folder must not hold two predictions under one name."""
    if len({s.split for s in source.samples}) > 1:
        source.samples = [replace(s, prediction_name=f"{s.split}/{s.prediction_name}") for s in source.samples]
    return source


def hold_out_validation(samples: list[Sample], fraction: float = 0.1) -> list[Sample]:
    """Without a val split, move a deterministic `fraction` of train (by name hash) to `val`."""
    if any(s.split == "val" for s in samples):
        return samples
    train = [s for s in samples if s.split == "train"]
    n_val = max(1, round(len(train) * fraction)) if len(train) >= 2 else 0
    by_hash = sorted(train, key=lambda s: (zlib.crc32(s.name.encode()), s.name))
    chosen = {s.name for s in by_hash[:n_val]}
    return [replace(s, split="val") if s.split == "train" and s.name in chosen else s for s in samples]
