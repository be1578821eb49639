"""The one OpenPGP packet-header parser: every length form, the strictest rule where the old copies disagreed,
and a prefix (the head of a download) told apart from a truncated message."""

from __future__ import annotations

import io

import pysequoia
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sftp_pipeline.errors import PacketError, PacketsTruncated
from sftp_pipeline.openpgp import packets
from sftp_pipeline.openpgp.stream import head_seipd_version


def new_header(tag: int, length: int) -> bytes:
    if length < 192:
        return bytes([0xC0 | tag, length])
    if length < 8384:
        length -= 192
        return bytes([0xC0 | tag, (length >> 8) + 192, length & 0xFF])
    return bytes([0xC0 | tag, 255]) + length.to_bytes(4, "big")


def old_header(tag: int, length: int) -> bytes:
    if length < 256:
        return bytes([0x80 | (tag << 2), length])
    if length < 65536:
        return bytes([0x80 | (tag << 2) | 1]) + length.to_bytes(2, "big")
    return bytes([0x80 | (tag << 2) | 2]) + length.to_bytes(4, "big")


def shape(data: bytes, *, prefix: bool = False) -> list[tuple[int, int, int | None]]:
    return [(p.tag, p.body_start, p.body_end) for p in packets.walk_bytes(data, prefix=prefix)]


@pytest.mark.parametrize("length", [0, 1, 191, 192, 8383, 8384, 70000])
@pytest.mark.parametrize("header", [new_header, old_header])
def test_every_fixed_length_form_reads_back(header, length: int) -> None:
    data = header(packets.PKESK, length) + b"k" * length + new_header(packets.SEIPD, 3) + b"\x01ab"  # tag 18: new only
    first, second = shape(data)
    assert first[0] == packets.PKESK and first[2] - first[1] == length
    assert second == (packets.SEIPD, len(data) - 3, len(data))


def test_a_partial_body_is_walked_chunk_by_chunk_to_its_end() -> None:
    body = b"\x01" + b"x" * 1023 + b"y" * 512 + b"tail"
    data = new_header(packets.PKESK, 2) + b"kk" + bytes([0xC0 | packets.SEIPD, 224 + 10])  # one 1024-byte chunk
    data += body[:1024] + bytes([224 + 9]) + body[1024:1536] + bytes([4]) + body[1536:]
    assert shape(data) == [(packets.PKESK, 2, 4), (packets.SEIPD, 6, len(data))]


def test_partial_or_indeterminate_lengths_only_on_data_packets() -> None:
    """The strictest of the old copies: a session key or signature never streams."""
    with pytest.raises(PacketError, match="partial-body"):
        shape(bytes([0xC0 | packets.PKESK, 224 + 9]) + b"k" * 600)
    with pytest.raises(PacketError, match="indeterminate"):
        shape(bytes([0x80 | (packets.SIGNATURE << 2) | 3]) + b"sig")
    assert shape(bytes([0x80 | (packets.LITERAL << 2) | 3]) + b"literal") == [(packets.LITERAL, 1, 8)]


def test_truncation_versus_a_prefix() -> None:
    data = new_header(packets.PKESK, 40) + b"k" * 40 + new_header(packets.SEIPD, 300) + b"\x01" + b"z" * 100
    with pytest.raises(PacketsTruncated):
        shape(data)
    assert shape(data, prefix=True) == [(packets.PKESK, 2, 42), (packets.SEIPD, 45, None)]
    with pytest.raises(PacketsTruncated):  # a header cut off is too short to tell, even for a prefix
        shape(data[:43], prefix=True)


def test_garbage_is_not_openpgp() -> None:
    with pytest.raises(PacketError, match="byte 0"):
        shape(b"\x00garbage")
    with pytest.raises(PacketError, match="byte 3"):
        shape(new_header(packets.PKESK, 1) + b"k" + b"\x7f")


def test_session_key_recipients_of_a_real_message() -> None:
    key = pysequoia.Tsk.generate("Recipient")
    cert = key.extract_certificate()
    data = bytes(pysequoia.encrypt(b"hello", recipients=[cert], armor=False))
    found = packets.pkesk_recipients(io.BytesIO(data), len(data))
    pile = pysequoia.packet.PacketPile.from_bytes(bytes(cert))
    ids = {i.lower() for p in pile for i in (p.key_id, p.fingerprint) if i}
    assert found and found <= ids


def test_the_stream_head_check_uses_the_same_walk() -> None:
    data = new_header(packets.PKESK, 40) + b"k" * 40 + new_header(packets.SEIPD, 300) + b"\x01" + b"z" * 299
    assert head_seipd_version(data) == 1
    assert head_seipd_version(data[:20]) is None  # inside the session key: too short to tell
    assert head_seipd_version(data[:43]) is None  # the encrypted packet's header is cut off
    assert head_seipd_version(b"\x00garbage") == 0
    assert head_seipd_version(new_header(packets.LITERAL, 3) + b"abc") == 0
    assert head_seipd_version(bytes([0xC0 | packets.PKESK, 224 + 9]) + b"k" * 600) == 0  # malformed: step aside


@given(st.binary(max_size=200))
def test_any_bytes_either_walk_or_raise_one_of_the_two_errors(data: bytes) -> None:
    for prefix in (False, True):
        try:
            walked = shape(data, prefix=prefix)
        except PacketError:
            continue
        ends = [end for _, _, end in walked]
        assert all(end is None or end <= len(data) for end in ends)
        assert None not in ends[:-1]
