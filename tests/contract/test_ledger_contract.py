"""The Ledger contract (sftp_pipeline/ledger/interface.py), run against every store in tests/contract/ledgers.py."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sftp_pipeline.errors import DuplicateContent, LedgerError
from sftp_pipeline.ledger import Change, Ledger
from sftp_pipeline.ledger.states import TRANSITIONS
from tests.unit.test_ledger import FakeClock

from .ledgers import STORES

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(params=sorted(STORES))
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Ledger]]:
    """Opens the store under test (again: the same store, another handle, as a second process would)."""
    opened: list[Ledger] = []
    clock = FakeClock()  # one millisecond a reading: every timestamp differs and sorts in order

    def open_() -> Ledger:
        handle = STORES[request.param](tmp_path, clock)
        opened.append(handle)
        return handle

    yield open_
    for handle in opened:
        handle.close()


@pytest.fixture
def ledger(reopen: Callable[[], Ledger]) -> Ledger:
    return reopen()


def claim(ledger: Ledger, tid: str, name: str = "inv.xml", *, partner: str = "utility", job: str = "j") -> None:
    ledger.claim(tid, partner=partner, job=job, document_type="invoice", source_name=name,
                 source_path=f"/drop/{name}", work_path=f"/work/{tid}",
                 remote_name=f"{tid}.invoice.{name}.pgp")  # fmt: skip


def upload(ledger: Ledger, tid: str, sha: str = "a" * 64) -> None:
    ledger.set_plaintext(tid, sha, 10)
    ledger.transition(tid, "sealed", ciphertext_sha256="b" * 64, ciphertext_size=99)
    ledger.transition(tid, "uploaded", ssh_kex="curve25519-sha256")


def receive(ledger: Ledger, tid: str, partner: str = "aggregator") -> None:
    ledger.receive(partner=partner, transfer_id=tid, job="in", remote_name=f"{tid}.invoice.x.pgp",
                   document_type="invoice", ciphertext_sha256="c" * 64, ciphertext_size=5,
                   received_at="2026-11-27T03:00:00.000Z", archive_path=f"/archive/{tid}.pgp")  # fmt: skip


# -- transfers -------------------------------------------------------------------------------------------------


def test_a_transfer_moves_along_the_table_with_a_timestamp_and_an_event_per_state(ledger: Ledger) -> None:
    claim(ledger, "T1")
    upload(ledger, "T1")
    done = ledger.transition("T1", "receipted", "accepted", receipt_status="ok")
    assert done.state == "receipted" and done.receipt_status == "ok"
    stamps = [done.claimed_at, done.sealed_at, done.uploaded_at, done.receipted_at]
    assert all(s is not None and RFC3339_MS.match(s) for s in stamps) and stamps == sorted(stamps)  # type: ignore[type-var]
    assert done.updated_at == done.receipted_at
    assert [e.state for e in ledger.events("T1")] == ["claimed", "sealed", "uploaded", "receipted"]
    assert ledger.events("T1")[-1].detail == "accepted"


@pytest.mark.parametrize("current", sorted(TRANSITIONS))
def test_only_the_table_s_transitions_are_allowed_and_a_refusal_changes_nothing(ledger: Ledger, current: str) -> None:
    path = {"claimed": [], "sealed": ["sealed"], "uploaded": ["sealed", "uploaded"], "failed": ["failed"],
            "duplicate": ["duplicate"], "receipted": ["sealed", "uploaded", "receipted"],
            "rejected": ["sealed", "uploaded", "rejected"], "mismatch": ["sealed", "uploaded", "mismatch"],
            "invalid-receipt": ["sealed", "uploaded", "invalid-receipt"]}[current]  # fmt: skip
    for n, new in enumerate(sorted(TRANSITIONS)):
        tid = f"T{n}"
        claim(ledger, tid, f"{tid}.xml")
        for step in path:
            ledger.transition(tid, step)  # type: ignore[arg-type]
        before = ledger.get(tid)
        if new in TRANSITIONS[current]:  # type: ignore[index]
            assert ledger.transition(tid, new).state == new  # type: ignore[arg-type]
        else:
            with pytest.raises(LedgerError, match=f"illegal state change {current} → {new}"):
                ledger.transition(tid, new)  # type: ignore[arg-type]
            assert ledger.get(tid) == before and len(ledger.events(tid)) == len(path) + 1


def test_the_same_name_and_content_goes_to_a_partner_once(ledger: Ledger) -> None:
    claim(ledger, "T1")
    ledger.set_plaintext("T1", "a" * 64, 10)
    claim(ledger, "T2")
    with pytest.raises(DuplicateContent) as info:
        ledger.set_plaintext("T2", "a" * 64, 10)
    assert info.value.original == "T1"
    claim(ledger, "T3", "other.xml")
    ledger.set_plaintext("T3", "a" * 64, 10)  # another name: not a duplicate
    claim(ledger, "T4", partner="other-partner")
    ledger.set_plaintext("T4", "a" * 64, 10)  # another partner: not a duplicate
    ledger.transition("T1", "failed", last_error="x")  # a failed send does not block a resend
    ledger.set_plaintext("T2", "a" * 64, 10)
    assert ledger.get("T2").plaintext_sha256 == "a" * 64


def test_one_commit_for_many_changes_refuses_only_the_bad_ones(ledger: Ledger) -> None:
    claim(ledger, "T1", "a.xml")
    claim(ledger, "T2", "b.xml")
    claim(ledger, "T3", "a.xml")
    results = ledger.apply(
        [
            Change("T1", "plaintext", values={"sha256": "a" * 64, "size": 1}),
            Change("T1", "transition", "sealed", "sealed it", {"ciphertext_size": 9}),
            Change("T2", "transition", "uploaded"),
            Change("T3", "plaintext", values={"sha256": "a" * 64, "size": 1}),
            Change("T2", "update", None, "will retry", {"last_error": "x"}),
            Change("T9", "update", None, None, {"last_error": "x"}),
        ]
    )
    assert [type(r).__name__ for r in results] == [
        "Transfer", "Transfer", "LedgerError", "DuplicateContent", "Transfer", "LedgerError"
    ]  # fmt: skip
    assert (ledger.get("T1").state, ledger.get("T1").ciphertext_size) == ("sealed", 9)
    assert (ledger.get("T2").state, ledger.get("T2").last_error) == ("claimed", "x")
    assert ledger.get("T3").plaintext_sha256 is None


def test_update_sets_columns_but_never_the_state_or_an_unknown_column(ledger: Ledger) -> None:
    claim(ledger, "T1")
    assert ledger.update("T1", attempts=2, last_error="timeout").attempts == 2
    assert [e.state for e in ledger.events("T1")] == ["claimed"]  # no detail: no event
    ledger.update("T1", "will retry: timeout")
    assert ledger.events("T1")[-1] == (ledger.events("T1")[-1].at, "claimed", "will retry: timeout")
    for bad in ({"state": "uploaded"}, {"nonsense": 1}):
        with pytest.raises(LedgerError):
            ledger.update("T1", **bad)


def test_queries_over_transfers(ledger: Ledger) -> None:
    for tid in ("T1", "T2", "T3", "T4"):
        claim(ledger, tid, f"{tid}.xml", job="a" if tid != "T4" else "b")
    upload(ledger, "T2", "2" * 64)
    upload(ledger, "T3", "3" * 64)
    ledger.update("T3", archived_at="2026-11-27T00:00:00.000Z")
    ledger.transition("T1", "failed", last_error="x")
    claim(ledger, "T5", partner="other")
    assert [t.id for t in ledger.unfinished("utility")] == ["T2", "T4"]
    assert [t.id for t in ledger.unfinished("utility", job="a")] == ["T2"]
    assert [t.id for t in ledger.by_state("failed")] == ["T1"]
    assert ledger.by_state("failed", "other") == []
    assert [t.id for t in ledger.recent(2)] == ["T5", "T4"]
    assert [t.id for t in ledger.recent(10, "other")] == ["T5"]
    assert [t.id for t in ledger.get_many(["T3", "T1"])] == ["T3", "T1"]
    assert ledger.find_outbound("utility", "T2") == ledger.get("T2")
    assert ledger.find_outbound("other", "T2") is None
    assert ledger.counts() == {("utility", "failed"): 1, ("utility", "uploaded"): 2, ("utility", "claimed"): 1,
                               ("other", "claimed"): 1}  # fmt: skip
    with pytest.raises(LedgerError, match="no transfer T9"):
        ledger.get("T9")
    with pytest.raises(LedgerError, match="no transfer T9"):
        ledger.get_many(["T1", "T9"])


def test_what_is_written_is_there_for_the_next_handle(reopen: Callable[[], Ledger]) -> None:
    first = reopen()
    claim(first, "T1")
    first.set_meta("k", "v")
    first.close()
    again = reopen()
    assert again.get("T1").state == "claimed" and again.meta("k") == "v" and again.integrity_ok()


# -- inbound documents and receipts -----------------------------------------------------------------------------


def test_an_inbound_document_is_received_once_then_accepted_or_rejected(ledger: Ledger) -> None:
    receive(ledger, "R1")
    row = ledger.inbound("aggregator", "R1")
    assert row is not None and row.state == "received" and row.receipt_sent_at is None
    with pytest.raises(LedgerError):
        receive(ledger, "R1")
    for bad in ({"state": "received"}, {"state": "lost"}, {"nonsense": 1}):
        with pytest.raises(LedgerError):
            ledger.update_inbound("aggregator", "R1", **bad)
    done = ledger.update_inbound("aggregator", "R1", state="accepted", status="ok", receipt_json=b"{}")
    assert (done.state, done.status, done.receipt_json) == ("accepted", "ok", b"{}")
    receive(ledger, "R1", partner="other")  # ids are the sender's: another partner may use the same one
    assert [r.partner for r in ledger.inbound_by_id("R1")] == ["aggregator", "other"]
    assert [r.transfer_id for r in ledger.inbound_unfinished("aggregator")] == ["R1"]  # receipt not sent yet
    ledger.update_inbound("aggregator", "R1", receipt_sent_at=ledger.now(), source_removed_at=ledger.now())
    assert ledger.inbound_unfinished("aggregator") == []
    assert [r.partner for r in ledger.inbound_recent(1, "other")] == ["other"]
    assert ledger.inbound("nobody", "R1") is None


def test_receipts_are_kept_whatever_the_verdict(ledger: Ledger) -> None:
    ledger.record_receipt(partner="utility", name="T1.receipt.json", transfer_id="T1", verdict="receipted",
                          status="ok", receipt_json=b'{"a":1}', receipt_sig=b"sig")  # fmt: skip
    ledger.record_receipt(partner="utility", name="T1.receipt.json", transfer_id="T1", verdict="invalid",
                          reason="bad-signature")  # fmt: skip
    ledger.record_receipt(partner="utility", name="T2.receipt.json", transfer_id="T2", verdict="unknown-transfer")
    mine = ledger.receipts_for("utility", "T1")
    assert [(r.verdict, r.receipt_json, r.receipt_sig) for r in mine] == [
        ("receipted", b'{"a":1}', b"sig"), ("invalid", None, None)
    ]  # fmt: skip
    assert all(RFC3339_MS.match(r.fetched_at) for r in mine) and mine[0].seq < mine[1].seq
    notes = ledger.receipt_records_with(["invalid", "unknown-transfer"], None)
    assert [(r.transfer_id, r.verdict) for r in notes] == [("T1", "invalid"), ("T2", "unknown-transfer")]
    assert all(r.receipt_json is None and r.receipt_sig is None for r in notes)
    assert ledger.receipt_records_with(["invalid"], "2999-01-01T00:00:00.000Z") == []


def test_reconcile_rows_show_what_changed_in_the_period_and_what_is_still_open(ledger: Ledger) -> None:
    claim(ledger, "T1", "a.xml")
    upload(ledger, "T1")
    ledger.transition("T1", "receipted")
    claim(ledger, "T2", "b.xml")
    claim(ledger, "T3", "a.xml")
    ledger.set_plaintext("T2", "2" * 64, 1)
    ledger.transition("T3", "duplicate")
    receive(ledger, "R1")
    since = ledger.now()
    sent, received = ledger.reconcile_rows(["id", "state"], ["transfer_id", "state"], None)
    assert sorted(sent) == [("T1", "receipted"), ("T2", "claimed")]  # never a duplicate
    assert received == [("R1", "received")]
    sent, received = ledger.reconcile_rows(["id"], ["transfer_id"], since)
    assert sent == [("T2",)] and received == [("R1",)]  # still open; T1 settled before the period
    with pytest.raises(LedgerError, match="unknown transfers columns"):
        ledger.reconcile_rows(["id; DROP TABLE transfers"], [], None)


# -- meta and the audit feed -------------------------------------------------------------------------------------


def test_meta_values(ledger: Ledger) -> None:
    assert ledger.meta("last_report_until") is None
    ledger.set_meta("last_report_until", "a")
    ledger.set_meta("last_report_until", "b")
    assert ledger.meta("last_report_until") == "b"


def test_every_change_feeds_the_audit_in_order_without_local_paths(ledger: Ledger) -> None:
    assert ledger.audit_last_seq() == 0
    claim(ledger, "T1")
    upload(ledger, "T1")
    ledger.update("T1", last_error="x")  # no detail: the row changes, and the audit says so
    receive(ledger, "R1")
    ledger.update_inbound("aggregator", "R1", state="accepted", receipt_json=b"{}")
    ledger.record_receipt(partner="utility", name="T1.receipt.json", transfer_id="T1", verdict="receipted",
                          receipt_json=b"{}")  # fmt: skip
    events = ledger.audit_events_after(0)
    assert [(e.kind, e.ref, e.state) for e in events] == [
        ("transfer", "T1", "claimed"), ("transfer", "T1", "sealed"), ("transfer", "T1", "uploaded"),
        ("inbound", "R1", "received"), ("inbound", "R1", "accepted"), ("receipt", str(events[-1].ref), "receipted"),
    ]  # fmt: skip
    assert [e.seq for e in events] == list(range(1, len(events) + 1)) == list(range(1, ledger.audit_last_seq() + 1))
    assert events[2].data["ciphertext_sha256"] == "b" * 64 and events[2].data["ssh_kex"] == "curve25519-sha256"
    assert not any(key.endswith("_path") for e in events for key in e.data)
    assert events[4].data["receipt_json_sha256"] == hashlib.sha256(b"{}").hexdigest()
    assert [e.seq for e in ledger.audit_events_after(2, limit=2)] == [3, 4]


# -- run locks --------------------------------------------------------------------------------------------------


def test_a_run_lock_makes_a_second_run_wait_and_leaves_other_keys_alone(reopen: Callable[[], Ledger]) -> None:
    first, second = reopen(), reopen()
    order: list[str] = []

    async def run(ledger: Ledger, key: str, name: str, hold: float) -> None:
        async with ledger.turn("send", key):
            order.append(f"{name} in")
            await asyncio.sleep(hold)
            order.append(f"{name} out")

    async def main() -> None:
        a = asyncio.create_task(run(first, "invoices", "a", 0.3))
        await asyncio.sleep(0.05)
        await asyncio.gather(run(second, "invoices", "b", 0), run(second, "aggregation", "c", 0), a)

    asyncio.run(main())
    assert order.index("c out") < order.index("a out") < order.index("b in")  # c never waited; b did


def test_shared_holders_go_together_and_keep_an_exclusive_run_out(reopen: Callable[[], Ledger]) -> None:
    first, second = reopen(), reopen()

    async def main() -> None:
        async with first.turn("collect", "p", shared=True), second.turn("collect", "p", shared=True):
            with second.try_turn("collect", "p") as free:
                assert not free
            waiting = asyncio.create_task(_enter(second, "collect", "p"))
            await asyncio.sleep(0.2)
            assert not waiting.done()
        await asyncio.wait_for(waiting, 5)

    asyncio.run(main())


def test_try_turn_never_waits_and_turns_take_overlapping_sets_without_deadlock(reopen: Callable[[], Ledger]) -> None:
    first, second = reopen(), reopen()
    with first.try_turn("orphans", "p") as held:
        assert held
        with second.try_turn("orphans", "p") as other:
            assert not other
    with second.try_turn("orphans", "p") as again:
        assert again

    async def both() -> None:
        async def take(ledger: Ledger, keys: list[str]) -> None:
            async with ledger.turns("send", keys):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(asyncio.gather(take(first, ["x", "y"]), take(second, ["y", "x"])), 10)

    asyncio.run(both())


async def _enter(ledger: Ledger, direction: str, key: str) -> None:
    async with ledger.turn(direction, key):
        pass
