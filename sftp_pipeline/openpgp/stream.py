"""Open a SEIPDv1 message with GnuPG while it downloads, so that decryption overlaps the transfer.

A :class:`GnupgStream` is the ``tee`` of a download (:mod:`sftp_pipeline.transport`): it sees every byte in file order.
Its first bytes decide whether it starts GnuPG at all — only for session keys followed by a SEIPDv1 packet,
the case :func:`~sftp_pipeline.openpgp.open.open_message` gives to GnuPG anyway. GnuPG then reads the rest on its stdin
(the download waits for it: memory stays flat); its plaintext is hashed on its way into the same
``.{dst.name}.part`` that ``open_message`` uses. Nothing is released here:
``open_message(..., streamed=stream.finish())`` walks the downloaded file, judges GnuPG's status lines by
the same rules and renames the partial file, or deletes it.

Any surprise makes the stream step aside (``finish`` returns None and ``open_message`` opens the file as
before): a head that is not SEIPDv1, no ``gpg``, our key not importable into GnuPG, a restarted download.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import subprocess
import threading
from pathlib import Path
from typing import IO

from sftp_pipeline import fsutil
from sftp_pipeline.errors import PacketError, PacketsTruncated
from sftp_pipeline.openpgp import gnupg, packets
from sftp_pipeline.openpgp.policy import Cert, SecretKey

log = logging.getLogger(__name__)

# Why 64 KiB: one pipe buffer; status and stderr carry a few KiB per message.
# Why 1 MiB (Linux's default pipe-max-size): with 64 KiB pipes every 1 MiB of plaintext cost 16+ reads, each a
# GIL hand-over that slows the download on the event loop; measured at 256 MiB (A/B, 3 pairs): collect's own CPU
# 3.3-3.7 s → 2.3-3.0 s, wall 5.4-8.3 s → 4.8-6.5 s.
_PIPE_SIZE = 1024 * 1024
_PIPE_READ = 64 * 1024
# Why 64 KiB: the head of a message (session-key packets, then the encrypted packet's header) fits in it many
# times over; a message whose encrypted packet starts later is opened the ordinary way, after the download.
HEAD_LIMIT = 64 * 1024


def head_seipd_version(head: bytes) -> int | None:
    """The SEIPD version if ``head`` starts with session keys then a SEIPD packet; 0 if it starts otherwise.

    None: ``head`` is too short to tell yet.
    """
    recipients = 0
    try:
        for packet in packets.walk_bytes(head, prefix=True):
            if packet.tag in packets.SESSION_KEYS:
                if packet.body_end is None:
                    return None
                recipients += 1
                continue
            if packet.tag == packets.SEIPD and recipients:
                return head[packet.body_start] if packet.body_start < len(head) else None
            return 0
    except PacketsTruncated:
        return None
    except PacketError:
        return 0
    return None


class GnupgStream:
    """GnuPG decrypting a download as it arrives; see the module docstring. Not reusable."""

    def __init__(self, dst: Path, *, keys: SecretKey, sender: Cert, max_output: int, gpg: str | None) -> None:
        self.part = dst.with_name(f".{dst.name}.part")
        self._keys, self._sender, self._max_output, self._gpg = keys, sender, max_output, gpg
        self._head = bytearray()
        self._seen = 0
        self._active: bool | None = None  # None: undecided; False: stepped aside
        self._home = contextlib.ExitStack()
        self._proc: subprocess.Popen[bytes] | None = None
        self._status = bytearray()
        self._stderr = bytearray()
        self._readers: list[threading.Thread] = []
        self._digest = hashlib.sha256()
        self._size = 0
        self._keep_error: OSError | None = None

    async def __call__(self, offset: int, data: bytes) -> None:
        """The download's tee: every byte once, in order (see :data:`~.transport.Tee`)."""
        if self._active is False:
            return
        if offset != self._seen:  # a retried download starts again at 0: GnuPG has read a different stream
            log.info("%s: the download restarted; opening it after the download instead", self.part)
            await asyncio.to_thread(self.discard)
            return
        self._seen += len(data)
        if self._active is None:
            self._head += data
            version = head_seipd_version(bytes(self._head))
            if version is None and len(self._head) < HEAD_LIMIT:
                return
            if version != 1 or self._gpg is None or not await asyncio.to_thread(self._start, self._gpg):
                self._active = False
                self._head.clear()
                return
            data, self._head = bytes(self._head), bytearray()
        await asyncio.to_thread(self._write, data)

    def _start(self, gpg: str) -> bool:
        try:
            _home, base = self._home.enter_context(gnupg.gnupg_home(gpg, self._keys, self._sender))
        except gnupg._GnupgCannot:
            self._home.close()
            return False
        self.part.unlink(missing_ok=True)
        status_r, status_w = os.pipe()
        cmd = gnupg.decrypt_command(base, status_fd=status_w, max_output=self._max_output, output="-", source="-")
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_w,)
            )
        except OSError:
            os.close(status_r)
            self._home.close()
            return False
        finally:
            os.close(status_w)
        status = os.fdopen(status_r, "rb")
        assert self._proc.stderr is not None and self._proc.stdout is not None and self._proc.stdin is not None
        for pipe in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError, AttributeError):  # Linux only; a smaller pipe is only slower
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        for source, sink in ((status, self._status), (self._proc.stderr, self._stderr)):
            reader = threading.Thread(target=_drain, args=(source, sink), daemon=True)
            reader.start()
            self._readers.append(reader)
        keeper = threading.Thread(target=self._keep, args=(self._proc.stdout,), daemon=True)
        keeper.start()
        self._readers.append(keeper)
        self._active = True
        return True

    def _keep(self, plaintext: IO[bytes]) -> None:
        """Write GnuPG's plaintext to the partial file, hashing it on the way (no second read to hash it)."""
        try:
            with plaintext, self.part.open("xb") as out:
                while chunk := plaintext.read(fsutil.CHUNK):
                    out.write(chunk)
                    self._digest.update(chunk)
                    self._size += len(chunk)
        except OSError as exc:  # disk full, say: open_message opens the file afresh and reports it
            self._keep_error = exc

    def _write(self, data: bytes) -> None:
        if self._proc is None or self._proc.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, ValueError):  # GnuPG stopped early: its status lines say why
            self._proc.stdin.write(data)

    def finish(self) -> gnupg.GnupgRun | None:
        """After the whole file went through the tee: wait for GnuPG; None if it never ran (open afresh)."""
        if not self._active or self._proc is None:
            self.discard()
            return None
        proc = self._proc
        with contextlib.suppress(BrokenPipeError, ValueError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=gnupg.GPG_OPEN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.discard()
            return None
        for reader in self._readers:
            reader.join()
        if self._keep_error is not None:
            log.info("%s: %s; opening it after the download instead", self.part, self._keep_error)
            self.discard()
            return None
        self._home.close()
        self._active, self._proc = False, None  # the partial file is open_message's from here on
        stderr = self._stderr.decode("utf-8", "replace")
        return gnupg.GnupgRun(gnupg.status_lines(bytes(self._status)), stderr, self._digest.hexdigest(), self._size)

    def discard(self) -> None:
        """Stop GnuPG and delete what it wrote; safe to call at any time, and twice."""
        self._active = False
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            with contextlib.suppress(BrokenPipeError, ValueError, OSError):
                assert self._proc.stdin is not None
                self._proc.stdin.close()
            self._proc.wait()
            for reader in self._readers:
                reader.join()
            self._proc = None
            self.part.unlink(missing_ok=True)
        self._home.close()


def _drain(source: IO[bytes], sink: bytearray) -> None:
    """Read a pipe of GnuPG's (status lines, stderr: a few KiB) to its end, so GnuPG never blocks on it."""
    with source:
        while chunk := source.read(_PIPE_READ):
            sink += chunk
