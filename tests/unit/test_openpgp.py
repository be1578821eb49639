"""The OpenPGP engine with real Sequoia keys: description, policy, seal round trips, failure cleanup."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pysequoia
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftp_pipeline import errors
from sftp_pipeline.openpgp import SigningKey, check_cert, describe_cert, packets, seal

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """NOW is taken when each test starts, after its keys are made: taken once at import, a long run made
    every key created later look "created in the future"."""
    global NOW
    NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def us() -> pysequoia.Tsk:
    return pysequoia.Tsk.generate("Us (unit)")


@pytest.fixture(scope="module")
def signer(us: pysequoia.Tsk) -> SigningKey:
    return SigningKey(us.extract_certificate(), us.signer())


@pytest.fixture(scope="module")
def pq() -> pysequoia.Tsk:
    return pysequoia.Tsk.generate(
        "Them (pq)", profile=pysequoia.Profile.RFC9580, cipher_suite=pysequoia.CipherSuite.MLDSA65_Ed25519
    )


def test_describe_rfc4880_cert(us: pysequoia.Tsk) -> None:
    info = describe_cert(us.extract_certificate(), NOW)
    assert info.fingerprint == us.extract_certificate().fingerprint.lower()
    assert (info.version, info.profile, info.algorithm) == (4, "rfc4880", "Ed25519")
    assert info.subkey_algorithms == ("Ed25519", "X25519")
    assert info.can_sign and info.can_encrypt and not info.revoked
    assert info.post_quantum is False
    assert info.problems == ()
    assert info.user_ids == ("Us (unit)",)


def test_describe_pq_cert(pq: pysequoia.Tsk) -> None:
    info = describe_cert(pq.extract_certificate(), NOW)
    assert (info.version, info.profile) == (6, "rfc9580")
    assert info.algorithm == "ML-DSA-65+Ed25519"
    assert info.subkey_algorithms == ("ML-DSA-65+Ed25519", "ML-KEM-768+X25519")
    assert info.post_quantum is True
    assert info.encryption_algorithms == ("ML-KEM-768+X25519",)


def test_expiry_is_judged_at_the_given_time() -> None:
    tsk = pysequoia.Tsk.generate("Short-lived", validity_seconds=3600)
    cert = tsk.extract_certificate()
    assert check_cert(cert, purpose="encrypt", now=NOW, label="x").expires is not None
    later = NOW + timedelta(hours=2)
    with pytest.raises(errors.KeyPolicyError, match="expired on") as caught:
        check_cert(cert, purpose="encrypt", now=later, label="partner 'utility'")
    assert cert.fingerprint.lower() in str(caught.value)
    assert "partner 'utility'" in str(caught.value) and "quick-set-expire" in str(caught.value)


def test_revoked_cert_is_refused_for_both_purposes() -> None:
    tsk = pysequoia.Tsk.generate("Revoked")
    cert = tsk.extract_certificate()
    revoked = pysequoia.Cert.from_bytes(bytes(cert) + bytes(cert.revoke(tsk.certifier())))
    for purpose in ("encrypt", "verify"):
        with pytest.raises(errors.KeyPolicyError, match="it is revoked"):
            check_cert(revoked, purpose=purpose, now=NOW, label="p")  # type: ignore[arg-type]


def test_rsa2048_from_sequoia_is_refused() -> None:
    tsk = pysequoia.Tsk.generate("Weak", cipher_suite=pysequoia.CipherSuite.RSA2k)
    info = describe_cert(tsk.extract_certificate(), NOW)
    assert info.algorithm == "RSA-2048"
    assert any("below the 3072-bit minimum" in p for p in info.problems)
    with pytest.raises(errors.KeyPolicyError, match="RSA-2048"):
        check_cert(tsk.extract_certificate(), purpose="encrypt", now=NOW, label="p")


def test_naive_time_is_a_programming_error(us: pysequoia.Tsk) -> None:
    with pytest.raises(ValueError, match="naive"):
        describe_cert(us.extract_certificate(), datetime.now())


def test_seal_round_trip_and_hashes(signer: SigningKey, us: pysequoia.Tsk, tmp_path: Path) -> None:
    src = tmp_path / "doc"
    src.write_bytes(b"hello settlement")
    dst = tmp_path / "doc.pgp"
    info = seal(src, dst, signer=signer, recipients=[signer.cert], now=NOW)

    assert info.plaintext_sha256 == hashlib.sha256(b"hello settlement").hexdigest()
    assert info.plaintext_size == 16
    assert info.ciphertext_sha256 == hashlib.sha256(dst.read_bytes()).hexdigest()
    assert info.ciphertext_size == dst.stat().st_size
    assert dst.read_bytes()[:1] != b"-"  # binary, not armored
    assert info.cipher == "AES-256"
    assert info.seipd_version == 2  # Sequoia-made keys advertise SEIPDv2 (OCB)
    assert info.algorithms == "AES-256, SEIPDv2 (OCB), sign Ed25519, encrypt X25519"
    out = pysequoia.decrypt(dst.read_bytes(), us.decryptor(), store=lambda _ids: [signer.cert])
    assert out.bytes == b"hello settlement" and len(out.valid_sigs) == 1


def test_seal_to_pq_says_post_quantum(signer: SigningKey, pq: pysequoia.Tsk, tmp_path: Path) -> None:
    src = tmp_path / "doc"
    src.write_bytes(os.urandom(5000))
    info = seal(src, tmp_path / "doc.pgp", signer=signer, recipients=[pq.extract_certificate()], now=NOW)
    assert info.post_quantum is True
    assert info.algorithms == "AES-256, SEIPDv2 (OCB), sign Ed25519, encrypt ML-KEM-768+X25519"


def test_failed_seal_leaves_no_output(signer: SigningKey, tmp_path: Path) -> None:
    dst = tmp_path / "out.pgp"
    with pytest.raises(errors.CryptoError):
        seal(tmp_path / "missing", dst, signer=signer, recipients=[signer.cert], now=NOW)
    assert not dst.exists()
    src = tmp_path / "doc"
    src.write_bytes(b"x")
    with pytest.raises(errors.CryptoError, match="failed"):
        seal(src, tmp_path / "no-such-dir" / "out.pgp", signer=signer, recipients=[signer.cert], now=NOW)
    with pytest.raises(errors.CryptoError, match="no recipients"):
        seal(src, dst, signer=signer, recipients=[], now=NOW)
    assert not dst.exists()


def test_expired_signer_is_refused(tmp_path: Path) -> None:
    tsk = pysequoia.Tsk.generate("Us, short-lived", validity_seconds=3600)
    signer = SigningKey(tsk.extract_certificate(), tsk.signer())
    src = tmp_path / "doc"
    src.write_bytes(b"x")
    other = pysequoia.Tsk.generate("Them").extract_certificate()
    with pytest.raises(errors.KeyPolicyError, match="our own OpenPGP key"):
        seal(src, tmp_path / "o", signer=signer, recipients=[other], now=NOW + timedelta(hours=2))
    assert not (tmp_path / "o").exists()


def test_signing_key_repr_hides_the_handle(signer: SigningKey) -> None:
    assert "hidden" in repr(signer) and "PySigner" not in repr(signer)


def test_packet_header_parser_handles_all_length_forms() -> None:
    old_one_octet = bytes([0x80 | (1 << 2) | 0, 3]) + b"abc"
    new_two_octet = bytes([0xC0 | 18, 192, 8]) + b"\x01" + b"z" * 199
    walked = packets.walk_bytes(old_one_octet + new_two_octet)
    assert [(p.tag, (p.body_end or 0) - p.body_start) for p in walked] == [(1, 3), (18, 200)]
    with pytest.raises(errors.PacketError):
        list(packets.walk_bytes(b"\x00garbage"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096))
def test_seal_then_decrypt_round_trips(
    data: bytes, signer: SigningKey, us: pysequoia.Tsk, tmp_path_factory: pytest.TempPathFactory
) -> None:
    work = tmp_path_factory.mktemp("prop")
    src, dst = work / "in", work / "out.pgp"
    src.write_bytes(data)
    info = seal(src, dst, signer=signer, recipients=[signer.cert], now=datetime.now(UTC))
    out = pysequoia.decrypt(dst.read_bytes(), us.decryptor(), store=lambda _ids: [signer.cert])
    assert out.bytes == data
    assert info.plaintext_size == len(data)
    assert [s.certificate for s in out.valid_sigs] == [signer.cert.fingerprint.lower()]
