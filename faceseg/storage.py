"""Where files live: a local folder or an object store (s3://, gs://, abfs://, ...), through pyarrow.fs.

Every path a user gives faceseg (data, cache, run folder, model, predictions, sweep) is a `Location`.
pyarrow.fs is what Ray Data and Ray Train's `storage_path` use, so one filesystem object serves faceseg's
own reads and writes and theirs. Credentials and endpoints come from the usual environment (for S3:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, or an instance role).

Writes appear whole or not at all: on a local disk a file is written under a temporary name in the same
folder and renamed; an object store's single PUT is atomic by itself.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

TEMP_PREFIX = ".faceseg-"   # every temporary file faceseg writes starts so; see temp_name


def temp_name(name: str) -> str:
    """The temporary name a file is written under before its rename: short whatever the name's length,
    and one per target name, so a later run finds a killed run's leftover by its exact name."""
    return f"{TEMP_PREFIX}{hashlib.sha1(name.encode()).hexdigest()[:16]}.partial"


def is_uri(text: str) -> bool:
    scheme = urlsplit(str(text)).scheme
    return len(scheme) > 1   # "C:" is a drive, not a scheme


@lru_cache(maxsize=32)
def _filesystem(scheme: str, netloc: str) -> pafs.FileSystem:
    """One filesystem per bucket and process: resolving an S3 bucket's region is a network call."""
    return pafs.FileSystem.from_uri(f"{scheme}://{netloc}/")[0]


@dataclass(frozen=True)
class Location:
    """A file or folder, local (an absolute path) or on an object store (`scheme://bucket/key`)."""

    uri: str

    @classmethod
    def of(cls, where: "str | Path | Location") -> "Location":
        if isinstance(where, Location):
            return where
        text = str(where)
        if not text:
            raise ValueError("an empty path")
        if is_uri(text):
            parts = urlsplit(text)
            if parts.scheme == "file":
                return cls(str(Path(parts.path).resolve()))
            if not parts.netloc:
                raise ValueError(f"{text}: a URI needs a bucket, e.g. s3://bucket/folder")
            key = posixpath.normpath("/" + parts.path).lstrip("/") if parts.path.strip("/") else ""
            return cls(f"{parts.scheme}://{parts.netloc}/{key}".rstrip("/") if key else f"{parts.scheme}://{parts.netloc}")
        return cls(str(Path(text).expanduser().resolve()))

    # --- names -----------------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return not is_uri(self.uri)

    @property
    def filesystem(self) -> pafs.FileSystem:
        if self.is_local:
            return pafs.LocalFileSystem()
        parts = urlsplit(self.uri)
        return _filesystem(parts.scheme, parts.netloc)

    @property
    def path(self) -> str:
        """The path within `filesystem` (no scheme): what pyarrow.fs calls take."""
        if self.is_local:
            return self.uri
        parts = urlsplit(self.uri)
        return f"{parts.netloc}{parts.path}".rstrip("/")

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri.rstrip("/"))

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> "Location":
        if self.is_local:
            return Location(str(Path(self.uri).parent))
        head = self.uri.rsplit("/", 1)[0]
        return Location(head) if "://" in head and urlsplit(head).netloc else self

    def sibling_path(self, fs_path: str) -> "Location":
        """The Location of a path on this Location's filesystem (what Ray hands back: no scheme)."""
        return Location(fs_path) if self.is_local else Location.of(f"{urlsplit(self.uri).scheme}://{fs_path}")

    def __truediv__(self, name: str) -> "Location":
        return Location.of(f"{self.uri.rstrip('/')}/{name}") if not self.is_local \
            else Location(str(Path(self.uri) / name))

    def __str__(self) -> str:
        return self.uri

    def local(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri}: not a local path")
        return Path(self.uri)

    def contains(self, other: "Location") -> bool:
        """True when `other` is this location or lies inside it."""
        mine, theirs = self.uri.rstrip("/"), other.uri.rstrip("/")
        if self.is_local and other.is_local:
            mine, theirs = os.path.realpath(mine), os.path.realpath(theirs)
        return theirs == mine or theirs.startswith(mine + "/")

    # --- questions ---------------------------------------------------------------------------------------
    def info(self) -> pafs.FileInfo:
        return self.filesystem.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def list(self) -> list[tuple["Location", bool]]:
        """(location, is a folder) of what the folder holds, sorted; [] for a missing folder.

        Locally through os.scandir, which keeps broken and looping symlinks (pyarrow's listing drops
        them): a data set's file that cannot be read is then named as bad instead of vanishing."""
        if self.is_local:
            try:
                with os.scandir(self.uri) as entries:
                    found = [(Location(entry.path), _is_dir(entry)) for entry in entries]
            except (FileNotFoundError, NotADirectoryError):
                return []
        else:
            scheme = urlsplit(self.uri).scheme
            selector = pafs.FileSelector(self.path, recursive=False, allow_not_found=True)
            found = [(Location(f"{scheme}://{info.path}"), info.type == pafs.FileType.Directory)
                     for info in self.filesystem.get_file_info(selector)]
        return sorted(found, key=lambda pair: pair[0].uri)

    def files(self) -> list["Location"]:
        return [location for location, is_dir in self.list() if not is_dir]

    def folders(self) -> list["Location"]:
        return [location for location, is_dir in self.list() if is_dir]

    def is_empty_dir(self) -> bool:
        return self.is_dir() and not self.list()

    # --- reading and writing ---------------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        if self.is_local:
            return Path(self.uri).read_bytes()
        with self.filesystem.open_input_file(self.path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def mkdir(self) -> None:
        if self.is_local:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
        else:
            self.filesystem.create_dir(self.path, recursive=True)

    def write_bytes(self, data: bytes | str) -> None:
        """Whole or not at all; an unwritable destination is an OSError naming this file."""
        data = data.encode() if isinstance(data, str) else data
        if not self.is_local:
            with self.filesystem.open_output_stream(self.path) as stream:
                stream.write(data)
            return
        path = Path(self.uri)
        tmp = path.with_name(temp_name(path.name))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise OSError(error.errno, f"{path}: cannot write ({error.strerror or error})") from None

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def remove_leftover_temp(self) -> bool:
        """Delete the temporary file a killed writer of this file left behind, if any."""
        if not self.is_local:
            return False
        tmp = Path(self.uri).with_name(temp_name(self.name))
        if tmp.is_file():
            tmp.unlink()
            return True
        return False

    def delete(self) -> None:
        """A file or a whole folder; nothing if it is not there."""
        info = self.info()
        if info.type == pafs.FileType.Directory:
            if self.is_local:
                shutil.rmtree(self.uri)
            else:
                self.filesystem.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.filesystem.delete_file(self.path)

    def upload_from(self, local: Path) -> None:
        """Copy a local file or folder here (a folder's contents into this folder)."""
        local = Path(local)
        if self.is_local:
            if local.is_dir():
                shutil.copytree(local, self.uri, dirs_exist_ok=True)
            else:
                self.write_bytes(local.read_bytes())
            return
        if local.is_dir():
            pafs.copy_files(str(local), self.path, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.filesystem)
        else:
            self.write_bytes(local.read_bytes())

    def download_to(self, local: Path) -> Path:
        """Copy this file or folder to `local`; returns `local`."""
        local = Path(local)
        if self.is_dir():
            pafs.copy_files(self.path, str(local), source_filesystem=self.filesystem,
                            destination_filesystem=pafs.LocalFileSystem())
        else:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(self.read_bytes())
        return local


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:       # a symlink loop
        return False


class LocalCopy:
    """A local path for a Location while a block runs: the file itself when local, else a download
    into a temporary folder that is removed afterwards. For libraries that only open local files."""

    def __init__(self, location: Location):
        self.location, self.tmp = location, None

    def __enter__(self) -> Path:
        if self.location.is_local:
            return self.location.local()
        self.tmp = tempfile.mkdtemp(prefix="faceseg-download-")
        return self.location.download_to(Path(self.tmp) / self.location.name)

    def __exit__(self, *exc) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
