"""The SSH algorithms we allow, shared by the SFTP client and the embedded server.

Modern only: no SHA-1, no CBC, no weak or small Diffie-Hellman groups, no
UMAC/MD5, no NIST P-curves (ECDH or ECDSA) and no encrypt-and-MAC modes: the
lists pass ssh-audit's hardened policy for OpenSSH 9.9 (server and client;
``tests/integration/test_ssh_audit.py`` runs it, with the policy files in
``tests/ssh_audit/``). Each list is in preference order and is filtered at import time
through what the installed asyncssh actually implements, so a name asyncssh
cannot do never reaches a KEXINIT (asyncssh would refuse the whole list).

Post-quantum key exchange comes first. asyncssh offers ``mlkem768x25519-sha256``
natively; ``sntrup761x25519-sha512@openssh.com`` only with liboqs, so it is
listed only when this asyncssh reports it. OpenSSH 9.2 (Debian 12) offers only
sntrup761 as PQ, so against it the exchange falls back to curve25519 — the
negotiated name is recorded per transfer (see :class:`SessionInfo`).

Terrapin (CVE-2023-48795): asyncssh ≥ 2.14.2 always offers
``kex-strict-c-v00@openssh.com`` / ``kex-strict-s-v00@openssh.com`` and enforces
strict key exchange when the peer does too (see :data:`STRICT_KEX_MARKERS`);
nothing needs switching on. ChaCha20-Poly1305 and the ``-etm`` MACs are only
Terrapin-exposed without strict kex, which every OpenSSH ≥ 9.6 and asyncssh
peer negotiates; OpenSSH 9.2 from Debian 12 carries the backported fix.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncssh.encryption
import asyncssh.kex
import asyncssh.mac
import asyncssh.public_key

_MLKEM = "mlkem768x25519-sha256"
_SNTRUP = "sntrup761x25519-sha512@openssh.com"
_SNTRUP_LEGACY = "sntrup761x25519-sha512"

# Every post-quantum hybrid kex name we know of, supported by asyncssh here or not.
PQ_KEX: frozenset[str] = frozenset({_MLKEM, _SNTRUP, _SNTRUP_LEGACY})

# The markers asyncssh puts in its KEXINIT to negotiate Terrapin-proof strict kex.
STRICT_KEX_MARKERS: tuple[str, str] = ("kex-strict-c-v00@openssh.com", "kex-strict-s-v00@openssh.com")

_KEX_PREFERENCE = (
    _MLKEM,
    _SNTRUP,
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
)

_CIPHER_PREFERENCE = (
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes128-ctr",
)

# Only used with the -ctr ciphers; GCM and ChaCha20-Poly1305 authenticate on their own. Encrypt-then-MAC
# only: plain hmac-sha2-* MACs the plaintext (encrypt-and-MAC), which ssh-audit warns about.
_MAC_PREFERENCE = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
)

# Host key and user-auth signature algorithms (ssh-rsa, i.e. RSA with SHA-1, is not here; nor ECDSA on the
# NIST P-curves, which ssh-audit fails and the hardened OpenSSH policies leave out).
_SIG_PREFERENCE = (
    "ssh-ed25519",
    "rsa-sha2-512",
    "rsa-sha2-256",
)


def _supported(wanted: Iterable[str], available: Iterable[bytes]) -> tuple[str, ...]:
    have = {alg.decode("ascii") for alg in available}
    return tuple(alg for alg in wanted if alg in have)


KEX_ALGS: tuple[str, ...] = _supported(_KEX_PREFERENCE, asyncssh.kex.get_kex_algs())
ENCRYPTION_ALGS: tuple[str, ...] = _supported(_CIPHER_PREFERENCE, asyncssh.encryption.get_encryption_algs())
MAC_ALGS: tuple[str, ...] = _supported(_MAC_PREFERENCE, asyncssh.mac.get_mac_algs())
HOST_KEY_ALGS: tuple[str, ...] = _supported(_SIG_PREFERENCE, asyncssh.public_key.get_public_key_algs())
SIGNATURE_ALGS: tuple[str, ...] = HOST_KEY_ALGS  # what we accept for public-key user authentication
COMPRESSION_ALGS: tuple[str, ...] = ("none",)  # sealed files are encrypted: compressing them gains nothing

PQ_KEX_ALGS: tuple[str, ...] = tuple(alg for alg in KEX_ALGS if alg in PQ_KEX)

if not KEX_ALGS or not ENCRYPTION_ALGS or not MAC_ALGS or not HOST_KEY_ALGS:  # pragma: no cover
    raise ImportError("this asyncssh supports none of the allowed SSH algorithms in some category")


def is_post_quantum(kex: str) -> bool:
    """True when ``kex`` is a hybrid post-quantum key exchange."""
    return kex in PQ_KEX


def kex_algs(require_pq: bool = False) -> tuple[str, ...]:
    """The kex list to offer: only the post-quantum ones when ``require_pq``."""
    return PQ_KEX_ALGS if require_pq else KEX_ALGS
