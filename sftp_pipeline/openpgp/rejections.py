"""Why an inbound message is refused: the status codes :func:`~sftp_pipeline.openpgp.open.open_message` raises
(in :class:`~sftp_pipeline.errors.OpenRejected`), which go into the receipt as they are.

* ``not-encrypted-to-us``  — none of the session keys is for our key.
* ``not-encrypted``        — a signed (or plain) message without encryption.
* ``unsigned``             — encrypted but carries no signature.
* ``unknown-signer``       — signed by a key that is not this partner's (another partner's, anyone's).
* ``signer-expired``       — the partner's certificate is expired now, or was at signing time.
* ``signer-revoked``       — the partner's certificate is revoked.
* ``signature-invalid``    — a signature by the partner that does not verify (tampered plaintext).
* ``integrity-missing``    — no integrity protection (a SED packet instead of SEIPD, no MDC).
* ``tampered``             — decryption, MDC or AEAD failure, truncation.
* ``malformed``            — garbage, empty, ASCII armour, trailing data, a second message.
* ``oversize``             — the plaintext would exceed ``max_output`` (decompression bombs included).
* ``weak-algorithm``       — 3DES/CAST5/IDEA/Blowfish/Twofish cipher, SHA-1/MD5 signature, weak partner key.
* ``signature-future``     — made more than :data:`~sftp_pipeline.openpgp.policy.SIGNATURE_FUTURE_SKEW` after
  ``now``.
"""

from __future__ import annotations

from pathlib import Path

from sftp_pipeline.errors import OpenRejected

NOT_ENCRYPTED_TO_US = "not-encrypted-to-us"
NOT_ENCRYPTED = "not-encrypted"
UNSIGNED = "unsigned"
UNKNOWN_SIGNER = "unknown-signer"
SIGNER_EXPIRED = "signer-expired"
SIGNER_REVOKED = "signer-revoked"
SIGNATURE_INVALID = "signature-invalid"
INTEGRITY_MISSING = "integrity-missing"
TAMPERED = "tampered"
MALFORMED = "malformed"
OVERSIZE = "oversize"
WEAK_ALGORITHM = "weak-algorithm"
SIGNATURE_FUTURE = "signature-future"

CODES = frozenset(
    {
        NOT_ENCRYPTED_TO_US,
        NOT_ENCRYPTED,
        UNSIGNED,
        UNKNOWN_SIGNER,
        SIGNER_EXPIRED,
        SIGNER_REVOKED,
        SIGNATURE_INVALID,
        INTEGRITY_MISSING,
        TAMPERED,
        MALFORMED,
        OVERSIZE,
        WEAK_ALGORITHM,
        SIGNATURE_FUTURE,
    }
)


def oversize(src: Path, max_output: int) -> OpenRejected:
    return OpenRejected(OVERSIZE, f"{src}: the plaintext exceeds the {max_output}-byte limit (a bomb, or raise it)")
