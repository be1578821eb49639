"""The one OpenPGP packet-header parser (RFC 9580 §4.2): where each top-level packet starts and ends.

Every check that looks at a message's structure without decrypting it walks the packets here: the encryption
layer of what we sealed (:mod:`.seal`), the shape of an inbound message and the keys its session keys are
addressed to (:mod:`.open`), and the head of a download that decides whether GnuPG may open it while it
arrives (:mod:`.stream`). Three hand-written copies of this walk had drifted apart; where they disagreed, the
strictest rule is the one kept:

* a byte without bit 7 set where a packet must start is not OpenPGP;
* a partial-body length (new format) or an indeterminate length (old format) is allowed only on the packets
  that may stream — compressed, encrypted (SED, SEIPD, OCB) and literal data (RFC 9580 §4.2.1.4); on any
  other packet (a session key, a signature) it is malformed;
* a header or a body that runs past the end of the data is truncated — unless the data is only a *prefix*
  of the message (the first block of a download, the first bytes of a sealed file): then the last packet's
  body may go on beyond it (:attr:`Packet.body_end` is None) and the walk stops there.

The walk reads headers only, seeking over bodies (and over the chunks of a partial body), so it costs a few
reads however large the message is.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from sftp_pipeline.errors import PacketError, PacketsTruncated

PKESK, SIGNATURE, SKESK, ONE_PASS_SIGNATURE, COMPRESSED, SED, LITERAL, SEIPD, OCB = 1, 2, 3, 4, 8, 9, 11, 18, 20
SESSION_KEYS = frozenset({PKESK, SKESK})
# The packets that may have a partial-body or indeterminate length (RFC 9580 §4.2.1.4, RFC 4880 §4.2.1).
STREAMABLE = frozenset({COMPRESSED, SED, LITERAL, SEIPD, OCB})


@dataclass(frozen=True, slots=True)
class Packet:
    tag: int
    offset: int  # where its header starts
    body_start: int  # its first body byte (the first chunk's, for a partial body)
    body_end: int | None  # one past its last body byte; None: it goes on past the prefix read


def walk(fh: BinaryIO, size: int, *, prefix: bool = False) -> Iterator[Packet]:
    """The top-level packets of ``fh[0:size]``, in order. ``prefix``: ``fh`` holds only the first ``size`` bytes
    of the message. The caller may read and seek ``fh`` between packets. Raises
    :class:`~sftp_pipeline.errors.PacketError` (:class:`~sftp_pipeline.errors.PacketsTruncated` for data that
    ends too early) where the walk cannot go on."""
    pos = 0
    while pos < size:
        fh.seek(pos)
        packet = _header(fh, pos, size, prefix)
        yield packet
        if packet.body_end is None:
            return
        pos = packet.body_end


def walk_bytes(data: bytes, *, prefix: bool = False) -> Iterator[Packet]:
    """:func:`walk` over bytes in memory."""
    return walk(io.BytesIO(data), len(data), prefix=prefix)


def _read(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise PacketsTruncated(fh.tell(), "a packet header is cut off here")
    return data


def _past(end: int, size: int, prefix: bool) -> bool:
    """Whether a body ending at ``end`` runs past the data (an error unless the data is a prefix)."""
    if end <= size:
        return False
    if prefix:
        return True
    raise PacketsTruncated(size, f"the data ends here, but a packet runs to byte {end}")


def _header(fh: BinaryIO, offset: int, size: int, prefix: bool) -> Packet:
    ctb = _read(fh, 1)[0]
    if not ctb & 0x80:
        raise PacketError(offset, "not an OpenPGP packet header")
    if ctb & 0x40:  # new format
        tag = ctb & 0x3F
        start = -1
        while True:
            first = _read(fh, 1)[0]
            if first < 192:
                length = first
            elif first < 224:
                length = ((first - 192) << 8) + _read(fh, 1)[0] + 192
            elif first == 255:
                length = int.from_bytes(_read(fh, 4), "big")
            else:  # a partial-body chunk: more chunks follow it
                if tag not in STREAMABLE:
                    raise PacketError(offset, f"packet tag {tag} may not have a partial-body length")
                start = fh.tell() if start < 0 else start
                chunk_end = fh.tell() + (1 << (first & 0x1F))
                if _past(chunk_end, size, prefix):
                    return Packet(tag, offset, start, None)
                fh.seek(chunk_end, os.SEEK_SET)
                if chunk_end == size and prefix:
                    return Packet(tag, offset, start, None)
                continue
            end = fh.tell() + length
            body_start = fh.tell() if start < 0 else start
            return Packet(tag, offset, body_start, None if _past(end, size, prefix) else end)
    tag = (ctb >> 2) & 0x0F
    width = {0: 1, 1: 2, 2: 4}.get(ctb & 0x03)
    if width is None:  # indeterminate length: runs to the end of the message
        if tag not in STREAMABLE:
            raise PacketError(offset, f"packet tag {tag} may not have an indeterminate length")
        return Packet(tag, offset, fh.tell(), None if prefix else size)
    length = int.from_bytes(_read(fh, width), "big")
    end = fh.tell() + length
    return Packet(tag, offset, end - length, None if _past(end, size, prefix) else end)


def pkesk_recipients(fh: BinaryIO, size: int) -> set[str]:
    """Key ids (v3 PKESK) and fingerprints (v6 PKESK) the leading session keys are addressed to, lowercase hex."""
    found: set[str] = set()
    for packet in walk(fh, size):
        if packet.tag != PKESK or packet.body_end is None:
            break
        fh.seek(packet.body_start)
        body = fh.read(min(packet.body_end - packet.body_start, 64))
        if body[:1] == b"\x03" and len(body) >= 9:
            found.add(body[1:9].hex())
        elif body[:1] == b"\x06" and len(body) >= 3 and body[1] > 1:
            found.add(body[3 : 2 + body[1]].hex())
    return found
