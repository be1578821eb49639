"""Group commit: many documents' changes in one transaction keep each change's meaning, events and audit rows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sftp_pipeline.errors import DuplicateContent, LedgerError
from sftp_pipeline.flows.groupcommit import GroupCommitter
from sftp_pipeline.ledger import Change
from sftp_pipeline.ledger.sqlite import SqliteLedger
from tests.unit.test_ledger import FakeClock


def _claim(tid: str, name: str) -> Change:
    values = {"partner": "utility", "job": "j", "document_type": "invoice", "source_name": name,
              "source_path": f"/drop/{name}", "work_path": f"/work/{tid}",
              "remote_name": f"{tid}.invoice.{name}.pgp"}  # fmt: skip
    return Change(tid, "claim", values=values)


def test_apply_commits_many_and_refuses_only_the_bad_change(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db", clock=FakeClock()) as ledger:
        claimed = ledger.apply([_claim("T1", "a.xml"), _claim("T2", "b.xml"), _claim("T3", "a.xml")])
        assert [t.state for t in claimed if not isinstance(t, LedgerError)] == ["claimed"] * 3
        results = ledger.apply(
            [
                Change("T1", "plaintext", values={"sha256": "a" * 64, "size": 1}),
                Change("T1", "transition", "sealed", "sealed it", {"ciphertext_size": 9}),
                Change("T2", "transition", "uploaded"),  # illegal: claimed → uploaded
                Change("T3", "plaintext", values={"sha256": "a" * 64, "size": 1}),  # same name and content as T1
                Change("T2", "update", None, "will retry: x", {"last_error": "x"}),
            ]
        )
        assert isinstance(results[2], LedgerError) and "illegal state change claimed → uploaded" in str(results[2])
        assert isinstance(results[3], DuplicateContent) and results[3].original == "T1"
        t1, t2 = ledger.get("T1"), ledger.get("T2")
        assert (t1.state, t1.ciphertext_size, t1.plaintext_sha256) == ("sealed", 9, "a" * 64)
        assert (t2.state, t2.last_error) == ("claimed", "x")
        assert ledger.get("T3").plaintext_sha256 is None  # rolled back alone
        assert [e[1:] for e in ledger.events("T1")] == [("claimed", "/drop/a.xml"), ("sealed", "sealed it")]
        # The audit feed has one row per recorded change, in the order they were applied; nothing for refusals.
        audit = [(r.ref, r.state) for r in ledger.audit_events_after(0)]
        assert audit == [("T1", "claimed"), ("T2", "claimed"), ("T3", "claimed"), ("T1", "sealed"), ("T2", "claimed")]


def test_group_committer_groups_concurrent_changes_and_raises_refusals(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db", clock=FakeClock()) as ledger:
        ledger.apply([_claim(f"T{n}", f"{n}.xml") for n in range(20)])
        commits = 0
        apply = ledger.apply

        def counting(changes: list[Change]) -> list[object]:
            nonlocal commits
            commits += 1
            return apply(changes)  # type: ignore[return-value]

        ledger.apply = counting  # type: ignore[method-assign]
        committer = GroupCommitter(ledger)

        async def main() -> list[object]:
            return await asyncio.gather(
                *(committer.update(f"T{n}", attempts=1) for n in range(20)),
                committer.transition("T0", "uploaded"),
                return_exceptions=True,
            )

        results = asyncio.run(main())
        assert all(r.attempts == 1 for r in results[:20])  # type: ignore[union-attr]
        assert isinstance(results[20], LedgerError)
        assert commits < 21  # grouped: far fewer commits than changes
        with pytest.raises(LedgerError, match="illegal state change"):
            asyncio.run(committer.transition("T1", "uploaded"))
