"""Builders of small real data sets on disk, one per layout of docs/data.md."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from faceseg.data.synth import render_face
from faceseg.labels import CELEBAMASK_NAMES, HELEN_NAMES as LABEL_NAMES

# Our class -> the CelebAMask-HQ part it comes from (the inverse of the name remap).
TO_CELEBA = {"face": "skin", "nose": "nose", "le": "l_eye", "re": "r_eye", "lb": "l_brow", "rb": "r_brow",
             "imouth": "mouth", "ulip": "u_lip", "llip": "l_lip", "hair": "hair"}


def face(seed: int, size: int = 96):
    return render_face(np.random.default_rng(seed), size)


def save_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def save_grey(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def write_lapa(root: Path, per_split: int = 3) -> dict[str, np.ndarray]:
    """LaPa: grey and RGBA images among the RGB ones; one label at half the image's resolution."""
    labels = {}
    for s, split in enumerate(("train", "val", "test")):
        for i in range(per_split):
            image, label = face(100 * s + i)
            name = f"{split}_{i}"
            if i == 1:
                save_grey(root / split / "images" / f"{name}.jpg", cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
            elif i == 2:
                rgba = cv2.cvtColor(image, cv2.COLOR_RGB2BGRA)
                save_grey(root / split / "images" / f"{name}.png", rgba)
            else:
                save_rgb(root / split / "images" / f"{name}.jpg", image)
            if i == 0:
                label = cv2.resize(label, (48, 48), interpolation=cv2.INTER_NEAREST)
            save_grey(root / split / "labels" / f"{name}.png", label)
            labels[name] = label
    return labels


def celeba_ids(label: np.ndarray) -> np.ndarray:
    out = np.zeros_like(label)
    for ours, theirs in TO_CELEBA.items():
        out[label == LABEL_NAMES.index(ours)] = CELEBAMASK_NAMES.index(theirs)
    return out


def write_celebamask(root: Path, n: int = 4, raw: bool = False) -> dict[str, np.ndarray]:
    """Images at 128 px, masks at 64 px (as 1024 vs 512); merged masks or raw per-part masks.

    Also paints a neck region (no counterpart in our taxonomy) that must come out as bg."""
    labels = {}
    for k in range(n):
        image, label = face(500 + k, 128)
        save_rgb(root / "CelebA-HQ-img" / f"{k}.jpg", image)
        small = cv2.resize(label, (64, 64), interpolation=cv2.INTER_NEAREST)
        ids = celeba_ids(small)
        ids[60:, :8] = CELEBAMASK_NAMES.index("neck")
        if raw:
            for part_id, part in enumerate(CELEBAMASK_NAMES):
                if part_id and (ids == part_id).any():
                    save_grey(root / "CelebAMask-HQ-mask-anno" / str(k // 2000) / f"{k:05d}_{part}.png",
                              (ids == part_id).astype(np.uint8) * 255)
        else:
            save_grey(root / "CelebAMask-HQ-mask" / f"{k}.png", ids)
        labels[str(k)] = small
    return labels


def write_pairs(images: Path, masks: Path, n: int = 5) -> None:
    for i in range(n):
        image, label = face(900 + i)
        save_rgb(images / f"p{i}.png", image)
        save_grey(masks / f"p{i}.png", label)
