"""A recipient with GnuPG checks our report literally as the report's footer tells them to."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from zoneinfo import ZoneInfo

import pysequoia
import pytest

from sftp_pipeline.openpgp import SigningKey
from sftp_pipeline.proof.reconcile import Alert, Line, Reconciliation
from sftp_pipeline.reporting.render import ReportFiles, write_report
from tests.peers.gpg import GnuPG

NOW = datetime(2026, 11, 27, 9, 44, 12, 345000, tzinfo=UTC)
VERIFY_RE = re.compile(r"gpg --verify (\S+\.html\.sig) (\S+\.html)<")


def _rec() -> Reconciliation:
    line = Line(
        direction="sent", partner="utility", transfer_id="01JDQ6Z6M2W4K8T9V0B3C5D7EF", document_type="invoice",
        file="<script>alert(1)</script> – Rechnung €.xml", size=1234, sha256="a" * 64, ciphertext_sha256="b" * 64,
        sent_at=NOW - timedelta(hours=9), partner_received_at=None, receipt_verified_at=None, latency=None,
        status="overdue", status_code=None, detail="no receipt", action="Call the partner.", transport_pq=False,
        content_pq=True, sla=timedelta(hours=4),
    )  # fmt: skip
    alert = Alert("critical", "1 overdue document(s) for utility", "no receipt", "Call the partner.")
    return Reconciliation("aggregator", "Aggregator", NOW - timedelta(days=1), NOW, NOW, (line,), (), (), (alert,))


@pytest.fixture
def written(tmp_path: Path) -> tuple[ReportFiles, pysequoia.Cert]:
    tsk = pysequoia.Tsk.generate("Aggregator reports <reports@aggregator.example>")
    signer = SigningKey(tsk.extract_certificate(), tsk.signer())
    files = write_report(_rec(), tmp_path / "reports", signer=signer, tz=ZoneInfo("America/Chicago"))
    return files, signer.cert


def _good(result_status: list[str], fingerprint: str) -> bool:
    valid = [line.split() for line in result_status if line.startswith("VALIDSIG ")]
    errors = [line for line in result_status if line.split()[0] in ("BADSIG", "ERRSIG", "EXPKEYSIG", "REVKEYSIG")]
    return not errors and len(valid) == 1 and valid[0][-1].upper() == fingerprint.upper()


def test_gpg_verify_as_the_footer_says(gpg: GnuPG, written: tuple[ReportFiles, pysequoia.Cert]) -> None:
    files, cert = written
    gpg.import_key(str(cert).encode())
    match = VERIFY_RE.search(files.html.read_text(encoding="utf-8"))
    assert match, "the footer must give the gpg --verify command"
    sig_name, data_name = (unescape(name) for name in match.groups())
    assert (sig_name, data_name) == (files.html_sig.name, files.html.name)
    for sig, data in ((files.html_sig, files.html), (files.csv_sig, files.csv)):
        result = gpg.run("--verify", str(sig), str(data), check=False)
        assert result.returncode == 0, result.stderr
        assert _good(result.status, cert.fingerprint), result.status


def test_gpg_rejects_a_changed_report(gpg: GnuPG, written: tuple[ReportFiles, pysequoia.Cert]) -> None:
    files, cert = written
    gpg.import_key(str(cert).encode())
    body = bytearray(files.csv.read_bytes())
    body[-3] ^= 0x20
    files.csv.write_bytes(bytes(body))
    result = gpg.run("--verify", str(files.csv_sig), str(files.csv), check=False)
    assert result.returncode != 0
    assert result.has("BADSIG") and not result.has("VALIDSIG")
