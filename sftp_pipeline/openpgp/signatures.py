"""Detached signatures: the one way we sign our receipts and reports, and the one way we verify a signature.

:func:`verify_detached` is strict, whatever is signed (a partner's receipt, our own report checked later):

* binary only, exactly one signature packet and nothing after it (armor and pysequoia's parser both ignore
  trailing data);
* a binary-document signature (not ``--textmode``), not made with a weak hash, not made in the future;
* made by a signing-capable key of the signer's certificate, the certificate usable *now* and that key
  neither expired nor revoked *now* (Sequoia judges a key's expiry at signature time);
* exactly one valid signature, by that certificate.

A refusal is :class:`~sftp_pipeline.errors.SignatureRefused` with a ``reason``: ``unsigned``,
``bad-signature`` or ``wrong-signer``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pysequoia
from pysequoia.packet import PacketPile, SignatureType, Tag

from sftp_pipeline.errors import KeyPolicyError, SignatureRefused, SigningError
from sftp_pipeline.openpgp.policy import (
    CLOCK_SKEW,
    Cert,
    SigningKey,
    _first_line,
    check_cert,
    describe_cert,
    is_weak_hash,
)


def sign_detached(signer: SigningKey, data: bytes, *, what: str) -> bytes:
    """A binary detached signature over ``data`` by our signing key; ``what`` names the data in an error."""
    try:
        return bytes(pysequoia.sign(signer.handle, data, mode=pysequoia.SignatureMode.DETACHED, armor=False))
    except (RuntimeError, ValueError) as exc:
        raise SigningError(
            f"signing {what} with key {signer.cert.fingerprint.lower()} failed: {_first_line(exc)}; check the key "
            "is unlocked, not expired and signing-capable"
        ) from exc


def _signing_keys(cert: Cert, now: datetime) -> dict[str, bool]:
    """Fingerprint of every signing-capable key of ``cert`` → whether it is usable at ``now``."""
    return {k.fingerprint: k.usable for k in describe_cert(cert, now).keys if k.can_sign}


def verify_detached(data: bytes, signature: bytes | None, signer: Cert, *, now: datetime) -> str:
    """Check that ``signature`` is one valid detached signature over ``data`` by ``signer`` (see the module
    docstring); return the fingerprint of the key that made it, or raise SignatureRefused."""
    if now.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC time")
    now = now.astimezone(UTC)
    issuer = signer.fingerprint.lower()
    if not signature:
        raise SignatureRefused("unsigned", "there is no signature")
    try:
        check_cert(signer, purpose="verify", now=now, label="the signer")
    except KeyPolicyError as exc:
        raise SignatureRefused("bad-signature", f"the issuer's certificate cannot verify: {exc}") from exc
    if not signature[0] & 0x80:
        raise SignatureRefused("bad-signature", "the .sig is not a binary OpenPGP signature (do not use --armor)")
    try:
        packets = list(PacketPile.from_bytes(signature))
    except (RuntimeError, ValueError) as exc:
        raise SignatureRefused("bad-signature", "the .sig cannot be parsed as one OpenPGP signature") from exc
    if len(packets) != 1 or packets[0].tag != Tag.Signature or len(bytes(packets[0])) != len(signature):
        raise SignatureRefused("bad-signature", "the .sig must hold exactly one signature packet and nothing else")
    packet = packets[0]
    if packet.signature_type != SignatureType.Binary:
        raise SignatureRefused("bad-signature", "the signature is not a binary-document signature (no --textmode)")
    if is_weak_hash(packet.hash_algorithm):
        raise SignatureRefused("bad-signature", f"the signature uses the weak hash {packet.hash_algorithm}")
    created = packet.signature_created
    if created is None or created > now + CLOCK_SKEW:
        raise SignatureRefused("bad-signature", f"the signature's creation time {created} is missing or in the future")
    claimed = (packet.issuer_fingerprint or "").lower()
    key_id = (packet.issuer_key_id or "").lower()
    signing = _signing_keys(signer, now)
    matches = [f for f in signing if f == claimed or (not claimed and key_id and f.endswith(key_id))]
    if not matches:
        raise SignatureRefused(
            "wrong-signer",
            f"signed by key {claimed or key_id or '(unnamed)'}, not by the issuer's certificate {issuer}",
        )
    if not any(signing[f] for f in matches):
        raise SignatureRefused(
            "bad-signature",
            f"signed by subkey {matches[0]} of {issuer}, which is expired or revoked now; ask the issuer to re-sign",
        )
    try:
        result = pysequoia.verify(
            bytes=data, store=lambda _ids: [signer], signature=pysequoia.Sig.from_bytes(signature)
        )
    except (RuntimeError, ValueError) as exc:
        raise SignatureRefused(
            "bad-signature", f"the signature by {issuer} does not verify: the signed bytes were altered or re-signed"
        ) from exc
    valid = [s for s in result.valid_sigs if str(s.certificate).lower() == issuer]
    if len(valid) != 1 or len(result.valid_sigs) != 1:
        raise SignatureRefused("bad-signature", f"expected exactly one valid signature by {issuer}")
    return next(f for f in matches if signing[f])
