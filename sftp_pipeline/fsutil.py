"""File-system primitives every step shares: hash a file, make a rename durable, move without a partial file."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
from pathlib import Path

# Why 1 MiB: hashing and copying at disk speed with a flat memory profile.
CHUNK = 1024 * 1024
# Why an hour: a live writer holds its temporary file for milliseconds (a mail, a report); one that old was left
# by a process killed mid-write, and removing it cannot race a writer still at work.
STALE_TEMP_SECONDS = 3600.0


def sha256_file(path: Path, *, fsync: bool = False) -> tuple[str, int]:
    """(SHA-256 hex, size) of ``path``, read in chunks; ``fsync`` also makes its contents durable."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(fh.fileno())
    return digest.hexdigest(), size


def fsync_dir(directory: Path) -> None:
    """Make a rename (or a new file) in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_into(src: Path, dst: Path, *, durable: bool = True) -> None:
    """Move ``src`` to ``dst`` durably, without ever leaving a partial ``dst``.

    Same filesystem: one rename (a symlink moves as a link). Across filesystems (a drop folder on a network
    share): copy to a temporary name, fsync, rename into place, then remove the source — a crash in between
    leaves both, never neither, and the caller's recovery removes the source.

    ``durable=False`` skips the directory fsync after a same-filesystem rename, for callers that fsync once
    for many moves or whose recovery accepts the file at either name after a crash (a rename is atomic).
    """
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        if src.is_symlink() or not src.is_file():
            raise
        partial = dst.with_name(f".{dst.name}.part")
        try:
            with src.open("rb") as fin, partial.open("wb") as fout:
                shutil.copyfileobj(fin, fout, CHUNK)
                fout.flush()
                os.fsync(fout.fileno())
        except BaseException:
            partial.unlink(missing_ok=True)  # a full disk or a read error: leave no half copy behind
            raise
        os.rename(partial, dst)
        fsync_dir(dst.parent)
        src.unlink()
    else:
        if durable:
            fsync_dir(dst.parent)


def remove_stale_temps(directory: Path, *, now: float | None = None) -> list[Path]:
    """Remove the ``.<name>….tmp`` files a killed writer left in ``directory`` (older than STALE_TEMP_SECONDS)."""
    moment = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if moment - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:
            continue
    return removed
