"""Errors that come from the user's input, files or cluster, not from a bug: the CLI prints them in one line.

Every such error is a `FacesegError` (each module has its own subclass: ConfigError, DatasetError,
BadFileError, ModelError, ...). OSError covers missing, unreadable or full disks and folders. Anything
else is a bug and keeps its traceback.
"""

SHOWN_CHARS = 60     # of a user's value quoted in a message: a 400-digit number or a pasted file is not echoed


class FacesegError(ValueError):
    """A problem with what the user gave faceseg; the message names the file, key or flag, and the reason."""


USER_ERRORS: tuple[type[Exception], ...] = (FacesegError, OSError)


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """repr(value), cut to its first `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
