"""Saved models: find them, read their input size, load them safely."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

MODEL_FILE = "model.keras"


def resolve_model(path: Path | str) -> Path:
    """A run folder (its model.keras) or a .keras file -> the .keras file."""
    path = Path(path)
    model = path / MODEL_FILE if path.is_dir() else path
    if not model.is_file():
        raise FileNotFoundError(f"{path}: no model here (expected a run folder with {MODEL_FILE}, or a .keras file)")
    return model.resolve()


def model_input_size(path: Path | str) -> int:
    """The square input size of a saved .keras model, read from its config without importing TensorFlow."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        shape = config["config"]["layers"][0]["config"]["batch_input_shape"]   # [None, S, S, 3]
    except (zipfile.BadZipFile, KeyError, IndexError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a faceseg .keras model ({error.__class__.__name__}: {error})") from None
    if shape[1] is None or shape[1] != shape[2]:
        raise ValueError(f"{path}: model input {shape} is not a fixed square image size")
    return int(shape[1])


def load_model(path: Path | str):
    """Load a `.keras` model without executing arbitrary code (safe mode: no lambdas, no pickles)."""
    import faceseg  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
    import tf_keras as keras

    return keras.models.load_model(resolve_model(path), compile=False, safe_mode=True)
