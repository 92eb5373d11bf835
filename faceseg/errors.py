"""Errors that come from the user's input or disk, not from a bug: the CLI prints them in one line.

Every faceseg error of that kind (BadFileError, DatasetError, PrepareError, ...) is a ValueError;
OSError covers missing, unreadable or full disks and folders.
"""
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError)
