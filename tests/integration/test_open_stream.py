"""GnupgStream: GnuPG opens a SEIPDv1 message as it downloads; open_message judges it by the usual rules."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pysequoia
import pytest

from sftp_pipeline import errors
from sftp_pipeline.keys import OurKeys
from sftp_pipeline.openpgp.open import open_message
from sftp_pipeline.openpgp.stream import GnupgStream, head_seipd_version
from tests.peers.gpg import GnuPG
from tests.peers.keysets import keys_from_tsk

pytestmark = pytest.mark.gpg

MAX_OUTPUT = 10_000_000
BLOCK = 64 * 1024  # how the tests cut the message, like a download's blocks


@pytest.fixture
def us(tmp_path: Path) -> OurKeys:
    return keys_from_tsk(pysequoia.Tsk.generate("Utility (us)"), tmp_path)


@pytest.fixture
def partner(gpg: GnuPG, us: OurKeys) -> tuple[str, pysequoia.Cert]:
    fpr = gpg.generate()
    gpg.import_key(str(us.cert).encode())
    return fpr, pysequoia.Cert.from_bytes(gpg.export(fpr))


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    src = tmp_path / "invoice.xml"
    src.write_bytes(b"<invoice>" + os.urandom(300_000) + b"</invoice>")
    return src


def _stream(us: OurKeys, cert: pysequoia.Cert, dst: Path) -> GnupgStream:
    return GnupgStream(dst, keys=us, sender=cert, max_output=MAX_OUTPUT, gpg=shutil.which("gpg"))


async def _feed(stream: GnupgStream, data: bytes, start: int = 0) -> None:
    for offset in range(start, len(data), BLOCK):
        await stream(offset, data[offset : offset + BLOCK])


def test_head_tells_the_seipd_version(gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path) -> None:
    fpr, _cert = partner
    gpg.sign_encrypt(doc, tmp_path / "v1.pgp", us.fingerprint, signer_fpr=fpr)
    v1 = (tmp_path / "v1.pgp").read_bytes()
    v2 = pysequoia.encrypt(b"x" * 1000, recipients=[us.cert], armor=False)
    assert head_seipd_version(v1[:4096]) == 1
    assert head_seipd_version(v2) == 2
    assert head_seipd_version(v1[:3]) is None  # too short to tell
    assert head_seipd_version(b"") is None
    assert head_seipd_version(b"-----BEGIN PGP MESSAGE-----") == 0
    gpg.run("--yes", "--output", str(tmp_path / "signed.pgp"), "--local-user", fpr, "--sign", str(doc))
    assert head_seipd_version((tmp_path / "signed.pgp").read_bytes()[:4096]) == 0  # not encrypted


def test_streamed_open_releases_the_same_plaintext(gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path) -> None:
    fpr, cert = partner
    sealed = tmp_path / "m.pgp"
    gpg.sign_encrypt(doc, sealed, us.fingerprint, signer_fpr=fpr)
    dst = tmp_path / "out" / "invoice.xml"
    dst.parent.mkdir()
    stream = _stream(us, cert, dst)
    asyncio.run(_feed(stream, sealed.read_bytes()))
    run = stream.finish()
    assert run is not None
    assert run.plaintext_sha256 == hashlib.sha256(doc.read_bytes()).hexdigest()

    opened = open_message(sealed, dst, keys=us, sender=cert, now=datetime.now(UTC), max_output=MAX_OUTPUT, streamed=run)
    stream.discard()  # a no-op now: the partial file was released, not deleted
    assert dst.read_bytes() == doc.read_bytes()
    assert opened.engine == "gnupg" and opened.signer_fingerprint == fpr.lower()
    assert opened.plaintext_sha256 == run.plaintext_sha256
    assert sorted(p.name for p in dst.parent.iterdir()) == ["invoice.xml"]


def test_a_restarted_download_falls_back_to_opening_the_file(
    gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path
) -> None:
    fpr, cert = partner
    sealed = tmp_path / "m.pgp"
    gpg.sign_encrypt(doc, sealed, us.fingerprint, signer_fpr=fpr)
    data = sealed.read_bytes()
    dst = tmp_path / "out" / "invoice.xml"
    dst.parent.mkdir()
    stream = _stream(us, cert, dst)

    async def interrupted() -> None:
        await stream(0, data[:BLOCK])
        await stream(BLOCK, data[BLOCK : 2 * BLOCK])
        await _feed(stream, data)  # the retry starts again at offset 0

    asyncio.run(interrupted())
    assert stream.finish() is None
    assert list(dst.parent.iterdir()) == []  # GnuPG's partial output is gone
    opened = open_message(sealed, dst, keys=us, sender=cert, now=datetime.now(UTC), max_output=MAX_OUTPUT)
    assert dst.read_bytes() == doc.read_bytes() and opened.engine == "gnupg"


def test_a_tampered_stream_is_rejected_and_leaves_nothing(
    gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path
) -> None:
    fpr, cert = partner
    sealed = tmp_path / "m.pgp"
    gpg.sign_encrypt(doc, sealed, us.fingerprint, signer_fpr=fpr, extra=["--compress-algo", "none"])
    data = bytearray(sealed.read_bytes())
    data[len(data) // 2] ^= 0x01
    sealed.write_bytes(bytes(data))
    dst = tmp_path / "out" / "invoice.xml"
    dst.parent.mkdir()
    stream = _stream(us, cert, dst)
    asyncio.run(_feed(stream, bytes(data)))
    run = stream.finish()
    assert run is not None
    with pytest.raises(errors.OpenRejected) as info:
        open_message(sealed, dst, keys=us, sender=cert, now=datetime.now(UTC), max_output=MAX_OUTPUT, streamed=run)
    assert info.value.status == "tampered", str(info.value)
    assert list(dst.parent.iterdir()) == []


def test_a_seipdv2_head_steps_aside(us: OurKeys, tmp_path: Path) -> None:
    sender = pysequoia.Tsk.generate("Sequoia partner")
    message = pysequoia.encrypt(b"x" * 100_000, recipients=[us.cert], signer=sender.signer(), armor=False)
    dst = tmp_path / "out" / "doc.xml"
    dst.parent.mkdir()
    stream = _stream(us, sender.extract_certificate(), dst)
    asyncio.run(_feed(stream, message))
    assert stream.finish() is None  # GnuPG 2.2 cannot read SEIPDv2: open_message gives it to Sequoia
    assert list(dst.parent.iterdir()) == []
