"""The Helen face-parsing taxonomy (CONVENTIONS section 1) and remaps into it.

Left/right: `le`, `lb` are the eye and brow on the LEFT half of the image (the person's right),
the way the Helen label files have them. A horizontal flip must therefore swap lb<->rb and le<->re.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

LABEL_NAMES: tuple[str, ...] = (
    "bg", "face", "lb", "rb", "le", "re", "nose", "ulip", "imouth", "llip", "hair",
)
NUM_CLASSES = len(LABEL_NAMES)
CLASS_ID = {name: i for i, name in enumerate(LABEL_NAMES)}

# One RGB colour per class, used by every overlay and colour map.
PALETTE = np.array(
    [
        [0, 0, 0],        # bg
        [255, 204, 153],  # face
        [0, 153, 0],      # lb
        [102, 255, 102],  # rb
        [0, 0, 255],      # le
        [0, 204, 255],    # re
        [255, 255, 0],    # nose
        [255, 0, 0],      # ulip
        [153, 0, 153],    # imouth
        [255, 102, 178],  # llip
        [139, 69, 19],    # hair
    ],
    dtype=np.uint8,
)

# flip_lut[id] is the id a pixel takes when the image is mirrored left-right.
FLIP_LUT = np.arange(NUM_CLASSES, dtype=np.uint8)
FLIP_LUT[[CLASS_ID["lb"], CLASS_ID["rb"]]] = CLASS_ID["rb"], CLASS_ID["lb"]
FLIP_LUT[[CLASS_ID["le"], CLASS_ID["re"]]] = CLASS_ID["re"], CLASS_ID["le"]

# Names other taxonomies use for our classes (normalised: lower case, separators removed).
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

# The official merge order of CelebAMask-HQ's per-part masks (id = position).
CELEBAMASK_NAMES: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)

INVALID_ID = 255  # what a remap gives an id that the source list does not name


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass(frozen=True)
class Remap:
    """A lookup table from a source taxonomy's ids to ours, and what it did."""

    source_names: tuple[str, ...]
    lut: np.ndarray                                     # (256,) uint8; INVALID_ID where unnamed
    to_bg: tuple[str, ...] = field(default_factory=tuple)  # source classes with no counterpart

    @property
    def is_identity(self) -> bool:
        return self.source_names == LABEL_NAMES

    def apply(self, label: np.ndarray) -> np.ndarray:
        return cv2.LUT(label, self.lut)  # 10x numpy fancy indexing on a 512 px map

    def describe(self) -> str:
        if self.is_identity:
            return "labels already in the 11-class Helen taxonomy"
        pairs = [f"{src}->{LABEL_NAMES[self.lut[i]]}" for i, src in enumerate(self.source_names)]
        text = "remap " + ", ".join(pairs)
        if self.to_bg:
            text += f" (no counterpart, mapped to bg: {', '.join(self.to_bg)})"
        return text


def build_remap(source_names: list[str] | tuple[str, ...]) -> Remap:
    """Map a taxonomy into the 11 classes by name; unknown classes go to bg and are reported."""
    lut = np.full(256, INVALID_ID, dtype=np.uint8)
    to_bg = []
    for source_id, name in enumerate(source_names):
        target = SYNONYMS.get(_normalise(name))
        if target is None:
            to_bg.append(name)
            target = "bg"
        lut[source_id] = CLASS_ID[target]
    return Remap(tuple(source_names), lut, tuple(to_bg))


def read_label_names(path: Path) -> list[str]:
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no label names in file")
    return names


def write_label_names(path: Path) -> None:
    Path(path).write_text("\n".join(LABEL_NAMES) + "\n")


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) RGB."""
    return PALETTE[np.minimum(label, NUM_CLASSES - 1)]
