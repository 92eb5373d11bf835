"""A seeded generator of a few hundred hostile files through `prepare` and `predict`: every file is either
processed or named with a reason; nothing crashes or hangs; nothing outside the output folder changes."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from support import cli_env, tree_digest
from datasets import face

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_runtime")]

SEED = 20261128
ODD_NAMES = ["naïve ünïcode", "with space", "-leading-dash", "dots.in.the.name", "x" * 230, "tab\tname", "quote'name",
             "日本語", "emoji 🙂", "semi;colon"]


def _png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def _jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def _lying_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _lying_jpeg(rgb: np.ndarray, width: int, height: int) -> bytes:
    data = bytearray(_jpeg(rgb))
    at = data.find(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _flip_bits(data: bytes, rng, count: int) -> bytes:
    data = bytearray(data)
    for _ in range(count):
        at = int(rng.integers(2, len(data)))
        data[at] ^= 1 << int(rng.integers(0, 8))
    return bytes(data)


def write_hostile_dataset(folder: Path, rng) -> list[str]:
    """A helenstar train/ folder of ~300 hostile or ordinary pairs; returns the image file names."""
    folder.mkdir(parents=True)
    images = []

    def pair(name: str, image: bytes, label: bytes | None, suffix: str = ".jpg") -> None:
        image_name = f"{name}_image{suffix}"
        (folder / image_name).write_bytes(image)
        if label is not None:
            (folder / f"{name}_label.png").write_bytes(label)
        images.append(image_name)

    for i in range(300):
        rgb, label = face(int(rng.integers(1_000_000)), size=int(rng.choice([32, 48, 64, 96])))
        kind = i % 20
        name = f"k{kind:02d}_{i:03d}"
        if kind == 0:
            pair(name, _jpeg(rgb), _png(label))                                           # ordinary
        elif kind == 1:
            pair(name, rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes(), _png(label))
        elif kind == 2:
            data = _jpeg(rgb)
            pair(name, data[: int(rng.integers(2, len(data) - 2))], _png(label))           # truncated JPEG
        elif kind == 3:
            data = _png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            pair(name, data[: int(rng.integers(8, len(data) - 1))], _png(label), ".png")   # truncated PNG
        elif kind == 4:
            pair(name, _flip_bits(_jpeg(rgb), rng, int(rng.integers(1, 20))), _png(label))
        elif kind == 5:
            pair(name, _flip_bits(_png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)), rng, int(rng.integers(1, 20))),
                 _png(label), ".png")
        elif kind == 6:
            pair(name, _lying_png(int(rng.integers(20000, 70000)), int(rng.integers(20000, 70000))), _png(label), ".png")
        elif kind == 7:
            pair(name, _lying_jpeg(rgb, int(rng.integers(10000, 65535)), int(rng.integers(10000, 65535))), _png(label))
        elif kind == 8:
            pair(name, b"", _png(label))
        elif kind == 9:
            bad = label.copy()
            bad[rng.integers(0, bad.shape[0]), :] = int(rng.integers(11, 256))            # ids without a name
            pair(name, _jpeg(rgb), _png(bad))
        elif kind == 10:
            pair(name, _jpeg(rgb), _png(cv2.resize(label, (label.shape[1], max(1, label.shape[0] // 3)),
                                                   interpolation=cv2.INTER_NEAREST)))       # another aspect ratio
        elif kind == 11:
            pair(name, _jpeg(rgb), _png(label.astype(np.uint16) * 300))                      # 16-bit, huge ids
        elif kind == 12:
            pair(name, _jpeg(rgb), _png(np.dstack([label, label * 2, label])))              # a colour label map
        elif kind == 13:
            pair(name, _jpeg(rgb), None)                                                      # no label at all
        elif kind == 14:
            pair(f"{ODD_NAMES[i // 20 % len(ODD_NAMES)]} {i}", _jpeg(rgb), _png(label))       # odd names
        elif kind == 15:
            pair(name, _png(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)), _png(label), ".png")     # grey
        elif kind == 16:
            pair(name, _png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)), _png(label), ".png")     # RGBA
        elif kind == 17:
            pair(name, _jpeg(rgb) + rng.integers(0, 256, 200, dtype=np.uint8).tobytes(), _png(label))  # trailing
        elif kind == 18:
            pair(name, _png(np.zeros((1, 1, 3), np.uint8)), _png(np.zeros((1, 1), np.uint8)), ".png")  # 1 pixel
        else:
            pair(name, rng.integers(0, 256, 300, dtype=np.uint8).tobytes(), rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    return images


def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faceseg", *args], env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def test_hostile_files_are_processed_or_named_and_nothing_else_changes(ray_runtime, trained_run, tmp_path):
    data = tmp_path / "data"
    images = write_hostile_dataset(data / "train", np.random.default_rng(SEED))
    before = tree_digest(data)
    address = ["--address", ray_runtime.get_runtime_context().gcs_address]

    prepared = run("prepare", str(data), "--out", str(tmp_path / "cache"), "--size", "32", *address)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    skipped = {Path(item["file"]).name for item in manifest["skipped"]}
    assert all(item["reason"] for item in manifest["skipped"])
    cached = set()
    for split in manifest["counts"]:
        cached |= set(pq.read_table(tmp_path / "cache" / f"split={split}", columns=["name"]).column("name").to_pylist())
    for image in images:
        name = image.rsplit("_image", 1)[0]
        label = f"{name}_label.png"
        assert (name in cached) != (image in skipped or label in skipped), image   # processed xor named
    assert sum(manifest["counts"].values()) == len(cached) > 50
    print(f"prepare: {len(images)} hostile pairs, {len(cached)} cached, {len(manifest['skipped'])} named and skipped")

    out = tmp_path / "pred"
    predicted = run("predict", "--model", str(trained_run), "--input", str(data / "train"), "--output", str(out),
                    "--batch-size", "8", *address)
    assert predicted.returncode in (0, 1), predicted.stderr[-3000:]
    failed = {line.split("bad file: ", 1)[1] for line in predicted.stdout.splitlines() if "bad file: " in line}
    written = {p.name for p in out.glob("*.png")}
    for image in images:
        name = image.rsplit("_image", 1)[0]
        named = any(str(data / "train" / image) in message or f"{name}_label.png" in message for message in failed)
        assert (f"{name}_label.png" in written) != named, image
    print(f"predict: {len(written)} label maps written, {len(failed)} images named as bad")
    assert tree_digest(data) == before                            # the input is exactly as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data", "pred"]


def _mutations(model: bytes, rng: np.random.Generator):
    """Seeded hostile variants of a model file: cut, bit-flipped, and with config.json / faceseg.json edited."""
    import io
    import json
    import zipfile

    with zipfile.ZipFile(io.BytesIO(model)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config, meta = json.loads(members["config.json"]), json.loads(members["faceseg.json"])
    junk = [None, True, -1, 2**70, 1e308, "", "x" * 5000, [], {}, [[[]]], {"__class__": "os.system"}]

    def pack(**changed) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
            for name, data in {**members, **changed}.items():
                if data is not None:
                    out.writestr(name, data)
        return buffer.getvalue()

    def poke(tree, depth: int = 0):
        """The tree with one value, found by a random walk, replaced by junk."""
        if isinstance(tree, dict) and tree and depth < 8:
            key = list(tree)[int(rng.integers(len(tree)))]
            return {**tree, key: poke(tree[key], depth + 1) if rng.random() < 0.7 else junk[int(rng.integers(len(junk)))]}
        if isinstance(tree, list) and tree and depth < 8:
            i = int(rng.integers(len(tree)))
            return tree[:i] + [poke(tree[i], depth + 1)] + tree[i + 1:]
        return junk[int(rng.integers(len(junk)))]

    for k in range(300):
        kind = k % 6
        if kind == 0:
            yield "cut", model[:int(rng.integers(1, len(model)))]
        elif kind == 1:
            data = bytearray(model)
            for at in rng.integers(0, len(data), 8):
                data[at] ^= 1 << int(rng.integers(8))
            yield "flipped", bytes(data)
        elif kind == 2:
            yield "config", pack(**{"config.json": json.dumps(poke(config)).encode()})
        elif kind == 3:
            yield "meta", pack(**{"faceseg.json": json.dumps(poke(meta)).encode()})
        elif kind == 4:
            yield "member", pack(**{["config.json", "faceseg.json", "model.weights.h5", "metadata.json"][k % 4]: None,
                                    "extra.py" if rng.random() < 0.5 else "x": b"import os"})
        else:
            yield "weights", pack(**{"model.weights.h5": bytes(rng.integers(0, 256, 4096, dtype=np.uint8))})


def test_mutated_model_files_load_or_are_model_errors(trained_run, tmp_path):
    from faceseg.model.saved import ModelError, inspect_model, load_keras_model

    rng = np.random.default_rng(SEED)
    outcomes = {}
    for k, (kind, data) in enumerate(_mutations((trained_run / "model.keras").read_bytes(), rng)):
        path = tmp_path / f"m{k}.keras"
        path.write_bytes(data)
        try:
            info = inspect_model(path)
            if k % 6 in (1, 5):                   # where the weights may be damaged, load them too
                load_keras_model(info)
            outcome = "loaded"
        except ModelError as error:
            assert str(path) in str(error), (kind, str(error)[:300])
            outcome = "refused"
        outcomes.setdefault(kind, set()).add(outcome)
        path.unlink()
    assert outcomes["cut"] == {"refused"} and "refused" in outcomes["config"] and "refused" in outcomes["weights"]
