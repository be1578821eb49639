"""The SFTP transport: an asyncssh client with pinned host keys, key auth and modern algorithms.

One :class:`SftpTransport` is one SSH connection with one SFTP session; many
``put_atomic`` calls may run on it at once (asyncssh multiplexes SFTP requests
by id). Every library exception is translated here into the
:mod:`sftp_pipeline.errors` tree; the retry policy lives in :mod:`.retry`.

Host keys are pinned: ``endpoint.host_keys`` holds OpenSSH known_hosts lines
(``[host]:port ssh-ed25519 AAAA…``, or a bare ``ssh-ed25519 AAAA…``) and/or
``SHA256:…`` fingerprints. Any other key fails the handshake before we
authenticate, with :class:`~sftp_pipeline.errors.HostKeyError`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import stat as stat_mod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from sftp_pipeline import config, errors, names
from sftp_pipeline.faults import crash_point
from sftp_pipeline.fsutil import fsync_dir
from sftp_pipeline.transport import (
    SMALL_FILE_BYTES,
    Progress,
    PutResult,
    RemoteEntry,
    SessionInfo,
    Tee,
    Transport,
    sshalgs,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Why 255 KiB: OpenSSH's sftp-server accepts at most 261120-byte writes (its limits@openssh.com reply);
# larger blocks are split or refused, smaller ones cost more round trips.
BLOCK_SIZE = SMALL_FILE_BYTES
# Why 32: ~8 MiB in flight fills a 100 Mbit/s link at 600 ms RTT; on loopback against sshd 9.2 it measured
# fastest of 16/32/64/128 (256 MiB, aes256-gcm: ~120-130 MiB/s up; chacha20-poly1305: ~90-100 MiB/s).
MAX_REQUESTS = 32
# Why 3: asyncssh drops the connection at the (count + 1)-th unanswered interval, so with the interval at a
# quarter of the stall timeout a silent server is dropped within it, even between transfers.
KEEPALIVE_COUNT_MAX = 3
PIN_WHERE = "partners.{partner}.sftp.host_keys"


class _Pins:
    """The host keys an endpoint trusts: known_hosts lines and SHA256 fingerprints."""

    def __init__(self, partner_id: str, pins: list[str]) -> None:
        self.fingerprints: set[str] = set()
        self.bare_keys: list[asyncssh.SSHKey] = []
        self.known_hosts: list[asyncssh.SSHKnownHosts] = []
        self.pinned_keys: list[asyncssh.SSHKey] = []  # every key named by a line, to choose algorithms
        for pin in pins:
            try:
                if pin.startswith("SHA256:"):
                    self.fingerprints.add(pin.strip())
                elif pin.split()[0].startswith(("ssh-", "ecdsa-", "rsa-", "sk-")):
                    self.bare_keys.append(asyncssh.import_public_key(pin))
                    self.pinned_keys.append(self.bare_keys[-1])
                else:
                    self.known_hosts.append(asyncssh.import_known_hosts(pin))
                    fields = pin.split()
                    key_fields = fields[2:4] if fields[0].startswith("@") else fields[1:3]
                    self.pinned_keys.append(asyncssh.import_public_key(" ".join(key_fields)))
            except (asyncssh.KeyImportError, ValueError, IndexError) as exc:
                raise errors.ConfigError(
                    f"partner {partner_id!r}: host key pin {pin[:60]!r} cannot be parsed ({exc}); "
                    f"fix {PIN_WHERE.format(partner=partner_id)} with a line from `ssh-keyscan` "
                    "or a fingerprint from `ssh-keygen -lf`"
                ) from exc

    def host_key_algs(self) -> list[str]:
        """Offer the algorithms of pinned keys (so the server presents the pinned one), else all."""
        if self.fingerprints:
            return list(sshalgs.HOST_KEY_ALGS)
        pinned = {alg.decode("ascii") for key in self.pinned_keys for alg in key.sig_algorithms}
        algs = [alg for alg in sshalgs.HOST_KEY_ALGS if alg in pinned]  # in our preference order
        return algs or list(sshalgs.HOST_KEY_ALGS)

    def matches(self, key: asyncssh.SSHKey, host: str, addr: str, port: int) -> bool:
        if key.get_fingerprint("sha256") in self.fingerprints or key in self.bare_keys:
            return True
        match_port = None if port == config.DEFAULT_PORT else port
        return any(key in known.match(host, addr, match_port)[0] for known in self.known_hosts)


class _PinningClient(asyncssh.SSHClient):
    """Checks the host key during key exchange (before auth) and remembers what was negotiated."""

    def __init__(self, pins: _Pins) -> None:
        self.pins = pins
        self.presented: str = ""
        self.kex: str = ""
        self._conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.presented = key.get_fingerprint("sha256")
        kex = getattr(self._conn, "_kex", None)  # asyncssh keeps the running kex only during the exchange
        if kex is not None:
            self.kex = kex.algorithm.decode("ascii")
        return self.pins.matches(key, host, addr, port)


class SftpTransport(Transport):
    """:class:`Transport` over SFTP to one partner's server."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        sftp: asyncssh.SFTPClient,
        endpoint: config.SftpEndpoint,
        partner_id: str,
        session: SessionInfo,
    ) -> None:
        self._conn = conn
        self._sftp = sftp
        self._endpoint = endpoint
        self._partner = partner_id
        self._where = f"{endpoint.host}:{endpoint.port}"
        self.session = session
        self._closed = False
        self._stalled = False  # set when the watchdog dropped the connection

    def __repr__(self) -> str:
        return f"SftpTransport(partner={self._partner!r}, server={self._where!r})"

    @classmethod
    async def connect(
        cls,
        endpoint: config.SftpEndpoint,
        *,
        client_key: Path,
        passphrase: str | None = None,
        partner_id: str,
    ) -> SftpTransport:
        """Open the SSH connection and the SFTP session, checking the pinned host key first."""
        where = f"{endpoint.host}:{endpoint.port}"
        key = _load_client_key(client_key, passphrase, partner_id)
        pins = _Pins(partner_id, endpoint.host_keys)
        client = _PinningClient(pins)
        kex_algs = sshalgs.kex_algs(endpoint.require_pq_kex)
        conn: asyncssh.SSHClientConnection | None = None
        try:
            async with asyncio.timeout(endpoint.connect_timeout):
                conn, _ = await asyncssh.create_connection(
                    lambda: client,
                    endpoint.host,
                    port=endpoint.port,
                    username=endpoint.user,
                    config=None,
                    known_hosts=([], [], []),  # nothing trusted up front: every key goes to the pin check
                    client_keys=[key],
                    agent_path=None,
                    password_auth=False,
                    kbdint_auth=False,
                    host_based_auth=False,
                    gss_auth=False,
                    gss_kex=False,
                    kex_algs=list(kex_algs),
                    encryption_algs=list(sshalgs.ENCRYPTION_ALGS),
                    mac_algs=list(sshalgs.MAC_ALGS),
                    compression_algs=list(sshalgs.COMPRESSION_ALGS),
                    server_host_key_algs=pins.host_key_algs(),
                    signature_algs=list(sshalgs.SIGNATURE_ALGS),
                    connect_timeout=endpoint.connect_timeout,
                    login_timeout=endpoint.connect_timeout,
                    keepalive_interval=endpoint.stall_timeout / (KEEPALIVE_COUNT_MAX + 1),
                    keepalive_count_max=KEEPALIVE_COUNT_MAX,
                )
                sftp = await conn.start_sftp_client()
        except asyncssh.HostKeyNotVerifiable as exc:
            raise errors.HostKeyError(
                f"partner {partner_id!r}: the SSH server at {where} presented host key "
                f"{client.presented or '(none)'}, which is not pinned; nothing was sent. If the partner "
                f"confirms this key out of band, add it to {PIN_WHERE.format(partner=partner_id)} "
                "(a line from `ssh-keyscan`, or the fingerprint)"
            ) from exc
        except asyncssh.KeyExchangeFailed as exc:
            if endpoint.require_pq_kex:
                raise errors.PermanentTransportError(
                    f"partner {partner_id!r}: the SSH server at {where} offers no post-quantum key exchange "
                    f"(we require one of {', '.join(kex_algs)}); ask the partner to enable it, or set "
                    f"partners.{partner_id}.sftp.require_pq_kex = false"
                ) from exc
            raise errors.PermanentTransportError(
                f"partner {partner_id!r}: no common SSH algorithm with {where} ({exc.reason}); "
                "the server allows only algorithms we refuse as weak"
            ) from exc
        except BaseException as exc:
            if conn is not None:
                conn.abort()
            if isinstance(exc, TimeoutError):
                raise errors.TransientTransportError(
                    f"partner {partner_id!r}: no SSH session with {where} within "
                    f"{endpoint.connect_timeout:g}s (connect, handshake and login); check the host, port "
                    "and firewall"
                ) from exc
            if isinstance(exc, asyncssh.Error | OSError):
                raise _translate(exc, partner_id, where, "connect", "") from exc
            raise
        session = SessionInfo(
            transport="sftp",
            kex=client.kex or "unknown",
            cipher=conn.get_extra_info("send_cipher") or "",
            mac=_mac_name(conn),
            host_key=client.presented,
            post_quantum=sshalgs.is_post_quantum(client.kex),
            extra={"server_version": str(conn.get_extra_info("server_version") or "")},
        )
        log.info(
            "partner %s: SFTP session with %s (kex %s, cipher %s, host key %s)",
            partner_id,
            where,
            session.kex,
            session.cipher,
            session.host_key,
        )
        return cls(conn, sftp, endpoint, partner_id, session)

    # -- the contract ---------------------------------------------------------------------------

    async def put_atomic(self, local: Path, directory: str, name: str, progress: Progress | None = None) -> PutResult:
        final = self._path(directory, name)
        temp = self._path(directory, f"{names.TEMP_PREFIX}{name}{names.TEMP_SUFFIX}")
        try:
            size = local.stat().st_size
        except OSError as exc:
            raise errors.PermanentTransportError(
                f"partner {self._partner!r}: cannot read the local file {local}: {exc.strerror}"
            ) from exc
        if size <= SMALL_FILE_BYTES:
            return await self._put_small(local, temp, final, size, progress)
        existing = await self._op("stat", final, self._stat_or_none(final))
        if existing is not None:
            return self._already_there(final, existing, size)
        await self._op("remove stale", temp, self._remove_if_present(temp))
        try:
            await self._transfer("upload", temp, lambda h: self._upload(local, temp, h), progress)
        except errors.TransportError:
            # Free what the half upload holds on the partner's disk (it may be full); the next try starts over.
            with suppress(asyncssh.Error, OSError, errors.TransportError):
                await self._op("remove partial", temp, self._remove_if_present(temp))
            raise
        uploaded = await self._op("stat", temp, self._stat_or_none(temp))
        if uploaded is None or uploaded.size != size:
            await self._op("remove", temp, self._remove_if_present(temp))
            raise errors.TransientTransportError(
                f"partner {self._partner!r}: {temp} on {self._where} has "
                f"{'no file' if uploaded is None else f'{uploaded.size} bytes'} after uploading {size} "
                f"bytes from {local}; it was removed and the upload will be retried"
            )
        await self._op("rename", final, self._commit(temp, final))
        landed = await self._op("stat", final, self._stat_or_none(final))
        if landed is None or landed.size != size:
            raise errors.TransientTransportError(
                f"partner {self._partner!r}: {final} on {self._where} has "
                f"{'no file' if landed is None else f'{landed.size} bytes'} after the rename, expected {size}"
            )
        return PutResult(remote_path=final, size=size)

    async def _put_small(self, local: Path, temp: str, final: str, size: int, progress: Progress | None) -> PutResult:
        """Four requests, the fewest a safe upload takes: open the temporary name (truncating a stale one), one
        write, close, rename. No stat before: the rename itself refuses an existing final name (plain SFTP
        rename never replaces — OpenSSH links then unlinks; the spec and our server refuse), and only then is
        the final name looked at. No stat after the write: an SFTP write succeeds whole or fails, and a single
        write at offset 0 into a truncated file leaves exactly ``size`` bytes. A small file's cost is its round
        trips and requests, not its bytes (1,000 invoices are 4,000 requests instead of 6,000)."""
        try:
            data = local.read_bytes()
        except OSError as exc:
            raise errors.PermanentTransportError(
                f"partner {self._partner!r}: cannot read the local file {local}: {exc.strerror}"
            ) from exc
        if len(data) != size:
            raise errors.TransientTransportError(
                f"partner {self._partner!r}: {local} changed size while uploading it ({len(data)} bytes, {size} "
                "expected); the upload will be retried"
            )

        async def write() -> None:
            async with self._sftp.open(temp, "wb") as remote:
                await remote.write(data, 0)
                crash_point("mid-upload")  # written to the temporary name, not closed or renamed

        await self._op("upload", temp, write())
        if progress is not None:
            progress(size)
        existing = await self._op("rename", final, self._rename_new(temp, final))
        if existing is None:
            return PutResult(remote_path=final, size=size)
        # An earlier attempt got this far and the ledger never heard (a crash, a cut connection).
        await self._op("remove", temp, self._remove_if_present(temp))
        return self._already_there(final, existing, size)

    def _already_there(self, final: str, existing: asyncssh.SFTPAttrs, size: int) -> PutResult:
        """The final name exists: our earlier upload when the size matches, else someone else's file (refused)."""
        if existing.size == size:
            log.info("partner %s: %s already on %s with %d bytes", self._partner, final, self._where, size)
            return PutResult(remote_path=final, size=size, already_present=True)
        raise errors.PermanentTransportError(
            f"partner {self._partner!r}: {final} on {self._where} already exists with {existing.size} "
            f"bytes, not {size}; it was not overwritten — ask the partner what that file is"
        )

    async def _rename_new(self, temp: str, final: str) -> asyncssh.SFTPAttrs | None:
        """Rename ``temp`` to ``final`` unless ``final`` exists: None when renamed, else the existing file's
        attributes (``temp`` is left for the caller)."""
        try:
            await self._sftp.rename(temp, final)
        except (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists, asyncssh.SFTPPermissionDenied):
            existing = await self._stat_or_none(final)
            if existing is None:
                raise  # not because the name was taken: the translated error says what
            return existing
        return None

    async def list(self, directory: str) -> list[RemoteEntry]:
        entries = await self._op("list", directory, self._sftp.readdir(directory))
        found: list[RemoteEntry] = []
        for entry in entries:
            name = entry.filename if isinstance(entry.filename, str) else entry.filename.decode()
            perms = entry.attrs.permissions
            if names.is_temporary(name) or perms is None or not stat_mod.S_ISREG(perms):
                continue
            if not names.is_safe_name(name):
                log.warning(
                    "partner %s: skipping %r in %s on %s: not a safe name", self._partner, name, directory, self._where
                )
                continue
            found.append(RemoteEntry(name=name, size=entry.attrs.size or 0, mtime=float(entry.attrs.mtime or 0)))
        return sorted(found, key=lambda e: e.name)

    async def get(
        self, directory: str, name: str, local: Path, progress: Progress | None = None, *, tee: Tee | None = None
    ) -> int:
        remote = self._path(directory, name)
        attrs = await self._op("stat", remote, self._sftp.stat(remote))
        temp = local.with_name(f"{names.TEMP_PREFIX}{local.name}{names.TEMP_SUFFIX}")
        try:
            await self._transfer("download", remote, lambda h: self._download(remote, temp, h, tee), progress)
            size = await asyncio.to_thread(_fsync_size, temp)
            if size != attrs.size:
                raise errors.TransientTransportError(
                    f"partner {self._partner!r}: downloaded {size} bytes of {remote} from {self._where}, "
                    f"but the server reported {attrs.size}; the download will be retried"
                )
            os.replace(temp, local)
            await asyncio.to_thread(fsync_dir, local.parent)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return size

    async def remove(self, directory: str, name: str) -> None:
        path = self._path(directory, name)
        await self._op("remove", path, self._remove_if_present(path))

    async def rename(self, directory: str, old: str, new: str) -> None:
        source, target = self._path(directory, old), self._path(directory, new)
        if await self._op("stat", target, self._stat_or_none(target)) is not None:
            raise errors.PermanentTransportError(
                f"partner {self._partner!r}: cannot rename {source} to {target} on {self._where}: "
                "the target exists and is never replaced"
            )
        # Plain SFTP rename: OpenSSH implements it with link()+unlink(), so it never replaces a file.
        await self._op("rename", source, self._sftp.rename(source, target))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sftp.exit()
        self._conn.close()
        try:
            async with asyncio.timeout(self._endpoint.connect_timeout):
                await self._conn.wait_closed()
        except (TimeoutError, OSError, asyncssh.Error):
            self._conn.abort()

    # -- helpers --------------------------------------------------------------------------------

    def _path(self, directory: str, name: str) -> str:
        if not names.is_safe_name(name.removeprefix(names.TEMP_PREFIX)):
            raise errors.PermanentTransportError(
                f"partner {self._partner!r}: refusing the unsafe remote name {name!r} in {directory}"
            )
        return posixpath.join(directory, name)

    async def _stat_or_none(self, path: str) -> asyncssh.SFTPAttrs | None:
        try:
            attrs = await self._sftp.stat(path)
        except asyncssh.SFTPNoSuchFile:
            return None
        if attrs.permissions is not None and not stat_mod.S_ISREG(attrs.permissions):
            raise errors.PermanentTransportError(
                f"partner {self._partner!r}: {path} on {self._where} exists but is not a regular file"
            )
        return attrs

    async def _remove_if_present(self, path: str) -> None:
        with suppress(asyncssh.SFTPNoSuchFile):
            await self._sftp.remove(path)

    async def _commit(self, temp: str, final: str) -> None:
        try:
            await self._sftp.posix_rename(temp, final)
        except asyncssh.SFTPOpUnsupported:
            await self._sftp.rename(temp, final)

    async def _upload(self, local: Path, remote: str, handler: _ProgressHandler) -> None:
        await self._sftp.put(
            str(local), remote, block_size=BLOCK_SIZE, max_requests=MAX_REQUESTS, progress_handler=handler
        )

    async def _download(self, remote: str, local: Path, handler: _ProgressHandler, tee: Tee | None) -> None:
        """Parallel reads (blocks may arrive out of order), written and teed in file order.

        At most ``MAX_REQUESTS`` blocks wait for an earlier one, so memory stays bounded (~8 MiB).
        """
        waiting: dict[int, bytes] = {}
        done = 0
        async with self._sftp.open(remote, "rb", block_size=BLOCK_SIZE, max_requests=MAX_REQUESTS) as src:
            with local.open("wb") as dst:
                async for offset, data in await src.read_parallel():
                    waiting[offset] = data
                    while done in waiting:
                        chunk = waiting.pop(done)
                        dst.write(chunk)
                        if tee is not None:
                            await tee(done, chunk)
                        done += len(chunk)
                        handler(remote, local, done, 0)
        if waiting:
            raise errors.TransientTransportError(
                f"partner {self._partner!r}: the download of {remote} from {self._where} has a gap at byte "
                f"{done}; it will be retried"
            )

    async def _op(self, what: str, path: str, coro: Awaitable[T]) -> T:
        """Run one SFTP request under the stall watchdog, translating its errors."""
        async with self._guard(what, path):
            return await coro

    async def _transfer(
        self,
        what: str,
        path: str,
        copy: Callable[[_ProgressHandler], Awaitable[None]],
        progress: Progress | None,
    ) -> None:
        """Run a copy whose stall watchdog is pushed back by every block that moves."""
        async with self._guard(what, path) as watchdog:
            moved = 0

            def handler(_src: Any, _dst: Any, done: int, _total: int) -> None:
                nonlocal moved
                delta, moved = done - moved, done
                watchdog.kick()
                crash_point("mid-upload" if what == "upload" else "mid-download")
                if progress is not None and delta:
                    progress(delta)

            await copy(handler)

    @asynccontextmanager
    async def _guard(self, what: str, path: str) -> AsyncIterator[_Watchdog]:
        watchdog = _Watchdog(self._endpoint.stall_timeout, self._on_stall)
        try:
            yield watchdog
        except errors.TransportError:
            raise
        except (asyncssh.Error, OSError) as exc:
            if not self._stalled and _keepalive_gave_up(exc):  # it noticed before the watchdog: the same fault
                log.warning(
                    "partner %s: %s stopped answering (no reply to keepalives); the connection was dropped",
                    self._partner,
                    self._where,
                )
                self._stalled = True
            if self._stalled:
                raise errors.TransientTransportError(
                    f"partner {self._partner!r}: {what} of {path} on {self._where} stalled: nothing moved "
                    f"for {self._endpoint.stall_timeout:g}s; the connection was dropped and the step will "
                    "be retried"
                ) from exc
            raise _translate(exc, self._partner, self._where, what, path) from exc
        finally:
            watchdog.cancel()

    def _on_stall(self) -> None:
        # A server that answers nothing for the stall timeout is dead: abort the connection so every
        # pending request (and asyncssh's own clean-up of it) fails now instead of waiting forever.
        log.warning("partner %s: %s stopped answering; dropping the connection", self._partner, self._where)
        self._stalled = True
        self._conn.abort()


_ProgressHandler = Callable[[Any, Any, int, int], None]


class _Watchdog:
    """Calls ``on_stall`` once when ``kick`` has not been called for ``timeout`` seconds."""

    def __init__(self, timeout: float, on_stall: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._on_stall = on_stall
        self._last = self._loop.time()
        self._handle = self._loop.call_at(self._last + timeout, self._check)

    def kick(self) -> None:
        self._last = self._loop.time()  # cheap: the timer re-arms itself from this when it fires

    def _check(self) -> None:
        due = self._last + self._timeout
        if self._loop.time() >= due:
            self._on_stall()
        else:
            self._handle = self._loop.call_at(due, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


def _keepalive_gave_up(exc: BaseException) -> bool:
    """asyncssh dropped the connection because the server answered no keepalive (its only sign is the reason
    text); with the interval at a quarter of the stall timeout that races the watchdog, and it is the same
    fault, so it gets the same message."""
    return isinstance(exc, asyncssh.ConnectionLost) and "not responding to keepalive" in str(exc.reason)


def _mac_name(conn: asyncssh.SSHClientConnection) -> str:
    mac = str(conn.get_extra_info("send_mac") or "")
    cipher = str(conn.get_extra_info("send_cipher") or "")
    return "implicit" if mac == cipher else mac  # AEAD ciphers (GCM, ChaCha20-Poly1305) carry their own MAC


def _load_client_key(path: Path, passphrase: str | None, partner_id: str) -> asyncssh.SSHKey:
    try:
        return asyncssh.read_private_key(str(path), passphrase)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        hint = "check keys.ssh_passphrase" if "passphrase" in str(exc).lower() else "check keys.ssh"
        raise errors.KeyFileError(
            f"our SSH key {path} (used for partner {partner_id!r}) cannot be loaded: {exc}; {hint}"
        ) from exc
    except OSError as exc:
        raise errors.KeyFileError(
            f"our SSH key {path} (used for partner {partner_id!r}) cannot be read: {exc.strerror}; "
            "check keys.ssh in the configuration"
        ) from exc


def _translate(exc: BaseException, partner: str, where: str, what: str, path: str) -> errors.TransportError:
    """Map an asyncssh/OS exception onto the errors tree: permanent when a retry cannot help."""
    subject = f"partner {partner!r}: {what}{f' of {path}' if path else ''} on {where} failed"
    detail = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    if isinstance(exc, asyncssh.PermissionDenied):
        return errors.PermanentTransportError(
            f"partner {partner!r}: {where} refused our SSH key ({detail}); send the partner our public key "
            "(keys.ssh + '.pub') and check the user name in the partner's sftp.user"
        )
    if isinstance(exc, asyncssh.SFTPNoSuchFile | asyncssh.SFTPNoSuchPath | asyncssh.SFTPNotADirectory):
        return errors.PermanentTransportError(
            f"{subject}: no such file or directory ({detail}); check the partner's remote directories "
            "(sftp.dirs) with the partner"
        )
    if isinstance(exc, asyncssh.SFTPPermissionDenied | asyncssh.SFTPWriteProtect):
        return errors.PermanentTransportError(
            f"{subject}: permission denied ({detail}); ask the partner to grant our user access"
        )
    if isinstance(exc, asyncssh.SFTPConnectionLost | asyncssh.SFTPNoConnection | asyncssh.ConnectionLost):
        return errors.TransientTransportError(f"{subject}: connection lost ({detail}); will retry")
    if isinstance(exc, asyncssh.ChannelOpenError):
        return errors.PermanentTransportError(
            f"{subject}: the server refused the SFTP subsystem ({detail}); ask the partner to enable SFTP"
        )
    if isinstance(exc, asyncssh.DisconnectError):
        permanent = (
            asyncssh.ProtocolError,
            asyncssh.ProtocolNotSupported,
            asyncssh.ServiceNotAvailable,
            asyncssh.IllegalUserName,
            asyncssh.KeyExchangeFailed,
        )
        if isinstance(exc, permanent):
            return errors.PermanentTransportError(f"{subject}: SSH protocol refusal ({detail})")
        return errors.TransientTransportError(f"{subject}: the server disconnected ({detail}); will retry")
    if isinstance(exc, asyncssh.SFTPNoSpaceOnFilesystem | asyncssh.SFTPQuotaExceeded) or (
        isinstance(exc, asyncssh.SFTPError) and errors.is_no_space(RuntimeError(detail))
    ):
        return errors.TransientTransportError(
            f"{subject}: the server has no space left ({detail}); nothing was delivered under a final name. "
            "Ask the partner to free space; the upload is retried on the next run"
        )
    if isinstance(exc, asyncssh.SFTPError):
        return errors.PermanentTransportError(f"{subject}: the server answered: {detail}")
    if isinstance(exc, ConnectionRefusedError):
        return errors.TransientTransportError(
            f"{subject}: connection refused; is the partner's SSH server running on that port?"
        )
    if isinstance(exc, OSError):
        return errors.TransientTransportError(
            f"{subject}: {exc.strerror or detail}; check the network path to the partner; will retry"
        )
    return errors.PermanentTransportError(f"{subject}: {detail}")


def _fsync_size(path: Path) -> int:
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())
        return os.fstat(fh.fileno()).st_size
