"""OpenPGP: the policy every certificate is held to, sealing outbound documents and opening inbound ones.

* :mod:`.policy` — describe a certificate and decide whether it may be used (expiry, revocation, strength);
* :mod:`.seal` — sign with our key and encrypt to the partner, streamed, AES-256;
* :mod:`.open` — decrypt and verify a partner's message (GnuPG or Sequoia, one set of rules);
* :mod:`.stream` — GnuPG decrypting a download while it arrives.
"""

from sftp_pipeline.openpgp.policy import (
    CIPHER_NAMES,
    CLOCK_SKEW,
    MIN_RSA_BITS,
    Cert,
    CertInfo,
    KeyInfo,
    Purpose,
    SigningKey,
    check_cert,
    describe_cert,
)
from sftp_pipeline.openpgp.seal import SealInfo, SealKeys, check_seal_keys, seal

__all__ = [
    "CIPHER_NAMES",
    "CLOCK_SKEW",
    "MIN_RSA_BITS",
    "Cert",
    "CertInfo",
    "KeyInfo",
    "Purpose",
    "SealInfo",
    "SealKeys",
    "SigningKey",
    "check_cert",
    "check_seal_keys",
    "describe_cert",
    "seal",
]
