"""Signed receipts: what the receiver of a document says it received, when, and whether it was good.

A receipt is a small JSON object (see ``docs/receipts.md`` for every field)
signed by the receiver with a *detached* OpenPGP signature:

    01JDQ6Z6M2W4K8T9V0B3C5D7EF.receipt.json       the receipt, UTF-8 JSON
    01JDQ6Z6M2W4K8T9V0B3C5D7EF.receipt.json.sig   binary detached signature over exactly those bytes

Why detached (measured with GnuPG 2.2 and pysequoia 0.1.35): the signed bytes
are exactly the file's bytes, so there is no literal-data or compression layer
to police; pysequoia ignored a second message appended after a compressed
inline-signed one, and silently ignores junk after an armored or binary
signature, which the strict checks below refuse. ``gpg --detach-sign`` with
GnuPG's defaults is all a partner needs. The ``.sig`` is uploaded last, so it
is the commit marker: a receipt exists once its ``.sig`` does.

Building and signing are pure; :func:`verify_receipt` is strict and raises
:class:`ReceiptInvalid` with a ``reason`` (one of :data:`REASONS`). Matching a
receipt to the ledger (transfer known, hashes equal) is the caller's job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal

from sftp_pipeline import SOFTWARE, __version__
from sftp_pipeline.clock import rfc3339
from sftp_pipeline.errors import ReceiptInvalid, ReceiptReason, SignatureRefused
from sftp_pipeline.names import DOCUMENT_TYPE_RE, TRANSFER_ID_RE, is_safe_name, parse_sealed_name
from sftp_pipeline.openpgp import CLOCK_SKEW, Cert, SigningKey
from sftp_pipeline.openpgp.rejections import CODES as OPEN_REJECTION_CODES
from sftp_pipeline.openpgp.signatures import sign_detached, verify_detached

FORMAT = "sftp-pipeline-receipt/1"
RECEIPT_SUFFIX = ".receipt.json"
SIGNATURE_SUFFIX = ".sig"
# Why 64 KiB: a receipt is ~1 KB and a post-quantum signature ~5 KB; anything far larger is not a receipt.
MAX_RECEIPT_BYTES = 64 * 1024
# Why 4096: room for a GnuPG error message or two; the detail is for people, not for parsing.
MAX_DETAIL_CHARS = 4096
# Why 2**63 - 1: sizes land in SQLite INTEGER columns, which are signed 64-bit.
MAX_SIZE = 2**63 - 1
# Mirrors config.PartyId: the only party ids a configuration can hold.
PARTY_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# v4 fingerprints are 40 hex digits (SHA-1 of the key), v6 are 64 (SHA-256); lowercase, as we store them.
FINGERPRINT_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
# RFC 3339 date-time with a zone; 1-6 fraction digits because that is what datetime can hold.
RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})$")

STATUS_OK = "ok"
# The rejection codes a receiver may report; the same codes OpenRejected.status carries.
# The rejection codes a receiver may report: every code open_message refuses with (OpenRejected.status), and
# the ones the collect flow decides before or beside opening.
REJECTION_CODES = OPEN_REJECTION_CODES | {"decryption-failed", "unauthorised-document", "duplicate-conflict"}
DISPOSITIONS = ("accepted", "rejected")
REASONS = ("bad-signature", "wrong-signer", "malformed", "wrong-parties", "unsigned")

Disposition = Literal["accepted", "rejected"]


@dataclass(frozen=True)
class Receipt:
    """One receipt, as issued by the receiver of ``remote_name``. Field meanings: docs/receipts.md."""

    transfer_id: str
    document_type: str
    remote_name: str
    sender: str
    receiver: str
    ciphertext_sha256: str
    ciphertext_size: int
    plaintext_sha256: str | None
    sender_key_fingerprint: str | None
    received_at: datetime
    validated_at: datetime
    disposition: Disposition
    status: str
    detail: str
    issuer_software: str
    issuer_version: str
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (timestamps as RFC 3339 UTC with milliseconds)."""
        return {
            "format": self.format,
            "transfer_id": self.transfer_id,
            "document_type": self.document_type,
            "remote_name": self.remote_name,
            "sender": self.sender,
            "receiver": self.receiver,
            "ciphertext_sha256": self.ciphertext_sha256,
            "ciphertext_size": self.ciphertext_size,
            "plaintext_sha256": self.plaintext_sha256,
            "sender_key_fingerprint": self.sender_key_fingerprint,
            "received_at": rfc3339(self.received_at),
            "validated_at": rfc3339(self.validated_at),
            "disposition": self.disposition,
            "status": self.status,
            "detail": self.detail,
            "issuer": {"software": self.issuer_software, "version": self.issuer_version},
        }

    def to_json(self) -> bytes:
        """Canonical form: sorted keys, no insignificant whitespace, UTF-8 (not \\u-escaped)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8")

    @property
    def accepted(self) -> bool:
        return self.disposition == "accepted"


_FIELDS = frozenset({f.name for f in fields(Receipt)} - {"issuer_software", "issuer_version"} | {"issuer"})


def receipt_file_names(transfer_id: str) -> tuple[str, str]:
    """(receipt JSON name, detached signature name) for ``transfer_id``; upload them in this order."""
    if not TRANSFER_ID_RE.match(transfer_id):
        raise ValueError(f"not a transfer id (ULID): {transfer_id!r}")
    json_name = f"{transfer_id}{RECEIPT_SUFFIX}"
    return json_name, f"{json_name}{SIGNATURE_SUFFIX}"


def _millis(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: every receipt timestamp must carry a time zone")
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def build_receipt(
    *,
    remote_name: str,
    sender: str,
    receiver: str,
    ciphertext_sha256: str,
    ciphertext_size: int,
    received_at: datetime,
    validated_at: datetime,
    status: str,
    plaintext_sha256: str | None = None,
    sender_key_fingerprint: str | None = None,
    detail: str = "",
) -> Receipt:
    """Build a receipt for the sealed document ``remote_name``; ``status`` "ok" means accepted.

    The transfer id and document type come from ``remote_name``. Timestamps are kept to the
    millisecond (what the wire format carries). Raises ValueError for anything
    :func:`verify_receipt` would refuse, so we never sign a receipt our partner cannot accept.
    """
    sealed = parse_sealed_name(remote_name)
    receipt = Receipt(
        transfer_id=sealed.transfer_id,
        document_type=sealed.document_type,
        remote_name=remote_name,
        sender=sender,
        receiver=receiver,
        ciphertext_sha256=ciphertext_sha256,
        ciphertext_size=ciphertext_size,
        plaintext_sha256=plaintext_sha256,
        sender_key_fingerprint=sender_key_fingerprint.lower() if sender_key_fingerprint else None,
        received_at=_millis(received_at),
        validated_at=_millis(validated_at),
        disposition="accepted" if status == STATUS_OK else "rejected",
        status=status,
        detail=detail,
        issuer_software=SOFTWARE.split("/", 1)[0],
        issuer_version=__version__,
    )
    try:
        _check_values(receipt.to_dict())
    except ReceiptInvalid as exc:
        raise ValueError(f"cannot build a receipt for {remote_name}: {exc}") from exc
    return receipt


def sign_receipt(receipt: Receipt, signer: SigningKey) -> dict[str, bytes]:
    """The files to upload, in upload order: ``{json name: canonical JSON, sig name: detached signature}``."""
    json_name, sig_name = receipt_file_names(receipt.transfer_id)
    body = receipt.to_json()
    return {json_name: body, sig_name: sign_detached(signer, body, what=f"receipt {json_name}")}


# ------------------------------------------------------------------------------------------ verify


def _invalid(reason: ReceiptReason, name: str, what: str) -> ReceiptInvalid:
    return ReceiptInvalid(reason, f"receipt {name}: {what}")


def _pick_files(files: dict[str, bytes]) -> tuple[str, bytes, bytes | None]:
    jsons = [n for n in files if n.endswith(RECEIPT_SUFFIX)]
    if len(jsons) != 1:
        raise _invalid(
            "malformed", ", ".join(sorted(files)) or "(none)", f"expected exactly one *{RECEIPT_SUFFIX} file"
        )
    json_name = jsons[0]
    transfer_id = json_name[: -len(RECEIPT_SUFFIX)]
    if not TRANSFER_ID_RE.match(transfer_id) or not is_safe_name(json_name):
        raise _invalid("malformed", repr(json_name), "the file name is not <transfer id>.receipt.json")
    sig_name = json_name + SIGNATURE_SUFFIX
    extra = sorted(set(files) - {json_name, sig_name})
    if extra:
        raise _invalid("malformed", json_name, f"unexpected extra files {extra}; pass only the receipt and its .sig")
    for name in (json_name, sig_name):
        if name in files and len(files[name]) > MAX_RECEIPT_BYTES:
            raise _invalid("malformed", name, f"{len(files[name])} bytes is over the {MAX_RECEIPT_BYTES}-byte limit")
    return json_name, files[json_name], files.get(sig_name)


def _check_signature(json_name: str, body: bytes, sig_bytes: bytes | None, issuer_cert: Cert, now: datetime) -> None:
    if not sig_bytes:
        raise _invalid(
            "unsigned",
            json_name,
            f"no detached signature {json_name}{SIGNATURE_SUFFIX}; the issuer must sign it "
            "(`gpg --detach-sign`) and upload the .sig after the .json",
        )
    try:
        verify_detached(body, sig_bytes, issuer_cert, now=now)
    except SignatureRefused as exc:
        raise _invalid(exc.reason, json_name, str(exc)) from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate keys {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def _parse_json(json_name: str, body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _invalid("malformed", json_name, f"not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise _invalid("malformed", json_name, "the JSON is not an object")
    return value


def _expect(obj: dict[str, Any], key: str, kind: type, nullable: bool = False) -> Any:
    value = obj[key]
    if value is None and nullable:
        return None
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ReceiptInvalid("malformed", f"field {key!r} must be {kind.__name__}{' or null' if nullable else ''}")
    return value


def _timestamp(obj: dict[str, Any], key: str) -> datetime:
    text = _expect(obj, key, str)
    if not RFC3339_RE.match(text):
        raise ReceiptInvalid("malformed", f"field {key!r} is not an RFC 3339 timestamp with a zone: {text!r}")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError as exc:
        raise ReceiptInvalid("malformed", f"field {key!r} is not a valid date-time: {text!r}") from exc


def _matching(key: str, text: str, pattern: re.Pattern[str], what: str) -> None:
    if not pattern.match(text):
        raise ReceiptInvalid("malformed", f"field {key!r} must be {what}, got {text[:80]!r}")


def _check_values(obj: dict[str, Any]) -> Receipt:
    """Types, formats and consistency of a receipt object; raises ReceiptInvalid("malformed")."""
    missing, unknown = sorted(_FIELDS - obj.keys()), sorted(obj.keys() - _FIELDS)
    if missing or unknown:
        raise ReceiptInvalid("malformed", f"missing fields {missing}, unknown fields {unknown}")
    if _expect(obj, "format", str) != FORMAT:
        raise ReceiptInvalid("malformed", f"format {obj['format']!r} is not {FORMAT!r}")
    for key in ("transfer_id", "document_type", "remote_name", "sender", "receiver", "status", "detail"):
        _expect(obj, key, str)
    _matching("transfer_id", obj["transfer_id"], TRANSFER_ID_RE, "a ULID")
    _matching("document_type", obj["document_type"], DOCUMENT_TYPE_RE, "a document type id")
    _matching("sender", obj["sender"], PARTY_ID_RE, "a party id")
    _matching("receiver", obj["receiver"], PARTY_ID_RE, "a party id")
    try:
        sealed = parse_sealed_name(obj["remote_name"])
    except ValueError as exc:
        raise ReceiptInvalid("malformed", f"field 'remote_name': {exc}") from exc
    if (sealed.transfer_id, sealed.document_type) != (obj["transfer_id"], obj["document_type"]):
        raise ReceiptInvalid("malformed", "remote_name does not carry this transfer_id and document_type")
    _matching("ciphertext_sha256", _expect(obj, "ciphertext_sha256", str), SHA256_RE, "64 lowercase hex digits")
    size = _expect(obj, "ciphertext_size", int)
    if not 0 <= size <= MAX_SIZE:
        raise ReceiptInvalid("malformed", f"field 'ciphertext_size' out of range: {size}")
    plaintext = _expect(obj, "plaintext_sha256", str, nullable=True)
    if plaintext is not None:
        _matching("plaintext_sha256", plaintext, SHA256_RE, "64 lowercase hex digits")
    fingerprint = _expect(obj, "sender_key_fingerprint", str, nullable=True)
    if fingerprint is not None:
        _matching("sender_key_fingerprint", fingerprint, FINGERPRINT_RE, "a lowercase hex fingerprint")
    if len(obj["detail"]) > MAX_DETAIL_CHARS:
        raise ReceiptInvalid("malformed", f"field 'detail' is over {MAX_DETAIL_CHARS} characters")
    received_at, validated_at = _timestamp(obj, "received_at"), _timestamp(obj, "validated_at")
    if validated_at < received_at:
        raise ReceiptInvalid("malformed", "validated_at is before received_at")
    disposition, status = _expect(obj, "disposition", str), obj["status"]
    accepted = (disposition == "accepted", status == STATUS_OK, plaintext is not None)
    if disposition not in DISPOSITIONS or (status != STATUS_OK and status not in REJECTION_CODES):
        raise ReceiptInvalid("malformed", f"unknown disposition {disposition!r} or status {status!r}")
    if len(set(accepted)) != 1:
        raise ReceiptInvalid(
            "malformed",
            "inconsistent outcome: 'accepted' requires status 'ok' and a plaintext_sha256, "
            f"'rejected' requires a rejection code and null (got {disposition!r}, {status!r})",
        )
    if disposition == "accepted" and fingerprint is None:
        raise ReceiptInvalid("malformed", "an accepted document must name the sender key that was verified")
    issuer = _expect(obj, "issuer", dict)
    if set(issuer) != {"software", "version"} or not all(isinstance(v, str) and v for v in issuer.values()):
        raise ReceiptInvalid("malformed", 'field \'issuer\' must be {"software": str, "version": str}')
    return Receipt(
        transfer_id=obj["transfer_id"],
        document_type=obj["document_type"],
        remote_name=obj["remote_name"],
        sender=obj["sender"],
        receiver=obj["receiver"],
        ciphertext_sha256=obj["ciphertext_sha256"],
        ciphertext_size=size,
        plaintext_sha256=plaintext,
        sender_key_fingerprint=fingerprint,
        received_at=received_at,
        validated_at=validated_at,
        disposition="accepted" if disposition == "accepted" else "rejected",
        status=status,
        detail=obj["detail"],
        issuer_software=issuer["software"],
        issuer_version=issuer["version"],
    )


def verify_receipt(
    files: dict[str, bytes],
    *,
    issuer_cert: Cert,
    now: datetime,
    expected_sender: str,
    expected_receiver: str,
) -> Receipt:
    """Check a receipt strictly and return it; raise :class:`ReceiptInvalid` otherwise.

    ``files`` holds ``<transfer id>.receipt.json`` and (normally) its ``.sig``. The signature must be
    exactly one valid binary signature by a signing key of ``issuer_cert`` (the receiver's certificate,
    itself usable at ``now``); the JSON must be a well-formed receipt (docs/receipts.md) for this transfer
    id, sent by ``expected_sender`` (normally us) to ``expected_receiver`` (the issuer).
    """
    if now.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC time")
    now = now.astimezone(UTC)
    json_name, body, sig_bytes = _pick_files(files)
    _check_signature(json_name, body, sig_bytes, issuer_cert, now)
    obj = _parse_json(json_name, body)
    try:
        receipt = _check_values(obj)
    except ReceiptInvalid as exc:
        raise _invalid(exc.reason, json_name, str(exc)) from None
    if receipt.transfer_id != json_name[: -len(RECEIPT_SUFFIX)]:
        raise _invalid("malformed", json_name, f"names transfer {receipt.transfer_id}, not the one in its file name")
    if receipt.received_at > now + CLOCK_SKEW or receipt.validated_at > now + CLOCK_SKEW:
        raise _invalid("malformed", json_name, "received_at/validated_at lie in the future; check the issuer's clock")
    if (receipt.sender, receipt.receiver) != (expected_sender, expected_receiver):
        raise _invalid(
            "wrong-parties",
            json_name,
            f"is from {receipt.sender!r} to {receipt.receiver!r}, expected {expected_sender!r} to "
            f"{expected_receiver!r}",
        )
    return receipt
