"""`audit verify`, `evidence` and `evidence verify` as an operator and an auditor run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.test_exchange import INVOICE, pair_over_sshd
from tests.peers.sshd import Sshd


def test_audit_and_evidence_from_the_cli(tmp_path: Path, sshd: Sshd) -> None:
    aggregator, utility = pair_over_sshd(tmp_path, sshd)
    aggregator.drop("invoice", "INV-9.xml", INVOICE)
    assert aggregator.cli("send").returncode == 0
    assert utility.cli("collect").returncode == 0
    assert aggregator.cli("receipts").returncode == 0
    (transfer,) = aggregator.transfers()

    intact = aggregator.cli("audit", "verify")
    assert intact.returncode == 0 and intact.stdout.startswith("OK:"), intact.stdout + intact.stderr

    bundle = tmp_path / "proof.zip"
    built = aggregator.cli("evidence", transfer.id, "-o", str(bundle))
    assert built.returncode == 0 and bundle.exists(), built.stdout + built.stderr
    # The auditor needs no configuration, only the bundle.
    check = subprocess.run(
        [sys.executable, "-m", "sftp_pipeline.cli", "evidence", "verify", str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "signed that at" in check.stdout and "accepted it" in check.stdout
    forged = bytearray(bundle.read_bytes())
    forged[len(forged) // 2] ^= 0x01  # one byte, anywhere in the archive
    bundle.write_bytes(bytes(forged))
    bad = subprocess.run(
        [sys.executable, "-m", "sftp_pipeline.cli", "evidence", "verify", str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert bad.returncode == 1 and "FAILED" in bad.stdout + bad.stderr

    log = aggregator.config().state_dir / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    assert b'"state":"' in lines[1]
    lines[1] = lines[1].replace(b'"state":"', b'"state":"X', 1)  # one edited field on line 2
    log.write_bytes(b"".join(lines))
    tampered = aggregator.cli("audit", "verify")
    assert tampered.returncode == 1 and "line 2" in tampered.stderr, tampered.stdout + tampered.stderr
