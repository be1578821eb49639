"""Open an inbound message: decrypt with our key, verify the partner's signature, release plaintext.

One function decides, :func:`open_message`. Plaintext goes to ``.{dst.name}.part`` beside ``dst`` and is
renamed to ``dst`` only after every check passed; on any failure the partial file is deleted and
:class:`OpenRejected` is raised with one of these status codes (they go into the receipt):

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
* ``signature-future``     — made more than :data:`SIGNATURE_FUTURE_SKEW` after ``now``.

Engines (measured, DESIGN.md "Known pitfalls"): pysequoia 0.1.35 rejects GnuPG's default output
(encryption → compression → signature) and holds the whole message in memory; GnuPG 2.2 streams
but cannot read SEIPDv2. Opening 200 MB (measured through this function): GnuPG 1.45 s, Python's peak
unchanged at 64 MiB; pysequoia 1.68 s, peak 412 MiB (+349 MiB) when it read the file by path (it maps the
file); fed through a pipe its peak is flat, :data:`SEQUOIA_BUFFER_MIB` above the interpreter at any size.
So the top-level packet sequence,
read here without decrypting, picks the engine: SEIPDv1 (what GnuPG and every RFC 4880 tool makes)
→ GnuPG in a throw-away GNUPGHOME holding only our secret key and this partner's certificate, its
``--status-fd`` lines read and its exit code ignored; SEIPDv2 (RFC 9580, post-quantum, and what
Sequoia seals to Sequoia-made keys) → pysequoia, its output streamed through a FIFO to ``head -c``
so that the cap holds. The same walk rejects what both engines would let through: no encryption,
a SED packet, trailing bytes or a second message after the encrypted packet.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import unquote

import pysequoia
from pysequoia.packet import PacketPile

from sftp_pipeline.errors import OpenRejected
from sftp_pipeline.fsutil import sha256_file
from sftp_pipeline.keys import OurKeys
from sftp_pipeline.openpgp import CIPHER_NAMES, Cert, describe_cert

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

# Why 5 minutes: the partner's clock may run a little ahead; more than that is a wrong clock or a forgery.
SIGNATURE_FUTURE_SKEW = timedelta(minutes=5)
# Not a setting: what Sequoia's decryptor (pysequoia 0.1.35, no knob) buffers while it streams from a pipe, measured
# as peak RSS above the interpreter: 8 MiB message +37 MiB, 32 MiB +120, 64 MiB +163, 256 MiB and 1 GiB +163.
SEQUOIA_BUFFER_MIB = 170
# Why 600 s: GnuPG decrypts ~100 MB/s; an hour-long file is far beyond any document we exchange.
GPG_OPEN_TIMEOUT = 600.0
# Why 30 s: importing two keys into an empty home takes well under a second; longer means gpg hangs.
GPG_SETUP_TIMEOUT = 30.0
# Symmetric ciphers (OpenPGP ids) accepted from partners: AES only (GnuPG 2.2 may choose AES-128 by preference).
ALLOWED_CIPHERS = frozenset({7, 8, 9})
# Signature hashes (OpenPGP ids) refused: MD5 (1), SHA-1 (2, chosen-prefix collisions 2020), RIPEMD-160 (3).
WEAK_SIG_HASHES = frozenset({1, 2, 3})
_CIPHER_NAMES = CIPHER_NAMES
_HASH_NAMES = {
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
# Packet tags (RFC 9580 §5): session keys, encrypted data, and the ones a bare signed message starts with.
_PKESK, _SKESK, _SED, _SEIPD, _OCB = 1, 3, 9, 18, 20
_UNENCRYPTED_STARTS = frozenset({2, 4, 8, 11})  # signature, one-pass signature, compressed, literal
_ARMOR_START = b"-----BEGIN PGP"
# GnuPG 2.2 reports ``--max-output`` only on stderr ("exceeded --max-output limit"), with no status line.
_GPG_OVERSIZE = "exceeded --max-output"
# VALIDSIG carries 10 fields after the keyword, the last the primary key's fingerprint (GnuPG doc/DETAILS).
_VALIDSIG_FIELDS = 11
_AEAD_NAMES = {1: "EAX", 2: "OCB", 3: "GCM"}
# Why 64 KiB: GnuPG writes the encrypted packet in 8 KiB partial-body chunks; the walk seeks chunk to chunk, and
# with the default 8 KiB buffer every seek was a read (0.2 s per 256 MiB); 64 KiB measured fastest (0.08 s).
_WALK_BUFFER = 64 * 1024
# Why 64 KiB: the head of a message (session-key packets, then the encrypted packet's header) fits in it many
# times over; a message whose encrypted packet starts later is opened the ordinary way, after the download.
_HEAD_LIMIT = 64 * 1024

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


@dataclass(frozen=True)
class GnupgRun:
    """What GnuPG reported while it opened a message as the message downloaded (:mod:`sftp_pipeline.openpgp.stream`).

    Its plaintext is in ``.{dst.name}.part``; :func:`open_message` judges it like any other GnuPG run.
    """

    lines: list[list[str]]
    stderr: str
    plaintext_sha256: str  # of the partial file, hashed as it was written
    plaintext_size: int


# ------------------------------------------------------------------------------------------- packet walk


@dataclass(frozen=True)
class _Shape:
    seipd_version: int
    recipients: int
    cipher: int | None = None  # visible in SEIPDv2 only (v1 hides it in the session key)
    aead: int | None = None


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise EOFError
    return data


def _body_end(fh: BinaryIO, ctb: int, size: int) -> tuple[int, int, int]:
    """Read one packet header at the current position; return (tag, body start, end of its body)."""
    start = -1
    if ctb & 0x40:  # new format: possibly several partial-body chunks
        tag = ctb & 0x3F
        while True:
            first = _read_exact(fh, 1)[0]
            if first < 192:
                length = first
            elif first < 224:
                length = ((first - 192) << 8) + _read_exact(fh, 1)[0] + 192
            elif first == 255:
                length = int.from_bytes(_read_exact(fh, 4), "big")
            else:
                start = fh.tell() if start < 0 else start
                fh.seek(1 << (first & 0x1F), os.SEEK_CUR)
                if fh.tell() > size:
                    raise EOFError
                continue
            end = fh.tell() + length
            if end > size:
                raise EOFError
            return tag, (fh.tell() if start < 0 else start), end
    tag = (ctb >> 2) & 0x0F
    width = {0: 1, 1: 2, 2: 4}.get(ctb & 0x03)
    if width is None:  # indeterminate length: runs to the end of the file
        return tag, fh.tell(), size
    end = int.from_bytes(_read_exact(fh, width), "big") + fh.tell()
    if end > size:
        raise EOFError
    return tag, fh.tell(), end


def _shape(src: Path) -> _Shape:
    """Check the top-level packet sequence: session keys, then one SEIPD packet, then end of file."""
    size = src.stat().st_size
    if size == 0:
        raise OpenRejected(MALFORMED, f"{src}: the file is empty; ask the partner to send it again")
    recipients = 0
    with src.open("rb", buffering=_WALK_BUFFER) as fh:
        head = fh.read(len(_ARMOR_START))
        if head.startswith(_ARMOR_START):
            raise OpenRejected(MALFORMED, f"{src}: ASCII-armoured; the partner must send binary OpenPGP (no --armor)")
        fh.seek(0)
        pos = 0
        while pos < size:
            ctb = _read_exact(fh, 1)[0]
            if not ctb & 0x80:
                raise OpenRejected(MALFORMED, f"{src}: byte {pos} is not an OpenPGP packet header; not a message")
            try:
                tag, start, end = _body_end(fh, ctb, size)
                fh.seek(start)
                version = _read_exact(fh, 1)[0] if end > start else 0
            except EOFError:
                if recipients:
                    raise OpenRejected(TAMPERED, f"{src}: truncated at {size} bytes; ask for it again") from None
                raise OpenRejected(MALFORMED, f"{src}: a packet runs past the end of the file; not a message") from None
            if tag in (_PKESK, _SKESK):
                recipients += 1
            elif tag == _SEIPD and recipients:
                if end != size:
                    raise OpenRejected(
                        MALFORMED, f"{src}: {size - end} bytes of trailing data after the encrypted message"
                    )
                if version not in (1, 2):
                    raise OpenRejected(MALFORMED, f"{src}: unknown SEIPD version {version}")
                if version == 2:
                    fh.seek(start + 1)
                    cipher, aead = _read_exact(fh, 2)
                    return _Shape(version, recipients, cipher, aead)
                return _Shape(version, recipients)
            elif tag == _SED and recipients:
                raise OpenRejected(
                    INTEGRITY_MISSING,
                    f"{src}: encrypted without integrity protection (SED packet, no MDC); ask the partner "
                    "to use a current OpenPGP tool (GnuPG ≥ 2.2 without --rfc2440)",
                )
            elif tag in _UNENCRYPTED_STARTS and not recipients:
                raise OpenRejected(NOT_ENCRYPTED, f"{src}: the message is not encrypted (signed or plain only)")
            elif tag == _OCB and recipients:
                raise OpenRejected(MALFORMED, f"{src}: LibrePGP OCB packet (GnuPG ≥ 2.3 default); ask for RFC 9580")
            else:
                raise OpenRejected(MALFORMED, f"{src}: unexpected packet (tag {tag}) at byte {pos}")
            fh.seek(end)
            pos = end
    raise OpenRejected(TAMPERED, f"{src}: session keys but no encrypted data (truncated?)")


def _pkesk_recipients(src: Path) -> set[str]:
    """Key ids (v3 PKESK) and fingerprints (v6 PKESK) the message's session keys are addressed to, lowercase hex."""
    found: set[str] = set()
    size = src.stat().st_size
    with src.open("rb") as fh:
        pos = 0
        while pos < size:
            ctb = _read_exact(fh, 1)[0]
            tag, start, end = _body_end(fh, ctb, size)
            if tag != _PKESK:
                break
            fh.seek(start)
            body = fh.read(min(end - start, 64))
            if body[:1] == b"\x03" and len(body) >= 9:
                found.add(body[1:9].hex())
            elif body[:1] == b"\x06" and len(body) >= 3 and body[1] > 1:
                found.add(body[3 : 2 + body[1]].hex())
            fh.seek(end)
            pos = end
    return found


def _our_key_ids(keys: OurKeys) -> set[str]:
    ids: set[str] = set()
    for packet in PacketPile.from_bytes(bytes(keys.cert)):
        if packet.fingerprint:
            ids.add(packet.fingerprint.lower())
        if packet.key_id:
            ids.add(packet.key_id.lower())
    return ids


# ------------------------------------------------------------------------------------------- helpers


def _check_sender(sender: Cert, now: datetime, src: Path) -> None:
    info = describe_cert(sender, now)
    where = f"{src}: the partner's certificate {info.fingerprint}"
    if info.revoked:
        raise OpenRejected(SIGNER_REVOKED, f"{where} is revoked; ask the partner for their new certificate")
    if (info.expires is not None and info.expires <= now) or not info.can_sign:
        raise OpenRejected(
            SIGNER_EXPIRED, f"{where} is expired (or has no valid signing key); ask the partner to extend it"
        )
    if info.problems:
        raise OpenRejected(WEAK_ALGORITHM, f"{where} may not be used: {'; '.join(info.problems)}")


def _oversize(src: Path, max_output: int) -> OpenRejected:
    return OpenRejected(OVERSIZE, f"{src}: the plaintext exceeds the {max_output}-byte limit (a bomb, or raise it)")


# ------------------------------------------------------------------------------------------- GnuPG


class _GnuPGCannot(Exception):
    """GnuPG cannot hold our key (an RFC 9580 key in GnuPG 2.2): open with Sequoia instead."""


def _private_file(home: Path, name: str, text: str) -> Path:
    path = home / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


@contextlib.contextmanager
def _gnupg_home(gpg: str, keys: OurKeys, sender: Cert) -> Iterator[tuple[Path, list[str]]]:
    """A throw-away GNUPGHOME with our secret key and this partner's certificate only; yields (home, base argv)."""
    home = Path(tempfile.mkdtemp(prefix="sp-open-"))  # short path: gpg-agent's socket must fit 108 bytes
    try:
        os.chmod(home, stat.S_IRWXU)
        passphrase = keys._openpgp_passphrase
        # The passphrase goes through a 0600 file in the 0700 home, never the command line (ps would show it).
        pass_file = _private_file(home, "passphrase", passphrase.reveal() if passphrase else "")
        base = [
            gpg,
            "--homedir",
            str(home),
            "--batch",
            "--no-tty",
            "--no-options",
            "--pinentry-mode",
            "loopback",
            "--passphrase-file",
            str(pass_file),
        ]
        secret = _private_file(home, "our.key", str(keys.tsk))
        cert = _private_file(home, "sender.asc", str(sender))
        for path in (secret, cert):
            done = subprocess.run(
                [*base, "--status-fd", "1", "--import", str(path)],
                capture_output=True,
                timeout=GPG_SETUP_TIMEOUT,
                check=False,
            )
            if path == secret and b"IMPORT_OK" not in done.stdout:
                raise _GnuPGCannot(done.stderr.decode("utf-8", "replace"))
        secret.unlink()
        yield home, base
    finally:
        gpgconf = shutil.which("gpgconf")
        if gpgconf:
            subprocess.run(
                [gpgconf, "--homedir", str(home), "--kill", "gpg-agent"],
                capture_output=True,
                timeout=GPG_SETUP_TIMEOUT,
                check=False,
            )
        shutil.rmtree(home, ignore_errors=True)


def _gpg_time(field: str) -> datetime:
    """GnuPG writes times as seconds since the epoch, or ISO 8601 ``20260101T120000`` in some modes."""
    if "T" in field:
        return datetime.strptime(field, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return datetime.fromtimestamp(int(field), UTC)


def _status(lines: list[list[str]], keyword: str) -> list[list[str]]:
    return [line for line in lines if line and line[0] == keyword]


def _judge_gnupg(
    src: Path, lines: list[list[str]], sender_fpr: str, now: datetime, stderr: str
) -> tuple[str, str | None]:
    """Decide from GnuPG's status lines; return (algorithms, literal name) or raise OpenRejected."""
    kw = {line[0] for line in lines if line}
    if _GPG_OVERSIZE in stderr:
        raise OpenRejected(OVERSIZE, f"{src}: the plaintext exceeds the limit (a decompression bomb, or raise it)")
    if "DECRYPTION_OKAY" not in kw:
        if "NO_SECKEY" in kw and "DECRYPTION_KEY" not in kw:
            raise OpenRejected(NOT_ENCRYPTED_TO_US, f"{src}: not encrypted to our key; the partner used a wrong key")
        raise OpenRejected(TAMPERED, f"{src}: decryption failed (integrity check or ciphertext damaged)")
    if "GOODMDC" not in kw or "BADMDC" in kw or "DECRYPTION_FAILED" in kw:
        raise OpenRejected(
            INTEGRITY_MISSING if "GOODMDC" not in kw and "BADMDC" not in kw else TAMPERED,
            f"{src}: the integrity check (MDC) did not pass",
        )
    info = _status(lines, "DECRYPTION_INFO")
    cipher = int(info[0][2]) if info and len(info[0]) > 2 else 0
    if cipher not in ALLOWED_CIPHERS:
        raise OpenRejected(WEAK_ALGORITHM, f"{src}: encrypted with {_CIPHER_NAMES.get(cipher, cipher)}; AES only")
    if "REVKEYSIG" in kw:
        raise OpenRejected(SIGNER_REVOKED, f"{src}: signed by a revoked key")
    if "EXPKEYSIG" in kw or ("KEYEXPIRED" in kw and "VALIDSIG" not in kw):
        raise OpenRejected(SIGNER_EXPIRED, f"{src}: signed by an expired key")
    if "BADSIG" in kw:
        raise OpenRejected(SIGNATURE_INVALID, f"{src}: a signature does not verify (content altered)")
    errsig = _status(lines, "ERRSIG")
    if errsig:
        if any(len(e) > 6 and e[6] == "9" for e in errsig):  # rc 9: no public key
            raise OpenRejected(UNKNOWN_SIGNER, f"{src}: signed by {errsig[0][1]}, not by this partner's key")
        if any(len(e) > 3 and e[3] in {"1", "2", "3"} for e in errsig):
            raise OpenRejected(WEAK_ALGORITHM, f"{src}: signed with a weak hash (MD5/SHA-1)")
        raise OpenRejected(SIGNATURE_INVALID, f"{src}: a signature cannot be checked ({' '.join(errsig[0])})")
    valid = _status(lines, "VALIDSIG")
    if not valid:
        raise OpenRejected(UNSIGNED, f"{src}: the message is not signed; the partner must sign it")
    if len(valid) != 1 or len(valid[0]) < _VALIDSIG_FIELDS or valid[0][-1].lower() != sender_fpr:
        raise OpenRejected(UNKNOWN_SIGNER, f"{src}: expected exactly one signature by {sender_fpr}")
    sig = valid[0]
    if int(sig[8]) in WEAK_SIG_HASHES:
        raise OpenRejected(WEAK_ALGORITHM, f"{src}: signed with {_HASH_NAMES.get(int(sig[8]))}; SHA-256+ only")
    made = _gpg_time(sig[3])
    if made > now + SIGNATURE_FUTURE_SKEW:
        raise OpenRejected(SIGNATURE_FUTURE, f"{src}: signature made {made:%Y-%m-%d %H:%M:%S} UTC, in the future")
    plain = _status(lines, "PLAINTEXT")
    if len(plain) > 1:
        raise OpenRejected(MALFORMED, f"{src}: {len(plain)} literal data packets; a message carries one document")
    name = None
    if plain and len(plain[0]) > 3:
        name = unquote(plain[0][3])
    algos = f"{_CIPHER_NAMES.get(cipher, cipher)}, SEIPDv1, sign hash {_HASH_NAMES.get(int(sig[8]), sig[8])}"
    return algos, name


def gnupg_decrypt_command(base: list[str], *, status_fd: int, max_output: int, output: str, source: str) -> list[str]:
    """The one GnuPG decrypt command line (``output``/``source`` may be ``-``): status lines on ``status_fd``,
    no key fetching, plaintext capped at ``max_output``; the verdict comes from the status lines only."""
    return [
        *base,
        *("--status-fd", str(status_fd), "--trust-model", "always", "--no-auto-key-retrieve"),
        *("--max-output", str(max_output), "--output", output, "--decrypt", source),
    ]


def _open_gnupg(
    src: Path, part: Path, keys: OurKeys, sender: Cert, now: datetime, max_output: int, gpg: str
) -> tuple[str, str | None]:
    with _gnupg_home(gpg, keys, sender) as (_home, base):
        status_r, status_w = os.pipe()
        cmd = gnupg_decrypt_command(base, status_fd=status_w, max_output=max_output, output=str(part), source=str(src))
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=GPG_OPEN_TIMEOUT, pass_fds=(status_w,), check=False)
        except subprocess.TimeoutExpired as exc:
            raise OpenRejected(MALFORMED, f"{src}: GnuPG did not finish in {GPG_OPEN_TIMEOUT:.0f} s") from exc
        finally:
            os.close(status_w)
        with os.fdopen(status_r, "rb") as fh:
            raw = fh.read().decode("utf-8", "replace")
    lines = [line.removeprefix("[GNUPG:] ").split() for line in raw.splitlines() if line.startswith("[GNUPG:] ")]
    stderr = proc.stderr.decode("utf-8", "replace")
    if part.exists() and part.stat().st_size > max_output:
        raise _oversize(src, max_output)
    return _judge_gnupg(src, lines, sender.fingerprint.lower(), now, stderr)


# ------------------------------------------------------------------------------------------- Sequoia


def _open_sequoia(src: Path, part: Path, keys: OurKeys, sender: Cert, now: datetime, max_output: int) -> str:
    """pysequoia writes into a FIFO that ``head -c`` drains into ``part``: the cap holds while it streams.

    It reads ``src`` through a pipe that ``cat`` fills, not by its path: given a path, Sequoia maps the whole
    file into memory (256 MiB message: peak RSS +1 file size); from a pipe it streams, and its own buffering
    stays below :data:`SEQUOIA_BUFFER_MIB` whatever the size. (A Python feeder or reader thread would
    deadlock: pysequoia holds the GIL while it works.)
    """
    head = shutil.which("head") or "/usr/bin/head"
    cat = shutil.which("cat") or "/bin/cat"
    sender_fpr = sender.fingerprint.lower()
    fingerprints = [k.fingerprint for k in describe_cert(sender, now).keys]
    sender_ids = {*fingerprints, *(f[-16:] for f in fingerprints)}  # store() gets key ids (v4) or fingerprints
    asked: list[str] = []

    def store(ids: list[str]) -> list[Cert]:
        asked.extend(i.lower() for i in ids)
        return [sender] if any(i.lower() in sender_ids for i in ids) else []

    # An anonymous pipe, opened by pysequoia as /proc/self/fd/N: unlike a named FIFO its open never waits for
    # a writer, so a message small enough to fit the pipe (``cat`` already gone) still reads to its end.
    in_r, in_w = os.pipe()
    try:
        with src.open("rb") as fin:
            feed = subprocess.Popen([cat], stdin=fin, stdout=in_w)
    except BaseException:
        os.close(in_r)
        raise
    finally:
        os.close(in_w)
    fifo_dir = Path(tempfile.mkdtemp(prefix="sp-open-"))
    fifo = fifo_dir / "plaintext"
    os.mkfifo(fifo, 0o600)
    error: Exception | None = None
    try:
        # ``head`` gets the read end before anyone writes; we hold a write end until pysequoia is done, so
        # ``head`` sees end-of-file only then (never early, never blocked forever if pysequoia never opens it).
        read_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        write_fd = os.open(fifo, os.O_WRONLY)
        os.set_blocking(read_fd, True)
        try:
            with part.open("xb") as out:
                drain = subprocess.Popen([head, "-c", str(max_output + 1)], stdin=read_fd, stdout=out)
        finally:
            os.close(read_fd)  # once ``head`` stops at the cap, pysequoia's next write fails (EPIPE)
        try:
            result = pysequoia.decrypt_file(
                f"/proc/self/fd/{in_r}", os.fspath(fifo), decryptor=keys.decryptor(), store=store
            )
        except Exception as exc:  # pysequoia raises bare RuntimeError/ValueError; classified below
            error = exc
        finally:
            os.close(write_fd)
            drain.wait(timeout=GPG_SETUP_TIMEOUT)
    finally:
        if feed.poll() is None:  # pysequoia stopped early: ``cat`` would wait on a full pipe forever
            feed.kill()
        feed.wait(timeout=GPG_SETUP_TIMEOUT)
        os.close(in_r)
        shutil.rmtree(fifo_dir, ignore_errors=True)
    if part.stat().st_size > max_output:
        raise _oversize(src, max_output)
    if error is not None:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        lowered = message.lower()
        if "no valid signatures" in lowered:
            if not asked:
                raise OpenRejected(UNSIGNED, f"{src}: the message is not signed; the partner must sign it") from None
            if not set(asked) & sender_ids:
                raise OpenRejected(
                    UNKNOWN_SIGNER, f"{src}: signed by {', '.join(asked)}, not by this partner ({sender_fpr})"
                ) from None
            raise OpenRejected(
                SIGNATURE_INVALID, f"{src}: the partner's signature does not verify ({message})"
            ) from None
        if "no key" in lowered or ("decrypt" in lowered and "session key" in lowered):
            try:
                addressed = bool(_pkesk_recipients(src) & _our_key_ids(keys))
            except (OSError, EOFError):
                addressed = False
            if addressed:
                raise OpenRejected(
                    TAMPERED, f"{src}: addressed to our key but its session key does not decrypt: damaged in transit"
                ) from None
            raise OpenRejected(NOT_ENCRYPTED_TO_US, f"{src}: not encrypted to our key ({message})") from None
        if "unexpected message structure" in lowered or "malformed" in lowered:
            raise OpenRejected(
                MALFORMED,
                f"{src}: not a message Sequoia can read ({message}); compressed RFC 4880 messages "
                "(GnuPG's default) need GnuPG installed here",
            ) from None
        raise OpenRejected(TAMPERED, f"{src}: decryption failed ({message})") from None
    valid = [s for s in result.valid_sigs if s.certificate.lower() == sender_fpr]
    if len(valid) != 1 or len(result.valid_sigs) != 1:
        raise OpenRejected(UNKNOWN_SIGNER, f"{src}: expected exactly one valid signature by {sender_fpr}")
    return "SEIPD, sign " + " / ".join(describe_cert(sender, now).signing_algorithms)


# ------------------------------------------------------------------------------------------- decide


def open_message(
    src: Path,
    dst: Path,
    *,
    keys: OurKeys,
    sender: Cert,
    now: datetime,
    max_output: int,
    gpg: str | None = shutil.which("gpg"),
    streamed: GnupgRun | None = None,
) -> Opened:
    """Decrypt ``src`` with our key, verify it is signed by ``sender`` only, and release it as ``dst``.

    ``streamed``: GnuPG already decrypted ``src`` while it downloaded (:mod:`sftp_pipeline.openpgp.stream`), into the
    partial file; it is judged here by the same rules, after the same packet walk, instead of a second run.

    Raises :class:`OpenRejected` (with a status code from the module docstring) on any refusal; then
    no plaintext byte is left on disk. ``dst`` is replaced if it exists.
    """
    part = dst.with_name(f".{dst.name}.part")
    if streamed is None:
        part.unlink(missing_ok=True)
    try:
        shape = _shape(src)
        _check_sender(sender, now, src)
        if shape.cipher is not None and shape.cipher not in ALLOWED_CIPHERS:
            weak = _CIPHER_NAMES.get(shape.cipher, str(shape.cipher))
            raise OpenRejected(WEAK_ALGORITHM, f"{src}: encrypted with {weak}; only AES is accepted")
        engine: Engine = "gnupg" if shape.seipd_version == 1 and gpg else "sequoia"
        judged = streamed is not None and shape.seipd_version == 1
        if streamed is not None and judged:
            if part.exists() and part.stat().st_size > max_output:
                raise _oversize(src, max_output)
            algorithms, name = _judge_gnupg(src, streamed.lines, sender.fingerprint.lower(), now, streamed.stderr)
            engine, gpg = "gnupg", None  # judged: no second run
        elif streamed is not None:
            part.unlink(missing_ok=True)  # cannot happen (the stream saw the same head); open it afresh
        if gpg and engine == "gnupg":
            try:
                algorithms, name = _open_gnupg(src, part, keys, sender, now, max_output, gpg)
            except _GnuPGCannot:
                part.unlink(missing_ok=True)
                engine = "sequoia"
        if engine == "sequoia":
            algorithms, name = _open_sequoia(src, part, keys, sender, now, max_output), None
            if shape.cipher is not None:
                mode = f"SEIPDv2 ({_AEAD_NAMES.get(shape.aead or 0, shape.aead)})"
                algorithms = f"{_CIPHER_NAMES.get(shape.cipher)}, {algorithms.replace('SEIPD', mode)}"
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
        raise OpenRejected(MALFORMED, f"{src}: cannot open the message: {exc.strerror or exc}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return Opened(digest, size, sender.fingerprint.lower(), name, engine, algorithms)
