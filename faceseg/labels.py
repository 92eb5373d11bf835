"""Class taxonomies (docs/data.md, "Classes"): a data set's own classes by default, any N from 2 to 255.

A `Taxonomy` is an ordered tuple of class names (id = position). What the rest of faceseg needs from it
comes from the names alone: which classes mirror each other under a horizontal flip, the colours of
overlays, whether the Helen F1 groups apply, and how to map another taxonomy onto it by name.

Left/right: Helen's `le`, `lb` are the eye and brow on the LEFT half of the image (the person's right),
as the Helen label files have them. A horizontal flip swaps every left/right pair.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from faceseg.errors import FacesegError

HELEN_NAMES: tuple[str, ...] = ("bg", "face", "lb", "rb", "le", "re", "nose", "ulip", "imouth", "llip", "hair")
# LaPa's 11 classes, in Helen's order.
LAPA_NAMES: tuple[str, ...] = ("background", "skin", "left_eyebrow", "right_eyebrow", "left_eye", "right_eye",
                               "nose", "upper_lip", "inner_mouth", "lower_lip", "hair")
# The official merge order of CelebAMask-HQ's per-part masks (id = position). `ear_r` is an earring and
# `neck_l` a necklace, not a right ear or a left neck.
CELEBAMASK_NAMES: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
KNOWN_TAXONOMIES = {"helen": HELEN_NAMES, "lapa": LAPA_NAMES, "celebamask-hq": CELEBAMASK_NAMES}
MAX_CLASSES = 255           # ids are uint8; 255 is kept for "no class" (INVALID_ID)
INVALID_ID = 255            # what a remap gives an id that the source list does not name

# Other spellings of Helen's classes (normalised: lower case, letters and digits only) -> Helen's name.
SYNONYMS = {
    "background": "bg", "bg": "bg",
    "skin": "face", "face": "face", "faceskin": "face",
    "lbrow": "lb", "lefteyebrow": "lb", "leftbrow": "lb", "lb": "lb",
    "rbrow": "rb", "righteyebrow": "rb", "rightbrow": "rb", "rb": "rb",
    "leye": "le", "lefteye": "le", "le": "le",
    "reye": "re", "righteye": "re", "re": "re",
    "nose": "nose",
    "ulip": "ulip", "upperlip": "ulip",
    "mouth": "imouth", "imouth": "imouth", "innermouth": "imouth",
    "llip": "llip", "lowerlip": "llip",
    "hair": "hair",
}

# Overlay colours by canonical name; other classes take FALLBACK_COLOURS in id order.
COLOURS = {
    "bg": (0, 0, 0), "face": (255, 204, 153), "lb": (0, 153, 0), "rb": (102, 255, 102), "le": (0, 0, 255),
    "re": (0, 204, 255), "nose": (255, 255, 0), "ulip": (255, 0, 0), "imouth": (153, 0, 153),
    "llip": (255, 102, 178), "hair": (139, 69, 19), "eyes": (0, 0, 255),
}
FALLBACK_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
                    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
                    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
                    (255, 215, 180), (0, 0, 128), (128, 128, 128)]

# The Helen F1 groups: each counts as one class, so a left eye predicted as right eye is a hit for `eyes`.
HELEN_GROUPS: dict[str, tuple[str, ...]] = {
    "eyes": ("le", "re"),
    "brows": ("lb", "rb"),
    "mouth": ("ulip", "imouth", "llip"),
    "overall": ("le", "re", "lb", "rb", "nose", "ulip", "imouth", "llip"),
}

_SIDE_WORDS = {"l": "L", "left": "L", "r": "R", "right": "R"}


def normalise(name: str) -> str:
    """Case-folded letters and digits, of any script: 'Left Eye', 'left_eye' and 'lefteye' are one name."""
    return re.sub(r"[\W_]+", "", name.casefold())


def canonical(name: str) -> str:
    """The name faceseg compares taxonomies by: Helen's spelling where a synonym is known."""
    return SYNONYMS.get(normalise(name), normalise(name))


def metric_key(name: str) -> str:
    """A class name as it appears in metric keys (val_f1_<key>): case-folded, runs of anything but letters
    and digits (of any script) joined into one '_'."""
    return re.sub(r"[\W_]+", "_", name.casefold()).strip("_") or "class"


class TaxonomyError(FacesegError):
    """A list of class names that cannot be used."""


def _side_and_part(name: str) -> tuple[str, str] | None:
    """('L' or 'R', the rest) when a name says a side: `l_eye`, `left eyebrow`, `eye_left`, `le`, `rbrow`.

    A trailing single letter is not a side (CelebAMask-HQ's `ear_r` is an earring, `neck_l` a necklace).
    """
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    if not words:
        return None
    if len(words) > 1:
        if words[0] in _SIDE_WORDS:
            return _SIDE_WORDS[words[0]], " ".join(words[1:])
        sided = [w for w in words if w in ("left", "right")]
        if len(sided) == 1:
            return _SIDE_WORDS[sided[0]], " ".join(w for w in words if w not in sided)
        return None
    word = words[0]
    for prefix in ("left", "right"):
        if word.startswith(prefix) and len(word) > len(prefix):
            return _SIDE_WORDS[prefix], word[len(prefix):]
    if word[0] in "lr" and 2 <= len(word) <= 5:   # Helen's le/re/lb/rb, leye/rbrow
        return word[0].upper(), word[1:]
    return None


@dataclass(frozen=True)
class Taxonomy:
    """An ordered list of class names; id = position."""

    names: tuple[str, ...]

    def __post_init__(self):
        names = tuple(str(n).strip() for n in self.names)
        object.__setattr__(self, "names", names)
        if not 2 <= len(names) <= MAX_CLASSES:
            shown_names = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise TaxonomyError(f"a taxonomy has 2 to {MAX_CLASSES} classes; got {len(names)}: {shown_names[:300]}")
        if any(not n for n in names):
            raise TaxonomyError("a class name is empty")
        folded = [n.casefold() for n in names]
        duplicates = sorted({n for n, f in zip(names, folded) if folded.count(f) > 1})
        if duplicates:
            raise TaxonomyError(f"class names must differ (ignoring case): {', '.join(duplicates)[:300]}")
        keys = [metric_key(n) for n in names]
        clashes = sorted({n for n, k in zip(names, keys) if keys.count(k) > 1})
        if clashes:
            raise TaxonomyError(f"class names {', '.join(clashes)[:300]} would share the metric name "
                                f"val_f1_{keys[names.index(clashes[0])]}; name them apart by more than punctuation")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @cached_property
    def canonical(self) -> tuple[str, ...]:
        return tuple(canonical(n) for n in self.names)

    @property
    def is_helen(self) -> bool:
        """Helen's 11 classes in Helen's order, whatever their spelling (LaPa's too)."""
        return self.canonical == HELEN_NAMES

    @property
    def background(self) -> int:
        """The id named background (bg), else 0."""
        return self.canonical.index("bg") if "bg" in self.canonical else 0

    @cached_property
    def flip_pairs(self) -> tuple[tuple[int, int], ...]:
        """(left id, right id) of every class pair a horizontal flip swaps, found from the names."""
        by_part: dict[str, dict[str, list[int]]] = {}
        for i, name in enumerate(self.names):
            sided = _side_and_part(name)
            if sided:
                side, part = sided
                by_part.setdefault(normalise(part), {}).setdefault(side, []).append(i)
        return tuple((sides["L"][0], sides["R"][0]) for sides in by_part.values()
                     if len(sides.get("L", ())) == 1 and len(sides.get("R", ())) == 1)

    @cached_property
    def flip_lut(self) -> np.ndarray:
        """flip_lut[id] is the id a pixel takes when the image is mirrored left-right."""
        lut = np.arange(self.num_classes, dtype=np.uint8)
        for left, right in self.flip_pairs:
            lut[left], lut[right] = right, left
        return lut

    def describe_flip(self) -> str:
        if not self.flip_pairs:
            return "horizontal flip: no left/right classes, nothing swapped"
        pairs = ", ".join(f"{self.names[a]}<->{self.names[b]}" for a, b in self.flip_pairs)
        return f"horizontal flip swaps {pairs}"

    @cached_property
    def palette(self) -> np.ndarray:
        """(N, 3) uint8 RGB, one colour per class: fixed colours for known names, then a fixed list."""
        fallback = iter(FALLBACK_COLOURS)
        colours = []
        for i, name in enumerate(self.canonical):
            colour = COLOURS.get(name) if name not in [c for c in self.canonical[:i]] else None
            if colour is None:
                colour = next(fallback, None)
            if colour is None:    # past the fixed list: golden-ratio hues
                hue = int((i * 0.618034 % 1.0) * 180)
                colour = tuple(int(c) for c in cv2.cvtColor(np.uint8([[[hue, 200, 230]]]), cv2.COLOR_HSV2RGB)[0, 0])
            colours.append(colour)
        return np.array(colours, dtype=np.uint8)

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """(H, W) class ids -> (H, W, 3) RGB."""
        return self.palette[np.minimum(label, self.num_classes - 1)]

    @cached_property
    def f1_sets(self) -> dict[str, tuple[int, ...]]:
        """Every single class by name, and Helen's groups when the classes are Helen's."""
        sets = {name: (i,) for i, name in enumerate(self.names)}
        if self.is_helen:
            sets.update({group: tuple(HELEN_NAMES.index(n) for n in members)
                         for group, members in HELEN_GROUPS.items()})
        return sets

    @property
    def default_metric(self) -> str:
        """What picks the best epoch and ranks sweep trials: Helen's `overall` F1, else the mean F1."""
        return "val_f1_overall" if self.is_helen else "val_f1_mean"

    def metric_names(self) -> list[str]:
        """Every validation metric a run of this taxonomy reports (metrics.jsonl, Tune)."""
        names = ["val_loss", "val_pixel_accuracy", "val_mean_iou", "val_f1_mean"]
        return names + [f"val_f1_{metric_key(name)}" for name in self.f1_sets]


HELEN = Taxonomy(HELEN_NAMES)


@dataclass(frozen=True)
class Remap:
    """A lookup table from a source taxonomy's ids to a target's, and what it did."""

    source: Taxonomy
    target: Taxonomy
    lut: np.ndarray                                     # (256,) uint8; INVALID_ID where unnamed
    unmapped: tuple[str, ...] = field(default_factory=tuple)  # source classes sent to the target's background

    @property
    def is_identity(self) -> bool:
        return self.source.num_classes == self.target.num_classes and \
            (self.lut[:self.source.num_classes] == np.arange(self.source.num_classes)).all()

    def apply(self, label: np.ndarray) -> np.ndarray:
        return label if self.is_identity else cv2.LUT(label, self.lut)  # cv2.LUT: one pass, no int64 copy

    def describe(self) -> str:
        if self.is_identity:
            return f"{self.target.num_classes} classes: {', '.join(self.target.names)}"
        pairs = [f"{src}->{self.target.names[self.lut[i]]}" for i, src in enumerate(self.source.names)]
        text = f"remap into {self.target.num_classes} classes: " + ", ".join(pairs)
        if self.unmapped:
            text += (f" (no counterpart, mapped to {self.target.names[self.target.background]}: "
                     f"{', '.join(self.unmapped)})")
        return text


class TaxonomyMismatch(FacesegError):
    pass


def build_remap(source: Taxonomy, target: Taxonomy | None = None, allow_unmapped: bool = False,
                what: str = "the data set") -> Remap:
    """Map `source` onto `target` by name (identity without a target).

    Names match after normalising and Helen synonyms (skin = face, l_brow = lb, ...). A source class
    with no counterpart goes to the target's background when `allow_unmapped`, else this raises
    TaxonomyMismatch naming the classes.
    """
    target = target or source
    lut = np.full(256, INVALID_ID, dtype=np.uint8)
    by_name = {name: i for i, name in enumerate(target.canonical)}
    unmapped = []
    for source_id, name in enumerate(source.canonical):
        target_id = by_name.get(name)
        if target_id is None:
            unmapped.append(source.names[source_id])
            target_id = target.background
        lut[source_id] = target_id
    if unmapped and not allow_unmapped:
        raise TaxonomyMismatch(
            f"{what}'s classes {', '.join(unmapped)} have no counterpart among the {target.num_classes} classes "
            f"{', '.join(target.names)}; the two taxonomies cannot be mapped by name")
    return Remap(source, target, lut, tuple(unmapped))


def read_label_names(path: Path) -> Taxonomy:
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        return Taxonomy(tuple(names))
    except (UnicodeDecodeError, ValueError) as error:
        raise TaxonomyError(f"{path}: not a list of class names, one a line ({str(error)[:300]})") from None


def label_names_text(taxonomy: Taxonomy) -> str:
    return "\n".join(taxonomy.names) + "\n"
