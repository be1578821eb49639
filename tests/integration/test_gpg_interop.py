"""Sealing interoperates with GnuPG 2.2, and the key policy refuses what it must (real gpg, no mocks)."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pysequoia
import pytest

from sftp_pipeline import errors
from sftp_pipeline.openpgp import SigningKey, check_cert, describe_cert, seal
from sftp_pipeline.openpgp.seal import IN_MEMORY_SEAL_BYTES
from tests.peers.gpg import GnuPG

pytestmark = pytest.mark.gpg

AES256 = "9"  # OpenPGP symmetric algorithm id, as in GnuPG's DECRYPTION_INFO status line


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def ours() -> tuple[pysequoia.Tsk, SigningKey]:
    tsk = pysequoia.Tsk.generate("DER Aggregator (sftp-pipeline test)")
    return tsk, SigningKey(tsk.extract_certificate(), tsk.signer())


@pytest.fixture
def document(tmp_path: Path) -> Path:
    src = tmp_path / "invoice.xml"
    src.write_bytes(b"<invoice id='INV-1'>" + os.urandom(300_000) + b"</invoice>")
    return src


def _gnupg_partner(gpg: GnuPG, signer: SigningKey) -> pysequoia.Cert:
    """A partner whose key GnuPG made, who knows our certificate: the one we seal to."""
    fpr = gpg.generate()
    gpg.import_key(str(signer.cert).encode())
    return pysequoia.Cert.from_bytes(gpg.export(fpr))


def _assert_gnupg_accepts(gpg: GnuPG, sealed: Path, document: Path, signer_fpr: str) -> list[str]:
    plaintext, status = gpg.decrypt(sealed)
    assert plaintext == document.read_bytes()
    keywords = [line.split()[0] for line in status]
    assert "DECRYPTION_OKAY" in keywords and "GOODMDC" in keywords
    assert not {"ERRSIG", "BADSIG", "EXPKEYSIG", "REVKEYSIG", "DECRYPTION_FAILED"} & set(keywords)
    validsigs = [line.split() for line in status if line.startswith("VALIDSIG ")]
    assert len(validsigs) == 1
    assert validsigs[0][-1].lower() == signer_fpr  # the last field is the primary key's fingerprint
    info = [line.split() for line in status if line.startswith("DECRYPTION_INFO ")]
    assert info and info[0][2] == AES256
    return status


def test_sealed_to_gnupg_key_is_read_by_gnupg(gpg: GnuPG, ours, document: Path, tmp_path: Path) -> None:
    _, signer = ours
    partner = _gnupg_partner(gpg, signer)

    result = seal(document, tmp_path / "out.pgp", signer=signer, recipients=[partner], now=_now())

    _assert_gnupg_accepts(gpg, tmp_path / "out.pgp", document, signer.cert.fingerprint.lower())
    assert result.seipd_version == 1  # GnuPG 2.2 reads SEIPDv1 only
    assert result.algorithms == "AES-256, SEIPDv1, sign Ed25519, encrypt X25519"
    assert result.post_quantum is False
    assert result.ciphertext_size == (tmp_path / "out.pgp").stat().st_size
    assert "ctb" in gpg.list_packets(tmp_path / "out.pgp")


@pytest.mark.parametrize("size", [IN_MEMORY_SEAL_BYTES, IN_MEMORY_SEAL_BYTES + 1], ids=["in-memory", "streamed"])
def test_both_seal_paths_are_read_by_gnupg_and_hashed_right(gpg: GnuPG, ours, tmp_path: Path, size: int) -> None:
    """Small documents are sealed in memory, larger ones streamed file to file: the same message either way."""
    _, signer = ours
    partner = _gnupg_partner(gpg, signer)
    document = tmp_path / "aggregation.csv"
    document.write_bytes(os.urandom(size))
    sealed = tmp_path / "out.pgp"

    info = seal(document, sealed, signer=signer, recipients=[partner], now=_now())

    _assert_gnupg_accepts(gpg, sealed, document, signer.cert.fingerprint.lower())
    assert (info.plaintext_sha256, info.plaintext_size) == (hashlib.sha256(document.read_bytes()).hexdigest(), size)
    assert (info.ciphertext_sha256, info.ciphertext_size) == (
        hashlib.sha256(sealed.read_bytes()).hexdigest(),
        sealed.stat().st_size,
    )
    assert info.seipd_version == 1 and "AES-256" in info.algorithms


def test_unreadable_document_is_named_and_nothing_is_written(ours, tmp_path: Path) -> None:
    _, signer = ours
    partner = pysequoia.Tsk.generate("Utility").extract_certificate()
    missing, sealed = tmp_path / "gone.xml", tmp_path / "out.pgp"

    with pytest.raises(errors.CryptoError, match=r"gone\.xml: cannot read the document: No such file"):
        seal(missing, sealed, signer=signer, recipients=[partner], now=_now())
    assert not sealed.exists()


def test_aes256_even_when_partner_prefers_aes128(gpg: GnuPG, ours, document: Path, tmp_path: Path) -> None:
    _, signer = ours
    fpr = gpg.generate()
    gpg.set_prefs(fpr, "AES CAST5 SHA256 ZLIB Uncompressed")
    exported = gpg.export(fpr)
    assert "pref-sym-algos: 7 3" in gpg.list_packets(_write(tmp_path / "p.asc", exported))
    gpg.import_key(str(signer.cert).encode())

    seal(document, tmp_path / "out.pgp", signer=signer, recipients=[pysequoia.Cert.from_bytes(exported)], now=_now())

    _assert_gnupg_accepts(gpg, tmp_path / "out.pgp", document, signer.cert.fingerprint.lower())


def test_encrypt_to_self_is_readable_by_both(gpg: GnuPG, ours, document: Path, tmp_path: Path) -> None:
    tsk, signer = ours
    partner = _gnupg_partner(gpg, signer)
    sealed = tmp_path / "out.pgp"

    result = seal(document, sealed, signer=signer, recipients=[partner, signer.cert], now=_now())

    _assert_gnupg_accepts(gpg, sealed, document, signer.cert.fingerprint.lower())
    back = tmp_path / "back"
    decrypted = pysequoia.decrypt_file(sealed, back, tsk.decryptor(), store=lambda _ids: [signer.cert])
    assert back.read_bytes() == document.read_bytes()
    assert len(decrypted.valid_sigs) == 1
    assert result.recipient_fingerprints == (partner.fingerprint.lower(), signer.cert.fingerprint.lower())


def test_rsa3072_partner_is_accepted(gpg: GnuPG, ours, document: Path, tmp_path: Path) -> None:
    _, signer = ours
    fpr = gpg.generate(algo="rsa3072", sub_algo="rsa3072")
    gpg.import_key(str(signer.cert).encode())
    partner = pysequoia.Cert.from_bytes(gpg.export(fpr))
    assert describe_cert(partner, _now()).algorithm == "RSA-3072"

    result = seal(document, tmp_path / "out.pgp", signer=signer, recipients=[partner], now=_now())

    _assert_gnupg_accepts(gpg, tmp_path / "out.pgp", document, signer.cert.fingerprint.lower())
    assert "encrypt RSA-3072" in result.algorithms


def test_post_quantum_partner(ours, document: Path, tmp_path: Path) -> None:
    _, signer = ours
    pq = pysequoia.Tsk.generate(
        "Utility (pq)", profile=pysequoia.Profile.RFC9580, cipher_suite=pysequoia.CipherSuite.MLDSA65_Ed25519
    )
    pq_cert = pq.extract_certificate()
    info = describe_cert(pq_cert, _now())
    assert (info.version, info.profile, info.post_quantum) == (6, "rfc9580", True)

    result = seal(document, tmp_path / "out.pgp", signer=signer, recipients=[pq_cert], now=_now())

    assert result.post_quantum is True
    assert result.seipd_version == 2
    assert "AES-256" in result.algorithms and "ML-KEM-768+X25519" in result.algorithms
    back = tmp_path / "back"
    decrypted = pysequoia.decrypt_file(tmp_path / "out.pgp", back, pq.decryptor(), store=lambda _ids: [signer.cert])
    assert back.read_bytes() == document.read_bytes()
    assert len(decrypted.valid_sigs) == 1


def test_pq_signer_and_mixed_recipients_are_not_called_post_quantum(gpg: GnuPG, document: Path, tmp_path: Path) -> None:
    pq = pysequoia.Tsk.generate(
        "Us (pq)", profile=pysequoia.Profile.RFC9580, cipher_suite=pysequoia.CipherSuite.MLDSA65_Ed25519
    )
    signer = SigningKey(pq.extract_certificate(), pq.signer())
    partner = pysequoia.Cert.from_bytes(gpg.export(gpg.generate()))

    result = seal(document, tmp_path / "out.pgp", signer=signer, recipients=[partner, signer.cert], now=_now())

    assert result.post_quantum is False  # the X25519 recipient is the weakest link
    assert "sign ML-DSA-65+Ed25519" in result.algorithms
    assert result.seipd_version == 1


# ----------------------------------------------------------------------------------------- refusals


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _refused(signer: SigningKey, partner: pysequoia.Cert, document: Path, tmp_path: Path, *needles: str) -> None:
    dst = tmp_path / "refused.pgp"
    with pytest.raises(errors.KeyPolicyError) as caught:
        seal(document, dst, signer=signer, recipients=[partner], now=_now(), recipient_labels=["partner 'utility'"])
    message = str(caught.value)
    assert "partner 'utility'" in message and partner.fingerprint.lower() in message
    assert "Fix:" in message
    for needle in needles:
        assert needle in message
    assert not dst.exists()


def test_expired_cert_is_refused(gpg: GnuPG, ours, document: Path, tmp_path: Path) -> None:
    fpr = gpg.generate(expire="1d", faked_time="20200101T000000")
    partner = pysequoia.Cert.from_bytes(gpg.export(fpr))
    _refused(ours[1], partner, document, tmp_path, "expired on 2020-01-02", "quick-set-expire")


def test_expired_encryption_subkey_is_refused(gpg: GnuPG, ours, document: Path, tmp_path: Path) -> None:
    fpr = gpg.generate(sub_algo=None, expire="never", faked_time="20200101T000000")
    gpg.run("--faked-system-time", "20200101T000000", "--quick-add-key", fpr, "cv25519", "encr", "1d")
    partner = pysequoia.Cert.from_bytes(gpg.export(fpr))
    _refused(ours[1], partner, document, tmp_path, "no valid encryption-capable key")


def test_gnupg_revoked_cert_is_refused(gpg: GnuPG, ours, document: Path, tmp_path: Path) -> None:
    fpr = gpg.generate()
    partner = pysequoia.Cert.from_bytes(gpg.revoke(fpr))
    assert partner.is_revoked
    _refused(ours[1], partner, document, tmp_path, "revoked")


def test_sequoia_revoked_cert_is_refused(ours, document: Path, tmp_path: Path) -> None:
    tsk = pysequoia.Tsk.generate("Utility")
    cert = tsk.extract_certificate()
    revoked = pysequoia.Cert.from_bytes(bytes(cert) + bytes(cert.revoke(tsk.certifier())))
    _refused(ours[1], revoked, document, tmp_path, "revoked")


def test_rsa2048_cert_is_refused(gpg: GnuPG, ours, document: Path, tmp_path: Path) -> None:
    fpr = gpg.generate(algo="rsa2048", sub_algo="rsa2048")
    partner = pysequoia.Cert.from_bytes(gpg.export(fpr))
    _refused(ours[1], partner, document, tmp_path, "RSA-2048", "below the 3072-bit minimum")


def test_sign_only_cert_is_refused(gpg: GnuPG, ours, document: Path, tmp_path: Path) -> None:
    fpr = gpg.generate(sub_algo=None, usage="sign")
    partner = pysequoia.Cert.from_bytes(gpg.export(fpr))
    assert check_cert(partner, purpose="verify", now=_now(), label="p").can_sign
    _refused(ours[1], partner, document, tmp_path, "no valid encryption-capable key", "quick-add-key")


def test_dsa_elgamal_cert_is_refused(gpg: GnuPG, ours, document: Path, tmp_path: Path) -> None:
    fpr = gpg.generate(algo="dsa3072", sub_algo="elg3072")
    partner = pysequoia.Cert.from_bytes(gpg.export(fpr))
    _refused(ours[1], partner, document, tmp_path, "DSA-3072", "DSA and ElGamal are not allowed")


def test_one_bad_recipient_refuses_the_whole_seal(gpg: GnuPG, ours, document: Path, tmp_path: Path) -> None:
    _, signer = ours
    expired = pysequoia.Cert.from_bytes(gpg.export(gpg.generate(expire="1d", faked_time="20200101T000000")))
    dst = tmp_path / "out.pgp"
    with pytest.raises(errors.KeyPolicyError):
        seal(document, dst, signer=signer, recipients=[signer.cert, expired], now=_now())
    assert not dst.exists()
