"""Embedded SFTP server: start-up checks, clear errors, and a clean stop."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import asyncssh
import pytest

from sftp_pipeline.config import Config, Partner
from sftp_pipeline.errors import ConfigError, KeyFileError
from sftp_pipeline.server.embedded import EmbeddedServer
from tests.peers.embedded import LoginKey, make_host_key, make_login_key, make_server_config


@pytest.fixture
def hosting(tmp_path: Path) -> tuple[Config, LoginKey]:
    login = make_login_key(tmp_path)
    config = make_server_config(tmp_path, {"aggregator": [login.public_line]})
    make_host_key(config.keys.host_key)
    return config, login


def _pinned(config: Config, port: int) -> asyncssh.SSHKnownHosts:
    public = asyncssh.read_private_key(config.keys.host_key).export_public_key().decode()
    return asyncssh.import_known_hosts(f"[127.0.0.1]:{port} {public}")


def _start(server: EmbeddedServer) -> None:
    async def start_and_close() -> None:
        try:
            await server.start()
        finally:
            await server.close()

    asyncio.run(start_and_close())


def test_a_missing_host_key_is_a_key_error(hosting: tuple[Config, LoginKey]) -> None:
    config, _ = hosting
    missing = config.base_dir / "keys" / "nope"
    with pytest.raises(KeyFileError, match=r"nope: SFTP server host key not found; create it with `ssh-keygen"):
        _start(EmbeddedServer(config, host_key=missing))


def test_a_host_key_readable_by_others_is_refused(hosting: tuple[Config, LoginKey]) -> None:
    config, _ = hosting
    config.keys.host_key.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"readable by group or others \(mode 0644\); run `chmod 600"):
        _start(EmbeddedServer(config))


def test_a_host_key_that_is_not_a_key_is_refused(hosting: tuple[Config, LoginKey]) -> None:
    config, _ = hosting
    config.keys.host_key.write_text("not a key\n")
    with pytest.raises(KeyFileError, match="not a usable unencrypted OpenSSH private key"):
        _start(EmbeddedServer(config))


def test_a_busy_port_is_a_config_error(hosting: tuple[Config, LoginKey]) -> None:
    config, _ = hosting
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot listen on 127\.0\.0\.1:{port}: .*change \[server\]"):
            _start(EmbeddedServer(config, port=port))


def test_an_unparsable_login_key_names_the_partner(tmp_path: Path) -> None:
    config = make_server_config(tmp_path, {"aggregator": ["ssh-ed25519 bm90IGEga2V5"]})
    make_host_key(config.keys.host_key)
    with pytest.raises(ConfigError, match=r"partners\.aggregator\.ssh_login_keys\[1\] is not a usable"):
        _start(EmbeddedServer(config))


def test_port_is_known_only_after_start(hosting: tuple[Config, LoginKey]) -> None:
    config, _ = hosting
    with pytest.raises(RuntimeError, match="after start"):
        _ = EmbeddedServer(config).port


def test_serve_forever_serves_until_cancelled_then_closes(hosting: tuple[Config, LoginKey]) -> None:
    config, login = hosting

    async def scenario() -> tuple[list[str], bool]:
        server = EmbeddedServer(config, port=0)
        task = asyncio.create_task(server.serve_forever())
        while True:  # wait until bound
            await asyncio.sleep(0.01)
            try:
                port = server.port
                break
            except RuntimeError:
                continue
        async with (
            asyncssh.connect(
                "127.0.0.1",
                port,
                username="aggregator",
                client_keys=[str(login.path)],
                known_hosts=_pinned(config, port),
                agent_path=None,
                config=None,
            ) as conn,
            conn.start_sftp_client() as sftp,
        ):
            listing = sorted(await sftp.listdir("/"))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.close()  # idempotent
        try:
            await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return listing, True
        return listing, False

    listing, refused_after_stop = asyncio.run(scenario())
    assert listing == [".", "..", "inbox", "outbox", "receipts-in", "receipts-out"]
    assert refused_after_stop


def test_a_partner_without_login_keys_cannot_log_in(tmp_path: Path) -> None:
    login = make_login_key(tmp_path)
    config = make_server_config(tmp_path, {"aggregator": [login.public_line]})
    config = config.model_copy(
        update={
            "partners": {
                **config.partners,
                "keyless": Partner(id="keyless", name="No keys", openpgp_cert=tmp_path / "k.asc"),
            }
        }
    )
    make_host_key(config.keys.host_key)

    async def scenario() -> None:
        async with EmbeddedServer(config, port=0) as server:
            assert (config.hosted_root("keyless") / "inbox").is_dir()
            async with asyncssh.connect(
                "127.0.0.1",
                server.port,
                username="keyless",
                client_keys=[str(login.path)],
                known_hosts=_pinned(config, server.port),
                agent_path=None,
                config=None,
            ):
                pass

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(scenario())
