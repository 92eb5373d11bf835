"""The folder `faceseg predict` writes: its rules, its record, and the summary of a job.

The output folder is faceseg's: `predict.json` records which model (its SHA-256) wrote it, with or without
edge refinement, and the name of every label map it holds with the image it comes from. A re-run with the
same model skips the PNGs already there (each one is written whole or not at all); another model is
refused unless --overwrite, which removes the earlier run's files by the exact names its record lists, each
checked to lie inside the folder. A folder without a record that holds anything is refused, --overwrite or
not: faceseg only ever replaces what it wrote. An output that is, holds or lies inside the input is
refused: predictions never touch their inputs. A symbolic link inside the folder is refused, never followed.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from faceseg.errors import FacesegError
from faceseg.metrics import format_report
from faceseg.model.saved import ModelInfo
from faceseg.storage import Location, refuse_links_inside

OVERLAYS = "overlays"
REPORT = "report.json"
RECORD = "predict.json"
RECORD_FORMAT = "faceseg-predict-1"
OVERLAY_VIDEO = "overlay.mp4"
MAX_RECORD_BYTES = 64 << 20


class OutputError(FacesegError):
    pass


class _RecordModel(BaseModel):
    model_config = ConfigDict(extra="ignore")
    uri: str
    sha256: str
    classes: list[str]
    refine: bool = False          # records from before refinement existed: not refined

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value):
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("is not a SHA-256")
        return value


class Record(BaseModel):
    """predict.json, checked before any name in it is used."""

    model_config = ConfigDict(extra="ignore")
    format: Literal["faceseg-predict-1"]
    model: _RecordModel
    input: str
    layout: str
    files: dict[str, str]

    @field_validator("files")
    @classmethod
    def _names_inside(cls, files):
        for name in files:
            Location.of("/").child(name)          # relative, no '..': refused otherwise
            if not name.endswith(".png"):
                raise ValueError(f"{name[:80]!r} is not a label-map name")
        return files


def read_record(output: Location) -> Record | None:
    record = output / RECORD
    if not record.is_file():
        return None
    try:
        size = record.info().size
        if size is not None and size > MAX_RECORD_BYTES:
            raise ValueError(f"{size} bytes")
        return Record.model_validate(json.loads(record.read_text()))
    except (ValueError, UnicodeDecodeError, RecursionError, ValidationError) as error:
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3]) \
            if isinstance(error, ValidationError) else str(error)[:200]
        raise OutputError(f"{record}: damaged or not faceseg's ({reason}); remove the output folder or choose "
                          "another") from None


def check_output(model: ModelInfo, input_: Location, output: Location, overwrite: bool,
                 refine: bool = True) -> Record | None:
    """Refuse an output that would touch the input, that another program filled, or that another
    model (or the same model with refinement switched) filled, without --overwrite; returns the earlier
    run's record, if any."""
    if output.contains(input_) or input_.contains(output):
        relation = "is" if output == input_ else "contains" if output.contains(input_) else "lies inside"
        raise OutputError(f"--output {output} {relation} --input {input_}: predictions must not touch their "
                          "inputs; choose another folder")
    if output.is_file():
        raise OutputError(f"--output {output}: is a file; expected a folder")
    record = read_record(output)
    if record is None:
        if output.is_dir() and output.list():
            raise OutputError(f"--output {output}: exists and holds files faceseg predict did not write "
                              f"(no {RECORD}); choose a new or empty folder")
        return None
    refuse_links_inside(output, "--output")
    if record.model.sha256 != model.sha256 and not overwrite:
        raise OutputError(f"--output {output}: holds predictions of another model ({record.model.uri}); "
                          "add --overwrite to replace them, or choose another folder")
    if record.model.refine != refine and not overwrite:
        raise OutputError(f"--output {output}: holds predictions made {'with' if record.model.refine else 'without'} "
                          f"edge refinement; this run is {'with' if refine else 'without (--no-refine)'}. Add "
                          "--overwrite to replace them, or choose another folder")
    return record


def start_output(model: ModelInfo, input_: Location, output: Location, record: Record | None, layout: str,
                 files: dict, refine: bool = True) -> None:
    """Clear another model's (or refinement's) predictions (checked and allowed before), then record this run."""
    if record is not None and (record.model.sha256 != model.sha256 or record.model.refine != refine):
        forget(output, record)
    output.mkdir()
    (output / RECORD).write_text(json.dumps({
        "format": RECORD_FORMAT, "model": {"uri": str(model.location), "sha256": model.sha256,
                                           "classes": list(model.taxonomy.names), "refine": refine},
        "input": str(input_), "layout": layout, "files": files}, indent=1))


def forget(output: Location, record: Record) -> None:
    """--overwrite: remove what the earlier run wrote, by the exact names its (checked) record lists."""
    for name in record.files:
        output.child(name).delete()
        (output / OVERLAYS).child(name).delete()
    (output / REPORT).delete()
    (output / OVERLAY_VIDEO).delete()


@dataclass
class PredictSummary:
    output: Location
    predicted: int
    skipped: int
    failed: list[str] = field(default_factory=list)   # "file: reason", one per image not predicted
    seconds: float = 0.0
    steady_images_per_second: float = 0.0   # once the model is loaded and traced (see pipeline.steady_rate)
    report: dict | None = None

    def format(self) -> str:
        rate = self.predicted / self.seconds if self.seconds else 0.0
        steady = f", {self.steady_images_per_second:.1f}/s once running" if self.steady_images_per_second else ""
        lines = [f"predicted {self.predicted} images in {self.seconds:.1f} s ({rate:.1f} images/s{steady}); "
                 f"{self.skipped} already done; {len(self.failed)} failed"]
        lines += [f"  bad file: {message}" for message in self.failed]
        if self.report:
            lines += [format_report(self.report), f"report:   {self.output / REPORT}"]
        lines.append(f"labels:   {self.output}")
        return "\n".join(lines)
