"""The local transport: a directory tree our own SFTP server serves to one partner.

Same contract as SFTP: an upload is written to ``.<name>.part``, fsynced,
size-checked and then linked to its final name (``os.link`` fails if the name
exists, so nothing is ever replaced) before the temporary name goes away.
Names are validated with :func:`sftp_pipeline.names.is_safe_name` and
directories must stay inside the root.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat as stat_mod
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from sftp_pipeline import config, errors, names
from sftp_pipeline.faults import crash_point
from sftp_pipeline.folders import HOSTED_DIRS
from sftp_pipeline.fsutil import fsync_dir
from sftp_pipeline.transport import Progress, PutResult, RemoteEntry, SessionInfo, Tee, Transport

log = logging.getLogger(__name__)

# Why 1 MiB: large enough that the thread hop per chunk is negligible, small enough for flat memory.
CHUNK_SIZE = 1024 * 1024
# The directories a partner's root always has (created on first use).
STANDARD_DIRS = frozenset(HOSTED_DIRS)


class LocalTransport(Transport):
    """:class:`Transport` onto ``root`` (e.g. ``Config.hosted_root(partner_id)``)."""

    def __init__(self, root: Path, *, partner_id: str, dirs: config.RemoteDirs | None = None) -> None:
        self._root = Path(root).absolute()
        self._partner = partner_id
        self._standard = STANDARD_DIRS | (frozenset(dirs.model_dump().values()) if dirs is not None else frozenset())
        self.session = SessionInfo()

    def __repr__(self) -> str:
        return f"LocalTransport(partner={self._partner!r}, root={str(self._root)!r})"

    @property
    def root(self) -> Path:
        return self._root

    async def put_atomic(self, local: Path, directory: str, name: str, progress: Progress | None = None) -> PutResult:
        folder = self._dir(directory, create=True)
        final = self._file(folder, name)
        temp = folder / f"{names.TEMP_PREFIX}{name}{names.TEMP_SUFFIX}"
        remote_path = f"{directory}/{name}"
        try:
            size = local.stat().st_size
            existing = _regular_size(final)
            if existing is not None:
                if existing == size:
                    return PutResult(remote_path=remote_path, size=size, already_present=True)
                raise errors.PermanentTransportError(
                    f"partner {self._partner!r}: {final} already exists with {existing} bytes, not {size}; "
                    "it was not overwritten — find out what that file is before retrying"
                )
            temp.unlink(missing_ok=True)
            with local.open("rb") as src, temp.open("xb") as dst:
                copied = await _copy(src, dst, progress)
                crash_point("mid-upload")
                await asyncio.to_thread(os.fsync, dst.fileno())
            if copied != size or temp.stat().st_size != size:
                raise errors.TransientTransportError(
                    f"partner {self._partner!r}: wrote {copied} bytes of {local} ({size} expected) to {temp}; "
                    "the file changed while copying — retry"
                )
            os.link(temp, final)  # fails with EEXIST rather than replacing a file
            temp.unlink()
            await asyncio.to_thread(fsync_dir, folder)
        except errors.TransportError:
            temp.unlink(missing_ok=True)
            raise
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise self._translate(exc, "upload", local if exc.filename == str(local) else final) from exc
        return PutResult(remote_path=remote_path, size=size)

    async def list(self, directory: str) -> list[RemoteEntry]:
        folder = self._dir(directory, create=directory in self._standard)
        found: list[RemoteEntry] = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if names.is_temporary(entry.name) or not names.is_safe_name(entry.name):
                        continue
                    info = entry.stat(follow_symlinks=False)
                    if stat_mod.S_ISREG(info.st_mode):
                        found.append(RemoteEntry(name=entry.name, size=info.st_size, mtime=info.st_mtime))
        except OSError as exc:
            raise self._translate(exc, "list", folder) from exc
        return sorted(found, key=lambda e: e.name)

    async def get(
        self, directory: str, name: str, local: Path, progress: Progress | None = None, *, tee: Tee | None = None
    ) -> int:
        source = self._file(self._dir(directory), name)
        temp = local.with_name(f"{names.TEMP_PREFIX}{local.name}{names.TEMP_SUFFIX}")
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as src, temp.open("wb") as dst:
                if not stat_mod.S_ISREG(os.fstat(src.fileno()).st_mode):
                    raise errors.PermanentTransportError(f"partner {self._partner!r}: {source} is not a regular file")
                size = await _copy(src, dst, progress, tee)
                crash_point("mid-download")
                await asyncio.to_thread(os.fsync, dst.fileno())
            os.replace(temp, local)
            await asyncio.to_thread(fsync_dir, local.parent)
        except errors.TransportError:
            temp.unlink(missing_ok=True)
            raise
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise self._translate(exc, "download", source) from exc
        return size

    async def remove(self, directory: str, name: str) -> None:
        path = self._file(self._dir(directory), name)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._translate(exc, "remove", path) from exc

    async def rename(self, directory: str, old: str, new: str) -> None:
        folder = self._dir(directory)
        source, target = self._file(folder, old), self._file(folder, new)
        try:
            os.link(source, target, follow_symlinks=False)
            source.unlink()
        except FileExistsError as exc:
            raise errors.PermanentTransportError(
                f"partner {self._partner!r}: cannot rename {source} to {target}: the target exists "
                "and is never replaced"
            ) from exc
        except OSError as exc:
            raise self._translate(exc, "rename", source) from exc

    async def close(self) -> None:
        return None

    # -- helpers --------------------------------------------------------------------------------

    def _dir(self, directory: str, *, create: bool = False) -> Path:
        """Resolve ``directory`` under the root, refusing anything that could leave it."""
        parts = PurePosixPath(directory).parts
        if (
            not parts
            or PurePosixPath(directory).is_absolute()
            or any(p in ("..", ".") or "\x00" in p or "\\" in p for p in parts)
        ):
            raise errors.PermanentTransportError(
                f"partner {self._partner!r}: directory {directory!r} must be a relative path inside "
                f"{self._root} without '..'"
            )
        folder = self._root.joinpath(*parts)
        if create and directory in self._standard:
            folder.mkdir(parents=True, exist_ok=True)
        real_root, real = os.path.realpath(self._root), os.path.realpath(folder)
        if os.path.commonpath([real_root, real]) != real_root:
            raise errors.PermanentTransportError(
                f"partner {self._partner!r}: directory {directory!r} leaves {self._root} (symlink?)"
            )
        return folder

    def _file(self, folder: Path, name: str) -> Path:
        if not names.is_safe_name(name):
            raise errors.PermanentTransportError(
                f"partner {self._partner!r}: refusing the unsafe file name {name!r} in {folder}"
            )
        return folder / name

    def _translate(self, exc: OSError, what: str, path: Path | str) -> errors.TransportError:
        subject = f"partner {self._partner!r}: {what} of {path} failed: {exc.strerror or exc}"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return errors.PermanentTransportError(f"{subject}; check that the directory exists")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return errors.PermanentTransportError(f"{subject}; check the permissions of {self._root}")
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return errors.PermanentTransportError(f"{subject}; free space under {self._root}")
        return errors.TransientTransportError(subject)


def _regular_size(path: Path) -> int | None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    if not stat_mod.S_ISREG(info.st_mode):
        raise errors.PermanentTransportError(f"{path} exists but is not a regular file")
    return info.st_size


async def _copy(src: BinaryIO, dst: BinaryIO, progress: Progress | None, tee: Tee | None = None) -> int:
    total = 0
    while True:
        chunk = await asyncio.to_thread(src.read, CHUNK_SIZE)
        if not chunk:
            return total
        await asyncio.to_thread(dst.write, chunk)
        if tee is not None:
            await tee(total, chunk)
        total += len(chunk)
        if progress is not None:
            progress(len(chunk))
