"""OpenPGP policy: describe a certificate and decide whether it may be used.

Sequoia (``pysequoia``) parses; this module decides what is allowed. Policy, for every certificate we use:

* not expired and not revoked at ``now`` (the caller's clock);
* no DSA or ElGamal, no RSA below 3072 bits, no SHA-1/MD5 self-signatures;
* a usable encryption-capable key to seal *to* it, a usable signing-capable key
  to seal *with* it (or to verify its signatures).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import pysequoia
from pysequoia.packet import HashAlgorithm, PacketPile, PublicKeyAlgorithm, SignatureType, Tag

from sftp_pipeline.errors import CryptoError, KeyPolicyError

# Why 3072: NIST SP 800-57 / BSI TR-02102 minimum for RSA (and DSA) beyond 2030; 2048 is legacy.
MIN_RSA_BITS = 3072
CIPHER_NAMES = {
    1: "IDEA",
    2: "3DES",
    3: "CAST5",
    4: "Blowfish",
    7: "AES-128",
    8: "AES-192",
    9: "AES-256",
    10: "Twofish",
    11: "Camellia-128",
    12: "Camellia-192",
    13: "Camellia-256",
}
AEAD_NAMES = {1: "EAX", 2: "OCB", 3: "GCM"}
HASH_NAMES = {
    1: "MD5",
    2: "SHA-1",
    3: "RIPEMD-160",
    8: "SHA-256",
    9: "SHA-384",
    10: "SHA-512",
    11: "SHA-224",
    12: "SHA3-256",
    14: "SHA3-512",
}
# Symmetric ciphers (OpenPGP ids) accepted from partners: AES only (GnuPG 2.2 may choose AES-128 by preference).
ALLOWED_CIPHERS = frozenset({7, 8, 9})
# Signatures and self-signatures made with these hashes can be forged (SHA-1 chosen-prefix collisions, 2020):
# MD5 (1), SHA-1 (2), RIPEMD-160 (3) — as OpenPGP ids (what GnuPG's status lines carry) and as pysequoia's enum
# (whose int() is its own index, not the OpenPGP id).
WEAK_HASH_IDS = frozenset({1, 2, 3})
_WEAK_HASHES = (HashAlgorithm.MD5, HashAlgorithm.SHA1, HashAlgorithm.RipeMD)
# Why 5 minutes: the partner's clock may run a little ahead; more than that is a wrong clock or a forgery.
SIGNATURE_FUTURE_SKEW = timedelta(minutes=5)


def is_weak_hash(algorithm: Any) -> bool:
    """Whether a pysequoia ``HashAlgorithm`` is one of :data:`WEAK_HASH_IDS` (its enums are not hashable)."""
    return algorithm is not None and algorithm in _WEAK_HASHES


def _ids(*algorithms: Any) -> frozenset[int]:
    """pysequoia enums are not hashable; compare them by their OpenPGP algorithm id."""
    return frozenset(int(a) for a in algorithms)


_PQ_ALGORITHMS = _ids(
    PublicKeyAlgorithm.MLDSA65_Ed25519,
    PublicKeyAlgorithm.MLDSA87_Ed448,
    PublicKeyAlgorithm.MLKEM768_X25519,
    PublicKeyAlgorithm.MLKEM1024_X448,
    PublicKeyAlgorithm.SLHDSA128f,
    PublicKeyAlgorithm.SLHDSA128s,
    PublicKeyAlgorithm.SLHDSA256s,
)
_RSA_ALGORITHMS = _ids(
    PublicKeyAlgorithm.RSAEncryptSign,
    PublicKeyAlgorithm.RSAEncrypt,
    PublicKeyAlgorithm.RSASign,
)
_ELGAMAL_ALGORITHMS = _ids(PublicKeyAlgorithm.ElGamalEncrypt, PublicKeyAlgorithm.ElGamalEncryptSign)
_DSA = int(PublicKeyAlgorithm.DSA)
_FIXED_NAMES = {
    int(algo): name
    for algo, name in (
        (PublicKeyAlgorithm.Ed25519, "Ed25519"),
        (PublicKeyAlgorithm.Ed448, "Ed448"),
        (PublicKeyAlgorithm.X25519, "X25519"),
        (PublicKeyAlgorithm.X448, "X448"),
        (PublicKeyAlgorithm.MLDSA65_Ed25519, "ML-DSA-65+Ed25519"),
        (PublicKeyAlgorithm.MLDSA87_Ed448, "ML-DSA-87+Ed448"),
        (PublicKeyAlgorithm.MLKEM768_X25519, "ML-KEM-768+X25519"),
        (PublicKeyAlgorithm.MLKEM1024_X448, "ML-KEM-1024+X448"),
        (PublicKeyAlgorithm.SLHDSA128f, "SLH-DSA-128f"),
        (PublicKeyAlgorithm.SLHDSA128s, "SLH-DSA-128s"),
        (PublicKeyAlgorithm.SLHDSA256s, "SLH-DSA-256s"),
    )
}
# Curve OIDs (DER body, hex) used by v4 ECC keys, RFC 9580 §9.2.
_CURVES = {
    "2b06010401da470f01": "Ed25519",
    "2b060104019755010501": "X25519",
    "2b6571": "Ed448",
    "2b656f": "X448",
    "2a8648ce3d030107": "P-256",
    "2b81040022": "P-384",
    "2b81040023": "P-521",
    "2b2403030208010107": "brainpoolP256r1",
    "2b240303020801010b": "brainpoolP384r1",
    "2b240303020801010d": "brainpoolP512r1",
}
_PRIMARY_SELF_SIGS = (
    SignatureType.DirectKey,
    SignatureType.PositiveCertification,
    SignatureType.GenericCertification,
    SignatureType.CasualCertification,
    SignatureType.PersonaCertification,
)

Purpose = Literal["encrypt", "verify"]
Cert = pysequoia.Cert


# Why 5 minutes: a key made on a machine whose clock runs slightly ahead must still be usable here.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class KeyInfo:
    """One component key (primary or subkey) of a certificate."""

    fingerprint: str
    algorithm: str
    bits: int | None
    created: datetime | None
    expires: datetime | None
    revoked: bool
    can_sign: bool
    can_encrypt: bool
    can_certify: bool
    post_quantum: bool
    primary: bool
    weak_hash: bool = False
    usable: bool = False  # alive at ``now`` and part of a usable certificate

    def alive(self, now: datetime) -> bool:
        not_expired = self.expires is None or self.expires > now
        born = self.created is None or self.created <= now + CLOCK_SKEW
        return not_expired and born and not self.revoked


@dataclass(frozen=True)
class CertInfo:
    """What a certificate is and whether it may be used; ``problems`` is empty when usable."""

    fingerprint: str
    user_ids: tuple[str, ...]
    algorithm: str
    subkey_algorithms: tuple[str, ...]
    version: int
    profile: str
    expires: datetime | None
    revoked: bool
    can_sign: bool
    can_encrypt: bool
    post_quantum: bool
    problems: tuple[str, ...]
    keys: tuple[KeyInfo, ...] = field(default=(), repr=False)

    @property
    def encryption_algorithms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k.algorithm for k in self.keys if k.can_encrypt and k.usable))

    @property
    def signing_algorithms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k.algorithm for k in self.keys if k.can_sign and k.usable))


class SecretKey(Protocol):
    """What opening a message needs of our key set (:class:`sftp_pipeline.keys.OurKeys` is one)."""

    @property
    def cert(self) -> Cert: ...

    @property
    def tsk(self) -> pysequoia.Tsk: ...

    def decryptor(self) -> pysequoia.PyDecryptor:
        """Our decryption handle, unlocked."""
        ...

    def reveal_openpgp_passphrase(self) -> str | None:
        """The passphrase of our secret key (for GnuPG's throw-away home), if it has one."""
        ...


@dataclass(frozen=True, repr=False)
class SigningKey:
    """Our signing handle: the pysequoia signer plus the certificate it belongs to."""

    cert: Cert
    handle: pysequoia.PySigner

    def __repr__(self) -> str:
        return f"SigningKey(fingerprint={self.cert.fingerprint}, handle=<hidden>)"


# ---------------------------------------------------------------------------------------------- describe


def _first_line(exc: BaseException) -> str:
    """pysequoia messages carry a Rust backtrace when RUST_BACKTRACE is set; keep the message only."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC time")
    return now.astimezone(UTC)


def _mpi_bits(body: bytes, offset: int) -> int | None:
    if len(body) < offset + 2:
        return None
    return int.from_bytes(body[offset : offset + 2], "big")


def _describe_material(body: bytes, algo: Any) -> tuple[str, int | None]:
    """Algorithm name and (for RSA/DSA/ElGamal) size in bits, from a public-key packet body."""
    version = body[0] if body else 0
    # v4: version(1) created(4) algo(1) material; v6 adds a 4-octet material length (RFC 9580 §5.5.2).
    offset = 6 if version == 4 else 10
    algo_id = int(algo)
    if algo_id in _FIXED_NAMES:
        return _FIXED_NAMES[algo_id], None
    if algo_id in _RSA_ALGORITHMS | _ELGAMAL_ALGORITHMS | {_DSA}:
        bits = _mpi_bits(body, offset)
        family = "RSA" if algo_id in _RSA_ALGORITHMS else ("DSA" if algo_id == _DSA else "ElGamal")
        return f"{family}-{bits}", bits
    if algo in (PublicKeyAlgorithm.EdDSA, PublicKeyAlgorithm.ECDH, PublicKeyAlgorithm.ECDSA):
        oid_len = body[offset] if len(body) > offset else 0
        oid = body[offset + 1 : offset + 1 + oid_len].hex()
        curve = _CURVES.get(oid, f"curve {oid}")
        if algo == PublicKeyAlgorithm.EdDSA:
            return curve if curve.startswith("Ed") else f"EdDSA {curve}", None
        if algo == PublicKeyAlgorithm.ECDH:
            return curve if curve.startswith("X") else f"ECDH {curve}", None
        return f"ECDSA {curve}", None
    return repr(algo).rsplit(".", 1)[-1], None


@dataclass
class _Component:
    packet: Any
    primary: bool
    sigs: list[Any] = field(default_factory=list)


def _components(cert: Cert) -> list[_Component]:
    components: list[_Component] = []
    for packet in PacketPile.from_bytes(bytes(cert)):
        tag = packet.tag
        if tag in (Tag.PublicKey, Tag.SecretKey):
            components.append(_Component(packet, primary=True))
        elif tag in (Tag.PublicSubkey, Tag.SecretSubkey):
            components.append(_Component(packet, primary=False))
        elif tag == Tag.Signature and components:
            components[-1].sigs.append(packet)
    return components


def _by_primary(sig: Any, fingerprint: str, key_id: str) -> bool:
    issuer = sig.issuer_fingerprint
    if issuer is not None:
        return bool(issuer.lower() == fingerprint)
    return bool((sig.issuer_key_id or "").lower() == key_id)


def _newest(sigs: Iterable[Any]) -> Any | None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    ordered = sorted(sigs, key=lambda s: s.signature_created or epoch)
    return ordered[-1] if ordered else None


def _key_info(component: _Component, primary_fpr: str, primary_keyid: str, cert: Cert) -> KeyInfo:
    packet = component.packet
    algo = packet.key_algorithm
    name, bits = _describe_material(packet.body, algo)
    mine = [s for s in component.sigs if _by_primary(s, primary_fpr, primary_keyid)]
    if component.primary:
        binding = _newest(s for s in mine if s.signature_type in _PRIMARY_SELF_SIGS)
        revoked = any(s.signature_type == SignatureType.KeyRevocation for s in mine) or cert.is_revoked
        expires = cert.expiration
    else:
        binding = _newest(s for s in mine if s.signature_type == SignatureType.SubkeyBinding)
        revoked = any(s.signature_type == SignatureType.SubkeyRevocation for s in mine)
        period = binding.key_validity_period if binding is not None else None
        created = packet.key_created
        expires = created + period if period and created else None
    flags = binding.key_flags if binding is not None else None
    if flags is None and component.primary:  # old keys without flags: the primary may certify and sign
        can_sign, can_encrypt, can_certify = True, False, True
    else:
        can_sign = bool(flags and flags.signing)
        can_encrypt = bool(flags and (flags.transport_encryption or flags.storage_encryption))
        can_certify = bool(flags and flags.certification)
    if binding is None and not component.primary:
        can_sign = can_encrypt = can_certify = False  # an unbound subkey is not part of the cert
    return KeyInfo(
        fingerprint=(packet.fingerprint or "").lower(),
        algorithm=name,
        bits=bits,
        created=packet.key_created,
        expires=expires,
        revoked=revoked,
        can_sign=can_sign,
        can_encrypt=can_encrypt,
        can_certify=can_certify,
        post_quantum=int(algo) in _PQ_ALGORITHMS,
        primary=component.primary,
        weak_hash=binding is not None and is_weak_hash(binding.hash_algorithm),
    )


def _problems(primary: KeyInfo, keys: Sequence[KeyInfo], now: datetime) -> list[str]:
    problems: list[str] = []
    if primary.revoked:
        problems.append("it is revoked")
    if primary.expires is not None and primary.expires <= now:
        problems.append(f"it expired on {primary.expires:%Y-%m-%d %H:%M} UTC")
    if primary.created is not None and primary.created > now + CLOCK_SKEW:
        problems.append(f"it was created in the future ({primary.created:%Y-%m-%d %H:%M} UTC); check the clocks")
    for key in keys:
        if not (key.primary or key.alive(now)):
            continue  # an expired or revoked subkey is never used, so it cannot weaken anything
        role = "primary key" if key.primary else f"subkey {key.fingerprint[-16:]}"
        if key.algorithm.startswith(("DSA", "ElGamal")):
            problems.append(f"its {role} uses {key.algorithm}; DSA and ElGamal are not allowed")
        elif key.algorithm.startswith("RSA") and (key.bits or 0) < MIN_RSA_BITS:
            problems.append(f"its {role} is {key.algorithm}, below the {MIN_RSA_BITS}-bit minimum")
        if key.weak_hash:
            problems.append(f"its {role} is bound with a SHA-1/MD5 self-signature, which can be forged")
    return problems


def describe_cert(cert: Cert, now: datetime) -> CertInfo:
    """Read a certificate's keys, algorithms, capabilities and validity at ``now``."""
    now = _aware(now)
    fingerprint = cert.fingerprint.lower()
    components = _components(cert)
    if not components or not components[0].primary:
        raise CryptoError(f"certificate {fingerprint}: no primary key packet found")
    key_id = fingerprint[-16:]
    keys = [_key_info(component, fingerprint, key_id, cert) for component in components]
    primary = keys[0]
    problems = _problems(primary, keys, now)
    cert_ok = primary.alive(now)
    keys = [replace(key, usable=cert_ok and key.alive(now)) for key in keys]
    enc = [k for k in keys if k.can_encrypt and k.usable]
    sig = [k for k in keys if k.can_sign and k.usable]
    version = components[0].packet.body[0] if components[0].packet.body else 4
    return CertInfo(
        fingerprint=fingerprint,
        user_ids=tuple(str(uid) for uid in cert.user_ids),
        algorithm=primary.algorithm,
        subkey_algorithms=tuple(k.algorithm for k in keys[1:]),
        version=version,
        profile="rfc9580" if version >= 6 else "rfc4880",
        expires=primary.expires,
        revoked=primary.revoked,
        can_sign=bool(sig),
        can_encrypt=bool(enc),
        post_quantum=bool(enc) and bool(sig) and all(k.post_quantum for k in [*enc, *sig]),
        problems=tuple(problems),
        keys=tuple(keys),
    )


def _fix_for(problem: str, fingerprint: str) -> str:
    if problem.startswith("it has no valid"):
        return (
            "ask its owner to add a valid one (`gpg --quick-add-key FPR cv25519 encr` or `... ed25519 sign`, "
            "or extend the expired one with `gpg --quick-set-expire FPR 2y '*'`) and send the updated certificate"
        )
    if problem == "it is revoked":
        return "its owner revoked it: ask them for their new certificate and replace the file"
    if problem.startswith("it expired"):
        return (
            f"ask its owner to extend it (`gpg --quick-set-expire {fingerprint} 2y`, and the same for "
            "its subkeys) and send the updated certificate"
        )
    if problem.startswith("it was created in the future"):
        return "fix the clock of the machine that made the key, or of this machine"
    return (
        "ask its owner for a new key: Ed25519/Cv25519 (`gpg --quick-generate-key NAME ed25519 cert,sign`, "
        "`gpg --quick-add-key FPR cv25519 encr`) or RSA-3072 or larger"
    )


def check_cert(cert: Cert, *, purpose: Purpose, now: datetime, label: str) -> CertInfo:
    """Describe ``cert`` and raise :class:`KeyPolicyError` if it may not be used for ``purpose``."""
    info = describe_cert(cert, now)
    problems = list(info.problems)
    if purpose == "encrypt" and not info.can_encrypt:
        problems.append("it has no valid encryption-capable key (subkey expired, revoked or missing)")
    if purpose == "verify" and not info.can_sign:
        problems.append("it has no valid signing-capable key (subkey expired, revoked or missing)")
    if problems:
        fixes = list(dict.fromkeys(_fix_for(p, info.fingerprint) for p in problems))
        raise KeyPolicyError(
            f"{label}: OpenPGP certificate {info.fingerprint} cannot be used to {purpose}: "
            f"{'; '.join(problems)}. Fix: {'; '.join(fixes)}."
        )
    return info
