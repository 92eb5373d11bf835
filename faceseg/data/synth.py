"""Synthetic face-parsing data in the helenstar layout (`faceseg synth`).

Each face is drawn as polygons in a canonical frame (face centre at 0, face half-height 1), then
mapped to pixels by one similarity transform (scale, in-plane rotation, translation), so image and
label map are drawn from the same geometry. `le`/`lb` sit on the image's left, as in Helen.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from faceseg.errors import FacesegError
from faceseg.labels import HELEN, HELEN_NAMES, label_names_text
from faceseg.storage import Location, check_writable, refuse_links_inside

RECORD = "synth.json"        # what `faceseg synth` wrote here, so that a re-run replaces only that
MIN_SIZE, MAX_SIZE, MAX_IMAGES = 32, 4096, 1_000_000

CLASS_ID = {name: i for i, name in enumerate(HELEN_NAMES)}

SPLIT_SEED_OFFSET = {"train": 0, "val": 1, "test": 2}

SKIN_LIGHT = np.array([250, 220, 195], np.float32)
SKIN_DARK = np.array([85, 55, 38], np.float32)
HAIR_COLOURS = np.array(
    [[20, 15, 12], [70, 40, 20], [120, 75, 35], [200, 160, 90], [150, 55, 25], [170, 170, 170]],
    np.float32,
)


def _ellipse(cx, cy, ax, ay, start=0.0, end=2 * np.pi, n=40) -> np.ndarray:
    t = np.linspace(start, end, n)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


class Canvas:
    """Draws canonical-frame polygons into an RGB image and its label map at once."""

    def __init__(self, background: np.ndarray, scale: float, angle_deg: float, centre):
        self.image = background  # (S, S, 3) uint8 RGB
        self.label = np.zeros(background.shape[:2], np.uint8)
        a = np.deg2rad(angle_deg)
        self.matrix = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        self.centre = np.asarray(centre, np.float64)
        self.scale = scale

    def to_px(self, points: np.ndarray) -> np.ndarray:
        px = points @ self.matrix.T + self.centre
        return np.round(px * 16).astype(np.int32)  # 4 fractional bits for sub-pixel edges

    def fill(self, points, colour, class_name: str | None):
        poly = [self.to_px(points)]
        cv2.fillPoly(self.image, poly, tuple(float(c) for c in colour), cv2.LINE_AA, shift=4)
        if class_name is not None:
            cv2.fillPoly(self.label, poly, CLASS_ID[class_name], cv2.LINE_8, shift=4)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Cluttered, textured background: smooth noise, stripes and random shapes."""
    low = rng.uniform(0, 255, (rng.integers(2, 7), rng.integers(2, 7), 3)).astype(np.float32)
    image = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    stripes = np.sin((xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) * rng.uniform(0.05, 0.4))
    image += stripes[..., None] * rng.uniform(0, 40)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(3, 15)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        p = rng.integers(-size // 4, size + size // 4, 4)
        kind = rng.integers(3)
        if kind == 0:
            cv2.rectangle(image, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, -1)
        elif kind == 1:
            cv2.circle(image, (int(p[0]), int(p[1])), int(rng.integers(3, size // 5)), colour, -1)
        else:
            cv2.line(image, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour,
                     int(rng.integers(1, max(2, size // 40))))
    return image


def _draw_hair_back(c: Canvas, rng, style: str, face_w: float, colour):
    if style == "short":
        c.fill(_ellipse(0, -0.22, face_w * rng.uniform(1.08, 1.2), rng.uniform(0.95, 1.05)), colour, "hair")
    elif style == "long":
        w = face_w * rng.uniform(1.2, 1.45)
        top = _ellipse(0, -0.25, w, 0.95, np.pi, 2 * np.pi)
        bottom_y = rng.uniform(1.1, 1.9)
        body = np.array([[w, -0.25], [w * 1.05, bottom_y], [-w * 1.05, bottom_y], [-w, -0.25]])
        c.fill(np.concatenate([top, body[:1], body[1:3], body[3:]]), colour, "hair")


def _draw_fringe(c: Canvas, rng, face_w: float, colour):
    """Hair over the forehead: a cap whose lower edge is wavy and may hang low."""
    low = rng.uniform(-0.65, -0.35)
    xs = np.linspace(face_w * 1.02, -face_w * 1.02, 12)
    edge = np.stack([xs, low + rng.uniform(-0.06, 0.06, xs.size) - 0.15 * (np.abs(xs) / face_w) ** 2], 1)
    cap = _ellipse(0, -0.22, face_w * 1.1, 1.0, np.pi, 2 * np.pi)
    c.fill(np.concatenate([cap, edge]), colour, "hair")


def _draw_brow(c: Canvas, rng, side: int, y: float, shape: float, thick: float, colour):
    """side=-1 draws the image-left brow (lb), +1 the image-right one (rb)."""
    inner, outer = 0.1 + rng.uniform(0, 0.06), 0.5 + rng.uniform(0, 0.1)
    xs = np.linspace(inner, outer, 10)
    t = (xs - inner) / (outer - inner)
    centre = y - shape * np.sin(np.pi * t ** 0.8) - 0.04 * t
    taper = thick * (1.0 - 0.5 * t)
    upper = np.stack([side * xs, centre - taper / 2], 1)
    lower = np.stack([side * xs, centre + taper / 2], 1)[::-1]
    c.fill(np.concatenate([upper, lower]), colour, "lb" if side < 0 else "rb")


def _draw_eye(c: Canvas, rng, side: int, y: float, openness: float, iris_colour):
    cx = side * rng.uniform(0.28, 0.34)
    ax = rng.uniform(0.11, 0.15)
    eye = _ellipse(cx, y, ax, openness)
    c.fill(eye, (235, 235, 230), "le" if side < 0 else "re")
    iris = _ellipse(cx + rng.uniform(-0.03, 0.03), y, min(openness, 0.055), min(openness, 0.055))
    c.fill(iris, iris_colour, None)  # the iris is part of the eye class


def _draw_nose(c: Canvas, rng, skin):
    w, tip = rng.uniform(0.1, 0.16), rng.uniform(0.2, 0.3)
    nose = np.array([[-0.04, -0.12], [0.04, -0.12], [w * 0.6, tip - 0.05], [w, tip + 0.05],
                     [0, tip + 0.09], [-w, tip + 0.05], [-w * 0.6, tip - 0.05]])
    c.fill(nose, skin * rng.uniform(0.72, 0.88), "nose")
    for side in (-1, 1):
        c.fill(_ellipse(side * w * 0.5, tip + 0.05, 0.03, 0.015), skin * 0.35, "nose")


def _draw_mouth(c: Canvas, rng, skin, open_mouth: bool):
    y, w = rng.uniform(0.48, 0.58), rng.uniform(0.2, 0.32)
    lip_colour = np.clip(skin * np.array([1.0, 0.6, 0.6]) * rng.uniform(0.7, 1.0), 0, 255)
    xs = np.linspace(-w, w, 15)
    bow = 0.035 * np.cos(xs / w * np.pi * 2) ** 2 * (np.abs(xs) < w / 2)
    upper_top = y - rng.uniform(0.04, 0.07) * np.cos(xs / w * np.pi / 2) - bow
    gap = rng.uniform(0.03, 0.09) if open_mouth else 0.0
    mid_up = y - 0.005 + 0 * xs
    mid_low = y + gap * np.cos(xs / w * np.pi / 2)
    lower_bottom = mid_low + rng.uniform(0.05, 0.09) * np.cos(xs / w * np.pi / 2) + 0.005
    c.fill(np.concatenate([np.stack([xs, upper_top], 1), np.stack([xs, mid_up], 1)[::-1]]),
           lip_colour, "ulip")
    c.fill(np.concatenate([np.stack([xs, mid_low], 1), np.stack([xs, lower_bottom], 1)[::-1]]),
           lip_colour * 0.92, "llip")
    if open_mouth:
        inner = np.concatenate([np.stack([xs, mid_up], 1), np.stack([xs, mid_low], 1)[::-1]])
        c.fill(inner, (60, 15, 20), "imouth")
        teeth = np.concatenate([np.stack([xs[3:-3], mid_up[3:-3]], 1),
                                np.stack([xs[3:-3], mid_up[3:-3] + gap * 0.35], 1)[::-1]])
        c.fill(teeth, (230, 225, 215), None)  # teeth count as inner mouth


def _degrade(rng, image: np.ndarray) -> np.ndarray:
    """Lighting gradient, blur and sensor noise (JPEG artefacts come from the file write)."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    a = rng.uniform(0, 2 * np.pi)
    gain = 1.0 + rng.uniform(0.1, 0.5) * (np.cos(a) * xx + np.sin(a) * yy) * 2
    out = image.astype(np.float32) * gain[..., None] * rng.uniform(0.75, 1.2)
    k = int(rng.choice([0, 0, 3, 5]))
    if k:
        out = cv2.GaussianBlur(out, (k, k), 0)
    out += rng.normal(0, rng.uniform(0, 8), out.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def render_face(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic face: (size, size, 3) uint8 RGB image and (size, size) uint8 class ids."""
    face_height = rng.uniform(0.35, 0.85) * size             # chin to forehead, in pixels
    scale = face_height / 2.0
    face_w = rng.uniform(0.64, 0.8)
    margin = scale * face_w * 0.6
    centre = rng.uniform(margin, size - margin, 2)
    canvas = Canvas(_background(rng, size), scale, rng.uniform(-25, 25), centre)

    skin = SKIN_DARK + (SKIN_LIGHT - SKIN_DARK) * rng.uniform()
    hair_style = rng.choice(["none", "short", "long"], p=[0.15, 0.45, 0.4])
    hair_colour = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.8, 1.2)

    _draw_hair_back(canvas, rng, hair_style, face_w, hair_colour)
    canvas.fill(_ellipse(0, 0, face_w, 1.0, n=64), skin, "face")
    if hair_style != "none" and rng.uniform() < 0.5:
        _draw_fringe(canvas, rng, face_w, hair_colour)

    brow_y, brow_shape = rng.uniform(-0.42, -0.3), rng.uniform(0.0, 0.08)
    brow_thick = rng.uniform(0.04, 0.09)
    brow_colour = hair_colour * 0.8 if hair_style != "none" else skin * 0.35
    eye_y, openness = brow_y + rng.uniform(0.14, 0.22), rng.choice([rng.uniform(0.02, 0.035),
                                                                    rng.uniform(0.045, 0.07)])
    iris = rng.uniform(20, 120, 3)
    for side in (-1, 1):
        _draw_brow(canvas, rng, side, brow_y, brow_shape, brow_thick, brow_colour)
        _draw_eye(canvas, rng, side, eye_y, openness, iris)
    _draw_nose(canvas, rng, skin)
    _draw_mouth(canvas, rng, skin, open_mouth=rng.uniform() < 0.4)
    return _degrade(rng, canvas.image), canvas.label


@dataclass(frozen=True)
class _Job:
    out_dir: Path
    split: str
    index: int
    size: int
    seed: int


def _write_one(job: _Job) -> None:
    rng = np.random.default_rng([job.seed, SPLIT_SEED_OFFSET[job.split], job.index])
    image, label = render_face(rng, job.size)
    name = f"{job.split}_{job.index:05d}"
    quality = int(rng.integers(35, 96))
    cv2.imwrite(str(job.out_dir / f"{name}_image.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, quality])
    cv2.imwrite(str(job.out_dir / f"{name}_label.png"), label)


class SynthError(FacesegError):
    pass


def _names(split: str, count: int) -> list[str]:
    return [f"{split}/{split}_{i:05d}_{kind}" for i in range(count) for kind in ("image.jpg", "label.png")]


def check_synth_output(out: Path) -> dict | None:
    """OUT must be new, empty, or a data set `faceseg synth` wrote (its record, synth.json); returns that record."""
    location = Location.of(out)
    if location.is_file():
        raise SynthError(f"{location}: is a file; name a folder for the data set")
    refuse_links_inside(location, "synth")
    check_writable(location, "synth")
    record = location / RECORD
    if record.is_file():
        try:
            written = json.loads(record.read_text())
            return {"train": int(written["train"]), "test": int(written["test"])}
        except (ValueError, KeyError, TypeError) as error:
            raise SynthError(f"{record}: damaged ({str(error)[:100]}); remove the folder or choose another") from None
    if location.is_dir() and location.list():
        raise SynthError(f"{location}: exists and holds files `faceseg synth` did not write (no {RECORD}); "
                         "choose a new or empty folder")
    return None


def write_synthetic_dataset(out: Path, train: int = 200, test: int = 40, size: int = 256,
                            seed: int = 0, workers: int | None = None) -> dict:
    """Write OUT/train, OUT/test and OUT/label_names.txt; returns counts and timing. An earlier synthetic
    set in OUT is replaced, its files removed by their exact names; anything else in OUT is refused."""
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (train, test, size, seed)):
        raise SynthError("--train, --test, --size and --seed are whole numbers")
    if train < 0 or test < 0 or train + test < 1 or train + test > MAX_IMAGES:
        raise SynthError(f"--train and --test: 0 or more images each, 1 to {MAX_IMAGES} in all")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise SynthError(f"--size {size}: synthetic faces are {MIN_SIZE} to {MAX_SIZE} px")
    out = Location.of(out)
    earlier = check_synth_output(out.local())
    if earlier:
        for name in _names("train", earlier["train"]) + _names("test", earlier["test"]):
            out.child(name).delete()
    out = out.local()
    jobs = []
    for split, count in (("train", train), ("test", test)):
        Location.of(out / split).mkdir()
        jobs += [_Job(out / split, split, i, size, seed) for i in range(count)]
    (out / "label_names.txt").write_text(label_names_text(HELEN))
    Location.of(out / RECORD).write_text(json.dumps({"format": "faceseg-synth-1", "train": train, "test": test,
                                                     "size": size, "seed": seed}))
    start = time.perf_counter()
    # Rendering is CPU-bound numpy/OpenCV: processes, not threads. Tasks are ~ms, so chunk them.
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_write_one, jobs, chunksize=max(1, len(jobs) // 64)))
    seconds = time.perf_counter() - start
    return {"out": str(out), "train": train, "test": test, "size": size, "seed": seed,
            "seconds": seconds, "images_per_second": len(jobs) / max(seconds, 1e-9)}
