"""Embedded SFTP server: what it offers in its KEXINIT, and what clients end up negotiating."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from pathlib import Path

import asyncssh
import pytest

from sftp_pipeline.server.embedded import EmbeddedServer
from sftp_pipeline.transport import sshalgs
from tests.peers.embedded import EmbeddedPeer, make_login_key, make_server_config, paramiko_transport

PQ_KEX = "mlkem768x25519-sha256"
KEXINIT = 20  # SSH_MSG_KEXINIT
# Names that must never appear in anything the server offers.
WEAK_MARKERS = ("sha1", "cbc", "group1-", "md5", "3des", "arcfour", "rc4", "umac", "ssh-rsa", "ssh-dss", "none@")


def _server_kexinit(host: str, port: int) -> dict[str, list[str]]:
    """Read the server's first (cleartext) packet, its KEXINIT, straight off a socket (RFC 4253 §4.2, §7.1)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"SSH-2.0-kexinit-probe\r\n")
        stream = sock.makefile("rb")
        while not stream.readline().startswith(b"SSH-2.0-"):
            pass  # RFC 4253 allows other lines before the version line
        length, padding = struct.unpack(">IB", stream.read(5))
        payload = stream.read(length - 1 - padding)
    assert payload[0] == KEXINIT
    offset = 17  # message type + 16-byte cookie
    fields = (
        "kex",
        "host_key",
        "cipher_c2s",
        "cipher_s2c",
        "mac_c2s",
        "mac_s2c",
        "compression_c2s",
        "compression_s2c",
        "lang_c2s",
        "lang_s2c",
    )
    offered: dict[str, list[str]] = {}
    for name in fields:
        (size,) = struct.unpack(">I", payload[offset : offset + 4])
        text = payload[offset + 4 : offset + 4 + size].decode("ascii")
        offered[name] = text.split(",") if text else []
        offset += 4 + size
    return offered


def test_the_server_offers_only_modern_algorithms_pq_first(embedded_server: EmbeddedPeer) -> None:
    offered = _server_kexinit(embedded_server.host, embedded_server.port)
    kex = [name for name in offered["kex"] if name not in sshalgs.STRICT_KEX_MARKERS and name != "ext-info-s"]
    assert kex[0] == PQ_KEX
    assert kex == list(sshalgs.KEX_ALGS)
    assert offered["host_key"] == ["ssh-ed25519"]
    assert offered["cipher_c2s"] == offered["cipher_s2c"] == list(sshalgs.ENCRYPTION_ALGS)
    assert offered["mac_c2s"] == offered["mac_s2c"] == list(sshalgs.MAC_ALGS)
    assert offered["compression_c2s"] == ["none"]
    for category, names in offered.items():
        for name in names:
            assert not any(marker in name for marker in WEAK_MARKERS), f"{category} offers weak {name}"
    assert "diffie-hellman-group14-sha1" not in offered["kex"]
    assert "hmac-sha1" not in offered["mac_c2s"]


def test_paramiko_negotiates_ml_kem(embedded_server: EmbeddedPeer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="paramiko.transport")
    transport = paramiko_transport(embedded_server)
    try:
        assert transport.is_authenticated()
    finally:
        transport.close()
    agreed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Kex: ")]
    assert agreed == [f"Kex: {PQ_KEX}"]


def test_an_asyncssh_client_that_asks_for_ml_kem_gets_it(embedded_server: EmbeddedPeer) -> None:
    async def connect() -> tuple[str, str]:
        options = embedded_server.asyncssh_options(kex_algs=[PQ_KEX])
        async with asyncssh.connect(**options) as conn:
            return conn.get_extra_info("send_cipher"), conn.get_extra_info("send_mac")

    cipher, mac = asyncio.run(connect())  # only succeeds if the exchange was ML-KEM
    assert cipher in sshalgs.ENCRYPTION_ALGS
    assert mac in (*sshalgs.MAC_ALGS, cipher)  # an AEAD cipher reports itself as the MAC
    assert sshalgs.is_post_quantum(PQ_KEX)


@pytest.mark.parametrize(
    "weak",
    [
        {"kex_algs": ["diffie-hellman-group14-sha1"]},
        {"kex_algs": ["diffie-hellman-group1-sha1"]},
        {"encryption_algs": ["aes256-cbc"]},
        {"encryption_algs": ["aes128-ctr"], "mac_algs": ["hmac-sha1"]},
        {"server_host_key_algs": ["ssh-rsa"]},
    ],
    ids=lambda weak: ",".join(alg for algs in weak.values() for alg in algs),
)
def test_a_client_limited_to_weak_algorithms_is_refused(embedded_server: EmbeddedPeer, weak: dict) -> None:
    async def connect() -> None:
        async with asyncssh.connect(**embedded_server.asyncssh_options(**weak)):
            pass

    # The server's refusal races the client's own "no matching algorithm": either way, no connection.
    with pytest.raises((asyncssh.KeyExchangeFailed, asyncssh.ConnectionLost, asyncssh.HostKeyNotVerifiable)):
        asyncio.run(connect())


def test_an_rsa_host_key_is_offered_without_sha1(tmp_path: Path) -> None:
    login = make_login_key(tmp_path)
    config = make_server_config(tmp_path, {"aggregator": [login.public_line]})
    key = asyncssh.generate_private_key("ssh-rsa", key_size=3072)
    config.keys.host_key.parent.mkdir(parents=True)
    key.write_private_key(str(config.keys.host_key))
    config.keys.host_key.chmod(0o600)

    async def offered_host_key_algs() -> list[str]:
        async with EmbeddedServer(config) as server:
            offered = await asyncio.to_thread(_server_kexinit, "127.0.0.1", server.port)
            return offered["host_key"]

    assert asyncio.run(offered_host_key_algs()) == ["rsa-sha2-512", "rsa-sha2-256"]
