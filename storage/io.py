"""Durable file writes, file and tree digests, and the one Parquet error mapping.

Every file structkd writes goes through :func:`atomic_write`: a hidden temporary name in the
final directory (same filesystem, so the rename is atomic), fsync, rename, then an fsync of the
directory so the rename itself survives a crash. A reader sees the old file or the new one,
never half of one. A stage output that is a directory of files (prepared corpus, model
directory) is built in :func:`staging_dir` and swapped in whole by :func:`replace_dir`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from structkd.errors import StructkdError

INVALID_PARQUET = "not a valid Parquet file (truncated or corrupt)"
_CHUNK = 1 << 20


def temp_path(path: Path) -> Path:
    """Hidden temporary name next to ``path`` (same filesystem, so the final rename is atomic),
    unique per process and thread so concurrent writers never share one."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where it cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write_fn: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``write_fn(file)``: temporary name, fsync, rename, directory fsync.

    The parent directory is created if needed. On any failure the temporary file is removed and
    the exception propagates unchanged (callers map ``OSError`` to their own message), so an old
    file at ``path`` stays untouched.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def staging_dir(final: Path) -> Path:
    """Where a directory that replaces ``final`` as a whole is built (hidden, same parent)."""
    return final.with_name(f".{final.name}.staged.tmp")


def replace_dir(staged: Path, final: Path) -> None:
    """Swap the complete directory ``staged`` in for ``final`` (two renames in one parent).

    Readers see the old directory or the new one, never a mix or a part of one: a kill between
    the renames leaves no ``final`` (the stage reruns), and the old one under a hidden name that
    the next swap removes.
    """
    old = final.with_name(f".{final.name}.old.tmp")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staged.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(path: Path) -> str:
    """sha256 of a file, or of a directory tree (relative paths + file digests, sorted).

    Hidden files and directories (locks, temporaries) are skipped, so the digest changes only
    when content does.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise StructkdError(f"{path}: not found (cannot compute its digest)")
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path)
        if file.is_file() and not any(part.startswith(".") for part in rel.parts):
            digest.update(f"{rel.as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def parquet_errors(path: Path) -> Iterator[None]:
    """Turn a missing or unreadable Parquet file into one StructkdError naming it."""
    try:
        yield
    except FileNotFoundError as e:
        raise StructkdError(f"{path}: file not found") from e
    except (pa.ArrowInvalid, OSError) as e:
        raise StructkdError(f"{path}: {INVALID_PARQUET}") from e
