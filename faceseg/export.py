"""`faceseg export RUN --format saved_model|tflite|onnx --output PATH`: a model other runtimes can load.

- saved_model: TF Serving's format. Its `serving_default` signature takes `image`, a uint8 batch of RGB
  images of any size (B, H, W, 3), resizes it to the model's grid, and returns `class_ids`, uint8
  (B, H, W) at the input's size, with class edges refined along the photo's as faceseg predict does
  (faceseg/predict/refine.py); its `plain` signature skips the refinement (`faceseg predict --no-refine`).
- tflite: for phones; a fixed (1, S, S, 3) uint8 input at the model's grid size S, (1, S, S) uint8 ids.
- onnx: through tf2onnx, (N, S, S, 3) uint8 in, (N, S, S) uint8 ids out.
TFLite and ONNX see only the model's grid, not the photo, so they do not refine.
The class names travel beside each export as `classes.txt` (one a line, id = line number - 1).

An export records itself (faceseg-export.json: inside a SavedModel's assets/, beside a single file as
model.onnx.faceseg-export.json, with the file's SHA-256): --overwrite replaces only an export faceseg wrote and
that is unchanged since, never another file or folder, and never the model being exported or its run.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from faceseg.errors import FacesegError
from faceseg.labels import label_names_text
from faceseg.model.saved import MODEL_FILE, ModelInfo, inspect_model, load_keras_model
from faceseg.storage import Location, check_writable
from faceseg.train.layout import CONFIG_FILE

FORMATS = ("saved_model", "tflite", "onnx")
ONNX_OPSET = 17
EXPORT_RECORD = "faceseg-export.json"
EXPORT_FORMAT = "faceseg-export-1"


class ExportError(FacesegError):
    pass


def _resized(tf, pixels, shape):
    """float32 images resized to `shape` (TensorFlow's antialiased bilinear), as uint8 model input."""
    x = tf.image.resize(pixels, shape, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _probabilities(tf, model, images):
    return tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))


def _ids_function(tf, model, size: int, any_size: bool):
    """uint8 images -> uint8 class ids, the model's argmax; with `any_size`, resized in and back out."""
    def class_ids(image):
        x = image
        if any_size:
            height, width = tf.shape(image)[1], tf.shape(image)[2]
            x = _resized(tf, tf.cast(image, tf.float32), (size, size))
        probs = _probabilities(tf, model, x)
        if any_size:
            probs = tf.image.resize(probs, (height, width), method="bilinear")
        return tf.cast(tf.argmax(probs, axis=-1), tf.uint8)
    return class_ids


def _refined_ids_function(tf, model, size: int):
    """uint8 images of any size -> uint8 class ids at that size, refined as FaceParser refines: the batch
    resized to the grid, its probabilities refined along a guide (the batch at guide_shape), resized back."""
    from faceseg.predict.refine import REFINE_ZOOM, refine_probabilities

    def class_ids(image):
        height, width = tf.shape(image)[1], tf.shape(image)[2]
        pixels = tf.cast(image, tf.float32)
        inputs = _resized(tf, pixels, (size, size))
        probs = _probabilities(tf, model, inputs)
        shape = tf.cast(tf.stack([height, width]), tf.float32)                     # guide_shape, in the graph
        guide_size = tf.maximum(1, tf.cast(tf.round(shape * tf.minimum(1.0, REFINE_ZOOM * size
                                                                         / tf.reduce_max(shape))), tf.int32))
        guides = _resized(tf, pixels, guide_size)

        def one(args):
            scores = refine_probabilities(tf, args[0], args[1], args[2])
            scores = tf.image.resize(scores[None], (height, width), method="bilinear")[0]
            return tf.cast(tf.argmax(scores, axis=-1), tf.uint8)
        return tf.map_fn(one, (probs, inputs, guides), fn_output_signature=tf.TensorSpec([None, None], tf.uint8))
    return class_ids


def record_of(target: Location, format: str) -> Location:
    return target / "assets" / EXPORT_RECORD if format == "saved_model" else target.parent / f"{target.name}.{EXPORT_RECORD}"


def _sha256(location: Location) -> str:
    return hashlib.sha256(location.read_bytes()).hexdigest()


def check_target(target: Location, info: ModelInfo, format: str, overwrite: bool) -> None:
    """Refuse to write over the model or its run, over anything without --overwrite, and, with it, over
    anything that is not an unchanged export faceseg wrote."""
    run = info.location.parent
    source = run if info.location.name == MODEL_FILE and (run / CONFIG_FILE).is_file() else info.location
    if target.contains(info.location) or source.contains(target):
        raise ExportError(f"--output {target}: is or holds the model being exported ({info.location}), or lies in "
                          "its run folder; choose another path")
    ours = [target, record_of(target, format)]
    if format != "saved_model":           # shared by model.onnx and model.tflite: the same names may stay
        names = classes_file(target)
        if names.exists() and names.read_text() != label_names_text(info.taxonomy):
            ours.append(names)
    there = [location for location in ours if location.exists()]
    if not there:
        return
    if not overwrite:
        raise FileExistsError(f"{there[0]}: exists; add --overwrite to replace an export faceseg wrote")
    record = record_of(target, format)
    try:
        written = json.loads(record.read_text())
        if written.get("format") != EXPORT_FORMAT or written.get("export") != format:
            raise ValueError("not a faceseg export record")
        if format != "saved_model" and written.get("sha256") != _sha256(target):
            raise ValueError(f"{target} changed since faceseg wrote it")
        if format == "saved_model" and not target.is_dir():
            raise ValueError(f"{target} is not a folder")
    except (OSError, ValueError, AttributeError) as error:
        raise ExportError(f"--output {target} --overwrite: not an export faceseg wrote ({str(error)[:200]}); "
                          "refusing to replace it") from None


def export(run: str | Location, format: str, output: str | Location, *, overwrite: bool = False) -> Location:
    """Export the model of `run` (a shipped name, a run folder or .keras file) as `format` to `output`."""
    if format not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    info = inspect_model(run)
    target = Location.of(output)
    check_target(target, info, format, overwrite)
    check_writable(target.parent, "--output")
    from faceseg.backend import tf

    model = load_keras_model(info)
    classes = label_names_text(info.taxonomy)
    with tempfile.TemporaryDirectory(prefix="faceseg-export-") as scratch:
        built = Path(scratch) / target.name
        if format == "saved_model":
            images = [tf.TensorSpec([None, None, None, 3], tf.uint8, name="image")]
            refined, plain = _refined_ids_function(tf, model, info.size), _ids_function(tf, model, info.size, True)
            module = tf.Module()
            module.model = model                          # tracked: the variables
            module.serve = tf.function(lambda image: {"class_ids": refined(image)}, input_signature=images)
            module.plain = tf.function(lambda image: {"class_ids": plain(image)}, input_signature=images)
            tf.saved_model.save(module, str(built), signatures={"serving_default": module.serve,
                                                                "plain": module.plain})
            (built / "assets").mkdir(exist_ok=True)
            (built / "assets" / "classes.txt").write_text(classes)
        elif format == "tflite":
            ids = tf.function(_ids_function(tf, model, info.size, any_size=False),
                              input_signature=[tf.TensorSpec([1, info.size, info.size, 3], tf.uint8, name="image")])
            converter = tf.lite.TFLiteConverter.from_concrete_functions([ids.get_concrete_function()], model)
            built.write_bytes(converter.convert())
        else:
            try:
                import tf2onnx
            except ImportError:
                raise RuntimeError("ONNX export needs tf2onnx: pip install 'faceseg[export]'") from None
            ids = tf.function(_ids_function(tf, model, info.size, any_size=False),
                              input_signature=[tf.TensorSpec([None, info.size, info.size, 3], tf.uint8, name="image")])
            tf2onnx.convert.from_function(ids, input_signature=ids.input_signature, opset=ONNX_OPSET,
                                          output_path=str(built))
        record = {"format": EXPORT_FORMAT, "export": format, "model": str(info.location), "model_sha256": info.sha256}
        if format == "saved_model":
            (built / "assets" / EXPORT_RECORD).write_text(json.dumps(record, indent=1))
        else:
            record["sha256"] = hashlib.sha256(built.read_bytes()).hexdigest()
        if target.exists():
            target.delete()                    # checked above: faceseg's own export
        target.upload_from(built)
        if format != "saved_model":
            classes_file(target).write_text(classes)
            record_of(target, format).write_text(json.dumps(record, indent=1))
    return target


def classes_file(export: Location) -> Location:
    """The class names beside a single-file export: model.onnx -> model.classes.txt."""
    return export.parent / f"{export.stem}.classes.txt"
