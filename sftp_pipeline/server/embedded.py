"""The embedded SFTP server (asyncssh) a party runs so its partners can push to it.

One login per partner: the user name is the partner id, authentication is by
public key only (the partner's ``ssh_login_keys``), and the only thing a
session may do is SFTP inside ``config.hosted_root(partner_id)``.

Upload rules (what makes a delivered document trustworthy):

* A write to a final name ``dir/name`` goes to ``dir/.name.part``; on the
  client's CLOSE the file is fsynced and moved to ``dir/name`` without ever
  replacing an existing file, and ``on_upload(partner, path, completed_at)``
  fires with ``completed_at`` taken at that moment (the receipt's
  ``received_at``). A client that writes a temporary name itself and renames
  it (our own client does) fires ``on_upload`` on the rename instead.
* A connection that drops mid-upload leaves only the temporary file.
* A complete file is immutable: never overwritten, renamed or truncated; it
  may only be removed from the pickup directories (``outbox``,
  ``receipts-out``), where we leave documents for the partner.
* Paths cannot leave the partner's root: ``..`` and absolute paths are
  clamped by asyncssh's chroot, symlinks cannot be created, and a path whose
  resolution leads outside the root (a symlink planted by someone else) is
  refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import io
import logging
import os
import posixpath
import signal
import stat
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import asyncssh

from sftp_pipeline.clock import Clock, rfc3339, utc_now
from sftp_pipeline.config import Config, Server
from sftp_pipeline.errors import NO_SPACE_ERRNOS, ConfigError, KeyFileError
from sftp_pipeline.folders import HOSTED_DIRS, PICKUP_DIRS
from sftp_pipeline.names import TEMP_PREFIX, TEMP_SUFFIX, is_safe_name, is_temporary
from sftp_pipeline.transport import sshalgs

UploadHook = Callable[[str, Path, datetime], Awaitable[None] | None]

log = logging.getLogger(__name__)

# Why 0750: the service account and its group (operators) read; partners never share a Unix user.
DIR_MODE = 0o750
# Why 0640: delivered documents are read by the service and its group, written by nobody after delivery.
FILE_MODE = 0o640
# Why 30 s: a key-only login completes in well under a second; a slow half-open login only holds a slot.
LOGIN_TIMEOUT = 30.0
# Why 30 s × 3: a vanished partner frees its session slot within ~2 minutes, well inside any SLA.
KEEPALIVE_INTERVAL = 30.0
KEEPALIVE_COUNT_MAX = 3
# Only SFTP version 3: what OpenSSH, paramiko and asyncssh clients speak; v5/v6 opens add nothing we want.
SFTP_VERSION = 3
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


class _PartnerConnection(asyncssh.SSHServer):
    """One SSH connection: key-only login as a configured partner, and nothing but SFTP."""

    def __init__(self, owner: EmbeddedServer) -> None:
        self._owner = owner
        self._conn: asyncssh.SSHServerConnection | None = None
        self._peer = "?"
        self._user = ""
        self._fingerprint = ""
        self.counted = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self._peer = f"{peer[0]}:{peer[1]}"
        self._owner.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner.connections.discard(self._conn)
        if self.counted:
            self._owner.sessions[self._user] -= 1
            self.counted = False
            log.info("partner %s: disconnected from %s%s", self._user, self._peer, f" ({exc})" if exc else "")

    def begin_auth(self, username: str) -> bool:
        self._user = username
        if username not in self._owner.login_keys:
            why = "has no ssh_login_keys" if username in self._owner.partner_ids else "is not a configured partner"
            log.warning("refused login from %s: %r %s", self._peer, username, why)
        elif self._owner.sessions.get(username, 0) >= self._owner.max_sessions:
            self._refuse_busy()
        return True  # always authenticate: returning False would let the user in without a key

    def _refuse_busy(self) -> None:
        log.warning(
            "refused login of partner %s from %s: it has its %d allowed session(s) open "
            "(server.max_sessions_per_partner)",
            self._user,
            self._peer,
            self._owner.max_sessions,
        )
        assert self._conn is not None
        self._conn.disconnect(
            asyncssh.DISC_TOO_MANY_CONNECTIONS,
            f"too many sessions for {self._user}: at most {self._owner.max_sessions} at once; retry later",
        )

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        allowed = self._owner.login_keys.get(username, frozenset())
        if key.public_data in allowed:
            self._fingerprint = key.get_fingerprint()
            return True
        if username in self._owner.login_keys:
            log.warning(
                "refused key %s for partner %s from %s: not in its ssh_login_keys",
                key.get_fingerprint(),
                username,
                self._peer,
            )
        return False

    def auth_completed(self) -> None:
        assert self._conn is not None
        if self._owner.sessions.get(self._user, 0) >= self._owner.max_sessions:
            self._refuse_busy()
            return
        self._owner.sessions[self._user] = self._owner.sessions.get(self._user, 0) + 1
        self.counted = True
        log.info(
            "partner %s: logged in from %s with key %s (cipher %s, client %s)",
            self._user,
            self._peer,
            self._fingerprint,
            self._conn.get_extra_info("recv_cipher"),
            self._conn.get_extra_info("client_version"),
        )

    # Everything but the SFTP subsystem is refused; these say so explicitly and leave a trace.
    def _refuse(self, what: str) -> bool:
        log.warning("partner %s: refused %s from %s (SFTP only)", self._user, what, self._peer)
        return False

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        return self._refuse(f"port forwarding to {dest_host}:{dest_port}")

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return self._refuse(f"remote port forwarding on {listen_host}:{listen_port}")

    def unix_connection_requested(self, dest_path: str) -> bool:
        return self._refuse("unix socket forwarding")

    def unix_server_requested(self, listen_path: str) -> bool:
        return self._refuse("unix socket listening")

    def tun_requested(self, unit: int | None) -> bool:
        return self._refuse("tun forwarding")

    def tap_requested(self, unit: int | None) -> bool:
        return self._refuse("tap forwarding")


class EmbeddedServer:
    """The SFTP server a party runs to receive from its partners. See the module docstring."""

    def __init__(
        self,
        config: Config,
        *,
        host_key: Path | None = None,
        on_upload: UploadHook | None = None,
        clock: Clock = utc_now,
        port: int | None = None,
        listen: Sequence[str] | None = None,
    ) -> None:
        server = config.server or Server()
        self._config = config
        self._host_key_path = host_key or config.keys.host_key
        self._on_upload = on_upload
        self.clock = clock
        self._port_wanted = server.port if port is None else port
        self._listen = list(listen if listen is not None else server.listen)
        self.max_sessions = server.max_sessions_per_partner
        self.partner_ids = frozenset(config.partners)
        self.login_keys: dict[str, frozenset[bytes]] = {}
        self.sessions: dict[str, int] = {}
        self.busy: set[bytes] = set()  # local paths being written: no second writer, no rename, no removal
        self.writers: dict[bytes, tuple[_PartnerSFTP, object]] = {}  # temporary path → the session writing it
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._hooks: set[asyncio.Future[Any]] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._port = 0
        self._closed = False

    # ---- life cycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check keys, create the partner roots and bind; ``port`` tells the bound port."""
        if self._acceptor is not None:
            return
        host_keys = self._load_host_key()
        self.login_keys = self._load_login_keys()
        for partner_id in self._config.partners:
            self._make_root(partner_id)
        try:
            self._acceptor = await asyncssh.listen(
                self._listen,
                self._port_wanted,
                server_factory=lambda: _PartnerConnection(self),
                server_host_keys=host_keys,
                sftp_factory=lambda chan: _PartnerSFTP(chan, self),
                sftp_version=SFTP_VERSION,
                allow_scp=False,
                agent_forwarding=False,
                x11_forwarding=False,
                allow_pty=False,
                gss_host=None,
                config=None,
                kex_algs=list(sshalgs.KEX_ALGS),
                encryption_algs=list(sshalgs.ENCRYPTION_ALGS),
                mac_algs=list(sshalgs.MAC_ALGS),
                compression_algs=list(sshalgs.COMPRESSION_ALGS),
                signature_algs=list(sshalgs.SIGNATURE_ALGS),
                login_timeout=LOGIN_TIMEOUT,
                keepalive_interval=KEEPALIVE_INTERVAL,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
            )
        except OSError as exc:
            where = ", ".join(f"{host}:{self._port_wanted}" for host in self._listen)
            raise ConfigError(
                f"{self._config.path}: the SFTP server cannot listen on {where}: {exc.strerror or exc}; "
                "free the port or change [server] listen/port"
            ) from exc
        self._port = self._acceptor.get_addresses()[0][1]
        log.info(
            "SFTP server listening on %s port %d for %d partner(s); kex %s",
            ", ".join(self._listen),
            self._port,
            len(self.login_keys),
            ", ".join(sshalgs.KEX_ALGS),
        )

    @property
    def port(self) -> int:
        if self._acceptor is None:
            raise RuntimeError("EmbeddedServer.port is known only after start()")
        return self._port

    async def close(self) -> None:
        """Stop listening, end every session (open uploads stay temporary) and wait for upload hooks."""
        if self._closed:
            return
        self._closed = True
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
        connections = list(self.connections)
        for conn in connections:
            conn.close()
        for conn in connections:
            await conn.wait_closed()
        if self._hooks:
            await asyncio.gather(*self._hooks, return_exceptions=True)
        log.info("SFTP server stopped")

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        """Serve until cancelled or sent SIGTERM/SIGINT, then close cleanly."""
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)
                installed.append(signum)
        try:
            await stop.wait()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await self.close()

    # ---- set-up ------------------------------------------------------------------------------------

    def partner_root(self, partner_id: str) -> Path:
        return self._config.hosted_root(partner_id)

    def _load_host_key(self) -> list[asyncssh.SSHKeyPair]:
        path = self._host_key_path
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise KeyFileError(
                f"{path}: SFTP server host key not found; create it with "
                f"`ssh-keygen -t ed25519 -N '' -f {path}` or set keys.host_key"
            ) from None
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read the SFTP server host key: {exc.strerror}") from exc
        if mode & 0o077:
            raise KeyFileError(
                f"{path}: the SFTP server host key is readable by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
            )
        try:
            key = asyncssh.read_private_key(path)
        except (asyncssh.KeyImportError, OSError, ValueError) as exc:
            raise KeyFileError(
                f"{path}: not a usable unencrypted OpenSSH private key for the SFTP server: {exc}"
            ) from exc
        pairs = list(asyncssh.load_keypairs([key]))
        preferred = [alg.encode("ascii") for alg in sshalgs.HOST_KEY_ALGS]
        for pair in pairs:  # offer only allowed signature algorithms (never ssh-rsa/SHA-1), ours first
            pair.host_key_algorithms = [alg for alg in preferred if alg in pair.host_key_algorithms]
        if not any(pair.host_key_algorithms for pair in pairs):
            raise KeyFileError(
                f"{path}: host key type {key.get_algorithm()} is not allowed "
                f"(allowed: {', '.join(sshalgs.HOST_KEY_ALGS)}); generate an ed25519 key"
            )
        return pairs

    def _load_login_keys(self) -> dict[str, frozenset[bytes]]:
        result: dict[str, frozenset[bytes]] = {}
        for partner_id, partner in self._config.partners.items():
            keys: set[bytes] = set()
            for number, line in enumerate(partner.ssh_login_keys, start=1):
                try:
                    keys.add(asyncssh.import_public_key(line).public_data)
                except (asyncssh.KeyImportError, ValueError) as exc:
                    raise ConfigError(
                        f"{self._config.path}: partners.{partner_id}.ssh_login_keys[{number}] is not a "
                        f"usable OpenSSH public key ({exc}); paste the partner's id_ed25519.pub line"
                    ) from exc
            if keys:
                result[partner_id] = frozenset(keys)
            else:
                log.info("partner %s has no ssh_login_keys: it cannot log in to this server", partner_id)
        return result

    def _make_root(self, partner_id: str) -> None:
        root = self.partner_root(partner_id)
        try:
            for directory in (root, *(root / name for name in HOSTED_DIRS)):
                directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                if directory.is_symlink() or not directory.is_dir():
                    raise ConfigError(f"{directory}: must be a real directory for partner {partner_id}")
                directory.chmod(DIR_MODE)
        except OSError as exc:
            raise ConfigError(
                f"{root}: cannot create the SFTP root of partner {partner_id}: {exc.strerror}; "
                "check [server] root and its permissions"
            ) from exc

    # ---- events ------------------------------------------------------------------------------------

    def uploaded(self, partner_id: str, final: bytes, remote: str, size: int, completed_at: datetime) -> None:
        """A file became complete under its final name: log it and run the hook."""
        path = Path(os.fsdecode(final))
        log.info("partner %s: upload complete %s (%d bytes) at %s", partner_id, remote, size, rfc3339(completed_at))
        if self._on_upload is None:
            return
        try:
            result = self._on_upload(partner_id, path, completed_at)
        except Exception:
            log.exception("on_upload failed for %s from partner %s", remote, partner_id)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(self._await_hook(result, partner_id, remote))
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)

    @staticmethod
    async def _await_hook(result: Awaitable[None], partner_id: str, remote: str) -> None:
        try:
            await result
        except Exception:
            log.exception("on_upload failed for %s from partner %s", remote, partner_id)


__all__ = ["DIR_MODE", "EmbeddedServer", "UploadHook"]
