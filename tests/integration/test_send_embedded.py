"""Two parties running this software: the aggregator pushes into the utility's embedded SFTP server."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pysequoia

from sftp_pipeline.config import load_config
from sftp_pipeline.keys import load_our_keys
from sftp_pipeline.server.embedded import EmbeddedServer
from sftp_pipeline.wiring import open_runtime
from tests.conftest import require_tool
from tests.peers.parties import make_party
from tests.peers.sshd import free_port

PLACEHOLDER = "ssh-ed25519 AAAAPLACEHOLDER"


def test_aggregator_pushes_into_the_utility_embedded_server(tmp_path: Path) -> None:
    port = free_port()
    utility = make_party(
        tmp_path / "utility",
        "utility",
        partner_id="aggregator",
        partner_cert=b"",
        server_port=port,
        login_keys=[PLACEHOLDER],
        jobs={},
        pq=True,
    )
    host_key = " ".join(utility.keys.host_key_public.read_text().split()[:2])
    aggregator = make_party(
        tmp_path / "aggregator",
        "aggregator",
        partner_id="utility",
        partner_cert=utility.keys.openpgp_cert.read_bytes(),
        sftp={
            "host": "127.0.0.1",
            "port": port,
            "user": "aggregator",
            "require_pq_kex": True,
            "host_keys": [f"[127.0.0.1]:{port} {host_key}"],
        },
        pq=True,
    )
    (utility.directory / "keys" / "partners" / "aggregator.asc").write_bytes(aggregator.keys.openpgp_cert.read_bytes())
    utility.config_path.write_text(
        utility.config_path.read_text().replace(PLACEHOLDER, aggregator.keys.ssh_public.read_text().strip())
    )
    documents = {"INV-7.xml": b"<Invoice/>" * 50, "TC-7.xml": b"<TransactionConfirmation/>" * 9}
    aggregator.drop("invoice", "INV-7.xml", documents["INV-7.xml"])
    aggregator.drop("transaction_confirmation", "TC-7.xml", documents["TC-7.xml"])
    uploads: list[tuple[str, Path]] = []

    async def scenario() -> None:
        async with EmbeddedServer(utility.config(), on_upload=lambda p, path, at: uploads.append((p, path))):
            config = aggregator.config()
            with open_runtime(config) as rt:
                report = await rt.outbound().run(config.jobs_of("send"))
            assert report.ok and report.count("uploaded") == 2

    asyncio.run(scenario())

    inbox = utility.config().hosted_root("aggregator") / "inbox"
    transfers = {t.source_name: t for t in aggregator.transfers()}
    assert sorted(p.name for p in inbox.iterdir()) == sorted(t.remote_name for t in transfers.values())
    assert sorted(path.name for _, path in uploads) == sorted(t.remote_name for t in transfers.values())
    utility_keys = load_our_keys(utility.config(), datetime.now(UTC))
    for name, data in documents.items():
        t = transfers[name]
        assert t.ssh_kex == "mlkem768x25519-sha256" and t.transport_pq == 1  # post-quantum transport
        assert t.content_pq == 1 and "ML-KEM-768+X25519" in (t.pgp_algorithms or "")  # post-quantum content
        opened = pysequoia.decrypt(
            (inbox / t.remote_name).read_bytes(),
            decryptor=utility_keys.decryptor(),
            store=lambda _ids: [pysequoia.Cert.from_file(str(aggregator.keys.openpgp_cert))],
        )
        assert opened.bytes == data
        assert [s.certificate for s in opened.valid_sigs] == [aggregator.keys.openpgp_fingerprint]


def test_the_readme_demo_delivers_validates_and_receipts_everything(tmp_path: Path) -> None:
    require_tool("gpg")
    result = subprocess.run(
        [sys.executable, "-m", "sftp_pipeline.cli", "demo", str(tmp_path / "demo"), "--size-mb", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all delivered, validated and receipted" in result.stdout
    assert result.stdout.count("signature good, bytes equal") == 3
    config = load_config(tmp_path / "demo" / "aggregator" / "sftp-pipeline.toml")
    with open_runtime(config) as rt:
        assert sorted(t.state for t in rt.ledger.recent(10)) == ["receipted"] * 3
    utility = load_config(tmp_path / "demo" / "utility" / "sftp-pipeline.toml")
    with open_runtime(utility) as rt:
        assert sorted(r.state for r in rt.ledger.inbound_recent(10)) == ["accepted"] * 3
        assert sorted(t.state for t in rt.ledger.recent(10)) == ["receipted"] * 4  # the utility's documents
    with open_runtime(config) as rt:
        assert sorted(r.state for r in rt.ledger.inbound_recent(10)) == ["accepted"] * 4
    # The aggregator's signed report shows every document delivered (sent) or accepted (received).
    (csv_report,) = (tmp_path / "demo" / "aggregator" / "state" / "reports").glob("*.csv")
    rows = list(csv.DictReader(io.StringIO(csv_report.read_text(encoding="utf-8"))))
    assert (
        sorted((r["direction"], r["status"]) for r in rows)
        == [("received", "accepted")] * 4 + [("sent", "delivered")] * 3
    )
    mails = sorted((tmp_path / "demo" / "mailbox").glob("*.eml"))
    assert len(mails) == 2 and b"reconciliation" in mails[0].read_bytes()
