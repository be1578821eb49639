"""The top-level packet walk open_message runs before any decryption (Sequoia-made inputs, byte edits)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pysequoia
import pytest

from sftp_pipeline import errors
from sftp_pipeline.openpgp.open import open_message
from tests.peers.keysets import keys_from_tsk


@pytest.fixture(scope="module")
def parties() -> tuple[pysequoia.Tsk, pysequoia.Tsk]:
    return pysequoia.Tsk.generate("Us"), pysequoia.Tsk.generate("Partner")


@pytest.fixture
def sealed(parties, tmp_path: Path) -> bytes:
    us, partner = parties
    data = os.urandom(5000)
    return bytes(pysequoia.encrypt(data, recipients=[us.extract_certificate()], signer=partner.signer(), armor=False))


def _open(data: bytes, parties, tmp_path: Path) -> errors.OpenRejected:
    us, partner = parties
    keys = keys_from_tsk(us, tmp_path)
    src = tmp_path / "in.pgp"
    src.write_bytes(data)
    (tmp_path / "out").mkdir()
    with pytest.raises(errors.OpenRejected) as info:
        open_message(
            src,
            tmp_path / "out" / "doc",
            keys=keys,
            sender=partner.extract_certificate(),
            now=datetime.now(UTC),
            max_output=1_000_000,
        )
    assert list((tmp_path / "out").iterdir()) == []
    return info.value


def _seipd_offset(data: bytes) -> int:
    """Offset of the SEIPD packet header (after the PKESK packets), for new-format headers."""
    pos = 0
    while data[pos] & 0x3F != 18:
        first = data[pos + 1]
        length, hlen = (first, 2) if first < 192 else (((first - 192) << 8) + data[pos + 2] + 192, 3)
        pos += hlen + length
    return pos


def test_armoured_input_is_malformed(sealed: bytes, parties, tmp_path: Path) -> None:
    armoured = pysequoia.armor(sealed, pysequoia.ArmorKind.Message).encode()
    assert _open(armoured, parties, tmp_path).status == "malformed"


def test_sed_packet_is_integrity_missing(sealed: bytes, parties, tmp_path: Path) -> None:
    pos = _seipd_offset(sealed)
    edited = sealed[:pos] + bytes([0xC0 | 9]) + sealed[pos + 1 :]
    assert _open(edited, parties, tmp_path).status == "integrity-missing"


def test_weak_cipher_in_seipd2_header_is_refused_before_decrypting(sealed: bytes, parties, tmp_path: Path) -> None:
    pos = _seipd_offset(sealed)
    first = sealed[pos + 1]
    body = pos + (2 if first < 192 or first >= 224 else 3)
    assert sealed[body] == 2, "Sequoia seals to Sequoia-made keys with SEIPDv2"
    edited = sealed[: body + 1] + bytes([2]) + sealed[body + 2 :]  # cipher id 2: 3DES
    rejected = _open(edited, parties, tmp_path)
    assert rejected.status == "weak-algorithm" and "3DES" in str(rejected)


def test_librepgp_ocb_packet_is_malformed(sealed: bytes, parties, tmp_path: Path) -> None:
    pos = _seipd_offset(sealed)
    edited = sealed[:pos] + bytes([0xC0 | 20]) + sealed[pos + 1 :]
    assert _open(edited, parties, tmp_path).status == "malformed"


def test_session_keys_without_data_is_tampered(sealed: bytes, parties, tmp_path: Path) -> None:
    assert _open(sealed[: _seipd_offset(sealed)], parties, tmp_path).status == "tampered"


def test_packet_running_past_the_end_without_session_keys_is_malformed(parties, tmp_path: Path) -> None:
    assert _open(bytes([0xC0 | 1, 200]) + b"x" * 10, parties, tmp_path).status == "malformed"
