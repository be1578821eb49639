"""The embedded asyncssh SFTP server as a real peer, on 127.0.0.1 and port 0.

The server runs in a background thread with its own event loop, so plain
(synchronous) tests can drive it with paramiko or with ``asyncio.run`` of an
asyncssh client. Fixtures:

* ``embedded_server`` — a running server for one party and one partner
  (``PARTNER_ID``) with a fresh ed25519 login key; see :class:`EmbeddedPeer`.
* ``embedded_server_factory`` — the same with options
  (``max_sessions``, ``on_upload``, ``clock``, extra ``partners``).

Helpers usable without the fixtures: :func:`make_login_key`,
:func:`make_host_key`, :func:`make_server_config`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import paramiko
import pytest

from sftp_pipeline.clock import Clock, utc_now
from sftp_pipeline.config import Config, OurKeys, Partner, Party, Server
from sftp_pipeline.server.embedded import EmbeddedServer, UploadHook

PARTY_ID = "utility"
PARTNER_ID = "aggregator"
LOOPBACK = "127.0.0.1"
# Why 10 s: start, stop and an upload hook take milliseconds here; longer means a hang, not load.
THREAD_TIMEOUT = 10.0

T = TypeVar("T")


@dataclass(frozen=True)
class LoginKey:
    path: Path  # private key, OpenSSH format, mode 0600 (paramiko and asyncssh both read it)
    public_line: str  # "ssh-ed25519 AAAA… comment"


def make_login_key(directory: Path, name: str = "id_ed25519") -> LoginKey:
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"test-{name}")
    path = directory / name
    key.write_private_key(str(path))
    path.chmod(0o600)
    return LoginKey(path=path, public_line=key.export_public_key().decode().strip())


def make_host_key(path: Path) -> str:
    """Write an ed25519 host key (0600) and return its public line ``ssh-ed25519 AAAA…``."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    key.write_private_key(str(path))
    path.chmod(0o600)
    public: bytes = key.export_public_key()
    return " ".join(public.decode().split()[:2])


def make_server_config(
    base: Path,
    login_keys: dict[str, list[str]],
    *,
    max_sessions: int = 4,
) -> Config:
    """A minimal Config for hosting: one party, one partner per ``login_keys`` entry, port 0."""
    base.mkdir(parents=True, exist_ok=True)
    partners = {
        partner_id: Partner(
            id=partner_id,
            name=f"Partner {partner_id}",
            openpgp_cert=base / f"{partner_id}.asc",
            ssh_login_keys=keys,
        )
        for partner_id, keys in login_keys.items()
    }
    return Config(
        path=base / "sftp-pipeline.toml",
        party=Party(id=PARTY_ID, name="Test Utility"),
        state_dir=base / "state",
        keys=OurKeys(host_key=base / "keys" / "ssh_host_ed25519"),
        server=Server(listen=[LOOPBACK], port=0, root=base / "sftp-root", max_sessions_per_partner=max_sessions),
        partners=partners,
    )


@dataclass
class Upload:
    partner_id: str
    path: Path
    completed_at: datetime


@dataclass
class EmbeddedPeer:
    """A running embedded server and what a test needs to talk to it."""

    host: str
    port: int
    config: Config
    partner_id: str
    login_key: LoginKey
    host_key_line: str  # known_hosts form: "[127.0.0.1]:PORT ssh-ed25519 AAAA…"
    host_public_key: str  # "ssh-ed25519 AAAA…"
    server: EmbeddedServer
    loop: asyncio.AbstractEventLoop
    uploads: list[Upload] = field(default_factory=list)
    _uploads_changed: threading.Condition = field(default_factory=threading.Condition)

    def root(self, partner_id: str | None = None) -> Path:
        return self.config.hosted_root(partner_id or self.partner_id).resolve()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop (e.g. to inspect it) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(THREAD_TIMEOUT)

    def record(self, partner_id: str, path: Path, completed_at: datetime) -> None:
        with self._uploads_changed:
            self.uploads.append(Upload(partner_id, path, completed_at))
            self._uploads_changed.notify_all()

    def wait_uploads(self, count: int, timeout: float = THREAD_TIMEOUT) -> list[Upload]:
        """Block until ``count`` uploads were reported (fails the test on timeout)."""
        with self._uploads_changed:
            if not self._uploads_changed.wait_for(lambda: len(self.uploads) >= count, timeout):
                pytest.fail(f"expected {count} on_upload call(s) within {timeout}s, got {self.uploads}")
            return list(self.uploads)

    def asyncssh_options(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``asyncssh.connect`` as this partner, with the host key pinned."""
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "username": self.partner_id,
            "client_keys": [str(self.login_key.path)],
            "known_hosts": asyncssh.import_known_hosts(self.host_key_line + "\n"),
            "agent_path": None,
            "config": None,
        }
        options.update(overrides)
        return options


class _ServerThread:
    """An event loop in a daemon thread that owns one EmbeddedServer."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="embedded-sftp", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(THREAD_TIMEOUT)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(THREAD_TIMEOUT)
        self.loop.close()


ServerFactory = Callable[..., EmbeddedPeer]


@pytest.fixture
def embedded_server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    started: list[tuple[_ServerThread, EmbeddedServer]] = []

    def start(
        *,
        max_sessions: int = 4,
        on_upload: UploadHook | None = None,
        clock: Clock = utc_now,
        extra_partners: dict[str, list[str]] | None = None,
    ) -> EmbeddedPeer:
        base = tmp_path / f"embedded-{len(started)}"
        base.mkdir()
        login_key = make_login_key(base)
        config = make_server_config(
            base, {PARTNER_ID: [login_key.public_line], **(extra_partners or {})}, max_sessions=max_sessions
        )
        host_public = make_host_key(config.keys.host_key)
        thread = _ServerThread()
        holder: list[EmbeddedPeer] = []

        async def hook(partner_id: str, path: Path, completed_at: datetime) -> None:
            holder[0].record(partner_id, path, completed_at)
            if on_upload is not None:
                result = on_upload(partner_id, path, completed_at)
                if result is not None:
                    await result

        server = EmbeddedServer(config, on_upload=hook, clock=clock)
        try:
            thread.run(server.start())
        except BaseException:
            thread.stop()
            raise
        started.append((thread, server))
        peer = EmbeddedPeer(
            host=LOOPBACK,
            port=server.port,
            config=config,
            partner_id=PARTNER_ID,
            login_key=login_key,
            host_key_line=f"[{LOOPBACK}]:{server.port} {host_public}",
            host_public_key=host_public,
            server=server,
            loop=thread.loop,
        )
        holder.append(peer)
        return peer

    yield start
    for thread, server in reversed(started):
        try:
            thread.run(server.close())
        finally:
            thread.stop()


@pytest.fixture
def embedded_server(embedded_server_factory: ServerFactory) -> EmbeddedPeer:
    return embedded_server_factory()


def paramiko_transport(
    peer: EmbeddedPeer,
    *,
    username: str | None = None,
    key_path: Path | None = None,
    authenticate: bool = True,
) -> paramiko.Transport:
    """A stock paramiko transport to ``peer`` with its host key pinned, logged in by key unless told not."""
    transport = paramiko.Transport((peer.host, peer.port))
    key_type, key_data = peer.host_public_key.split()[:2]
    host_key = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_data))
    try:
        transport.start_client(timeout=THREAD_TIMEOUT)
        remote = transport.get_remote_server_key()
        if remote != host_key:
            raise paramiko.SSHException(f"host key mismatch: {remote.get_fingerprint().hex()}")
        if authenticate:
            pkey = paramiko.Ed25519Key.from_private_key_file(str(key_path or peer.login_key.path))
            transport.auth_publickey(username or peer.partner_id, pkey)
    except BaseException:
        transport.close()
        raise
    return transport


@contextlib.contextmanager
def paramiko_sftp(peer: EmbeddedPeer, **kwargs: Any) -> Iterator[paramiko.SFTPClient]:
    transport = paramiko_transport(peer, **kwargs)
    try:
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        with client:
            yield client
    finally:
        transport.close()
