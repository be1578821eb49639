"""`check` against real peers: the embedded server (post-quantum) and OpenSSH 9.2 sshd (curve25519)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sftp_pipeline.check import WARNING, CheckResult, run_checks
from sftp_pipeline.config import Config
from sftp_pipeline.folders import HOSTED_DIRS
from sftp_pipeline.keys import generate_keys
from sftp_pipeline.server.embedded import EmbeddedServer
from tests.peers.embedded import make_host_key
from tests.peers.parties import Party, make_party
from tests.peers.sshd import Sshd, free_port

PLACEHOLDER = "ssh-ed25519 AAAAPLACEHOLDER"
REMOTE_DIRS = ("inbox", "outbox", "receipts-in", "receipts-out")


def _check(config: Config, now: datetime | None = None) -> list[CheckResult]:
    return asyncio.run(run_checks(config, now=now or datetime.now(UTC)))


def _row(results: list[CheckResult], partner: str | None, what: str) -> CheckResult:
    found = [r for r in results if r.partner == partner and r.what == what]
    assert len(found) == 1, f"expected one {what!r} row for {partner!r}: {results}"
    return found[0]


def _failed(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if not r.ok]


def _sshd_party(tmp_path: Path, sshd: Sshd, *, host_keys: list[str] | None = None) -> Party:
    """An aggregator whose partner 'utility' runs the sshd fixture; its SSH identity is authorised there."""
    utility_keys = generate_keys(
        tmp_path / "utility-keys", party_id="utility", party_name="U", pq=False, passphrase=None
    )
    party = make_party(
        tmp_path / "aggregator",
        "aggregator",
        partner_id="utility",
        partner_cert=utility_keys.openpgp_cert.read_bytes(),
        sftp={"host": sshd.host, "port": sshd.port, "user": sshd.user, "host_keys": host_keys or [sshd.host_key_line]},
        jobs={},
    )
    sshd.authorize(party.keys.ssh_public.read_text())
    return party


def test_two_parties_on_the_embedded_server_check_clean_with_post_quantum_kex(tmp_path: Path) -> None:
    port = free_port()
    utility = make_party(
        tmp_path / "utility",
        "utility",
        partner_id="aggregator",
        partner_cert=b"",
        server_port=port,
        login_keys=[PLACEHOLDER],
        jobs={},
    )
    host_key = " ".join(utility.keys.host_key_public.read_text().split()[:2])
    aggregator = make_party(
        tmp_path / "aggregator",
        "aggregator",
        partner_id="utility",
        partner_cert=utility.keys.openpgp_cert.read_bytes(),
        sftp={"host": "127.0.0.1", "port": port, "user": "aggregator", "host_keys": [f"[127.0.0.1]:{port} {host_key}"]},
        jobs={},
    )
    (utility.directory / "keys" / "partners" / "aggregator.asc").write_bytes(aggregator.keys.openpgp_cert.read_bytes())
    utility.config_path.write_text(
        utility.config_path.read_text().replace(PLACEHOLDER, aggregator.keys.ssh_public.read_text().strip())
    )

    async def scenario() -> tuple[list[CheckResult], list[CheckResult]]:
        async with EmbeddedServer(utility.config()):
            now = datetime.now(UTC)
            return await run_checks(aggregator.config(), now=now), await run_checks(utility.config(), now=now)

    from_aggregator, from_utility = asyncio.run(scenario())

    assert _failed(from_aggregator) == [] and _failed(from_utility) == []
    assert not any(r.detail.startswith(WARNING) for r in from_aggregator + from_utility)
    pq = _row(from_aggregator, "utility", "post-quantum key exchange")
    assert pq.detail == "yes: mlkem768x25519-sha256"
    connection = _row(from_aggregator, "utility", "SSH connection").detail
    assert utility.keys.host_key_fingerprint in connection and "kex mlkem768x25519-sha256" in connection
    assert {r.what for r in from_aggregator if r.partner == "utility"} >= {f"remote dir {d}" for d in REMOTE_DIRS}
    assert aggregator.keys.openpgp_fingerprint in _row(from_aggregator, None, "our OpenPGP key").detail
    assert utility.keys.openpgp_fingerprint in _row(from_aggregator, "utility", "OpenPGP certificate").detail
    # The hosting side: its host key is checked, the partner's root and directories exist and are writable.
    assert utility.keys.host_key_fingerprint in _row(from_utility, None, "our SSH host key").detail
    assert {r.what for r in from_utility if r.partner == "aggregator"} >= {f"hosted dir {d}" for d in HOSTED_DIRS}
    assert aggregator.keys.ssh_fingerprint in _row(from_utility, "aggregator", "SSH login key").detail


def test_openssh_9_2_checks_clean_and_reports_curve25519_not_post_quantum(tmp_path: Path, sshd: Sshd) -> None:
    for name in REMOTE_DIRS:
        (sshd.root / name).mkdir()
    (sshd.root / "outbox" / "waiting.pgp").write_bytes(b"x")
    party = _sshd_party(tmp_path, sshd)

    results = _check(party.config())

    assert _failed(results) == []
    pq = _row(results, "utility", "post-quantum key exchange")
    assert pq.ok and pq.detail.startswith("no: curve25519-sha256")
    assert "require_pq_kex = true" in pq.detail  # says how to insist once the partner offers one
    connection = _row(results, "utility", "SSH connection").detail
    assert "OpenSSH" in connection and sshd.host_key_fingerprint in connection
    assert "1 file in it now" in _row(results, "utility", "remote dir outbox").detail


def test_a_changed_host_key_fails_the_connection_and_names_the_presented_key(tmp_path: Path, sshd: Sshd) -> None:
    for name in REMOTE_DIRS:
        (sshd.root / name).mkdir()
    other = make_host_key(tmp_path / "other" / "host_key")
    party = _sshd_party(tmp_path, sshd, host_keys=[f"[{sshd.host}]:{sshd.port} {other}"])

    results = _check(party.config())

    failed = _failed(results)
    assert [(r.partner, r.what) for r in failed] == [("utility", "SSH connection")]
    assert sshd.host_key_fingerprint in failed[0].detail and "not pinned" in failed[0].detail
    assert not any(r.what.startswith("remote dir") for r in results)  # nothing was listed on that server


def test_a_missing_remote_directory_fails_naming_it_and_the_setting(tmp_path: Path, sshd: Sshd) -> None:
    for name in REMOTE_DIRS:
        if name != "receipts-out":
            (sshd.root / name).mkdir()
    party = _sshd_party(tmp_path, sshd)

    results = _check(party.config())

    failed = _failed(results)
    assert [(r.partner, r.what) for r in failed] == [("utility", "remote dir receipts-out")]
    assert "'receipts-out' (sftp.dirs.receipts_out)" in failed[0].detail
    assert "partners.utility.sftp.dirs.receipts_out" in failed[0].detail


def _hosted_party(tmp_path: Path, partner_cert: bytes) -> Party:
    """A party hosting 'utility' through the system's OpenSSH: no network, the root made by hand."""
    party = make_party(tmp_path / "aggregator", "aggregator", partner_id="utility", partner_cert=partner_cert, jobs={})
    root = party.config().hosted_root("utility")
    for name in HOSTED_DIRS:
        (root / name).mkdir(parents=True)
    return party


def test_an_expired_partner_certificate_fails(tmp_path: Path) -> None:
    short = generate_keys(
        tmp_path / "short", party_id="utility", party_name="U", pq=False, passphrase=None, validity_days=1
    )
    party = _hosted_party(tmp_path, short.openpgp_cert.read_bytes())

    results = _check(party.config(), datetime.now(UTC) + timedelta(days=2))

    failed = _failed(results)
    assert [(r.partner, r.what) for r in failed] == [("utility", "OpenPGP certificate")]
    assert short.openpgp_fingerprint in failed[0].detail and "expired" in failed[0].detail
    assert _row(results, "utility", "transport").detail.startswith("hosted")


def test_a_certificate_expiring_soon_is_ok_with_a_warning(tmp_path: Path) -> None:
    soon = generate_keys(
        tmp_path / "soon", party_id="utility", party_name="U", pq=False, passphrase=None, validity_days=10
    )
    party = _hosted_party(tmp_path, soon.openpgp_cert.read_bytes())

    results = _check(party.config())

    assert _failed(results) == []
    row = _row(results, "utility", "OpenPGP certificate")
    assert row.detail.startswith(f"{WARNING}: partner 'utility''s certificate expires in 9 days")
    assert "gpg --quick-set-expire" in row.detail
    assert not _row(results, None, "our OpenPGP key").detail.startswith(WARNING)


def test_a_missing_hosted_directory_and_an_open_ssh_identity_fail(tmp_path: Path) -> None:
    other = generate_keys(tmp_path / "other", party_id="utility", party_name="U", pq=False, passphrase=None)
    party = _hosted_party(tmp_path, other.openpgp_cert.read_bytes())
    (party.config().hosted_root("utility") / "outbox").rmdir()
    party.keys.ssh_private.chmod(0o644)

    results = _check(party.config())

    failed = {(r.partner, r.what): r.detail for r in _failed(results)}
    assert set(failed) == {(None, "our SSH identity"), ("utility", "hosted dir outbox")}
    assert "chmod 600" in failed[None, "our SSH identity"]
    assert "does not exist" in failed["utility", "hosted dir outbox"]
