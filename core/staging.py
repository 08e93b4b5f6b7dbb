"""Write a file or a folder beside its destination and move it into place only once it is complete.

Exports and indexes are folders of several files; a run that stops half way must leave either the old folder or
the new one, never a mix. :func:`staged_folder` yields a fresh hidden folder next to ``out``; when the block
finishes, the folder is flushed to the disk and renamed to ``out`` (an old ``out`` is moved aside first and
removed last); when the block raises, the hidden folder is removed and ``out`` is untouched.
:func:`write_text_atomic` does the same for one text file (results, scores, pages).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's contents to the disk (a folder's: its entries, which makes a rename in it
    durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in [*sorted(p for p in folder.rglob("*") if p.is_file()), folder]:
        fsync_path(path)


@contextmanager
def staged_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``out`` that becomes ``out`` when the block completes (see the module)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the published folder reads like any other
        _fsync_tree(staging)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(staging, out)
        fsync_path(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file of this writer's own beside it, fsynced and renamed
    into place: ``path`` holds the old text or the new one, never a part, also with several writers at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the file reads like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
