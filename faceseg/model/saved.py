"""Saved models: find them, check them, read what they are, load them.

A model file is data, not code (docs/security.md). Keras's safe mode refuses lambdas' bytecode but still
resolves classes and functions by module and name, so before anything is deserialised faceseg reads
`config.json` inside the `.keras` zip and accepts only the layer classes it builds itself, each with the
config keys those layers have, stock initialisers and dtype policies, and string activations from a short
list. Anything else is refused with a message naming the layer.

faceseg adds `faceseg.json` to the zip: the class names, the input size, the metric that chose the epoch
and that epoch's figures. Reading it needs no TensorFlow.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field

from faceseg.labels import HELEN_NAMES, Taxonomy
from faceseg.storage import Location

MODEL_FILE = "model.keras"
META_FILE = "faceseg.json"
MODEL_FORMAT = "faceseg-model-1"
ZIP_MEMBERS = {"metadata.json", "config.json", "model.weights.h5", META_FILE}
MAX_CONFIG_BYTES = 16 << 20
MAX_MODEL_BYTES = 4 << 30

_COMMON = {"name", "trainable", "dtype"}
_CONV = _COMMON | {"activation", "activity_regularizer", "bias_constraint", "bias_initializer", "bias_regularizer",
                   "data_format", "dilation_rate", "filters", "groups", "kernel_constraint", "kernel_initializer",
                   "kernel_regularizer", "kernel_size", "padding", "strides", "use_bias"}
LAYERS = {   # class name -> the config keys it may have
    "InputLayer": {"batch_input_shape", "dtype", "name", "optional", "ragged", "sparse"},
    "Rescaling": _COMMON | {"offset", "scale"},
    "Conv2D": _CONV,
    "Conv2DTranspose": _CONV | {"output_padding"},
    "BatchNormalization": _COMMON | {"axis", "beta_constraint", "beta_initializer", "beta_regularizer", "center",
                                     "epsilon", "gamma_constraint", "gamma_initializer", "gamma_regularizer",
                                     "momentum", "moving_mean_initializer", "moving_variance_initializer", "scale"},
    "Activation": _COMMON | {"activation"},
    "MaxPooling2D": _COMMON | {"data_format", "padding", "pool_size", "strides"},
    "Dropout": _COMMON | {"noise_shape", "rate", "seed"},
    "UpSampling2D": _COMMON | {"data_format", "interpolation", "size"},
    "Concatenate": _COMMON | {"axis"},
}
OBJECTS = {  # nested serialised objects: class name -> module
    "GlorotUniform": "keras.initializers", "HeNormal": "keras.initializers", "Zeros": "keras.initializers",
    "Ones": "keras.initializers", "Policy": "keras.mixed_precision",
}
ACTIVATIONS = {"linear", "relu", "softmax", "sigmoid"}
ENTRY_KEYS = {"module", "class_name", "config", "registered_name", "build_config", "name", "inbound_nodes"}
MODEL_CLASSES = {("tf_keras.src.engine.functional", "Functional"), ("keras", "Functional"), ("keras.src.models.functional", "Functional")}


class ModelError(ValueError):
    pass


def resolve_model(where: Location | str) -> Location:
    """A run folder (its model.keras) or a .keras file -> the .keras file."""
    location = Location.of(where)
    model = location / MODEL_FILE if location.is_dir() else location
    if not model.is_file():
        raise FileNotFoundError(f"{location}: no model here (expected a run folder with {MODEL_FILE}, or a .keras file)")
    return model


def _refuse(where: str, reason: str):
    raise ModelError(f"refusing to load the model: {where}: {reason}")


def _check_object(obj: dict, where: str) -> None:
    """A nested serialised object (initialiser, dtype policy): known class, stock module, plain config."""
    name = obj.get("class_name")
    if OBJECTS.get(name) != obj.get("module") or obj.get("registered_name") not in (None, name):
        _refuse(where, f"{obj.get('module')}.{name} is not a stock initialiser or dtype policy")
    keys = {"module", "class_name", "config", "registered_name", "shared_object_id"}   # the id: one policy, shared
    if set(obj) - keys:
        _refuse(where, f"unexpected keys {sorted(set(obj) - keys)}")
    if not isinstance(obj.get("shared_object_id", 0), int):
        _refuse(where, "shared_object_id is not a number")
    _check_plain(obj.get("config") or {}, where)


def _check_plain(value, where: str) -> None:
    """Plain data only: numbers, strings, lists and dicts without serialised objects or Python hooks."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("__"):
                _refuse(where, f"a key {key!r} (serialised Python object)")
            if isinstance(item, dict) and "class_name" in item:
                _check_object(item, f"{where}.{key}")
            else:
                _check_plain(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _check_plain(item, where)
    elif not (value is None or isinstance(value, (str, int, float, bool))):
        _refuse(where, f"a value of type {type(value).__name__}")


def check_model_config(config: dict) -> None:
    """Refuse any model config faceseg did not build (see the module docstring); returns quietly."""
    if not isinstance(config, dict) or (config.get("module"), config.get("class_name")) not in MODEL_CLASSES:
        _refuse("config.json", f"the model is a {config.get('module') if isinstance(config, dict) else config}."
                               f"{config.get('class_name') if isinstance(config, dict) else ''}, not a functional model")
    body = config.get("config") or {}
    if set(body) - {"name", "trainable", "layers", "input_layers", "output_layers"}:
        _refuse("config.json", f"unexpected model keys {sorted(set(body) - {'name', 'trainable', 'layers', 'input_layers', 'output_layers'})}")
    for key in ("input_layers", "output_layers"):
        _check_plain(body.get(key), key)
    for entry in body.get("layers", []):
        if not isinstance(entry, dict):
            _refuse("config.json", f"a layer entry {entry!r}")
        name, cls = entry.get("name", "?"), entry.get("class_name")
        where = f"layer {name!r} ({cls})"
        if cls not in LAYERS or entry.get("module") != "keras.layers" or entry.get("registered_name") is not None:
            _refuse(where, f"{entry.get('module')}.{cls} is not a layer faceseg builds "
                           f"({', '.join(sorted(LAYERS))})")
        if set(entry) - ENTRY_KEYS:
            _refuse(where, f"unexpected keys {sorted(set(entry) - ENTRY_KEYS)}")
        layer_config = entry.get("config") or {}
        if set(layer_config) - LAYERS[cls]:
            _refuse(where, f"unexpected config keys {sorted(set(layer_config) - LAYERS[cls])}")
        for key, value in layer_config.items():
            if key.endswith(("_regularizer", "_constraint")) and value is not None:
                _refuse(where, f"{key} is set; faceseg's layers have none")
            if key == "activation" and value not in ACTIVATIONS:
                _refuse(where, f"activation {value!r} is not one of {', '.join(sorted(ACTIVATIONS))}")
        _check_plain(layer_config, where)
        _check_plain(entry.get("build_config"), where)
        _check_plain(entry.get("inbound_nodes"), where)


@dataclass
class ModelInfo:
    """What a checked model file is, read without TensorFlow."""

    location: Location
    data: bytes = field(repr=False)
    size: int
    taxonomy: Taxonomy
    meta: dict

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _input_size(config: dict, where: str) -> int:
    try:
        shape = config["config"]["layers"][0]["config"]["batch_input_shape"]   # [None, S, S, 3]
    except (KeyError, IndexError, TypeError):
        raise ModelError(f"{where}: not a faceseg model (no input layer with a fixed shape)") from None
    if not isinstance(shape, list) or len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise ModelError(f"{where}: model input {shape} is not a fixed square RGB image size")
    return int(shape[1])


def _output_classes(config: dict) -> int | None:
    layers = config["config"]["layers"]
    convs = [layer for layer in layers if layer.get("class_name") == "Conv2D" and layer.get("name") == "classifier"]
    return int(convs[0]["config"]["filters"]) if convs else None


def inspect_model(where: Location | str) -> ModelInfo:
    """Read and check a model file (a run folder or .keras, local or a URI); raises ModelError."""
    location = resolve_model(where)
    info = location.info()
    if info.size is not None and info.size > MAX_MODEL_BYTES:
        raise ModelError(f"{location}: {info.size} bytes is larger than any faceseg model ({MAX_MODEL_BYTES})")
    data = location.read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = {i.filename: i for i in archive.infolist()}
            if "config.json" not in members or "model.weights.h5" not in members:
                raise ModelError(f"{location}: not a Keras v3 model file (no config.json / model.weights.h5)")
            extra = sorted(set(members) - ZIP_MEMBERS)
            if extra:
                raise ModelError(f"refusing to load the model: {location}: unexpected files in the archive: "
                                 f"{', '.join(extra[:5])}")
            if members["config.json"].file_size > MAX_CONFIG_BYTES:
                raise ModelError(f"{location}: config.json is {members['config.json'].file_size} bytes")
            config = json.loads(archive.read("config.json"))
            meta = json.loads(archive.read(META_FILE)) if META_FILE in members else {}
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, EOFError) as error:
        raise ModelError(f"{location}: not a faceseg .keras model ({error.__class__.__name__}: {error})") from None
    try:
        check_model_config(config)
    except ModelError as error:
        raise ModelError(f"{location}: {error}") from None
    size = _input_size(config, str(location))
    outputs = _output_classes(config)
    names = meta.get("classes") if isinstance(meta, dict) else None
    if names is None:    # a model saved before faceseg recorded its classes: Helen's 11, if it has 11 outputs
        if outputs != len(HELEN_NAMES):
            raise ModelError(f"{location}: the model does not name its {outputs} classes ({META_FILE} is missing)")
        names = list(HELEN_NAMES)
    try:
        taxonomy = Taxonomy(tuple(names))
    except (ValueError, TypeError) as error:
        raise ModelError(f"{location}: {META_FILE}: {error}") from None
    if outputs is not None and outputs != taxonomy.num_classes:
        raise ModelError(f"{location}: the model has {outputs} outputs but names {taxonomy.num_classes} classes")
    return ModelInfo(location, data, size, taxonomy, meta if isinstance(meta, dict) else {})


def add_metadata(path, meta: dict) -> None:
    """Append faceseg.json to a freshly saved local .keras file."""
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(META_FILE, json.dumps({"format": MODEL_FORMAT, **meta}, indent=1))


def load_keras_model(info: ModelInfo):
    """The checked model as a tf-keras Model, loaded in safe mode (no lambdas, no pickles)."""
    import tempfile
    from pathlib import Path

    import faceseg  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
    import tf_keras as keras

    with tempfile.TemporaryDirectory(prefix="faceseg-model-") as folder:
        path = Path(folder) / MODEL_FILE
        path.write_bytes(info.data)
        return keras.models.load_model(path, compile=False, safe_mode=True)


def load_model(where: Location | str):
    """inspect_model + load_keras_model."""
    return load_keras_model(inspect_model(where))
