"""Sequoia (pysequoia) as the engine for SEIPDv2 messages (RFC 9580, post-quantum; what Sequoia seals to
Sequoia-made keys), and for SEIPDv1 ones when GnuPG is not installed or cannot hold our key.

Measured (DESIGN.md "Known pitfalls"): pysequoia 0.1.35 rejects GnuPG's default output (encryption →
compression → signature) and, given a path, maps the whole file into memory; fed through a pipe its peak stays
flat, :data:`SEQUOIA_BUFFER_MIB` above the interpreter at any size. Its output is streamed through a FIFO to
``head -c`` so that the output cap holds while it writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

import pysequoia
from pysequoia.packet import PacketPile

from sftp_pipeline.errors import OpenRejected, PacketError
from sftp_pipeline.openpgp import packets
from sftp_pipeline.openpgp import rejections as r
from sftp_pipeline.openpgp.policy import Cert, SecretKey, describe_cert

# Not a setting: what Sequoia's decryptor (pysequoia 0.1.35, no knob) buffers while it streams from a pipe, measured
# as peak RSS above the interpreter: 8 MiB message +37 MiB, 32 MiB +120, 64 MiB +163, 256 MiB and 1 GiB +163.
SEQUOIA_BUFFER_MIB = 170
# Why 30 s: ``cat`` and ``head`` end within milliseconds of pysequoia; longer means one of them hangs.
HELPER_TIMEOUT = 30.0


def _our_key_ids(keys: SecretKey) -> set[str]:
    ids: set[str] = set()
    for packet in PacketPile.from_bytes(bytes(keys.cert)):
        if packet.fingerprint:
            ids.add(packet.fingerprint.lower())
        if packet.key_id:
            ids.add(packet.key_id.lower())
    return ids


def _addressed_to(src: Path) -> set[str]:
    with src.open("rb") as fh:
        return packets.pkesk_recipients(fh, src.stat().st_size)


def open_file(src: Path, part: Path, keys: SecretKey, sender: Cert, now: datetime, max_output: int) -> str:
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
            drain.wait(timeout=HELPER_TIMEOUT)
    finally:
        if feed.poll() is None:  # pysequoia stopped early: ``cat`` would wait on a full pipe forever
            feed.kill()
        feed.wait(timeout=HELPER_TIMEOUT)
        os.close(in_r)
        shutil.rmtree(fifo_dir, ignore_errors=True)
    if part.stat().st_size > max_output:
        raise r.oversize(src, max_output)
    if error is not None:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        lowered = message.lower()
        if "no valid signatures" in lowered:
            if not asked:
                raise OpenRejected(r.UNSIGNED, f"{src}: the message is not signed; the partner must sign it") from None
            if not set(asked) & sender_ids:
                raise OpenRejected(
                    r.UNKNOWN_SIGNER, f"{src}: signed by {', '.join(asked)}, not by this partner ({sender_fpr})"
                ) from None
            raise OpenRejected(
                r.SIGNATURE_INVALID, f"{src}: the partner's signature does not verify ({message})"
            ) from None
        if "no key" in lowered or ("decrypt" in lowered and "session key" in lowered):
            try:
                addressed = bool(_addressed_to(src) & _our_key_ids(keys))
            except (OSError, PacketError):
                addressed = False
            if addressed:
                raise OpenRejected(
                    r.TAMPERED, f"{src}: addressed to our key but its session key does not decrypt: damaged in transit"
                ) from None
            raise OpenRejected(r.NOT_ENCRYPTED_TO_US, f"{src}: not encrypted to our key ({message})") from None
        if "unexpected message structure" in lowered or "malformed" in lowered:
            raise OpenRejected(
                r.MALFORMED,
                f"{src}: not a message Sequoia can read ({message}); compressed RFC 4880 messages "
                "(GnuPG's default) need GnuPG installed here",
            ) from None
        raise OpenRejected(r.TAMPERED, f"{src}: decryption failed ({message})") from None
    valid = [s for s in result.valid_sigs if s.certificate.lower() == sender_fpr]
    if len(valid) != 1 or len(result.valid_sigs) != 1:
        raise OpenRejected(r.UNKNOWN_SIGNER, f"{src}: expected exactly one valid signature by {sender_fpr}")
    return "SEIPD, sign " + " / ".join(describe_cert(sender, now).signing_algorithms)
