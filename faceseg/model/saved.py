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

from faceseg.errors import FacesegError
from faceseg.labels import HELEN_NAMES, Taxonomy
from faceseg.storage import Location

MODEL_FILE = "model.keras"
META_FILE = "faceseg.json"
MODEL_FORMAT = "faceseg-model-1"
ZIP_MEMBERS = {"metadata.json", "config.json", "model.weights.h5", META_FILE}
MAX_CONFIG_BYTES = 16 << 20          # config.json, metadata.json, faceseg.json: read at most this, whatever they claim
MAX_MODEL_BYTES = 1 << 30            # the file, and its weights unpacked
MAX_INPUT_SIZE = 2048                # px, the largest data.size a faceseg model is trained at

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


class ModelError(FacesegError):
    pass


def resolve_model(where: Location | str) -> Location:
    """A shipped model's name, a run folder (its model.keras) or a .keras file -> the .keras file."""
    from faceseg.model import zoo

    if isinstance(where, str) and zoo.is_shipped(where) and not Location.of(where).exists():
        return zoo.shipped_file(where)
    location = Location.of(where)
    model = location / MODEL_FILE if location.is_dir() else location
    if not model.is_file():
        shipped = ", ".join(zoo.shipped_names()) or "none"
        raise ModelError(f"{where}: no model here (expected a run folder with {MODEL_FILE}, a .keras file, or the "
                         f"name of a shipped model: {shipped}; `faceseg models` lists them)")
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
    if (not isinstance(shape, list) or len(shape) != 4 or not isinstance(shape[1], int) or isinstance(shape[1], bool)
            or shape[1] != shape[2] or shape[3] != 3):
        raise ModelError(f"{where}: model input {str(shape)[:80]} is not a fixed square RGB image size")
    if not 16 <= shape[1] <= MAX_INPUT_SIZE:
        raise ModelError(f"{where}: model input of {shape[1]} px is outside 16..{MAX_INPUT_SIZE}, the sizes faceseg "
                         "trains at")
    return int(shape[1])


def _output_classes(config: dict) -> int | None:
    layers = config["config"]["layers"]
    convs = [layer for layer in layers if layer.get("class_name") == "Conv2D" and layer.get("name") == "classifier"]
    if not convs:
        return None
    filters = convs[0].get("config", {}).get("filters")
    if not isinstance(filters, int) or isinstance(filters, bool):
        raise ModelError(f"the classifier layer's filters {str(filters)[:40]} is not a number")
    return filters


def _read_member(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """A zip member, unpacked up to `limit` bytes whatever its header claims (a deflate bomb stops there)."""
    with archive.open(name) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise ModelError(f"{name} unpacks to more than {limit} bytes")
    return data


def _check_unpacked_size(archive: zipfile.ZipFile, name: str, limit: int) -> None:
    with archive.open(name) as stream:
        total = 0
        while chunk := stream.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise ModelError(f"{name} unpacks to more than {limit} bytes")


def inspect_model(where: Location | str) -> ModelInfo:
    """Read and check a model file (a shipped name, a run folder or .keras, local or a URI); every problem
    with the file is a ModelError naming it."""
    from faceseg.model import zoo

    location = resolve_model(where)
    info = location.info()
    if info.size is not None and info.size > MAX_MODEL_BYTES:
        raise ModelError(f"{location}: {info.size} bytes is larger than any faceseg model ({MAX_MODEL_BYTES})")
    data = location.read_bytes()
    if isinstance(where, str) and zoo.is_shipped(where) and location == zoo.shipped_file(where):
        zoo.check_sha256(where, data)
    try:
        config, meta = _read_archive(data, location)
        check_model_config(config)
        size = _input_size(config, str(location))
        outputs = _output_classes(config)
    except ModelError as error:
        message = str(error)
        raise ModelError(message if str(location) in message else f"{location}: {message}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, json.JSONDecodeError, UnicodeDecodeError, EOFError, OSError,
            KeyError, IndexError, TypeError, AttributeError, NotImplementedError, RuntimeError, ValueError) as error:
        raise ModelError(f"{location}: not a faceseg .keras model ({error.__class__.__name__}: "
                         f"{str(error)[:200]})") from None
    except RecursionError:
        raise ModelError(f"{location}: not a faceseg .keras model (its JSON is nested too deeply)") from None
    names = meta.get("classes")
    if names is None:    # a model saved before faceseg recorded its classes: Helen's 11, if it has 11 outputs
        if outputs != len(HELEN_NAMES):
            raise ModelError(f"{location}: the model does not name its {outputs} classes ({META_FILE} is missing)")
        names = list(HELEN_NAMES)
    try:
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError("classes is not a list of names")
        taxonomy = Taxonomy(tuple(names))
    except (ValueError, TypeError) as error:
        raise ModelError(f"{location}: {META_FILE}: {str(error)[:200]}") from None
    if outputs is not None and outputs != taxonomy.num_classes:
        raise ModelError(f"{location}: the model has {outputs} outputs but names {taxonomy.num_classes} classes")
    return ModelInfo(location, data, size, taxonomy, meta)


def _read_archive(data: bytes, location: Location) -> tuple[dict, dict]:
    """(config.json, faceseg.json) of a .keras zip, each read at most MAX_CONFIG_BYTES; the weights' unpacked
    size checked against MAX_MODEL_BYTES."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {i.filename for i in archive.infolist()}
        if "config.json" not in members or "model.weights.h5" not in members:
            raise ModelError(f"{location}: not a Keras v3 model file (no config.json / model.weights.h5)")
        extra = sorted(members - ZIP_MEMBERS)
        if extra:
            raise ModelError(f"refusing to load the model: {location}: unexpected files in the archive: "
                             f"{', '.join(name[:80] for name in extra[:5])}")
        config = json.loads(_read_member(archive, "config.json", MAX_CONFIG_BYTES))
        meta = json.loads(_read_member(archive, META_FILE, MAX_CONFIG_BYTES)) if META_FILE in members else {}
        if "metadata.json" in members:
            _read_member(archive, "metadata.json", MAX_CONFIG_BYTES)
        _check_unpacked_size(archive, "model.weights.h5", MAX_MODEL_BYTES)
    if not isinstance(meta, dict):
        raise ModelError(f"{location}: {META_FILE} is not a JSON object")
    return config, meta


def architecture_of(info: ModelInfo) -> dict:
    """What the shapes of a model's weights follow, read from its layers: {depth, base_filters, upsampling,
    batch_norm} as in ModelConfig."""
    with zipfile.ZipFile(io.BytesIO(info.data)) as archive:
        layers = json.loads(_read_member(archive, "config.json", MAX_CONFIG_BYTES))["config"]["layers"]
    by_name = {layer.get("name"): layer for layer in layers}
    first = by_name.get("down0_conv1")
    if first is None:
        raise ModelError(f"{info.location}: not a faceseg U-Net (no layer down0_conv1)")
    return {"depth": sum(1 for name in by_name if str(name).startswith("pool")),
            "base_filters": int(first["config"]["filters"]),
            "upsampling": "resize" if any(str(name).endswith("_resize") for name in by_name) else "transpose",
            "batch_norm": any(layer.get("class_name") == "BatchNormalization" for layer in layers)}


def transfer_weights(source, target, skip: tuple[str, ...] = ()) -> None:
    """Copy each layer's weights from the Keras model `source` into the same-named layer of `target`, but
    the layers named in `skip`; a layer whose weights differ in shape is a ModelError."""
    for layer in target.layers:
        if not layer.weights or layer.name in skip:
            continue
        try:
            weights = source.get_layer(layer.name).get_weights()
        except ValueError:
            raise ModelError(f"the model to start from has no layer {layer.name!r}") from None
        shapes = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(w.shape) for w in weights] != shapes:
            raise ModelError(f"layer {layer.name!r}: the model to start from has weights of shapes "
                             f"{[tuple(w.shape) for w in weights]}, not {shapes}")
        layer.set_weights(weights)


def add_metadata(path, meta: dict) -> None:
    """Append faceseg.json to a freshly saved local .keras file."""
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(META_FILE, json.dumps({"format": MODEL_FORMAT, **meta}, indent=1))


def load_keras_model(info: ModelInfo):
    """The checked model as a tf-keras Model, loaded in safe mode (no lambdas, no pickles)."""
    import tempfile
    from pathlib import Path

    from faceseg.backend import keras

    with tempfile.TemporaryDirectory(prefix="faceseg-model-") as folder:
        path = Path(folder) / MODEL_FILE
        path.write_bytes(info.data)
        try:
            return keras.models.load_model(path, compile=False, safe_mode=True)
        except Exception as error:     # a checked config, but weights Keras cannot read: the file is bad, not faceseg
            raise ModelError(f"{info.location}: its weights cannot be loaded ({error.__class__.__name__}: "
                             f"{str(error).strip()[:200]})") from None


def load_model(where: Location | str):
    """inspect_model + load_keras_model."""
    return load_keras_model(inspect_model(where))
