"""ssh-audit (a real, independent SSH auditor) against our embedded server and our SFTP client.

ssh-audit's built-in hardened policies name OpenSSH's exact algorithm lists (aes192-ctr, umac-128-etm, group
exchange, sntrup761 without liboqs…), which asyncssh does not implement, so none of them can pass for asyncssh.
The policies in ``tests/ssh_audit/`` are copies of "Hardened OpenSSH Server v9.9 (version 1)" that allow a subset
in any order and still require the Terrapin strict-kex marker; see the comments at their top. On top of the
policy, every algorithm ssh-audit rates "fail" or "warn" fails the test, except the one warning hardened OpenSSH
9.x itself carries: a classical key exchange "does not provide protection against post-quantum attacks" (we
offer ML-KEM first, but OpenSSH 9.2 partners can only do curve25519 with us).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from sftp_pipeline.config import SftpEndpoint
from sftp_pipeline.errors import PipelineError
from sftp_pipeline.transport import sshalgs
from sftp_pipeline.transport.sftp import SftpTransport
from tests.conftest import IN_CI
from tests.peers.embedded import LOOPBACK, EmbeddedPeer, make_login_key

POLICIES = Path(__file__).parent.parent / "ssh_audit"
# The only warning the hardened OpenSSH 9.x policy lets through (curve25519 and the big DH groups carry it).
NOT_PQ = "does not provide protection against post-quantum attacks"
# Why 10 s: an audit of a local peer takes about a second; longer means it hangs.
AUDIT_TIMEOUT = 10
# Why 0.05 s: how often we look whether ssh-audit's client-audit listener is up yet.
POLL = 0.05
WEAK_MARKERS = (
    "sha1",
    "cbc",
    "group1-",
    "group14",
    "group-exchange-sha1",
    "md5",
    "3des",
    "arcfour",
    "umac-64",
    "nistp",
    "ssh-rsa",
    "ssh-dss",
)


def ssh_audit() -> str:
    found = shutil.which("ssh-audit") or str(Path(sys.executable).with_name("ssh-audit"))
    if os.access(found, os.X_OK):
        return found
    message = "ssh-audit is not installed (pip install -e '.[test]' installs it)"
    if IN_CI:
        pytest.fail(f"CI=true and this test needs it: {message}", pytrace=False)
    pytest.skip(message)
    raise AssertionError("unreachable")


def run_audit(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [ssh_audit(), "-j", "--skip-rate-test", "-t", str(AUDIT_TIMEOUT), *args],
        capture_output=True,
        text=True,
        timeout=AUDIT_TIMEOUT * 3,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"ssh-audit {' '.join(args)} gave no JSON (exit {done.returncode}): {done.stdout}{done.stderr}")
    return result


def objections(report: dict[str, Any]) -> list[str]:
    """Every fail/warn note ssh-audit gave an algorithm, except the post-quantum one hardened OpenSSH 9.x has."""
    found = []
    for category in ("kex", "key", "enc", "mac"):
        for entry in report.get(category, []):
            notes = entry.get("notes", {})
            for level in ("fail", "warn"):
                for note in notes.get(level, []):
                    if not (level == "warn" and note == NOT_PQ and category == "kex"):
                        found.append(f"{category} {entry['algorithm']}: [{level}] {note}")
    return found


def offered(report: dict[str, Any], category: str) -> list[str]:
    return [entry["algorithm"] for entry in report.get(category, [])]


def assert_hardened(report: dict[str, Any], strict_marker: str) -> None:
    assert objections(report) == [], report
    assert report.get("cves") == [], report["cves"]
    names = [name for category in ("kex", "key", "enc", "mac") for name in offered(report, category)]
    assert names, report
    weak = [name for name in names if any(marker in name for marker in WEAK_MARKERS)]
    assert weak == [], f"weak algorithms offered: {weak}"
    assert strict_marker in offered(report, "kex"), "Terrapin strict kex not offered"
    assert report.get("compression") == ["none"]


# -- the embedded server ---------------------------------------------------------------------------------


def test_the_embedded_server_passes_the_hardened_policy(embedded_server: EmbeddedPeer) -> None:
    target = ("-p", str(embedded_server.port), LOOPBACK)
    policy = run_audit("-P", str(POLICIES / "hardened-server.txt"), *target)
    assert policy["passed"] is True, policy
    assert policy["errors"] == [] and policy["warnings"] == [], policy

    report = run_audit(*target)
    assert_hardened(report, "kex-strict-s-v00@openssh.com")
    assert offered(report, "kex")[0] == "mlkem768x25519-sha256"  # post-quantum first
    assert offered(report, "key") == ["ssh-ed25519"]


def test_the_policy_catches_a_weak_algorithm(tmp_path: Path) -> None:
    """The control: the same policy against an asyncssh server that also offers NIST ECDH and a plain HMAC."""

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        server = await asyncssh.create_server(
            asyncssh.SSHServer,
            LOOPBACK,
            0,
            server_host_keys=[host_key],
            kex_algs=[*sshalgs.KEX_ALGS, "ecdh-sha2-nistp256"],
            mac_algs=[*sshalgs.MAC_ALGS, "hmac-sha2-256"],
            encryption_algs=list(sshalgs.ENCRYPTION_ALGS),
        )
        try:
            port = str(server.sockets[0].getsockname()[1])
            policy = await asyncio.to_thread(
                run_audit, "-P", str(POLICIES / "hardened-server.txt"), "-p", port, LOOPBACK
            )
            report = await asyncio.to_thread(run_audit, "-p", port, LOOPBACK)
        finally:
            server.close()
            await server.wait_closed()
        return policy, report

    policy, report = asyncio.run(main())
    assert policy["passed"] is False
    assert {error["mismatched_field"] for error in policy["errors"]} == {"Key exchanges", "MACs"}, policy
    assert any("ecdh-sha2-nistp256" in line for line in objections(report))
    assert any("hmac-sha2-256:" in line for line in objections(report))


# -- our client ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    """True once something listens on 127.0.0.1:port (read from /proc, so the probe does not use up the audit)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in list(table)[1:])


def audit_our_client(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Start ssh-audit's client audit, connect our SftpTransport to it (which then fails: it is no server).

    ssh-audit's client audit listens on every interface; it runs through ``tests/ssh_audit/loopback_client_audit``,
    which makes it bind 127.0.0.1 instead (and changes nothing else).
    """
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp to see when ssh-audit listens")
    port = _free_port()
    ssh_audit()  # installed, or skip (fail in CI)
    audit = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.ssh_audit.loopback_client_audit",
            "-c",
            "-j",
            "-p",
            str(port),
            "-t",
            str(AUDIT_TIMEOUT),
            *args,
            LOOPBACK,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        deadline = time.monotonic() + AUDIT_TIMEOUT
        while not _listening(port):
            if audit.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ssh-audit -c did not listen on {port}: {audit.communicate()}")
            time.sleep(POLL)
        key = make_login_key(tmp_path)
        # A fingerprint pin: the client offers every host key algorithm it accepts, not only a pinned key's.
        endpoint = SftpEndpoint(
            host=LOOPBACK, port=port, user="audit", host_keys=["SHA256:" + "A" * 43], connect_timeout=AUDIT_TIMEOUT
        )
        with pytest.raises(PipelineError):
            asyncio.run(SftpTransport.connect(endpoint, client_key=key.path, partner_id="auditor"))
        out, err = audit.communicate(timeout=AUDIT_TIMEOUT * 2)
    finally:
        if audit.poll() is None:
            audit.kill()
            audit.wait()
    try:
        result: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError:
        pytest.fail(f"ssh-audit -c gave no JSON: {out}{err}")
    return result


def test_our_client_passes_the_hardened_policy(tmp_path: Path) -> None:
    policy = audit_our_client(tmp_path, "-P", str(POLICIES / "hardened-client.txt"))
    assert policy["passed"] is True, policy
    assert policy["errors"] == [], policy


def test_our_client_offers_nothing_weak_and_does_strict_kex(tmp_path: Path) -> None:
    report = audit_our_client(tmp_path)
    assert report["banner"]["software"].startswith("AsyncSSH"), report["banner"]
    assert_hardened(report, "kex-strict-c-v00@openssh.com")
    assert offered(report, "kex")[: len(sshalgs.KEX_ALGS)] == list(sshalgs.KEX_ALGS)
    assert offered(report, "enc") == list(sshalgs.ENCRYPTION_ALGS)
    assert offered(report, "mac") == list(sshalgs.MAC_ALGS)
    assert offered(report, "key") == list(sshalgs.HOST_KEY_ALGS)
