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

This module is the server and its logins; :mod:`.session` is what one partner's SFTP session may do.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import stat
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncssh

from sftp_pipeline.clock import Clock, rfc3339, utc_now
from sftp_pipeline.config import Config, Server
from sftp_pipeline.errors import ConfigError, KeyFileError
from sftp_pipeline.folders import HOSTED_DIRS
from sftp_pipeline.server.session import DIR_MODE, _PartnerSFTP
from sftp_pipeline.transport import sshalgs

UploadHook = Callable[[str, Path, datetime], Awaitable[None] | None]

log = logging.getLogger(__name__)

# Why 30 s: a key-only login completes in well under a second; a slow half-open login only holds a slot.
LOGIN_TIMEOUT = 30.0
# Why 30 s × 3: a vanished partner frees its session slot within ~2 minutes, well inside any SLA.
KEEPALIVE_INTERVAL = 30.0
KEEPALIVE_COUNT_MAX = 3
# Only SFTP version 3: what OpenSSH, paramiko and asyncssh clients speak; v5/v6 opens add nothing we want.
SFTP_VERSION = 3


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
