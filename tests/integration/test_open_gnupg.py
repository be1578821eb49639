"""open_message against real peers: GnuPG makes the inputs (defaults, odd options), bytes get mutated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pysequoia
import pytest

from sftp_pipeline import errors
from sftp_pipeline.keys import OurKeys
from sftp_pipeline.openpgp import SigningKey, seal
from sftp_pipeline.openpgp.open import open_message
from tests.peers.gpg import GnuPG
from tests.peers.keysets import keys_from_tsk

pytestmark = pytest.mark.gpg

MAX_OUTPUT = 10_000_000  # the cap used by these tests; the bomb expands far beyond it


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def us(tmp_path: Path) -> OurKeys:
    return keys_from_tsk(pysequoia.Tsk.generate("Utility (us)"), tmp_path)


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    src = tmp_path / "invoice.xml"
    src.write_bytes(b"<invoice id='INV-1'>" + os.urandom(200_000) + b"</invoice>")
    return src


@pytest.fixture
def partner(gpg: GnuPG, us: OurKeys) -> tuple[str, pysequoia.Cert]:
    fpr = gpg.generate()
    gpg.import_key(str(us.cert).encode())
    return fpr, pysequoia.Cert.from_bytes(gpg.export(fpr))


def _reject(src: Path, tmp_path: Path, us: OurKeys, sender: pysequoia.Cert, status: str, **kw: object) -> None:
    dst = tmp_path / "out" / "invoice.xml"
    dst.parent.mkdir(exist_ok=True)
    with pytest.raises(errors.OpenRejected) as info:
        open_message(src, dst, keys=us, sender=sender, now=kw.pop("now", _now()), max_output=MAX_OUTPUT)  # type: ignore[arg-type]
    assert info.value.status == status, str(info.value)
    assert str(src) in str(info.value)
    assert not dst.exists()
    assert list(dst.parent.iterdir()) == []  # no .part either


def test_gnupg_default_sign_encrypt_is_accepted(gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path) -> None:
    fpr, cert = partner
    sealed = tmp_path / "m.pgp"
    gpg.sign_encrypt(doc, sealed, us.fingerprint, signer_fpr=fpr)
    dst = tmp_path / "inbox" / "invoice.xml"
    dst.parent.mkdir()
    opened = open_message(sealed, dst, keys=us, sender=cert, now=_now(), max_output=MAX_OUTPUT)
    assert dst.read_bytes() == doc.read_bytes()
    assert opened.engine == "gnupg"
    assert opened.signer_fingerprint == fpr.lower()
    assert opened.literal_name == "invoice.xml"
    assert opened.plaintext_size == doc.stat().st_size
    assert "AES-256" in opened.algorithms
    assert sorted(p.name for p in dst.parent.iterdir()) == ["invoice.xml"]


@pytest.mark.parametrize("pq", [False, True])
def test_our_own_seal_is_accepted(us: OurKeys, doc: Path, tmp_path: Path, pq: bool) -> None:
    if pq:
        tsk = pysequoia.Tsk.generate(
            "PQ partner", profile=pysequoia.Profile.RFC9580, cipher_suite=pysequoia.CipherSuite.MLDSA65_Ed25519
        )
        us = keys_from_tsk(
            pysequoia.Tsk.generate(
                "PQ us", profile=pysequoia.Profile.RFC9580, cipher_suite=pysequoia.CipherSuite.MLDSA65_Ed25519
            ),
            tmp_path,
        )
    else:
        tsk = pysequoia.Tsk.generate("Sequoia partner")
    sender = SigningKey(tsk.extract_certificate(), tsk.signer())
    sealed = tmp_path / "m.pgp"
    seal(doc, sealed, signer=sender, recipients=[us.cert], now=_now())
    dst = tmp_path / "doc.xml"
    opened = open_message(sealed, dst, keys=us, sender=sender.cert, now=_now(), max_output=MAX_OUTPUT)
    assert dst.read_bytes() == doc.read_bytes()
    assert opened.engine == "sequoia"
    assert opened.signer_fingerprint == sender.cert.fingerprint.lower()


def test_encrypted_to_another_key_only(gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path) -> None:
    fpr, cert = partner
    other = gpg.generate("Someone Else <else@example.test>")
    gpg.sign_encrypt(doc, tmp_path / "m.pgp", other, signer_fpr=fpr)
    _reject(tmp_path / "m.pgp", tmp_path, us, cert, "not-encrypted-to-us")


def test_signed_only(gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path) -> None:
    fpr, cert = partner
    gpg.run("--output", str(tmp_path / "m.pgp"), "--local-user", fpr, "--sign", str(doc))
    _reject(tmp_path / "m.pgp", tmp_path, us, cert, "not-encrypted")


def test_encrypted_but_unsigned(gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path) -> None:
    _, cert = partner
    gpg.run("--trust-model", "always", "--output", str(tmp_path / "m.pgp"), "-r", us.fingerprint, "--encrypt", str(doc))
    _reject(tmp_path / "m.pgp", tmp_path, us, cert, "unsigned")


def test_signed_by_another_key(gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path) -> None:
    _, cert = partner
    intruder = gpg.generate("Other Partner <other@example.test>")
    gpg.sign_encrypt(doc, tmp_path / "m.pgp", us.fingerprint, signer_fpr=intruder)
    _reject(tmp_path / "m.pgp", tmp_path, us, cert, "unknown-signer")


def test_expired_signer(gpg: GnuPG, doc: Path, tmp_path: Path) -> None:
    ours = gpg.generate("Us in 2020 <us@example.test>", expire="never", faked_time="20200101T000000")
    us = keys_from_tsk(pysequoia.Tsk.from_bytes(gpg.export_secret(ours)), tmp_path)
    fpr = gpg.generate("Old <old@example.test>", expire="1d", faked_time="20200101T000000")
    gpg.sign_encrypt(
        doc,
        tmp_path / "m.pgp",
        us.fingerprint,
        signer_fpr=fpr,
        extra=["--faked-system-time", "20200101T010000", "--ignore-time-conflict"],
    )
    _reject(tmp_path / "m.pgp", tmp_path, us, pysequoia.Cert.from_bytes(gpg.export(fpr)), "signer-expired")


def test_revoked_signer(gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path) -> None:
    fpr, _ = partner
    gpg.sign_encrypt(doc, tmp_path / "m.pgp", us.fingerprint, signer_fpr=fpr)
    revoked = pysequoia.Cert.from_bytes(gpg.revoke(fpr))
    _reject(tmp_path / "m.pgp", tmp_path, us, revoked, "signer-revoked")


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda b: b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 0x01]) + b[len(b) // 2 + 1 :], "tampered"),
        (lambda b: b[: len(b) - 100], "tampered"),
        (lambda b: b + b"trailing garbage", "malformed"),
        (lambda b: b + b, "malformed"),
        (lambda b: b"", "malformed"),
        (lambda b: bytes(range(7, 250)) * 40, "malformed"),
    ],
    ids=["bit-flip", "truncated", "trailing-garbage", "two-messages", "empty", "random"],
)
def test_mutations(gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path, mutate, status: str) -> None:
    fpr, cert = partner
    gpg.sign_encrypt(doc, tmp_path / "m.pgp", us.fingerprint, signer_fpr=fpr)
    (tmp_path / "bad.pgp").write_bytes(mutate((tmp_path / "m.pgp").read_bytes()))
    _reject(tmp_path / "bad.pgp", tmp_path, us, cert, status)


# Opens the bomb in a fresh interpreter, so that its peak and its children's (gpg) peak are this call's alone.
_BOMB_CHILD = """
import json, resource, sys
from datetime import UTC, datetime
from pathlib import Path
import pysequoia
from sftp_pipeline import errors
from sftp_pipeline.openpgp.open import open_message
from tests.peers.keysets import keys_from_tsk
tmp = Path(sys.argv[1])
us = keys_from_tsk(pysequoia.Tsk.from_bytes((tmp / "us.key").read_bytes()), tmp)
sender = pysequoia.Cert.from_bytes((tmp / "sender.asc").read_bytes())
try:
    open_message(tmp / "bomb.pgp", tmp / "out.bin", keys=us, sender=sender, now=datetime.now(UTC),
                 max_output=int(sys.argv[2]))
    status = "accepted"
except errors.OpenRejected as exc:
    status = exc.status
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"status": status, "peak_mib": int(hwm.split()[1]) / 1024,
                  "child_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "left": sorted(p.name for p in tmp.iterdir() if "out" in p.name)}))
"""
# Why 150 MiB: the interpreter with pysequoia is ~60 MiB and gpg streams in ~10 MiB; the bomb expands to 200 MB.
BOMB_MAX_PEAK_MIB = 150


def test_compression_bomb_is_capped_in_bounded_memory(gpg: GnuPG, us: OurKeys, partner, tmp_path: Path) -> None:
    fpr, cert = partner
    zeros = tmp_path / "zeros"
    with zeros.open("wb") as fh:
        fh.truncate(200_000_000)
    gpg.sign_encrypt(zeros, tmp_path / "bomb.pgp", us.fingerprint, signer_fpr=fpr, extra=["--compress-level", "9"])
    zeros.unlink()
    assert (tmp_path / "bomb.pgp").stat().st_size < 1_000_000
    (tmp_path / "us.key").write_text(str(us.tsk))
    (tmp_path / "sender.asc").write_text(str(cert))
    out = subprocess.run(
        [sys.executable, "-c", _BOMB_CHILD, str(tmp_path), str(MAX_OUTPUT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    result = json.loads(out.stdout)
    assert result["status"] == "oversize"
    assert result["left"] == []
    assert result["peak_mib"] < BOMB_MAX_PEAK_MIB, result
    assert result["child_peak_mib"] < BOMB_MAX_PEAK_MIB, result


def test_without_integrity_protection(gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path) -> None:
    fpr, cert = partner
    gpg.sign_encrypt(doc, tmp_path / "m.pgp", us.fingerprint, signer_fpr=fpr, extra=["--rfc2440"])
    assert "tag=9" in gpg.list_packets(tmp_path / "m.pgp")  # SED: encrypted without an MDC
    _reject(tmp_path / "m.pgp", tmp_path, us, cert, "integrity-missing")


def test_sha1_signature(gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path) -> None:
    fpr, cert = partner
    gpg.sign_encrypt(doc, tmp_path / "m.pgp", us.fingerprint, signer_fpr=fpr, extra=["--digest-algo", "SHA1"])
    _reject(tmp_path / "m.pgp", tmp_path, us, cert, "weak-algorithm")


def test_3des(gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path) -> None:
    fpr, cert = partner
    gpg.sign_encrypt(doc, tmp_path / "m.pgp", us.fingerprint, signer_fpr=fpr, extra=["--cipher-algo", "3DES"])
    _reject(tmp_path / "m.pgp", tmp_path, us, cert, "weak-algorithm")


def test_future_signature(gpg: GnuPG, us: OurKeys, partner, doc: Path, tmp_path: Path) -> None:
    fpr, cert = partner
    future = f"{_now() + timedelta(hours=1):%Y%m%dT%H%M%S}"
    gpg.sign_encrypt(doc, tmp_path / "m.pgp", us.fingerprint, signer_fpr=fpr, extra=["--faked-system-time", future])
    _reject(tmp_path / "m.pgp", tmp_path, us, cert, "signature-future")
