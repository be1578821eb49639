"""Embedded SFTP server: who may log in (key only, configured partners only, bounded sessions)."""

from __future__ import annotations

import asyncio
from datetime import UTC

import asyncssh
import paramiko
import pytest

from tests.peers.embedded import (
    PARTNER_ID,
    EmbeddedPeer,
    ServerFactory,
    make_login_key,
    paramiko_sftp,
    paramiko_transport,
)


def test_paramiko_with_the_right_key_uploads_a_file(embedded_server: EmbeddedPeer) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, several SFTP write requests
    with paramiko_sftp(embedded_server) as sftp:
        with sftp.open("inbox/INV-1.xml.pgp", "wb") as remote:
            remote.write(payload)
        assert "INV-1.xml.pgp" in sftp.listdir("inbox")
    final = embedded_server.root() / "inbox" / "INV-1.xml.pgp"
    assert final.read_bytes() == payload
    uploads = embedded_server.wait_uploads(1)
    assert len(uploads) == 1
    assert uploads[0].partner_id == PARTNER_ID
    assert uploads[0].path.resolve() == final
    assert uploads[0].completed_at.utcoffset() == UTC.utcoffset(None)
    assert not list((embedded_server.root() / "inbox").glob(".*.part"))


def test_asyncssh_with_the_right_key_uploads_a_file(embedded_server: EmbeddedPeer, tmp_path) -> None:
    local = tmp_path / "doc.bin"
    local.write_bytes(b"x" * 300_000)

    async def upload() -> None:
        async with (
            asyncssh.connect(**embedded_server.asyncssh_options()) as conn,
            conn.start_sftp_client() as sftp,
        ):
            await sftp.put(str(local), "inbox/doc.bin")

    asyncio.run(upload())
    uploads = embedded_server.wait_uploads(1)
    assert (embedded_server.root() / "inbox" / "doc.bin").read_bytes() == local.read_bytes()
    assert [u.path.name for u in uploads] == ["doc.bin"]


def test_wrong_key_is_refused(embedded_server: EmbeddedPeer, tmp_path) -> None:
    stranger = make_login_key(tmp_path, "stranger")
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_transport(embedded_server, key_path=stranger.path)

    async def connect() -> None:
        async with asyncssh.connect(**embedded_server.asyncssh_options(client_keys=[str(stranger.path)])):
            pass

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(connect())


def test_unknown_user_is_refused_even_with_a_valid_key(embedded_server: EmbeddedPeer) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_transport(embedded_server, username="mallory")
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_transport(embedded_server, username="root")


def test_password_and_keyboard_interactive_are_not_offered(embedded_server: EmbeddedPeer) -> None:
    attempts = {
        "password": lambda t: t.auth_password(PARTNER_ID, "guess"),
        "keyboard-interactive": lambda t: t.auth_interactive_dumb(PARTNER_ID),
        "none": lambda t: t.auth_none(PARTNER_ID),
    }
    for method, attempt in attempts.items():
        transport = paramiko_transport(embedded_server, authenticate=False)
        try:
            with pytest.raises(paramiko.AuthenticationException) as refused:
                attempt(transport)
            if isinstance(refused.value, paramiko.BadAuthenticationType):
                assert refused.value.allowed_types == ["publickey"], method
            assert not transport.is_authenticated(), method
        finally:
            transport.close()


def test_extra_sessions_beyond_the_limit_are_refused(embedded_server_factory: ServerFactory) -> None:
    peer = embedded_server_factory(max_sessions=1)
    first = paramiko_transport(peer)
    try:
        assert first.is_authenticated()
        with pytest.raises((paramiko.SSHException, EOFError, ConnectionError)):
            second = paramiko_transport(peer)
            second.close()
        assert first.is_active()
    finally:
        first.close()
    # The slot is freed when the first session ends.
    for _ in range(50):
        try:
            third = paramiko_transport(peer)
        except (paramiko.SSHException, EOFError, ConnectionError):
            asyncio.run(asyncio.sleep(0.05))
            continue
        assert third.is_authenticated()
        third.close()
        break
    else:
        pytest.fail("the session slot was not freed after the first connection closed")
