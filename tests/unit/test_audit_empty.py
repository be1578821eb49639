"""Regression: a run that changes nothing (send --dry-run) leaves an empty log with a head; the next run may append."""

from pathlib import Path

from sftp_pipeline.ledger.sqlite import SqliteLedger
from sftp_pipeline.proof.audit import Audit, verify


def test_an_empty_log_with_a_head_accepts_the_next_append(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db") as ledger:
        log = Audit(tmp_path / "audit.jsonl")
        assert log.sync(ledger) == 0
        assert log.sync(ledger) == 0
        ledger.claim(
            "T1",
            partner="utility",
            job="j",
            document_type="invoice",
            source_name="a.xml",
            source_path="/d/a.xml",
            work_path="/w/T1",
            remote_name="T1.invoice.a.xml.pgp",
        )
        assert log.sync(ledger) >= 1
        assert verify(tmp_path / "audit.jsonl", ledger=ledger).ok
