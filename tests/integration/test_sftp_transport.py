"""SftpTransport against OpenSSH sshd: host-key pinning, algorithms, auth, timeouts and retries.

Faults come from real components: a port where nothing listens, a TCP server that accepts and
never speaks, a proxy that goes silent mid-transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from sftp_pipeline import config, errors
from sftp_pipeline.transport import Transport, sshalgs
from sftp_pipeline.transport.retry import RetryingTransport
from sftp_pipeline.transport.sftp import SftpTransport
from tests.peers.sshd import ClientKey, Sshd, free_port, make_client_key

PARTNER = "utility"
NAME = "01JDQ6Z6M2W4K8T9V0B3C5D7EF.invoice.INV-1.xml.pgp"
SLACK = 1.10  # a timeout must fire within its value + 10 %
TIMING_GRACE = 0.5  # seconds of scheduling noise allowed on a loaded 2-core CI machine


async def connect(sshd: Sshd, key: ClientKey, **overrides: object) -> SftpTransport:
    return await SftpTransport.connect(sshd.endpoint(**overrides), client_key=key.path, partner_id=PARTNER)


def random_key_line(prefix: str = "") -> str:
    key = asyncssh.generate_private_key("ssh-ed25519")
    return f"{prefix}{key.export_public_key().decode().strip()}"


def upload_one(sshd: Sshd, key: ClientKey, tmp_path: Path, **overrides: object) -> None:
    (sshd.root / "inbox").mkdir(exist_ok=True)
    src = tmp_path / "doc.bin"
    src.write_bytes(b"payload")

    async def main() -> None:
        async with await connect(sshd, key, **overrides) as t:
            await t.put_atomic(src, "inbox", NAME)

    asyncio.run(main())


def server_files(sshd: Sshd) -> list[Path]:
    return [p for p in sshd.root.rglob("*") if p.is_file()]


# -- host keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pin",
    [
        "changed-known-hosts-line",  # same [host]:port, another key: a changed host key
        "bare-other-key",  # an unknown key
        "other-fingerprint",
        "right-key-other-host",  # the real key, pinned for a different host
    ],
)
def test_unpinned_host_key_is_refused_and_nothing_is_sent(
    sshd: Sshd, ssh_client_key: ClientKey, tmp_path: Path, pin: str
) -> None:
    pins = {
        "changed-known-hosts-line": random_key_line(f"[{sshd.host}]:{sshd.port} "),
        "bare-other-key": random_key_line(),
        "other-fingerprint": asyncssh.generate_private_key("ssh-ed25519").get_fingerprint("sha256"),
        "right-key-other-host": "partner.example " + sshd.host_key_line.split(" ", 1)[1],
    }
    with pytest.raises(errors.HostKeyError) as caught:
        upload_one(sshd, ssh_client_key, tmp_path, host_keys=[pins[pin]])
    message = str(caught.value)
    assert PARTNER in message
    assert f"{sshd.host}:{sshd.port}" in message
    assert sshd.host_key_fingerprint in message  # what the server presented, to compare out of band
    assert "host_keys" in message  # where to pin it
    assert server_files(sshd) == []
    assert "Accepted publickey" not in sshd.log.read_text()  # refused before authenticating


@pytest.mark.parametrize("form", ["known-hosts-line", "bare-key", "fingerprint", "plain-host-pattern"])
def test_each_pin_form_is_accepted(sshd: Sshd, ssh_client_key: ClientKey, tmp_path: Path, form: str) -> None:
    key_part = sshd.host_key_line.split(" ", 1)[1]
    pin = {
        "known-hosts-line": sshd.host_key_line,
        "bare-key": key_part,
        "fingerprint": sshd.host_key_fingerprint,
        "plain-host-pattern": f"{sshd.host} {key_part}",  # like known_hosts on port 22
    }[form]
    upload_one(sshd, ssh_client_key, tmp_path, host_keys=[random_key_line(), pin])
    assert (sshd.root / "inbox" / NAME).read_bytes() == b"payload"


def test_unparsable_pin_is_a_config_error(sshd: Sshd, ssh_client_key: ClientKey, tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="host key pin"):
        upload_one(sshd, ssh_client_key, tmp_path, host_keys=["ssh-ed25519 not-base64!!"])


# -- algorithms and session record ---------------------------------------------------------------


def test_session_records_what_was_negotiated(sshd: Sshd, ssh_client_key: ClientKey) -> None:
    async def main() -> tuple[str, str, str, str, bool, str]:
        async with await connect(sshd, ssh_client_key) as t:
            s = t.session
            return s.kex, s.cipher, s.mac, s.host_key, s.post_quantum, s.extra["server_version"]

    kex, cipher, mac, host_key, pq, version = asyncio.run(main())
    # Debian 12's OpenSSH 9.2 has only sntrup761 as PQ, which asyncssh lacks: curve25519 it is.
    assert kex == "curve25519-sha256"
    assert not pq
    assert cipher == sshalgs.ENCRYPTION_ALGS[0] == "aes256-gcm@openssh.com"
    assert mac == "implicit"
    assert host_key == sshd.host_key_fingerprint
    assert version.startswith("SSH-2.0-OpenSSH_")


def test_require_pq_kex_against_a_server_without_it_fails_clearly(
    sshd: Sshd, ssh_client_key: ClientKey, tmp_path: Path
) -> None:
    with pytest.raises(errors.PermanentTransportError, match="no post-quantum key exchange") as caught:
        upload_one(sshd, ssh_client_key, tmp_path, require_pq_kex=True)
    assert not isinstance(caught.value, errors.HostKeyError)
    assert "require_pq_kex" in str(caught.value)
    assert server_files(sshd) == []


def test_only_allowed_ciphers_are_offered(tmp_path: Path, ssh_client_key: ClientKey) -> None:
    from tests.peers.sshd import start_sshd

    server = start_sshd(tmp_path / "cbc-only", extra_config="Ciphers aes128-cbc,aes256-cbc\n")
    server.authorize(ssh_client_key.public_line)
    try:
        # Usually "no common SSH algorithm"; when sshd's close overtakes its KEXINIT at our end, asyncssh can only
        # see a lost connection. Either way nothing was negotiated and nothing uploaded.
        with pytest.raises(errors.TransportError) as caught:
            upload_one(server, ssh_client_key, tmp_path)
        if isinstance(caught.value, errors.PermanentTransportError):
            assert "no common SSH algorithm" in str(caught.value)
        assert server_files(server) == []
    finally:
        server.stop()


# -- authentication and paths --------------------------------------------------------------------


def test_wrong_client_key_is_permanent(sshd: Sshd, tmp_path: Path) -> None:
    stranger = make_client_key(tmp_path, "stranger")

    with pytest.raises(errors.PermanentTransportError, match="refused our SSH key") as caught:
        upload_one(sshd, stranger, tmp_path)
    assert not isinstance(caught.value, errors.HostKeyError)
    assert server_files(sshd) == []


def test_passphrase_protected_client_key(sshd: Sshd, tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "locked"
    key.write_private_key(str(path), passphrase="correct horse")
    path.chmod(0o600)
    sshd.authorize(key.export_public_key().decode())

    async def main(passphrase: str) -> str:
        t = await SftpTransport.connect(sshd.endpoint(), client_key=path, passphrase=passphrase, partner_id=PARTNER)
        async with t:
            return t.session.kex

    assert asyncio.run(main("correct horse")) == "curve25519-sha256"
    with pytest.raises(errors.KeyFileError, match="locked") as caught:
        asyncio.run(main("wrong"))
    assert "wrong" not in str(caught.value)  # the passphrase never appears in a message


def test_missing_remote_directory_is_permanent_and_named(sshd: Sshd, ssh_client_key: ClientKey, tmp_path: Path) -> None:
    src = tmp_path / "doc.bin"
    src.write_bytes(b"x")

    async def main() -> None:
        async with await connect(sshd, ssh_client_key) as t:
            await t.put_atomic(src, "no-such-dir", NAME)

    with pytest.raises(errors.PermanentTransportError, match="no-such-dir") as caught:
        asyncio.run(main())
    assert "no such file or directory" in str(caught.value)


# -- timeouts ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that accepts and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def test_silent_server_fails_within_connect_timeout(ssh_client_key: ClientKey) -> None:
    timeout = 1.0

    async def main() -> float:
        async with silent_server() as port:
            endpoint = config.SftpEndpoint(
                host="127.0.0.1", port=port, user="x", host_keys=[random_key_line()], connect_timeout=timeout
            )
            started = time.monotonic()
            with pytest.raises(errors.TransientTransportError, match="within 1s"):
                await SftpTransport.connect(endpoint, client_key=ssh_client_key.path, partner_id=PARTNER)
            return time.monotonic() - started

    elapsed = asyncio.run(main())
    assert timeout * 0.9 <= elapsed <= timeout * SLACK + TIMING_GRACE


class FreezingProxy:
    """Forwards TCP to a target until ``freeze()``; after that it swallows everything, silently."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        self.frozen = True

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not self.frozen:
                    writer.write(data)
                    await writer.drain()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_w, server_w]
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()


def test_stalled_upload_is_detected_within_stall_timeout(sshd: Sshd, ssh_client_key: ClientKey, tmp_path: Path) -> None:
    stall = 1.5
    (sshd.root / "inbox").mkdir()
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(64 * 1024 * 1024))

    async def main() -> float:
        proxy = FreezingProxy(sshd.port)
        await proxy.start()
        try:
            endpoint = sshd.endpoint(port=proxy.port, host_keys=[sshd.host_key_fingerprint], stall_timeout=stall)
            transport = await SftpTransport.connect(endpoint, client_key=ssh_client_key.path, partner_id=PARTNER)
            frozen_at: list[float] = []

            def on_progress(_n: int) -> None:
                if not frozen_at:
                    proxy.freeze()
                    frozen_at.append(time.monotonic())

            with pytest.raises(errors.TransientTransportError, match="stalled"):
                await transport.put_atomic(src, "inbox", NAME, progress=on_progress)
            elapsed = time.monotonic() - frozen_at[0]
            await transport.close()
            return elapsed
        finally:
            await proxy.close()

    elapsed = asyncio.run(main())
    assert stall * 0.9 <= elapsed <= stall * SLACK + TIMING_GRACE
    assert not (sshd.root / "inbox" / NAME).exists()


# -- retries (real faults, no mocks) -------------------------------------------------------------


def closed_port() -> int:
    port = free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_retry_reconnects_after_transient_errors_then_succeeds(
    sshd: Sshd, ssh_client_key: ClientKey, tmp_path: Path
) -> None:
    (sshd.root / "inbox").mkdir()
    src = tmp_path / "doc.bin"
    src.write_bytes(b"retried")
    dead = closed_port()
    calls: list[int] = []
    sleeps: list[float] = []

    async def factory() -> Transport:
        calls.append(1)
        port = dead if len(calls) < 3 else sshd.port  # refused, refused, then the real server
        return await connect(sshd, ssh_client_key, port=port, host_keys=[sshd.host_key_fingerprint])

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> bool:
        async with RetryingTransport(factory, partner_id=PARTNER, attempts=3, sleep=fake_sleep) as t:
            result = await t.put_atomic(src, "inbox", NAME)
            assert t.session.kex == "curve25519-sha256"
            return result.already_present

    assert asyncio.run(main()) is False
    assert len(calls) == 3 and len(sleeps) == 2
    assert (sshd.root / "inbox" / NAME).read_bytes() == b"retried"


def test_retry_gives_up_after_attempts(ssh_client_key: ClientKey, tmp_path: Path) -> None:
    src = tmp_path / "doc.bin"
    src.write_bytes(b"x")
    endpoint = config.SftpEndpoint(host="127.0.0.1", port=closed_port(), user="x", host_keys=[random_key_line()])
    calls: list[int] = []
    sleeps: list[float] = []

    async def factory() -> Transport:
        calls.append(1)
        return await SftpTransport.connect(endpoint, client_key=ssh_client_key.path, partner_id=PARTNER)

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> None:
        async with RetryingTransport(factory, partner_id=PARTNER, attempts=3, sleep=fake_sleep) as t:
            await t.put_atomic(src, "inbox", NAME)

    with pytest.raises(errors.TransientTransportError, match="gave up after 3 attempts") as caught:
        asyncio.run(main())
    assert "connection refused" in str(caught.value)
    assert len(calls) == 3 and len(sleeps) == 2


def test_permanent_errors_are_not_retried(sshd: Sshd, tmp_path: Path) -> None:
    stranger = make_client_key(tmp_path, "stranger")
    calls: list[int] = []

    async def factory() -> Transport:
        calls.append(1)
        return await connect(sshd, stranger)

    async def fake_sleep(_seconds: float) -> None:
        raise AssertionError("a permanent error must not be retried")

    async def main() -> None:
        async with RetryingTransport(factory, partner_id=PARTNER, attempts=3, sleep=fake_sleep) as t:
            await t.list("inbox")

    with pytest.raises(errors.PermanentTransportError):
        asyncio.run(main())
    assert calls == [1]
