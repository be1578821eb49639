"""Open an inbound message: decrypt with our key, verify the partner's signature, release plaintext.

One function decides, :func:`open_message`. Plaintext goes to ``.{dst.name}.part`` beside ``dst`` and is
renamed to ``dst`` only after every check passed; on any failure the partial file is deleted and
:class:`~sftp_pipeline.errors.OpenRejected` is raised with one of the status codes of :mod:`.rejections`
(they go into the receipt).

Engines (measured, DESIGN.md "Known pitfalls"): pysequoia 0.1.35 rejects GnuPG's default output
(encryption → compression → signature) and holds the whole message in memory; GnuPG 2.2 streams
but cannot read SEIPDv2. Opening 200 MB (measured through this function): GnuPG 1.45 s, Python's peak
unchanged at 64 MiB; pysequoia 1.68 s, peak 412 MiB (+349 MiB) when it read the file by path (it maps the
file); fed through a pipe its peak is flat. So the top-level packet sequence, read here without decrypting
(:mod:`.packets`), picks the engine: SEIPDv1 (what GnuPG and every RFC 4880 tool makes) → GnuPG
(:mod:`.gnupg`); SEIPDv2 (RFC 9580, post-quantum, and what Sequoia seals to Sequoia-made keys) → pysequoia
(:mod:`.sequoia`). The same walk rejects what both engines would let through: no encryption, a SED packet,
trailing bytes or a second message after the encrypted packet.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Literal

from sftp_pipeline.errors import OpenRejected, PacketError, PacketsTruncated
from sftp_pipeline.fsutil import sha256_file
from sftp_pipeline.openpgp import gnupg, packets, sequoia
from sftp_pipeline.openpgp import rejections as r
from sftp_pipeline.openpgp.policy import AEAD_NAMES, ALLOWED_CIPHERS, CIPHER_NAMES, Cert, SecretKey, describe_cert

_ARMOR_START = b"-----BEGIN PGP"
# Why 64 KiB: GnuPG writes the encrypted packet in 8 KiB partial-body chunks; the walk seeks chunk to chunk, and
# with the default 8 KiB buffer every seek was a read (0.2 s per 256 MiB); 64 KiB measured fastest (0.08 s).
_WALK_BUFFER = 64 * 1024
# What a bare signed (or plain) message starts with: a signature, a one-pass signature, compressed or literal data.
_UNENCRYPTED_STARTS = frozenset({packets.SIGNATURE, packets.ONE_PASS_SIGNATURE, packets.COMPRESSED, packets.LITERAL})

Engine = Literal["sequoia", "gnupg"]


@dataclass(frozen=True)
class Opened:
    """What :func:`open_message` released, for the receipt and the ledger."""

    plaintext_sha256: str
    plaintext_size: int
    signer_fingerprint: str  # the partner's primary key, lowercase hex
    literal_name: str | None  # as the sender wrote it: never use it as a path
    engine: Engine
    algorithms: str


# ------------------------------------------------------------------------------------------- packet walk


@dataclass(frozen=True)
class _Shape:
    seipd_version: int
    recipients: int
    cipher: int | None = None  # visible in SEIPDv2 only (v1 hides it in the session key)
    aead: int | None = None


def _shape(src: Path) -> _Shape:
    """Check the top-level packet sequence: session keys, then one SEIPD packet, then end of file."""
    size = src.stat().st_size
    if size == 0:
        raise OpenRejected(r.MALFORMED, f"{src}: the file is empty; ask the partner to send it again")
    with src.open("rb", buffering=_WALK_BUFFER) as fh:
        if fh.read(len(_ARMOR_START)).startswith(_ARMOR_START):
            raise OpenRejected(r.MALFORMED, f"{src}: ASCII-armoured; the partner must send binary OpenPGP (no --armor)")
        recipients = 0
        try:
            for packet in packets.walk(fh, size):
                shape = _judge_packet(src, fh, packet, size, recipients)
                if shape is not None:
                    return shape
                recipients += 1
        except PacketsTruncated:
            if recipients:
                raise OpenRejected(r.TAMPERED, f"{src}: truncated at {size} bytes; ask for it again") from None
            raise OpenRejected(r.MALFORMED, f"{src}: a packet runs past the end of the file; not a message") from None
        except PacketError as exc:
            raise OpenRejected(r.MALFORMED, f"{src}: {exc}; not a message") from None
    raise OpenRejected(r.TAMPERED, f"{src}: session keys but no encrypted data (truncated?)")


def _judge_packet(src: Path, fh: BinaryIO, packet: packets.Packet, size: int, recipients: int) -> _Shape | None:
    """None for one more session key; the shape at the encrypted packet; OpenRejected for anything else."""
    tag, end = packet.tag, packet.body_end or size
    if tag in packets.SESSION_KEYS:
        return None
    if tag == packets.SEIPD and recipients:
        if end != size:
            raise OpenRejected(r.MALFORMED, f"{src}: {size - end} bytes of trailing data after the encrypted message")
        fh.seek(packet.body_start)
        head = fh.read(3)
        version = head[0] if head else 0
        if version not in (1, 2):
            raise OpenRejected(r.MALFORMED, f"{src}: unknown SEIPD version {version}")
        if version == 2:
            if len(head) < 3:
                raise OpenRejected(r.TAMPERED, f"{src}: truncated at {size} bytes; ask for it again")
            return _Shape(version, recipients, head[1], head[2])
        return _Shape(version, recipients)
    if tag == packets.SED and recipients:
        raise OpenRejected(
            r.INTEGRITY_MISSING,
            f"{src}: encrypted without integrity protection (SED packet, no MDC); ask the partner "
            "to use a current OpenPGP tool (GnuPG ≥ 2.2 without --rfc2440)",
        )
    if tag in _UNENCRYPTED_STARTS and not recipients:
        raise OpenRejected(r.NOT_ENCRYPTED, f"{src}: the message is not encrypted (signed or plain only)")
    if tag == packets.OCB and recipients:
        raise OpenRejected(r.MALFORMED, f"{src}: LibrePGP OCB packet (GnuPG ≥ 2.3 default); ask for RFC 9580")
    raise OpenRejected(r.MALFORMED, f"{src}: unexpected packet (tag {tag}) at byte {packet.offset}")


def _check_sender(sender: Cert, now: datetime, src: Path) -> None:
    info = describe_cert(sender, now)
    where = f"{src}: the partner's certificate {info.fingerprint}"
    if info.revoked:
        raise OpenRejected(r.SIGNER_REVOKED, f"{where} is revoked; ask the partner for their new certificate")
    if (info.expires is not None and info.expires <= now) or not info.can_sign:
        raise OpenRejected(
            r.SIGNER_EXPIRED, f"{where} is expired (or has no valid signing key); ask the partner to extend it"
        )
    if info.problems:
        raise OpenRejected(r.WEAK_ALGORITHM, f"{where} may not be used: {'; '.join(info.problems)}")


# ------------------------------------------------------------------------------------------- decide


def open_message(
    src: Path,
    dst: Path,
    *,
    keys: SecretKey,
    sender: Cert,
    now: datetime,
    max_output: int,
    gpg: str | None = shutil.which("gpg"),
    streamed: gnupg.GnupgRun | None = None,
) -> Opened:
    """Decrypt ``src`` with our key, verify it is signed by ``sender`` only, and release it as ``dst``.

    ``streamed``: GnuPG already decrypted ``src`` while it downloaded (:mod:`sftp_pipeline.openpgp.stream`), into the
    partial file; it is judged here by the same rules, after the same packet walk, instead of a second run.

    Raises :class:`OpenRejected` (with a status code of :mod:`.rejections`) on any refusal; then
    no plaintext byte is left on disk. ``dst`` is replaced if it exists.
    """
    part = dst.with_name(f".{dst.name}.part")
    if streamed is None:
        part.unlink(missing_ok=True)
    try:
        shape = _shape(src)
        _check_sender(sender, now, src)
        if shape.cipher is not None and shape.cipher not in ALLOWED_CIPHERS:
            weak = CIPHER_NAMES.get(shape.cipher, str(shape.cipher))
            raise OpenRejected(r.WEAK_ALGORITHM, f"{src}: encrypted with {weak}; only AES is accepted")
        engine: Engine = "gnupg" if shape.seipd_version == 1 and gpg else "sequoia"
        judged = streamed is not None and shape.seipd_version == 1
        if streamed is not None and judged:
            if part.exists() and part.stat().st_size > max_output:
                raise r.oversize(src, max_output)
            algorithms, name = gnupg.judge(src, streamed.lines, sender.fingerprint.lower(), now, streamed.stderr)
            engine, gpg = "gnupg", None  # judged: no second run
        elif streamed is not None:
            part.unlink(missing_ok=True)  # cannot happen (the stream saw the same head); open it afresh
        if gpg and engine == "gnupg":
            try:
                algorithms, name = gnupg.open_file(src, part, keys, sender, now, max_output, gpg)
            except gnupg._GnupgCannot:
                part.unlink(missing_ok=True)
                engine = "sequoia"
        if engine == "sequoia":
            algorithms, name = sequoia.open_file(src, part, keys, sender, now, max_output), None
            if shape.cipher is not None:
                mode = f"SEIPDv2 ({AEAD_NAMES.get(shape.aead or 0, shape.aead)})"
                algorithms = f"{CIPHER_NAMES.get(shape.cipher)}, {algorithms.replace('SEIPD', mode)}"
            else:
                algorithms = algorithms.replace("SEIPD", "SEIPDv1")
        if streamed is not None and judged:
            digest, size = streamed.plaintext_sha256, streamed.plaintext_size
        else:
            digest, size = sha256_file(part)
        os.replace(part, dst)
    except OpenRejected:
        part.unlink(missing_ok=True)
        raise
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise OpenRejected(r.MALFORMED, f"{src}: cannot open the message: {exc.strerror or exc}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return Opened(digest, size, sender.fingerprint.lower(), name, engine, algorithms)
