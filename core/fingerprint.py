"""File fingerprints: what identifies a file's contents cheaply (path, size, modification time), for cache keys."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def file_stamp(path: str | os.PathLike, relative_to: str | os.PathLike | None = None) -> str:
    """``PATH|SIZE|MTIME_NS`` of a file; ``PATH`` is resolved, or relative to ``relative_to`` when given.

    A file rewritten in place changes its size or mtime, so its stamp changes; reading the contents is not needed.
    """
    path = Path(path)
    stat = path.stat()
    name = path.relative_to(relative_to) if relative_to is not None else path.resolve()
    return f"{name}|{stat.st_size}|{stat.st_mtime_ns}"


def folder_stamps(folder: str | os.PathLike) -> Iterator[str]:
    """:func:`file_stamp` of every file under ``folder`` (paths relative to it), in sorted path order."""
    folder = Path(folder)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        yield file_stamp(path, relative_to=folder)
