"""Where files live: a local folder or an object store (s3://, gs://, abfs://, ...), through pyarrow.fs.

Every path a user gives faceseg (data, cache, run folder, model, predictions, sweep) is a `Location`.
pyarrow.fs is what Ray Data and Ray Train's `storage_path` use, so one filesystem object serves faceseg's
own reads and writes and theirs. Credentials and endpoints come from the usual environment (for S3:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, or an instance role).

Writes appear whole or not at all: on a local disk a file is written under a temporary name in the same
folder and renamed; an object store's single PUT is atomic by itself.

One rule for every local write and delete (docs/security.md): faceseg never goes through a symbolic link
below a folder it was given. A user's path is resolved once, in `Location.of`; every path faceseg then
builds from it (`location / name`) must be its own real path, so a link planted inside an output folder
(`preds/overlays -> ../data`) is refused by name, never followed. A name read back from a file faceseg
wrote (predict.json, checkpoint.json) goes through `child`, which keeps it inside its folder.
"""
from __future__ import annotations

import errno
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

from faceseg.errors import FacesegError, shown

TEMP_PREFIX = ".faceseg-"   # every temporary file faceseg writes starts so; see temp_name


def temp_name(name: str) -> str:
    """The temporary name a file is written under before its rename: short whatever the name's length,
    and one per target name, so a later run finds a killed run's leftover by its exact name."""
    return f"{TEMP_PREFIX}{hashlib.sha1(name.encode()).hexdigest()[:16]}.partial"


class PathError(FacesegError):
    """A path or URI that cannot be used as given."""


class UnsafePathError(PathError):
    """A path that would lead a write or delete outside the folder faceseg was given."""


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
            raise PathError("an empty path")
        if is_uri(text):
            parts = urlsplit(text)
            if parts.scheme == "file":
                return cls(str(Path(parts.path).resolve()))
            if not parts.netloc:
                raise PathError(f"{text}: a URI needs a bucket, e.g. s3://bucket/folder")
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

    def child(self, name: str) -> "Location":
        """`self / name` for a relative name read from a file (a record, a manifest): refused unless it
        stays inside this folder (no absolute path, no '..', no empty part)."""
        parts = name.split("/") if isinstance(name, str) else None
        if (not parts or name.startswith("/") or "\\" in name or "\0" in name
                or any(part in ("", ".", "..") for part in parts)):
            raise UnsafePathError(f"{self}: {shown(name)} is not a name inside this folder")
        return self / name

    def __truediv__(self, name: str) -> "Location":
        return Location.of(f"{self.uri.rstrip('/')}/{name}") if not self.is_local \
            else Location(str(Path(self.uri) / name))

    def __str__(self) -> str:
        return self.uri

    def local(self) -> Path:
        if not self.is_local:
            raise PathError(f"{self.uri}: not a local path")
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
            _mkdirs(Path(self.uri))
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
            _mkdirs(path.parent)
            _refuse_link(path)
            descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(data)
            os.replace(tmp, path)
        except OSError as error:
            if not tmp.is_symlink():
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
        """A file or a whole folder; nothing if it is not there. Locally, never through a link: a link where
        faceseg's file or folder should be is refused (it is not faceseg's to remove)."""
        if self.is_local:
            path = Path(self.uri)
            _refuse_link(path)
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            return
        info = self.info()
        if info.type == pafs.FileType.Directory:
            self.filesystem.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.filesystem.delete_file(self.path)

    def upload_from(self, local: Path) -> None:
        """Copy a local file or folder here (a folder's contents into this folder)."""
        local = Path(local)
        if self.is_local:
            if local.is_dir():
                _refuse_link(Path(self.uri))
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


def refuse_links_inside(folder: Location, flag: str) -> None:
    """A folder faceseg is about to write into again must hold no symbolic link anywhere inside it."""
    if not folder.is_local or not folder.is_dir():
        return
    for root, dirs, files in os.walk(folder.uri):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                raise UnsafePathError(f"{flag} {folder}: {path} is a symbolic link (to {os.readlink(path)}); faceseg "
                                      "does not write through links. Remove it, or choose another folder")


def check_writable(location: Location, flag: str) -> None:
    """Before any work: a local folder faceseg will create or fill must be creatable and writable (an
    object store answers only when written to)."""
    if not location.is_local:
        return
    path = Path(location.uri)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    _refuse_link(path)
    if not existing.is_dir():
        raise UnsafePathError(f"{flag} {location}: {existing} is a file, not a folder")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, f"{flag} {location}: cannot write ({existing}: Read-only file system)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"{flag} {location}: cannot write ({existing}: permission denied)")


def _refuse_link(path: Path) -> None:
    """Refuse `path` when it, or a folder above it, is reached through a symbolic link: faceseg's own
    paths are built from a resolved folder, so a link on the way was planted there (UnsafePathError)."""
    ancestor = path
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if os.path.islink(ancestor) or os.path.realpath(ancestor) != str(ancestor):
        real = Path(os.path.realpath(ancestor))
        link = next((p for p in [ancestor, *ancestor.parents] if p.is_symlink()), ancestor)
        raise UnsafePathError(f"{path}: {link} is a symbolic link (to {real if link == ancestor else os.readlink(link)}); "
                              "faceseg does not write or delete through links inside a folder it was given")


def _mkdirs(path: Path) -> None:
    _refuse_link(path)
    path.mkdir(parents=True, exist_ok=True)


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
