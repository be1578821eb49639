from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sftp_pipeline.errors import DuplicateContent, LedgerError
from sftp_pipeline.ledger import Ledger, check_transition
from sftp_pipeline.ledger.sqlite import SqliteLedger


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def claim(ledger: Ledger, tid: str, name: str = "inv.xml") -> None:
    ledger.claim(
        tid,
        partner="utility",
        job="j",
        document_type="invoice",
        source_name=name,
        source_path=f"/drop/{name}",
        work_path=f"/work/{tid}",
        remote_name=f"{tid}.invoice.{name}.pgp",
    )


def test_state_machine_and_events(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db", clock=FakeClock()) as ledger:
        claim(ledger, "T1")
        ledger.set_plaintext("T1", "a" * 64, 10)
        ledger.transition("T1", "sealed", ciphertext_sha256="b" * 64, ciphertext_size=99)
        t = ledger.transition("T1", "uploaded", ssh_kex="curve25519-sha256")
        assert t.state == "uploaded"
        assert t.claimed_at == "2026-11-27T03:00:00.001Z"
        assert t.sealed_at and t.uploaded_at and t.sealed_at < t.uploaded_at
        assert [e[1] for e in ledger.events("T1")] == ["claimed", "sealed", "uploaded"]
        with pytest.raises(LedgerError, match="illegal state change uploaded → sealed"):
            ledger.transition("T1", "sealed")
        assert ledger.integrity_ok()


def test_same_name_and_content_is_a_duplicate(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db") as ledger:
        claim(ledger, "T1")
        ledger.set_plaintext("T1", "a" * 64, 10)
        claim(ledger, "T2")
        with pytest.raises(DuplicateContent) as info:
            ledger.set_plaintext("T2", "a" * 64, 10)
        assert info.value.original == "T1"
        claim(ledger, "T3", name="other.xml")  # same content, other name: not a duplicate
        ledger.set_plaintext("T3", "a" * 64, 10)
        ledger.transition("T1", "failed", last_error="x")  # a failed send does not block a resend
        ledger.set_plaintext("T2", "a" * 64, 10)
        assert ledger.get("T2").plaintext_sha256 == "a" * 64


def test_unfinished_lists_what_a_run_must_finish(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db") as ledger:
        for tid in ("T1", "T2", "T3"):
            claim(ledger, tid, name=f"{tid}.xml")
        ledger.transition("T2", "sealed")
        ledger.transition("T3", "sealed")
        ledger.transition("T3", "uploaded")
        assert [t.id for t in ledger.unfinished("utility")] == ["T1", "T2", "T3"]
        ledger.update("T3", archived_at="2026-11-27T00:00:00.000Z")
        assert [t.id for t in ledger.unfinished("utility")] == ["T1", "T2"]
        assert ledger.unfinished("nobody") == []


def test_transition_table() -> None:
    check_transition("claimed", "sealed")
    check_transition("failed", "claimed")
    for bad in (("claimed", "uploaded"), ("duplicate", "claimed"), ("receipted", "failed")):
        with pytest.raises(LedgerError):
            check_transition(*bad)


def test_update_refuses_state_and_unknown_columns(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db") as ledger:
        claim(ledger, "T1")
        with pytest.raises(LedgerError):
            ledger.update("T1", state="uploaded")
        with pytest.raises(LedgerError):
            ledger.update("T1", nonsense=1)


def test_a_ledger_from_another_schema_is_refused(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db") as ledger:
        ledger._db.execute("ALTER TABLE transfers ADD COLUMN surprise TEXT")
    with pytest.raises(LedgerError, match="columns differ"):
        SqliteLedger(tmp_path / "ledger.db")
