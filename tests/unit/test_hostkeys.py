"""Host-key pins: the forms an endpoint accepts and what each one matches."""

from __future__ import annotations

import asyncssh
import pytest

from sftp_pipeline import errors
from sftp_pipeline.transport.sftp import _Pins

ED = asyncssh.generate_private_key("ssh-ed25519")
RSA = asyncssh.generate_private_key("ssh-rsa", key_size=3072)
OTHER = asyncssh.generate_private_key("ssh-ed25519")


def line(key: asyncssh.SSHKey) -> str:
    return key.export_public_key().decode().strip()


def pins(*entries: str) -> _Pins:
    return _Pins("utility", list(entries))


def test_known_hosts_line_matches_its_host_and_port_only() -> None:
    p = pins(f"[sftp.example]:2222 {line(ED)}")
    assert p.matches(ED.convert_to_public(), "sftp.example", "192.0.2.1", 2222)
    assert not p.matches(ED.convert_to_public(), "other.example", "192.0.2.2", 2222)
    assert not p.matches(OTHER.convert_to_public(), "sftp.example", "192.0.2.1", 2222)


def test_bare_key_and_fingerprint_match_any_host() -> None:
    assert pins(line(ED)).matches(ED.convert_to_public(), "anything", "192.0.2.1", 22)
    assert pins(ED.get_fingerprint("sha256")).matches(ED.convert_to_public(), "anything", "192.0.2.1", 22)
    assert not pins(ED.get_fingerprint("sha256")).matches(OTHER.convert_to_public(), "x", "192.0.2.1", 22)


def test_host_key_algorithms_follow_the_pinned_keys() -> None:
    assert pins(line(ED)).host_key_algs() == ["ssh-ed25519"]
    assert pins(f"host {line(RSA)}").host_key_algs() == ["rsa-sha2-512", "rsa-sha2-256"]  # never ssh-rsa (SHA-1)
    assert "ssh-ed25519" in pins(line(RSA), ED.get_fingerprint("sha256")).host_key_algs()  # type unknown: all


@pytest.mark.parametrize("bad", ["ssh-ed25519 @@@", "host ssh-ed25519", "host not-a-key-type AAAA"])
def test_unparsable_pins_name_the_partner_and_the_fix(bad: str) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        pins(bad)
    assert "utility" in str(caught.value) and "ssh-keyscan" in str(caught.value)
