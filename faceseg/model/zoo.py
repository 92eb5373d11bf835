"""Trained models that ship inside the package, loaded by name with no network (`FaceParser.load("fasseg")`).

Each model is two files in faceseg/model/shipped/: NAME.keras (the weights, checked like any model file)
and NAME.json, its metadata: the SHA-256 of NAME.keras (checked on every load), the classes, the input
size, how it was trained (command, config, data and its hash), what it scored on people it never saw,
what it is not good at, and the terms of the photos it learnt from. The model card (`faceseg models NAME`,
docs/models/NAME.md) is generated from that file alone.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from faceseg.errors import FacesegError
from faceseg.storage import Location

SHIPPED = Path(__file__).resolve().parent / "shipped"


class ShippedModelError(FacesegError):
    pass


@lru_cache(maxsize=None)
def _catalogue() -> dict[str, dict]:
    models = {}
    for path in sorted(SHIPPED.glob("*.json")):
        meta = json.loads(path.read_text())
        if (SHIPPED / meta["file"]).is_file():
            models[meta["name"]] = meta
    return models


def shipped_names() -> list[str]:
    return list(_catalogue())


def is_shipped(name) -> bool:
    return isinstance(name, str) and name in _catalogue()


def metadata(name: str) -> dict:
    if not is_shipped(name):
        raise ShippedModelError(f"no shipped model named {name!r}; shipped: {', '.join(shipped_names()) or 'none'}")
    return _catalogue()[name]


def shipped_file(name: str) -> Location:
    return Location.of(SHIPPED / metadata(name)["file"])


def check_sha256(name: str, data: bytes) -> None:
    """The shipped file must be the one its metadata records (a changed or damaged install is refused)."""
    expected, found = metadata(name)["sha256"], hashlib.sha256(data).hexdigest()
    if found != expected:
        raise ShippedModelError(f"{shipped_file(name)}: SHA-256 {found} is not the {expected} recorded for the shipped "
                         f"model {name!r}; the installed file was changed or damaged. Reinstall faceseg")


# --- the card, from the metadata alone -------------------------------------------------------------------------

def summary_line(meta: dict) -> str:
    heldout = meta["heldout"]["all"]
    return (f"{meta['name']:<10} {len(meta['classes'])} classes ({', '.join(meta['classes'])}), {meta['size']} px, "
            f"{meta['bytes'] / 2**20:.1f} MiB; held-out people: pixel accuracy {100 * heldout['pixel_accuracy']:.1f}%, "
            f"mean F1 {100 * heldout['mean_f1']:.1f}%")


def model_card(meta: dict) -> str:
    """The Markdown model card of a shipped model."""
    from faceseg.labels import Taxonomy

    taxonomy = Taxonomy(tuple(meta["classes"]))
    training, heldout, data = meta["training"], meta["heldout"], meta["training"]["data"]
    lines = [f"# Model card: `{meta['name']}`", "", meta["description"], "",
             "```python", "import faceseg", f"ids = faceseg.FaceParser.load({meta['name']!r})(\"photo.jpg\")"
             "   # (H, W) class ids", "```", "",
             "## Classes", "", "| id | class | overlay colour |", "|---|---|---|"]
    lines += [f"| {i} | {name} | rgb{tuple(int(c) for c in taxonomy.palette[i])} |" for i, name in enumerate(taxonomy.names)]
    lines += ["", "## Input", "",
              f"An RGB photo of any size; the model sees it resized to {meta['size']} x {meta['size']} px and the label "
              "map comes back at the photo's own size, class edges refined along the photo's.", "",
              f"File: `faceseg/model/shipped/{meta['file']}`, {meta['bytes']:,} bytes, SHA-256 `{meta['sha256']}` "
              "(checked on every load).", "",
              "## Training", "", f"    {training['command']}", "",
              f"Data: {data['name']}, {data['images']} photos ({data['description']}); SHA-256 of the sorted file "
              f"names and contents `{data['sha256']}`. Config: `{training['config']}`; {training['minutes']:.0f} min "
              f"on {training['machine']}.", "",
              "## Held-out figures", "", heldout["protocol"], "", f"    {heldout['command']}", "",
              "| held-out photos | images | pixel accuracy | mean F1 | "
              + " | ".join(f"F1 {name}" for name in taxonomy.names) + " |",
              "|---|---|---|---|" + "---|" * taxonomy.num_classes]
    for row in heldout["rows"]:
        figures = heldout[row]
        lines.append(f"| {row} | {figures['images']} | {100 * figures['pixel_accuracy']:.1f} | "
                     f"{100 * figures['mean_f1']:.1f} | "
                     + " | ".join(f"{100 * figures['f1'][name]:.1f}" for name in taxonomy.names) + " |")
    lines += ["", "| IoU (all held-out photos) | " + " | ".join(taxonomy.names) + " |",
              "|---|" + "---|" * taxonomy.num_classes,
              "| | " + " | ".join(f"{100 * heldout['all']['iou'][name]:.1f}" for name in taxonomy.names) + " |",
              "", "## Not good at", ""]
    lines += [f"- {item}" for item in meta["limitations"]]
    lines += ["", "## Terms", ""] + [f"- {item}" for item in meta["terms"]]
    return "\n".join(lines) + "\n"
