"""Receipts with real Sequoia keys: build → sign → verify round trips, and every refusal reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pysequoia
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftp_pipeline.errors import ReceiptInvalid
from sftp_pipeline.names import new_transfer_id, sealed_name
from sftp_pipeline.openpgp import SigningKey
from sftp_pipeline.proof.receipts import (
    FORMAT,
    MAX_RECEIPT_BYTES,
    REJECTION_CODES,
    Receipt,
    build_receipt,
    receipt_file_names,
    sign_receipt,
    verify_receipt,
)

# A minute ahead of the keys made below (pysequoia stamps them with the real clock), fixed sub-second part.
NOW = (datetime.now(UTC) + timedelta(minutes=1)).replace(microsecond=123456)


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """NOW is taken when each test starts, after its keys are made: taken once at import, a long run made
    every key created later look "created in the future"."""
    global NOW
    NOW = (datetime.now(UTC) + timedelta(minutes=1)).replace(microsecond=123456)


SENDER, RECEIVER = "aggregator", "utility"
SHA_A, SHA_B = "a" * 64, "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def receiver_key() -> SigningKey:
    tsk = pysequoia.Tsk.generate("Utility (receipts unit)")
    return SigningKey(tsk.extract_certificate(), tsk.signer())


@pytest.fixture(scope="module")
def other_key() -> SigningKey:
    tsk = pysequoia.Tsk.generate("Someone else (receipts unit)")
    return SigningKey(tsk.extract_certificate(), tsk.signer())


def _remote_name(document_type: str = "invoice", original: str = "INV-1.xml") -> str:
    return str(sealed_name(new_transfer_id(NOW), document_type, original))


def _accepted(**overrides: Any) -> Receipt:
    values: dict[str, Any] = {
        "remote_name": _remote_name(),
        "sender": SENDER,
        "receiver": RECEIVER,
        "ciphertext_sha256": SHA_A,
        "ciphertext_size": 1234,
        "received_at": NOW - timedelta(seconds=3),
        "validated_at": NOW - timedelta(seconds=2),
        "status": "ok",
        "plaintext_sha256": SHA_B,
        "sender_key_fingerprint": "AB" * 20,
    }
    values.update(overrides)
    return build_receipt(**values)


def _verify(files: dict[str, bytes], cert: pysequoia.Cert, **kw: Any) -> Receipt:
    kw.setdefault("expected_sender", SENDER)
    kw.setdefault("expected_receiver", RECEIVER)
    return verify_receipt(files, issuer_cert=cert, now=NOW, **kw)


def _resign(receipt: Receipt, body: bytes, key: SigningKey) -> dict[str, bytes]:
    """Sign arbitrary JSON bytes under the receipt's file names (what a sloppy or hostile issuer sends)."""
    json_name, sig_name = receipt_file_names(receipt.transfer_id)
    sig = pysequoia.sign(key.handle, body, mode=pysequoia.SignatureMode.DETACHED, armor=False)
    return {json_name: body, sig_name: sig}


def _edited(receipt: Receipt, key: SigningKey, **changes: Any) -> dict[str, bytes]:
    obj = json.loads(receipt.to_json())
    for name, value in changes.items():
        if value is _DELETE:
            del obj[name]
        else:
            obj[name] = value
    return _resign(receipt, json.dumps(obj).encode(), key)


_DELETE = object()


# ------------------------------------------------------------------------------------------ round trip


def test_to_json_is_canonical() -> None:
    receipt = _accepted(detail="prüfung ok")
    body = receipt.to_json()
    obj = json.loads(body)
    assert body == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert "prüfung".encode() in body  # UTF-8, not \u-escaped
    assert obj["format"] == FORMAT
    assert obj["received_at"] == (NOW - timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%S.123Z")
    assert obj["sender_key_fingerprint"] == "ab" * 20
    assert obj["issuer"] == {"software": "sftp-pipeline", "version": receipt.issuer_version}
    assert obj["disposition"] == "accepted"


def test_file_names() -> None:
    tid = new_transfer_id(NOW)
    assert receipt_file_names(tid) == (f"{tid}.receipt.json", f"{tid}.receipt.json.sig")
    with pytest.raises(ValueError, match="not a transfer id"):
        receipt_file_names("../etc/passwd")


def test_sign_gives_json_then_binary_signature(receiver_key: SigningKey) -> None:
    receipt = _accepted()
    files = sign_receipt(receipt, receiver_key)
    (json_name, body), (sig_name, sig) = files.items()
    assert (json_name, sig_name) == receipt_file_names(receipt.transfer_id)
    assert body == receipt.to_json()
    assert sig[0] & 0x80  # binary OpenPGP, not armor


_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2026, 11, 1), timezones=st.just(UTC))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    document_type=st.from_regex(r"[a-z][a-z0-9_]{0,39}", fullmatch=True),
    original=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,30}", fullmatch=True),
    size=st.integers(min_value=0, max_value=2**63 - 1),
    received=_times,
    delay=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3)),
    status=st.sampled_from(["ok", *sorted(REJECTION_CODES)]),
    detail=st.text(max_size=200),
    fingerprint=st.one_of(st.none(), st.from_regex(r"[0-9a-f]{40}|[0-9a-f]{64}", fullmatch=True)),
    hashes=st.tuples(*[st.from_regex(r"[0-9a-f]{64}", fullmatch=True)] * 2),
)
def test_round_trip(
    receiver_key: SigningKey,
    document_type: str,
    original: str,
    size: int,
    received: datetime,
    delay: timedelta,
    status: str,
    detail: str,
    fingerprint: str | None,
    hashes: tuple[str, str],
) -> None:
    accepted = status == "ok"
    receipt = build_receipt(
        remote_name=str(sealed_name(new_transfer_id(received), document_type, original)),
        sender=SENDER,
        receiver=RECEIVER,
        ciphertext_sha256=hashes[0],
        ciphertext_size=size,
        received_at=received,
        validated_at=received + delay,
        status=status,
        plaintext_sha256=hashes[1] if accepted else None,
        sender_key_fingerprint=fingerprint or ("cd" * 20 if accepted else None),
        detail=detail,
    )
    got = _verify(sign_receipt(receipt, receiver_key), receiver_key.cert)
    assert got == receipt
    assert got.accepted is accepted
    assert got.document_type == document_type


def test_build_refuses_what_verify_would_refuse() -> None:
    with pytest.raises(ValueError, match="inconsistent outcome"):
        _accepted(plaintext_sha256=None)
    with pytest.raises(ValueError, match="not a sealed-document name"):
        _accepted(remote_name="../x.pgp")
    with pytest.raises(ValueError, match="validated_at is before received_at"):
        _accepted(validated_at=NOW - timedelta(hours=1))
    with pytest.raises(ValueError, match="ciphertext_sha256"):
        _accepted(ciphertext_sha256="A" * 64)


# --------------------------------------------------------------------------------------- signature


def test_forged_json_is_bad_signature(receiver_key: SigningKey) -> None:
    receipt = _accepted()
    files = sign_receipt(receipt, receiver_key)
    json_name = receipt_file_names(receipt.transfer_id)[0]
    files[json_name] = files[json_name].replace(b'"ciphertext_size":1234', b'"ciphertext_size":1235')
    with pytest.raises(ReceiptInvalid, match="does not verify") as caught:
        _verify(files, receiver_key.cert)
    assert caught.value.reason == "bad-signature"


def test_other_key_is_wrong_signer(receiver_key: SigningKey, other_key: SigningKey) -> None:
    receipt = _accepted()
    files = sign_receipt(receipt, other_key)
    with pytest.raises(ReceiptInvalid, match=f"not by the issuer's certificate {receiver_key.cert.fingerprint}") as c:
        _verify(files, receiver_key.cert)
    assert c.value.reason == "wrong-signer"


def test_missing_signature_is_unsigned(receiver_key: SigningKey) -> None:
    receipt = _accepted()
    json_name, sig_name = receipt_file_names(receipt.transfer_id)
    for files in ({json_name: receipt.to_json()}, {json_name: receipt.to_json(), sig_name: b""}):
        with pytest.raises(ReceiptInvalid, match="no detached signature") as caught:
            _verify(files, receiver_key.cert)
        assert caught.value.reason == "unsigned"


@pytest.mark.parametrize("mangle", ["armored", "two-signatures", "trailing-junk", "garbage", "cleartext"])
def test_signature_file_must_be_one_binary_signature(receiver_key: SigningKey, mangle: str) -> None:
    receipt = _accepted()
    files = sign_receipt(receipt, receiver_key)
    json_name, sig_name = receipt_file_names(receipt.transfer_id)
    sig = files[sig_name]
    files[sig_name] = {
        "armored": str(pysequoia.Sig.from_bytes(sig)).encode(),
        "two-signatures": sig + sig,
        "trailing-junk": sig + b"junk",
        "garbage": b"\xc2not a packet",
        "cleartext": pysequoia.sign(receiver_key.handle, files[json_name], mode=pysequoia.SignatureMode.CLEAR),
    }[mangle]
    with pytest.raises(ReceiptInvalid) as caught:
        _verify(files, receiver_key.cert)
    assert caught.value.reason == "bad-signature"


def test_expired_issuer_cert_is_refused() -> None:
    tsk = pysequoia.Tsk.generate("Short-lived", validity_seconds=3600)
    key = SigningKey(tsk.extract_certificate(), tsk.signer())
    files = sign_receipt(_accepted(), key)
    with pytest.raises(ReceiptInvalid, match="certificate cannot verify") as caught:
        verify_receipt(
            files,
            issuer_cert=key.cert,
            now=datetime.now(UTC) + timedelta(days=2),
            expected_sender=SENDER,
            expected_receiver=RECEIVER,
        )
    assert caught.value.reason == "bad-signature"


# ----------------------------------------------------------------------------------------- content


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ciphertext_size": _DELETE}, "missing fields"),
        ({"surprise": 1}, "unknown fields"),
        ({"ciphertext_size": "1234"}, "must be int"),
        ({"ciphertext_size": True}, "must be int"),
        ({"ciphertext_size": 12.0}, "must be int"),
        ({"ciphertext_size": -1}, "out of range"),
        ({"ciphertext_size": 2**63}, "out of range"),
        ({"plaintext_sha256": "A" * 64}, "64 lowercase hex"),
        ({"ciphertext_sha256": "ab"}, "64 lowercase hex"),
        ({"sender_key_fingerprint": "XYZ"}, "lowercase hex fingerprint"),
        ({"transfer_id": "not-a-ulid"}, "a ULID"),
        ({"received_at": "2026-11-27 03:00:00"}, "RFC 3339"),
        ({"received_at": "2026-11-27T03:00:00"}, "with a zone"),
        ({"received_at": "2026-13-27T03:00:00Z"}, "not a valid date-time"),
        ({"validated_at": "2000-11-27T02:00:00.000Z"}, "before received_at"),
        ({"received_at": "2099-11-27T02:00:00.000Z", "validated_at": "2099-11-27T02:00:00.000Z"}, "in the future"),
        ({"disposition": "accepted", "status": "tampered"}, "inconsistent outcome"),
        ({"disposition": "rejected"}, "inconsistent outcome"),
        ({"plaintext_sha256": None}, "inconsistent outcome"),
        ({"disposition": "maybe"}, "unknown disposition"),
        ({"status": "fine"}, "unknown disposition"),
        ({"sender_key_fingerprint": None}, "must name the sender key"),
        ({"format": "sftp-pipeline-receipt/2"}, "format"),
        ({"issuer": {"software": "x"}}, "issuer"),
        ({"issuer": "sftp-pipeline"}, "must be dict"),
        ({"remote_name": "01JDQ6Z6M2W4K8T9V0B3C5D7EF.invoice.x.pgp"}, "does not carry this transfer_id"),
        ({"document_type": "billing_payment"}, "does not carry this transfer_id"),
        ({"detail": "x" * 5000}, "over 4096"),
        ({"sender": "Aggregator!"}, "a party id"),
    ],
)
def test_bad_content_is_malformed(receiver_key: SigningKey, changes: dict[str, Any], message: str) -> None:
    receipt = _accepted()
    with pytest.raises(ReceiptInvalid, match=message) as caught:
        _verify(_edited(receipt, receiver_key, **changes), receiver_key.cert)
    assert caught.value.reason == "malformed"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"a":1,"a":2}',
        b'{"ciphertext_size": NaN}',
        b"\xff\xfe{}",
    ],
)
def test_unparsable_json_is_malformed(receiver_key: SigningKey, body: bytes) -> None:
    with pytest.raises(ReceiptInvalid) as caught:
        _verify(_resign(_accepted(), body, receiver_key), receiver_key.cert)
    assert caught.value.reason == "malformed"


def test_transfer_id_must_match_file_name(receiver_key: SigningKey) -> None:
    receipt, other = _accepted(), _accepted()
    body = other.to_json()
    with pytest.raises(ReceiptInvalid, match="not the one in its file name") as caught:
        _verify(_resign(receipt, body, receiver_key), receiver_key.cert)
    assert caught.value.reason == "malformed"


def test_file_set_is_checked(receiver_key: SigningKey) -> None:
    receipt = _accepted()
    files = sign_receipt(receipt, receiver_key)
    for bad in ({}, {**files, "extra.txt": b""}, {"x.receipt.json": b"{}", "x.receipt.json.sig": b""}):
        with pytest.raises(ReceiptInvalid) as caught:
            _verify(bad, receiver_key.cert)
        assert caught.value.reason == "malformed"


def test_oversize_is_malformed(receiver_key: SigningKey) -> None:
    receipt = _accepted()
    obj = json.loads(receipt.to_json())
    body = json.dumps(obj).encode() + b" " * MAX_RECEIPT_BYTES
    with pytest.raises(ReceiptInvalid, match="over the 65536-byte limit") as caught:
        _verify(_resign(receipt, body, receiver_key), receiver_key.cert)
    assert caught.value.reason == "malformed"


def test_wrong_parties(receiver_key: SigningKey) -> None:
    files = sign_receipt(_accepted(), receiver_key)
    for sender, receiver in ((SENDER, "someone-else"), ("someone-else", RECEIVER), (RECEIVER, SENDER)):
        with pytest.raises(ReceiptInvalid, match="expected") as caught:
            _verify(files, receiver_key.cert, expected_sender=sender, expected_receiver=receiver)
        assert caught.value.reason == "wrong-parties"


def test_rejected_receipt_verifies(receiver_key: SigningKey) -> None:
    receipt = _accepted(
        status="unknown-signer", plaintext_sha256=None, sender_key_fingerprint=None, detail="no such key"
    )
    got = _verify(sign_receipt(receipt, receiver_key), receiver_key.cert)
    assert (got.disposition, got.status, got.plaintext_sha256, got.detail) == (
        "rejected",
        "unknown-signer",
        None,
        "no such key",
    )


def test_post_quantum_issuer_round_trip() -> None:
    """An RFC 9580 issuer key (ML-DSA-65+Ed25519, v6 signatures and 64-hex fingerprints) works the same."""
    tsk = pysequoia.Tsk.generate(
        "Utility (pq)", profile=pysequoia.Profile.RFC9580, cipher_suite=pysequoia.CipherSuite.MLDSA65_Ed25519
    )
    key = SigningKey(tsk.extract_certificate(), tsk.signer())
    receipt = _accepted(sender_key_fingerprint="ef" * 32)
    files = sign_receipt(receipt, key)
    assert _verify(files, key.cert) == receipt
    other = pysequoia.Tsk.generate("Utility (classic)").extract_certificate()
    with pytest.raises(ReceiptInvalid) as caught:
        _verify(files, other)
    assert caught.value.reason == "wrong-signer"


def test_every_open_status_is_a_receipt_status() -> None:
    """What open_message can reject with, a receipt must be able to say."""
    from sftp_pipeline.openpgp import rejections as openpgp_open

    names = [
        "NOT_ENCRYPTED_TO_US",
        "NOT_ENCRYPTED",
        "UNSIGNED",
        "UNKNOWN_SIGNER",
        "SIGNER_EXPIRED",
        "SIGNER_REVOKED",
        "SIGNATURE_INVALID",
        "INTEGRITY_MISSING",
        "TAMPERED",
        "MALFORMED",
        "OVERSIZE",
        "WEAK_ALGORITHM",
        "SIGNATURE_FUTURE",
    ]
    codes = {getattr(openpgp_open, name) for name in names}
    assert len(codes) == len(names)
    assert codes <= REJECTION_CODES, codes - REJECTION_CODES
