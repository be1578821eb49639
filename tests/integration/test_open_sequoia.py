"""open_message on RFC 9580 / SEIPDv2 input (the pysequoia engine): every refusal, no plaintext left."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pysequoia
import pytest

from sftp_pipeline import errors
from sftp_pipeline.keys import OurKeys
from sftp_pipeline.openpgp.open import open_message
from tests.peers.keysets import keys_from_tsk

MAX_OUTPUT = 10_000_000  # far above the test documents; the bomb test goes beyond it


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def us(tmp_path: Path) -> OurKeys:
    return keys_from_tsk(pysequoia.Tsk.generate("Utility (us)"), tmp_path)


@pytest.fixture
def partner() -> pysequoia.Tsk:
    return pysequoia.Tsk.generate("Aggregator (partner)")


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    src = tmp_path / "aggregation.csv"
    src.write_bytes(b"meter,kwh\n" + os.urandom(100_000))
    return src


def _seal(doc: Path, out: Path, to: pysequoia.Cert, signer: pysequoia.Tsk | None) -> Path:
    pysequoia.encrypt_file(
        os.fspath(doc), os.fspath(out), recipients=[to], signer=signer.signer() if signer else None, armor=False
    )
    return out


def _reject(
    src: Path, tmp_path: Path, us: OurKeys, sender: pysequoia.Cert, status: str, max_output: int = MAX_OUTPUT
) -> None:
    dst = tmp_path / "inbox" / "aggregation.csv"
    dst.parent.mkdir(exist_ok=True)
    with pytest.raises(errors.OpenRejected) as info:
        open_message(src, dst, keys=us, sender=sender, now=_now(), max_output=max_output)
    assert info.value.status == status, str(info.value)
    assert list(dst.parent.iterdir()) == []  # neither dst nor its .part


def test_accepts_and_reports(us: OurKeys, partner: pysequoia.Tsk, doc: Path, tmp_path: Path) -> None:
    sealed = _seal(doc, tmp_path / "m.pgp", us.cert, partner)
    dst = tmp_path / "aggregation.csv.out"
    opened = open_message(sealed, dst, keys=us, sender=partner.extract_certificate(), now=_now(), max_output=MAX_OUTPUT)
    assert dst.read_bytes() == doc.read_bytes()
    assert (opened.engine, opened.plaintext_size) == ("sequoia", doc.stat().st_size)
    assert opened.signer_fingerprint == partner.extract_certificate().fingerprint.lower()
    assert opened.algorithms == "AES-256, SEIPDv2 (OCB), sign Ed25519"


def test_not_encrypted_to_us(us: OurKeys, partner: pysequoia.Tsk, doc: Path, tmp_path: Path) -> None:
    stranger = pysequoia.Tsk.generate("Stranger").extract_certificate()
    sealed = _seal(doc, tmp_path / "m.pgp", stranger, partner)
    _reject(sealed, tmp_path, us, partner.extract_certificate(), "not-encrypted-to-us")


def test_unsigned(us: OurKeys, partner: pysequoia.Tsk, doc: Path, tmp_path: Path) -> None:
    sealed = _seal(doc, tmp_path / "m.pgp", us.cert, None)
    _reject(sealed, tmp_path, us, partner.extract_certificate(), "unsigned")


def test_signed_by_another_partner(us: OurKeys, partner: pysequoia.Tsk, doc: Path, tmp_path: Path) -> None:
    other = pysequoia.Tsk.generate("Other partner")
    sealed = _seal(doc, tmp_path / "m.pgp", us.cert, other)
    _reject(sealed, tmp_path, us, partner.extract_certificate(), "unknown-signer")


def test_signed_only(us: OurKeys, partner: pysequoia.Tsk, doc: Path, tmp_path: Path) -> None:
    signed = tmp_path / "m.pgp"
    signed.write_bytes(pysequoia.sign(partner.signer(), doc.read_bytes(), armor=False))
    _reject(signed, tmp_path, us, partner.extract_certificate(), "not-encrypted")


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda b: b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 0x40]) + b[len(b) // 2 + 1 :], "tampered"),
        (lambda b: b[:-50], "tampered"),
        (lambda b: b + b"\x00garbage", "malformed"),
        (lambda b: b + b, "malformed"),
    ],
    ids=["bit-flip", "truncated", "trailing", "two-messages"],
)
def test_mutations(us: OurKeys, partner: pysequoia.Tsk, doc: Path, tmp_path: Path, mutate, status: str) -> None:
    sealed = _seal(doc, tmp_path / "m.pgp", us.cert, partner)
    (tmp_path / "bad.pgp").write_bytes(mutate(sealed.read_bytes()))
    _reject(tmp_path / "bad.pgp", tmp_path, us, partner.extract_certificate(), status)


def test_output_cap(us: OurKeys, partner: pysequoia.Tsk, doc: Path, tmp_path: Path) -> None:
    sealed = _seal(doc, tmp_path / "m.pgp", us.cert, partner)
    _reject(sealed, tmp_path, us, partner.extract_certificate(), "oversize", max_output=50_000)
