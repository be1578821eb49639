"""Embedded SFTP server: uploads are published whole under their final name, once, and never changed."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import paramiko
import pytest

from sftp_pipeline import errors
from sftp_pipeline.config import SftpEndpoint
from sftp_pipeline.transport.sftp import SftpTransport
from tests.peers.embedded import PARTNER_ID, EmbeddedPeer, ServerFactory, paramiko_sftp, paramiko_transport

CHUNK = 256 * 1024
# Why 5 s: the server notices a dropped TCP connection in milliseconds on loopback.
SETTLE_TIMEOUT = 5.0


class StepClock:
    """A clock the test moves: every reading is one second after the previous one."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.readings: list[datetime] = []

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        self.readings.append(self.now)
        return self.now


def _wait_until_idle(peer: EmbeddedPeer) -> None:
    """Wait until the server has no file open for writing (it has processed a drop or a close)."""

    async def busy() -> int:
        return len(peer.server.busy)

    deadline = time.monotonic() + SETTLE_TIMEOUT
    while peer.call(busy()):
        if time.monotonic() > deadline:
            pytest.fail("the server still holds an upload open after the client went away")
        time.sleep(0.02)


def test_a_final_name_in_progress_is_invisible_until_close(embedded_server: EmbeddedPeer) -> None:
    inbox = embedded_server.root() / "inbox"
    with paramiko_sftp(embedded_server) as writer, paramiko_sftp(embedded_server) as observer:
        remote = writer.open("inbox/big.bin", "wb")
        remote.write(b"a" * CHUNK)
        remote.flush()
        with pytest.raises(FileNotFoundError):
            observer.stat("inbox/big.bin")
        assert observer.listdir("inbox") == [".big.bin.part"]
        assert not (inbox / "big.bin").exists()
        remote.write(b"b" * CHUNK)
        remote.close()
        assert observer.stat("inbox/big.bin").st_size == 2 * CHUNK
        assert observer.listdir("inbox") == ["big.bin"]
    assert (inbox / "big.bin").read_bytes() == b"a" * CHUNK + b"b" * CHUNK
    assert (inbox / "big.bin").stat().st_mode & 0o777 == 0o640
    assert len(embedded_server.wait_uploads(1)) == 1


def test_completed_at_is_taken_when_the_client_closes(embedded_server_factory: ServerFactory) -> None:
    clock = StepClock(datetime(2026, 1, 5, 3, 0, tzinfo=UTC))
    peer = embedded_server_factory(clock=clock)
    with paramiko_sftp(peer) as sftp:
        remote = sftp.open("inbox/doc.pgp", "wb")
        remote.write(b"sealed")
        assert clock.readings == []  # nothing is complete yet
        remote.close()
    (upload,) = peer.wait_uploads(1)
    assert clock.readings == [upload.completed_at]
    assert upload.completed_at.tzinfo is UTC
    assert upload.partner_id == PARTNER_ID


def test_a_dropped_connection_leaves_only_the_temporary_file(embedded_server: EmbeddedPeer) -> None:
    transport = paramiko_transport(embedded_server)
    sftp = paramiko.SFTPClient.from_transport(transport)
    assert sftp is not None
    remote = sftp.open("inbox/aggregation.csv.pgp", "wb")
    for _ in range(8):  # 2 MiB of a larger file
        remote.write(os.urandom(CHUNK))
    remote.flush()
    transport.close()  # the line drops: no CLOSE for the handle
    _wait_until_idle(embedded_server)

    inbox = embedded_server.root() / "inbox"
    assert not (inbox / "aggregation.csv.pgp").exists()
    assert [p.name for p in inbox.iterdir()] == [".aggregation.csv.pgp.part"]
    assert embedded_server.uploads == []

    # A retry starts the temporary file afresh and publishes the whole file.
    payload = os.urandom(3 * CHUNK)
    with paramiko_sftp(embedded_server) as again, again.open("inbox/aggregation.csv.pgp", "wb") as retry:
        retry.write(payload)
    assert (inbox / "aggregation.csv.pgp").read_bytes() == payload
    assert sorted(p.name for p in inbox.iterdir()) == ["aggregation.csv.pgp"]
    assert len(embedded_server.wait_uploads(1)) == 1


def test_an_sftp_session_ended_without_close_publishes_nothing(embedded_server: EmbeddedPeer) -> None:
    async def abandon() -> None:
        async with asyncssh.connect(**embedded_server.asyncssh_options()) as conn:
            sftp = await conn.start_sftp_client()
            remote = await sftp.open("inbox/half.bin", "wb")
            await remote.write(b"x" * CHUNK)
            sftp.exit()  # ends the subsystem with the handle still open
            await sftp.wait_closed()

    asyncio.run(abandon())
    _wait_until_idle(embedded_server)
    assert not (embedded_server.root() / "inbox" / "half.bin").exists()
    assert embedded_server.uploads == []


def test_overwriting_a_delivered_file_is_refused(embedded_server: EmbeddedPeer) -> None:
    inbox = embedded_server.root() / "inbox"
    with paramiko_sftp(embedded_server) as sftp:
        with sftp.open("inbox/INV-7.pgp", "wb") as remote:
            remote.write(b"original")
        for mode in ("wb", "ab", "r+b"):
            with pytest.raises(PermissionError):
                sftp.open("inbox/INV-7.pgp", mode)
        with pytest.raises(PermissionError):
            sftp.truncate("inbox/INV-7.pgp", 0)
        with pytest.raises(PermissionError):
            sftp.chmod("inbox/INV-7.pgp", 0o777)
        with pytest.raises(PermissionError):
            sftp.rename("inbox/INV-7.pgp", "inbox/INV-8.pgp")
        with pytest.raises(PermissionError):
            sftp.remove("inbox/INV-7.pgp")
        with sftp.open("inbox/.INV-7.pgp.part", "wb") as temp:
            temp.write(b"replacement")
        with pytest.raises(PermissionError):
            sftp.posix_rename("inbox/.INV-7.pgp.part", "inbox/INV-7.pgp")
        with pytest.raises(OSError):
            sftp.rename("inbox/.INV-7.pgp.part", "inbox/INV-7.pgp")
        with sftp.open("inbox/INV-7.pgp", "rb") as remote:
            assert remote.read() == b"original"
    assert (inbox / "INV-7.pgp").read_bytes() == b"original"
    assert len(embedded_server.wait_uploads(1)) == 1


def test_client_managed_temp_name_fires_on_the_rename(embedded_server: EmbeddedPeer, tmp_path: Path) -> None:
    """What our own SFTP transport does: write ``.name.part``, then rename it to ``name``."""
    local = tmp_path / "doc.pgp"
    local.write_bytes(os.urandom(CHUNK + 17))

    async def upload() -> None:
        async with (
            asyncssh.connect(**embedded_server.asyncssh_options()) as conn,
            conn.start_sftp_client() as sftp,
        ):
            await sftp.put(str(local), "receipts-in/.doc.pgp.part")
            assert (await sftp.stat("receipts-in/.doc.pgp.part")).size == CHUNK + 17
            await sftp.posix_rename("receipts-in/.doc.pgp.part", "receipts-in/doc.pgp")

    asyncio.run(upload())
    (upload_seen,) = embedded_server.wait_uploads(1)
    final = embedded_server.root() / "receipts-in" / "doc.pgp"
    assert upload_seen.path.resolve() == final
    assert final.read_bytes() == local.read_bytes()
    assert sorted(p.name for p in final.parent.iterdir()) == ["doc.pgp"]


def test_temp_names_can_be_resumed_and_removed(embedded_server: EmbeddedPeer) -> None:
    with paramiko_sftp(embedded_server) as sftp:
        with sftp.open("inbox/.resume.pgp.part", "wb") as first:
            first.write(b"12345")
        with sftp.open("inbox/.resume.pgp.part", "ab") as rest:
            rest.write(b"67890")
        assert sftp.stat("inbox/.resume.pgp.part").st_size == 10
        sftp.remove("inbox/.resume.pgp.part")
        assert sftp.listdir("inbox") == []
    assert embedded_server.uploads == []


def test_only_pickup_directories_allow_removal(embedded_server: EmbeddedPeer) -> None:
    root = embedded_server.root()
    (root / "outbox" / "for-partner.pgp").write_bytes(b"ours")
    (root / "receipts-out" / "receipt.json.pgp").write_bytes(b"receipt")
    with paramiko_sftp(embedded_server) as sftp:
        with sftp.open("outbox/for-partner.pgp", "rb") as remote:
            assert remote.read() == b"ours"
        sftp.remove("outbox/for-partner.pgp")
        sftp.remove("receipts-out/receipt.json.pgp")
        with sftp.open("receipts-in/r.json.pgp", "wb") as remote:
            remote.write(b"their receipt")
        with pytest.raises(PermissionError):
            sftp.remove("receipts-in/r.json.pgp")
        with pytest.raises(PermissionError):
            sftp.rmdir("inbox")
    assert not (root / "outbox" / "for-partner.pgp").exists()
    assert (root / "receipts-in" / "r.json.pgp").exists()


def test_unsafe_final_names_are_refused(embedded_server: EmbeddedPeer) -> None:
    with paramiko_sftp(embedded_server) as sftp:
        for name in ("inbox/-rf", "inbox/with space.pgp", "inbox/tab\tname"):
            with pytest.raises(OSError):
                sftp.open(name, "wb")
    assert list((embedded_server.root() / "inbox").iterdir()) == []


def test_two_sessions_cannot_write_the_same_name_at_once(embedded_server: EmbeddedPeer) -> None:
    with paramiko_sftp(embedded_server) as first, paramiko_sftp(embedded_server) as second:
        remote = first.open("inbox/same.pgp", "wb")
        remote.write(b"first")
        with pytest.raises(OSError):
            second.open("inbox/same.pgp", "wb")
        with pytest.raises(OSError):
            second.open("inbox/.same.pgp.part", "wb")
        remote.close()
    assert (embedded_server.root() / "inbox" / "same.pgp").read_bytes() == b"first"


def test_a_failing_upload_hook_does_not_fail_the_upload(embedded_server_factory: ServerFactory) -> None:
    def explode(partner_id: str, path: Path, completed_at: datetime) -> None:
        raise RuntimeError("collector is down")

    peer = embedded_server_factory(on_upload=explode)
    with paramiko_sftp(peer) as sftp, sftp.open("inbox/ok.pgp", "wb") as remote:
        remote.write(b"data")
    assert len(peer.wait_uploads(1)) == 1
    assert (peer.root() / "inbox" / "ok.pgp").read_bytes() == b"data"


def test_a_new_session_restarts_a_client_managed_upload_its_dead_session_still_holds(
    embedded_server: EmbeddedPeer,
) -> None:
    """A black-holed client reconnects before the server noticed: its retry must not be refused."""
    inbox = embedded_server.root() / "inbox"
    with paramiko_sftp(embedded_server) as dead, paramiko_sftp(embedded_server) as retry:
        stale = dead.open("inbox/.doc.pgp.part", "wb")
        stale.write(b"half of the first attempt")
        stale.flush()  # the first session now goes silent, its handle still open on the server
        retry.remove("inbox/.doc.pgp.part")
        with retry.open("inbox/.doc.pgp.part", "wb") as fresh:
            fresh.write(b"the whole document")
        retry.posix_rename("inbox/.doc.pgp.part", "inbox/doc.pgp")
        with pytest.raises(OSError):
            stale.write(b"late bytes from the dead session")
            stale.flush()
    assert (inbox / "doc.pgp").read_bytes() == b"the whole document"
    assert sorted(os.listdir(inbox)) == ["doc.pgp"]
    assert [u.path.name for u in embedded_server.wait_uploads(1)] == ["doc.pgp"]


def test_our_transport_finds_its_own_earlier_upload_and_refuses_a_different_file(
    embedded_server: EmbeddedPeer, tmp_path: Path
) -> None:
    """A small upload renames without a stat first; the server refuses the rename over a delivered file, and
    only then does our transport look: the same size is its own earlier upload, another is someone else's."""
    endpoint = SftpEndpoint(
        host=embedded_server.host, port=embedded_server.port, user=embedded_server.partner_id,
        host_keys=[embedded_server.host_key_line], connect_timeout=SETTLE_TIMEOUT,
    )  # fmt: skip
    ours, other = tmp_path / "INV-1.xml.pgp", tmp_path / "other.pgp"
    ours.write_bytes(os.urandom(4096))
    other.write_bytes(os.urandom(5000))

    async def main() -> tuple[bool, bool]:
        t = await SftpTransport.connect(endpoint, client_key=embedded_server.login_key.path, partner_id="utility")
        try:
            first = await t.put_atomic(ours, "receipts-in", "doc.pgp")
            again = await t.put_atomic(ours, "receipts-in", "doc.pgp")
            with pytest.raises(errors.PermanentTransportError, match="already exists with 4096 bytes, not 5000"):
                await t.put_atomic(other, "receipts-in", "doc.pgp")
            return first.already_present, again.already_present
        finally:
            await t.close()

    assert asyncio.run(main()) == (False, True)
    final = embedded_server.root() / "receipts-in" / "doc.pgp"
    assert final.read_bytes() == ours.read_bytes()
    assert sorted(p.name for p in final.parent.iterdir()) == ["doc.pgp"]  # no temporary name left behind
    assert len(embedded_server.wait_uploads(1)) == 1
