"""What one partner's SFTP session may do on the embedded server: the file-system view of its root.

The upload rules of :mod:`.embedded` are enforced here, request by request: writes to a final name go to a
temporary name and are published on the client's CLOSE (fsynced, never replacing an existing file), complete
files are immutable, only the pickup folders allow removal, and no path leaves the partner's root.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import os
import posixpath
import stat
import sys
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import asyncssh

from sftp_pipeline.errors import NO_SPACE_ERRNOS
from sftp_pipeline.folders import HOSTED_DIRS, PICKUP_DIRS
from sftp_pipeline.names import TEMP_PREFIX, TEMP_SUFFIX, is_safe_name, is_temporary

if TYPE_CHECKING:
    from sftp_pipeline.server.embedded import EmbeddedServer

log = logging.getLogger(__name__)

# Why 0750: the service account and its group (operators) read; partners never share a Unix user.
DIR_MODE = 0o750
# Why 0640: delivered documents are read by the service and its group, written by nobody after delivery.
FILE_MODE = 0o640
# What link(2) says on file systems without hard links (some network and FUSE mounts).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
# The caller that marks a close as the client's own CLOSE request (see _PartnerSFTP.close).
_EXPLICIT_CLOSE_CALLER = "_process_close"


def _temp_name(name: str) -> str:
    return f"{TEMP_PREFIX}{name}{TEMP_SUFFIX}"


def _decode(path: bytes) -> str:
    try:
        return path.decode("utf-8")
    except UnicodeDecodeError:
        raise asyncssh.SFTPInvalidFilename("file names must be UTF-8") from None


def _raw(file_obj: object) -> io.FileIO:
    """The handles this server opens are unbuffered files (``os.fdopen(fd, mode, buffering=0)``)."""
    return cast(io.FileIO, file_obj)


@dataclass(slots=True)
class _Upload:
    """An open handle that writes a file; ``final`` is set when closing it should publish it."""

    partner: str
    temp: bytes
    final: bytes | None
    remote: str
    failed: bool = False  # a write failed (the file system is full): never publish, discard the partial file


class _PartnerSFTP(asyncssh.SFTPServer):
    """One SFTP session of one partner, confined to that partner's root."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], owner: EmbeddedServer) -> None:
        self._partner: str = chan.get_extra_info("username")
        root = owner.partner_root(self._partner)
        super().__init__(chan, chroot=os.fsencode(root))
        assert self._chroot is not None
        self._root: bytes = self._chroot
        self._owner = owner
        self._uploads: dict[object, _Upload] = {}

    # ---- paths -------------------------------------------------------------------------------------

    def map_path(self, path: bytes) -> bytes:
        """Clamp to the root (asyncssh), then refuse anything whose resolution leaves it (symlinks)."""
        local: bytes = super().map_path(path)
        real = os.path.realpath(local)
        if real != self._root and not real.startswith(self._root + b"/"):
            log.warning(
                "partner %s: refused path %r: it resolves outside the partner root",
                self._partner,
                path.decode("utf-8", "replace"),
            )
            raise asyncssh.SFTPPermissionDenied("path leads outside your directory")
        return local

    def _relative(self, local: bytes) -> str:
        return os.fsdecode(local[len(self._root) :]) or "/"

    def _top_dir(self, local: bytes) -> str:
        """The first component below the root (``inbox`` for ``/inbox/x``), or '' for the root itself."""
        rel = local[len(self._root) :].lstrip(b"/")
        parent = posixpath.dirname(rel)
        return os.fsdecode(parent.split(b"/", 1)[0]) if parent else ""

    def _is_busy(self, local: bytes) -> bool:
        return local in self._owner.busy

    def _take_over(self, temp: bytes) -> None:
        """Abandon another session's open upload to the client-managed temporary ``temp``, so this one can
        restart it.

        Only the partner reaches its own temporary names, and a client that writes a temporary name itself
        (then renames it) is restarting its own upload when a second session opens or removes that name:
        our client uploads one transfer from one worker at a time (claims are idempotent). A black hole
        (no FIN, no RST) leaves the dead session open here until the keepalive gives up minutes later;
        refusing the retry until then would leave the document pending for a whole schedule interval.
        Uploads to a final name (the server's own temporary) keep the one-writer rule.
        """
        holder = self._owner.writers.get(temp)
        if holder is None or holder[0] is self:
            return
        session, file_obj = holder
        upload = session._uploads.get(file_obj)
        if upload is None or upload.final is not None:
            return
        del session._uploads[file_obj]
        log.warning(
            "partner %s: a new session restarts the upload of %s; the session that was writing it is "
            "abandoned (its client reconnected)",
            self._partner,
            upload.remote,
        )
        session._abandon(file_obj, upload)

    # ---- opening, writing, closing ----------------------------------------------------------------

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        local = self.map_path(path)
        name = _decode(posixpath.basename(local))
        writing = bool(pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND))
        if not writing:
            return self._open_fd(local, os.O_RDONLY, "rb")
        read_too = bool(pflags & asyncssh.FXF_READ)
        if is_temporary(name):
            return self._open_temporary(local, pflags, read_too)
        return self._open_upload(local, name, pflags, read_too)

    def open56(self, path: bytes, desired_access: int, flags: int, attrs: asyncssh.SFTPAttrs) -> object:
        raise asyncssh.SFTPOpUnsupported("only SFTP version 3 is served")

    def _open_fd(self, local: bytes, flags: int, mode: str) -> object:
        fd = os.open(local, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise asyncssh.SFTPPermissionDenied("only regular files can be opened")
            return os.fdopen(fd, mode, buffering=0)
        except BaseException:
            os.close(fd)
            raise

    def _open_temporary(self, local: bytes, pflags: int, read_too: bool) -> object:
        """A temporary name the client manages itself (it will rename it when complete)."""
        self._take_over(local)
        if self._is_busy(local):
            raise asyncssh.SFTPFailure("this temporary file is being written by another session")
        flags = os.O_RDWR if read_too else os.O_WRONLY
        flags |= os.O_APPEND if pflags & asyncssh.FXF_APPEND else 0
        flags |= os.O_CREAT if pflags & asyncssh.FXF_CREAT else 0
        flags |= os.O_TRUNC if pflags & asyncssh.FXF_TRUNC else 0
        flags |= os.O_EXCL if pflags & asyncssh.FXF_EXCL else 0
        file_obj = self._open_fd(local, flags, "rb+" if read_too else "wb")
        self._track(file_obj, _Upload(self._partner, local, None, self._relative(local)))
        return file_obj

    def _open_upload(self, local: bytes, name: str, pflags: int, read_too: bool) -> object:
        """A final name: write to ``.name.part`` beside it; CLOSE publishes it."""
        if not is_safe_name(name):
            raise asyncssh.SFTPInvalidFilename(
                f"{name!r} is not an allowed file name: use letters, digits, '.', '_' and '-'"
            )
        remote = self._relative(local)
        if os.path.lexists(local):
            log.warning("partner %s: refused overwrite of delivered %s", self._partner, remote)
            raise asyncssh.SFTPPermissionDenied(f"{remote} is already delivered; delivered files are immutable")
        if not pflags & asyncssh.FXF_CREAT:
            raise asyncssh.SFTPNoSuchFile(f"{remote} does not exist")
        temp = posixpath.join(posixpath.dirname(local), os.fsencode(_temp_name(name)))
        if self._is_busy(local) or self._is_busy(temp):
            raise asyncssh.SFTPFailure(f"an upload to {remote} is already in progress")
        flags = (os.O_RDWR if read_too else os.O_WRONLY) | os.O_CREAT | os.O_TRUNC
        file_obj = self._open_fd(temp, flags, "rb+" if read_too else "wb")
        self._track(file_obj, _Upload(self._partner, temp, local, remote))
        self._owner.busy.add(local)
        return file_obj

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        """Write a block; a full file system fails the upload for good (see :meth:`close`)."""
        try:
            fh = _raw(file_obj)
            fh.seek(offset)
            return fh.write(data) or 0
        except OSError as exc:
            upload = self._uploads.get(file_obj)
            if upload is None or exc.errno not in NO_SPACE_ERRNOS:
                raise
            upload.failed = True
            log.error(
                "partner %s: no space left on device for %s (%s); the upload fails and its partial file is "
                "discarded; free space in %s",
                upload.partner,
                upload.remote,
                exc.strerror,
                os.fsdecode(posixpath.dirname(upload.temp)),
            )
            raise asyncssh.SFTPNoSpaceOnFilesystem(
                f"no space left on device for {upload.remote} on this server; nothing was delivered, try again later"
            ) from exc

    def _track(self, file_obj: object, upload: _Upload) -> None:
        self._uploads[file_obj] = upload
        self._owner.busy.add(upload.temp)
        self._owner.writers[upload.temp] = (self, file_obj)

    def close(self, file_obj: object) -> Awaitable[None] | None:
        """Close a handle; publish an upload only when the client itself asked to close it.

        asyncssh calls this both for the client's CLOSE request and, when a
        session ends, for every handle still open. Only the first means the
        upload is complete, and asyncssh gives no flag for it, so the caller
        is checked (tests/integration/test_server_upload.py guards this).
        """
        upload = self._uploads.pop(file_obj, None)
        if upload is None:
            _raw(file_obj).close()
            return None
        explicit = sys._getframe(1).f_code.co_name == _EXPLICIT_CLOSE_CALLER
        if upload.failed:
            self._discard(file_obj, upload)
            return None
        if not explicit:
            self._abandon(file_obj, upload)
            return None
        return self._finish(file_obj, upload)

    def _abandon(self, file_obj: object, upload: _Upload) -> None:
        size = os.fstat(_raw(file_obj).fileno()).st_size
        _raw(file_obj).close()
        self._release(upload)
        if upload.final is not None:
            log.warning(
                "partner %s: upload of %s ended without CLOSE after %d bytes; kept as %s",
                upload.partner,
                upload.remote,
                size,
                self._relative(upload.temp),
            )

    def _discard(self, file_obj: object, upload: _Upload) -> None:
        """An upload whose write failed: drop what it wrote (when the name is ours), publish nothing."""
        _raw(file_obj).close()
        self._release(upload)
        if upload.final is not None:  # a client's own temporary name is the client's to remove or reuse
            with contextlib.suppress(FileNotFoundError):
                os.unlink(upload.temp)

    def _release(self, upload: _Upload) -> None:
        self._owner.busy.discard(upload.temp)
        self._owner.writers.pop(upload.temp, None)
        if upload.final is not None:
            self._owner.busy.discard(upload.final)

    async def _finish(self, file_obj: object, upload: _Upload) -> None:
        completed_at = self._owner.clock()
        try:
            await asyncio.to_thread(os.fsync, _raw(file_obj).fileno())
            size = os.fstat(_raw(file_obj).fileno()).st_size
            _raw(file_obj).close()
            if upload.final is not None:
                self._publish(upload.temp, upload.final)
        finally:
            self._release(upload)
        if upload.final is not None:
            self._owner.uploaded(upload.partner, upload.final, upload.remote, size, completed_at)

    def _publish(self, temp: bytes, final: bytes) -> None:
        """Move ``temp`` to ``final`` atomically, never replacing a file already there."""
        try:
            os.link(temp, final)  # fails with EEXIST instead of replacing: delivered files are immutable
        except FileExistsError:
            raise asyncssh.SFTPPermissionDenied(
                f"{self._relative(final)} is already delivered; delivered files are immutable"
            ) from None
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            # A file system without hard links: check, then rename (the busy set keeps our own sessions out).
            if os.path.lexists(final):
                raise asyncssh.SFTPPermissionDenied(
                    f"{self._relative(final)} is already delivered; delivered files are immutable"
                ) from None
            os.rename(temp, final)
        else:
            os.unlink(temp)
        directory = os.open(posixpath.dirname(final), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        if file_obj not in self._uploads:
            raise asyncssh.SFTPPermissionDenied("delivered files are immutable")
        super().fsetstat(file_obj, _size_and_times(attrs))

    # ---- names -------------------------------------------------------------------------------------

    def _require_temporary(self, local: bytes, action: str) -> None:
        if not is_temporary(_decode(posixpath.basename(local))):
            remote = self._relative(local)
            log.warning("partner %s: refused %s of delivered %s", self._partner, action, remote)
            raise asyncssh.SFTPPermissionDenied(f"cannot {action} {remote}: delivered files are immutable")

    def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        local = self.map_path(path)
        self._require_temporary(local, "change")
        super().setstat(path, _size_and_times(attrs))

    def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        self.setstat(path, attrs)

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        self._rename(oldpath, newpath)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        self._rename(oldpath, newpath)  # same rules: a delivered file is never replaced

    def _rename(self, oldpath: bytes, newpath: bytes) -> None:
        old, new = self.map_path(oldpath), self.map_path(newpath)
        self._require_temporary(old, "rename")
        if not stat.S_ISREG(os.lstat(old).st_mode):
            raise asyncssh.SFTPPermissionDenied(f"{self._relative(old)}: only regular files can be renamed")
        if self._is_busy(old) or self._is_busy(new):
            raise asyncssh.SFTPFailure(f"{self._relative(old)} is still being written")
        new_name = _decode(posixpath.basename(new))
        if is_temporary(new_name):
            if os.path.lexists(new):
                raise asyncssh.SFTPFileAlreadyExists(f"{self._relative(new)} already exists")
            os.rename(old, new)
            return
        if not is_safe_name(new_name):
            raise asyncssh.SFTPInvalidFilename(
                f"{new_name!r} is not an allowed file name: use letters, digits, '.', '_' and '-'"
            )
        completed_at = self._owner.clock()
        if os.path.lexists(new):
            log.warning("partner %s: refused rename over delivered %s", self._partner, self._relative(new))
            raise asyncssh.SFTPPermissionDenied(
                f"{self._relative(new)} is already delivered; delivered files are immutable"
            )
        size = os.lstat(old).st_size
        self._publish(old, new)
        self._owner.uploaded(self._partner, new, self._relative(new), size, completed_at)

    def remove(self, path: bytes) -> None:
        local = self.map_path(path)
        self._take_over(local)
        if self._is_busy(local):
            raise asyncssh.SFTPFailure(f"{self._relative(local)} is being written")
        name = _decode(posixpath.basename(local))
        if not is_temporary(name) and self._top_dir(local) not in PICKUP_DIRS:
            remote = self._relative(local)
            log.warning("partner %s: refused removal of delivered %s", self._partner, remote)
            raise asyncssh.SFTPPermissionDenied(
                f"cannot remove {remote}: only files in {', '.join(sorted(PICKUP_DIRS))} may be removed"
            )
        os.remove(local)
        log.info("partner %s: removed %s", self._partner, self._relative(local))

    def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        os.mkdir(self.map_path(path), DIR_MODE)

    def rmdir(self, path: bytes) -> None:
        local = self.map_path(path)
        if local == self._root or self._relative(local).strip("/") in HOSTED_DIRS:
            raise asyncssh.SFTPPermissionDenied(f"{self._relative(local)} is a standard directory")
        os.rmdir(local)

    def readlink(self, path: bytes) -> bytes:
        raise asyncssh.SFTPPermissionDenied("symbolic links are not served")

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        log.warning("partner %s: refused symlink %r -> %r", self._partner, newpath, oldpath)
        raise asyncssh.SFTPPermissionDenied("creating links is not allowed")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        log.warning("partner %s: refused hard link %r -> %r", self._partner, newpath, oldpath)
        raise asyncssh.SFTPPermissionDenied("creating links is not allowed")


def _size_and_times(attrs: asyncssh.SFTPAttrs) -> asyncssh.SFTPAttrs:
    """Only size and times may be set by a partner: never owner, group or permissions."""
    return asyncssh.SFTPAttrs(
        size=attrs.size, atime=attrs.atime, atime_ns=attrs.atime_ns, mtime=attrs.mtime, mtime_ns=attrs.mtime_ns
    )
