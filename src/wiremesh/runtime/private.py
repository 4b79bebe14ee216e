"""Folders and files only their owner can read: the data folder and what wiremesh makes in it.

A mesh's data folder holds its join secret (``mesh.json``), the gateway's development
secret, the broker's messages and every service's data. Whatever wiremesh creates there
is made private explicitly, folders 0700 and files 0600, whatever the process's umask:
a umask only takes bits away, so the modes are set on what was created rather than left
to it (the umask of the whole process is left alone: a service's own files elsewhere are
its business).

SQLite creates a database's ``-wal``, ``-shm`` and ``-journal`` files with the mode of
the database file itself: :func:`private_sqlite` creates the database file first, so
those are private too.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = ["FILE_MODE", "FOLDER_MODE", "private_file", "private_folder", "private_sqlite"]

FOLDER_MODE = 0o700
FILE_MODE = 0o600
#: the files SQLite keeps beside a database, each with the database file's mode
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_folder(path: Path, *, tighten: bool = False) -> Path:
    """Create ``path`` and its missing parents, each with mode 0700, and return it.

    A folder that already exists keeps its mode, unless ``tighten``: then ``path`` itself
    (not its parents) loses every permission of its group and others when this user owns
    it (the supervisor does so for its data folder)."""
    missing: list[Path] = []
    folder = path
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=FOLDER_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # made meanwhile by another process: its mode is its maker's
        os.chmod(folder, FOLDER_MODE)  # mkdir's mode went through the umask
    if tighten and path not in missing:
        _tighten(path, FOLDER_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 unless it exists (an existing file of this
    user's with more permissions is narrowed to 0600); its folder is made as by
    :func:`private_folder`."""
    private_folder(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags, FILE_MODE)
    except FileExistsError:
        _tighten(path, FILE_MODE)
        return path
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(descriptor, FILE_MODE)  # the umask may have taken the owner's bits
    finally:
        os.close(descriptor)
    return path


def private_sqlite(path: Path) -> Path:
    """Prepare the SQLite database ``path`` so that it and its companion files are
    private: its folder, the database file and any ``-wal``/``-shm``/``-journal`` file
    left by an older run."""
    private_file(path)
    for suffix in SQLITE_COMPANIONS:
        _tighten(path.with_name(path.name + suffix), FILE_MODE)
    return path


def _tighten(path: Path, mode: int) -> None:
    """Narrow ``path`` to ``mode`` when this user owns it and others have more."""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        info = path.lstat()
        owner = os.getuid() if hasattr(os, "getuid") else info.st_uid
        if stat.S_ISLNK(info.st_mode) or info.st_uid != owner:
            return
        if stat.S_IMODE(info.st_mode) & ~mode:
            os.chmod(path, mode)
