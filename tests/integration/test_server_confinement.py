"""Embedded SFTP server: a partner cannot leave its root, and gets nothing but SFTP."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import asyncssh
import paramiko
import pytest

from tests.peers.embedded import EmbeddedPeer, paramiko_sftp, paramiko_transport


def _errno_of(raised: pytest.ExceptionInfo[OSError]) -> int | None:
    return raised.value.errno


def test_the_partner_root_has_the_standard_directories(embedded_server: EmbeddedPeer) -> None:
    root = embedded_server.root()
    for name in ("inbox", "outbox", "receipts-in", "receipts-out"):
        assert (root / name).is_dir()
        assert (root / name).stat().st_mode & 0o777 == 0o750
    with paramiko_sftp(embedded_server) as sftp:
        assert sorted(sftp.listdir("/")) == ["inbox", "outbox", "receipts-in", "receipts-out"]
        assert sftp.normalize(".") == "/"


def test_dot_dot_and_absolute_paths_stay_inside_the_root(embedded_server: EmbeddedPeer) -> None:
    outside = embedded_server.config.base_dir / "escape.txt"
    with paramiko_sftp(embedded_server) as sftp:
        assert sftp.normalize("..") == "/"
        assert sftp.normalize("../../..") == "/"
        assert sorted(sftp.listdir("../..")) == sorted(sftp.listdir("/"))
        for path in ("/etc/passwd", "../../../../etc/passwd", "inbox/../../../etc/passwd"):
            with pytest.raises(FileNotFoundError):
                sftp.stat(path)
            with pytest.raises(FileNotFoundError):
                sftp.open(path, "rb")
        # Writing "above" the root lands inside it.
        with sftp.open("../../escape.txt", "wb") as remote:
            remote.write(b"contained")
        with sftp.open("/inbox/absolute.txt", "wb") as remote:
            remote.write(b"absolute")
    assert not outside.exists()
    assert (embedded_server.root() / "escape.txt").read_bytes() == b"contained"
    assert (embedded_server.root() / "inbox" / "absolute.txt").read_bytes() == b"absolute"


def test_symlink_creation_is_refused(embedded_server: EmbeddedPeer) -> None:
    with paramiko_sftp(embedded_server) as sftp:
        for target in ("/etc/passwd", "../../../etc/passwd", "inbox"):
            with pytest.raises(PermissionError):
                sftp.symlink(target, "outbox/link")
    assert not os.path.lexists(embedded_server.root() / "outbox" / "link")


def test_hard_link_creation_is_refused(embedded_server: EmbeddedPeer) -> None:
    (embedded_server.root() / "outbox" / "doc.txt").write_bytes(b"ours")

    async def link() -> None:
        async with (
            asyncssh.connect(**embedded_server.asyncssh_options()) as conn,
            conn.start_sftp_client() as sftp,
        ):
            await sftp.link("outbox/doc.txt", "outbox/copy.txt")

    with pytest.raises(asyncssh.SFTPPermissionDenied):
        asyncio.run(link())
    assert not os.path.lexists(embedded_server.root() / "outbox" / "copy.txt")


def test_a_planted_symlink_to_outside_is_not_followed(embedded_server: EmbeddedPeer, tmp_path: Path) -> None:
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "key.txt").write_bytes(b"do not serve")
    root = embedded_server.root()
    (root / "inbox" / "file-link").symlink_to(secret_dir / "key.txt")
    (root / "dir-link").symlink_to(secret_dir)
    (root / "outbox" / "passwd").symlink_to("/etc/passwd")
    (root / "outbox" / "relative").symlink_to("../../../../secret/key.txt")

    with paramiko_sftp(embedded_server) as sftp:
        for path in ("inbox/file-link", "outbox/passwd", "outbox/relative", "dir-link/key.txt"):
            with pytest.raises(PermissionError):
                sftp.open(path, "rb")
            with pytest.raises(PermissionError):
                sftp.stat(path)
        with pytest.raises(PermissionError):
            sftp.listdir("dir-link")
        with pytest.raises(PermissionError):
            sftp.open("dir-link/new.txt", "wb")
        with pytest.raises(PermissionError):
            sftp.remove("outbox/passwd")
        with pytest.raises(PermissionError):
            sftp.readlink("inbox/file-link")
    assert sorted(p.name for p in secret_dir.iterdir()) == ["key.txt"]
    assert (secret_dir / "key.txt").read_bytes() == b"do not serve"
    assert (root / "outbox" / "passwd").is_symlink()


def test_exec_shell_and_other_subsystems_are_refused(embedded_server: EmbeddedPeer) -> None:
    transport = paramiko_transport(embedded_server)
    try:
        for request in (
            lambda chan: chan.exec_command("id"),
            lambda chan: chan.invoke_shell(),
            lambda chan: chan.invoke_subsystem("netconf"),
            lambda chan: chan.get_pty(),
            lambda chan: chan.request_x11(),
        ):
            chan = transport.open_session()
            with pytest.raises(paramiko.SSHException):
                request(chan)
            chan.close()
        # The connection survives the refusals and still serves SFTP.
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        assert "inbox" in sftp.listdir("/")
        sftp.close()
    finally:
        transport.close()


def test_asyncssh_exec_is_refused(embedded_server: EmbeddedPeer) -> None:
    async def run() -> None:
        async with asyncssh.connect(**embedded_server.asyncssh_options()) as conn:
            await conn.run("echo hello", check=True)

    with pytest.raises((asyncssh.ChannelOpenError, asyncssh.ProcessError)):
        asyncio.run(run())


def test_port_forwarding_is_refused(embedded_server: EmbeddedPeer) -> None:
    transport = paramiko_transport(embedded_server)
    try:
        with pytest.raises(paramiko.ChannelException):
            transport.open_channel("direct-tcpip", (embedded_server.host, embedded_server.port), ("127.0.0.1", 40000))
        with pytest.raises(paramiko.SSHException):
            transport.request_port_forward("127.0.0.1", 0)
    finally:
        transport.close()

    async def forward() -> list[str]:
        refused = []
        async with asyncssh.connect(**embedded_server.asyncssh_options()) as conn:
            try:
                await conn.open_connection(embedded_server.host, embedded_server.port)
            except asyncssh.ChannelOpenError:
                refused.append("local")
            try:
                await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)
            except asyncssh.ChannelListenError:
                refused.append("remote")
            try:
                await conn.open_unix_connection("/run/sshd.sock")
            except asyncssh.ChannelOpenError:
                refused.append("unix")
        return refused

    assert asyncio.run(forward()) == ["local", "remote", "unix"]


def test_errno_of_a_refusal_is_permission_denied(embedded_server: EmbeddedPeer) -> None:
    with paramiko_sftp(embedded_server) as sftp, pytest.raises(PermissionError) as raised:
        sftp.symlink("/", "inbox/root")
    assert _errno_of(raised) == errno.EACCES
