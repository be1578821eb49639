"""GnuPG as the engine for SEIPDv1 messages (what GnuPG and every RFC 4880 tool makes).

GnuPG runs in a throw-away ``GNUPGHOME`` holding only our secret key and this partner's certificate, never
fetches a key, caps its output (``--max-output``), and is judged by its ``--status-fd`` lines only
(:func:`judge`): GnuPG exits 0 on many messages we must refuse (DESIGN.md, "Known pitfalls"), so its exit
code is never read. The same judge serves a file opened after its download (:func:`open_file`) and a download
GnuPG decrypted as it arrived (:mod:`.stream`).
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
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

from sftp_pipeline.errors import OpenRejected
from sftp_pipeline.openpgp import rejections as r
from sftp_pipeline.openpgp.policy import (
    ALLOWED_CIPHERS,
    CIPHER_NAMES,
    HASH_NAMES,
    SIGNATURE_FUTURE_SKEW,
    WEAK_HASH_IDS,
    Cert,
    SecretKey,
)

# Why 600 s: GnuPG decrypts ~100 MB/s; an hour-long file is far beyond any document we exchange.
GPG_OPEN_TIMEOUT = 600.0
# Why 30 s: importing two keys into an empty home takes well under a second; longer means gpg hangs.
GPG_SETUP_TIMEOUT = 30.0
# GnuPG 2.2 reports ``--max-output`` only on stderr ("exceeded --max-output limit"), with no status line.
_GPG_OVERSIZE = "exceeded --max-output"
# VALIDSIG carries 10 fields after the keyword, the last the primary key's fingerprint (GnuPG doc/DETAILS).
_VALIDSIG_FIELDS = 11
_STATUS_PREFIX = "[GNUPG:] "


@dataclass(frozen=True)
class GnupgRun:
    """What GnuPG reported while it opened a message as the message downloaded (:mod:`.stream`).

    Its plaintext is in ``.{dst.name}.part``; :func:`~sftp_pipeline.openpgp.open.open_message` judges it like
    any other GnuPG run.
    """

    lines: list[list[str]]
    stderr: str
    plaintext_sha256: str  # of the partial file, hashed as it was written
    plaintext_size: int


class _GnupgCannot(Exception):
    """GnuPG cannot hold our key (an RFC 9580 key in GnuPG 2.2): open with Sequoia instead. Never leaves
    this package."""


def status_lines(raw: bytes) -> list[list[str]]:
    """GnuPG's ``--status-fd`` output as lists of fields, keyword first."""
    text = raw.decode("utf-8", "replace")
    return [line.removeprefix(_STATUS_PREFIX).split() for line in text.splitlines() if line.startswith(_STATUS_PREFIX)]


def _private_file(home: Path, name: str, text: str) -> Path:
    path = home / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


@contextlib.contextmanager
def gnupg_home(gpg: str, keys: SecretKey, sender: Cert) -> Iterator[tuple[Path, list[str]]]:
    """A throw-away GNUPGHOME with our secret key and this partner's certificate only; yields (home, base argv)."""
    home = Path(tempfile.mkdtemp(prefix="sp-open-"))  # short path: gpg-agent's socket must fit 108 bytes
    try:
        os.chmod(home, stat.S_IRWXU)
        # The passphrase goes through a 0600 file in the 0700 home, never the command line (ps would show it).
        pass_file = _private_file(home, "passphrase", keys.reveal_openpgp_passphrase() or "")
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
                raise _GnupgCannot(done.stderr.decode("utf-8", "replace"))
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


def judge(src: Path, lines: list[list[str]], sender_fpr: str, now: datetime, stderr: str) -> tuple[str, str | None]:
    """Decide from GnuPG's status lines; return (algorithms, literal name) or raise OpenRejected."""
    kw = {line[0] for line in lines if line}
    if _GPG_OVERSIZE in stderr:
        raise OpenRejected(r.OVERSIZE, f"{src}: the plaintext exceeds the limit (a decompression bomb, or raise it)")
    if "DECRYPTION_OKAY" not in kw:
        if "NO_SECKEY" in kw and "DECRYPTION_KEY" not in kw:
            raise OpenRejected(r.NOT_ENCRYPTED_TO_US, f"{src}: not encrypted to our key; the partner used a wrong key")
        raise OpenRejected(r.TAMPERED, f"{src}: decryption failed (integrity check or ciphertext damaged)")
    if "GOODMDC" not in kw or "BADMDC" in kw or "DECRYPTION_FAILED" in kw:
        raise OpenRejected(
            r.INTEGRITY_MISSING if "GOODMDC" not in kw and "BADMDC" not in kw else r.TAMPERED,
            f"{src}: the integrity check (MDC) did not pass",
        )
    info = _status(lines, "DECRYPTION_INFO")
    cipher = int(info[0][2]) if info and len(info[0]) > 2 else 0
    if cipher not in ALLOWED_CIPHERS:
        raise OpenRejected(r.WEAK_ALGORITHM, f"{src}: encrypted with {CIPHER_NAMES.get(cipher, cipher)}; AES only")
    if "REVKEYSIG" in kw:
        raise OpenRejected(r.SIGNER_REVOKED, f"{src}: signed by a revoked key")
    if "EXPKEYSIG" in kw or ("KEYEXPIRED" in kw and "VALIDSIG" not in kw):
        raise OpenRejected(r.SIGNER_EXPIRED, f"{src}: signed by an expired key")
    if "BADSIG" in kw:
        raise OpenRejected(r.SIGNATURE_INVALID, f"{src}: a signature does not verify (content altered)")
    errsig = _status(lines, "ERRSIG")
    if errsig:
        if any(len(e) > 6 and e[6] == "9" for e in errsig):  # rc 9: no public key
            raise OpenRejected(r.UNKNOWN_SIGNER, f"{src}: signed by {errsig[0][1]}, not by this partner's key")
        if any(len(e) > 3 and e[3].isdigit() and int(e[3]) in WEAK_HASH_IDS for e in errsig):
            raise OpenRejected(r.WEAK_ALGORITHM, f"{src}: signed with a weak hash (MD5/SHA-1)")
        raise OpenRejected(r.SIGNATURE_INVALID, f"{src}: a signature cannot be checked ({' '.join(errsig[0])})")
    valid = _status(lines, "VALIDSIG")
    if not valid:
        raise OpenRejected(r.UNSIGNED, f"{src}: the message is not signed; the partner must sign it")
    if len(valid) != 1 or len(valid[0]) < _VALIDSIG_FIELDS or valid[0][-1].lower() != sender_fpr:
        raise OpenRejected(r.UNKNOWN_SIGNER, f"{src}: expected exactly one signature by {sender_fpr}")
    sig = valid[0]
    if int(sig[8]) in WEAK_HASH_IDS:
        raise OpenRejected(r.WEAK_ALGORITHM, f"{src}: signed with {HASH_NAMES.get(int(sig[8]))}; SHA-256+ only")
    made = _gpg_time(sig[3])
    if made > now + SIGNATURE_FUTURE_SKEW:
        raise OpenRejected(r.SIGNATURE_FUTURE, f"{src}: signature made {made:%Y-%m-%d %H:%M:%S} UTC, in the future")
    plain = _status(lines, "PLAINTEXT")
    if len(plain) > 1:
        raise OpenRejected(r.MALFORMED, f"{src}: {len(plain)} literal data packets; a message carries one document")
    name = None
    if plain and len(plain[0]) > 3:
        name = unquote(plain[0][3])
    algos = f"{CIPHER_NAMES.get(cipher, cipher)}, SEIPDv1, sign hash {HASH_NAMES.get(int(sig[8]), sig[8])}"
    return algos, name


def decrypt_command(base: list[str], *, status_fd: int, max_output: int, output: str, source: str) -> list[str]:
    """The one GnuPG decrypt command line (``output``/``source`` may be ``-``): status lines on ``status_fd``,
    no key fetching, plaintext capped at ``max_output``; the verdict comes from the status lines only."""
    return [
        *base,
        *("--status-fd", str(status_fd), "--trust-model", "always", "--no-auto-key-retrieve"),
        *("--max-output", str(max_output), "--output", output, "--decrypt", source),
    ]


def open_file(
    src: Path, part: Path, keys: SecretKey, sender: Cert, now: datetime, max_output: int, gpg: str
) -> tuple[str, str | None]:
    """Decrypt ``src`` into ``part`` with GnuPG and judge it; (algorithms, literal name) or OpenRejected."""
    with gnupg_home(gpg, keys, sender) as (_home, base):
        status_r, status_w = os.pipe()
        cmd = decrypt_command(base, status_fd=status_w, max_output=max_output, output=str(part), source=str(src))
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=GPG_OPEN_TIMEOUT, pass_fds=(status_w,), check=False)
        except subprocess.TimeoutExpired as exc:
            raise OpenRejected(r.MALFORMED, f"{src}: GnuPG did not finish in {GPG_OPEN_TIMEOUT:.0f} s") from exc
        finally:
            os.close(status_w)
        with os.fdopen(status_r, "rb") as fh:
            lines = status_lines(fh.read())
    stderr = proc.stderr.decode("utf-8", "replace")
    if part.exists() and part.stat().st_size > max_output:
        raise r.oversize(src, max_output)
    return judge(src, lines, sender.fingerprint.lower(), now, stderr)
