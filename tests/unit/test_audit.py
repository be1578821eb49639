"""The audit log: sync exports every ledger change once, in order; verify names the first bad line."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sftp_pipeline.errors import AuditError
from sftp_pipeline.ledger import Ledger
from sftp_pipeline.ledger.sqlite import SqliteLedger
from sftp_pipeline.proof.audit import GENESIS, Audit, canonical, line_hash, lines_for, verify


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def history(ledger: Ledger, tid: str = "T1") -> None:
    """claimed, sealed, uploaded, receipted + the receipt record: five audit events for ``tid``."""
    ledger.claim(
        tid,
        partner="utility",
        job="j",
        document_type="invoice",
        source_name=f"{tid}.xml",
        source_path=f"/drop/{tid}.xml",
        work_path=f"/work/{tid}",
        remote_name=f"{tid}.invoice.{tid}.xml.pgp",
    )
    ledger.set_plaintext(tid, "a" * 64, 10)
    ledger.transition(tid, "sealed", ciphertext_sha256="b" * 64, ciphertext_size=99)
    ledger.transition(tid, "uploaded", ssh_kex="curve25519-sha256")
    ledger.transition(tid, "receipted", receipt_status="ok")
    ledger.record_receipt(
        partner="utility", name=f"{tid}.receipt.json", transfer_id=tid, verdict="receipted", receipt_json=b"{}"
    )


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Ledger, Audit]:
    ledger = SqliteLedger(tmp_path / "ledger.db", clock=FakeClock())
    history(ledger, "T1")
    history(ledger, "T2")
    audit = Audit(tmp_path / "audit.jsonl")
    assert audit.sync(ledger) == 10
    return ledger, audit


def lines(audit: Audit) -> list[bytes]:
    return audit.path.read_bytes().splitlines(keepends=True)


def write(audit: Audit, new: list[bytes]) -> None:
    audit.path.write_bytes(b"".join(new))


def check(audit: Audit, ledger: Ledger | None = None, head: bool = True) -> tuple[int | None, str]:
    result = verify(audit.path, head=audit.head_path if head else None, ledger=ledger)
    assert result.ok == (result.first_bad_line is None)
    return result.first_bad_line, result.problem


def test_sync_writes_a_chain_that_verifies(setup: tuple[Ledger, Audit]) -> None:
    ledger, audit = setup
    parsed = [json.loads(raw) for raw in lines(audit)]
    assert [p["seq"] for p in parsed] == list(range(1, 11))
    assert parsed[0]["prev"] == GENESIS and all(b["prev"] == a["hash"] for a, b in itertools.pairwise(parsed))
    assert [p["state"] for p in parsed[:5]] == ["claimed", "sealed", "uploaded", "receipted", "receipted"]
    assert parsed[1]["data"]["ciphertext_sha256"] == "b" * 64 and parsed[1]["data"]["plaintext_size"] == 10
    assert parsed[4]["kind"] == "receipt" and parsed[4]["data"]["receipt_json_sha256"]
    assert all(p["hash"] == line_hash(p) for p in parsed)
    assert all(raw == (canonical(p) + "\n").encode() for raw, p in zip(lines(audit), parsed, strict=True))
    result = verify(audit.path, head=audit.head_path, ledger=ledger)
    assert result.ok and result.lines == 10 and result.pending == 0 and result.last_hash == parsed[-1]["hash"]
    assert [p["state"] for p in lines_for(audit.path, "T2")] == ["claimed", "sealed", "uploaded", "receipted"] * 1 + [
        "receipted"
    ]


def test_sync_is_idempotent_and_catches_up_after_a_crash(setup: tuple[Ledger, Audit]) -> None:
    ledger, audit = setup
    before = audit.path.read_bytes()
    assert audit.sync(ledger) == 0 and audit.path.read_bytes() == before
    # Ledger commits whose audit append never happened (the process died in between):
    history(ledger, "T3")
    result = verify(audit.path, head=audit.head_path, ledger=ledger)
    assert result.ok and result.pending == 5
    assert audit.sync(ledger) == 5
    result = verify(audit.path, head=audit.head_path, ledger=ledger)
    assert result.ok and result.lines == 15 and result.pending == 0
    # The log is a pure function of the ledger: a fresh export is byte-identical.
    fresh = Audit(audit.path.with_name("again.jsonl"))
    fresh.sync(ledger)
    assert fresh.path.read_bytes() == audit.path.read_bytes()


def test_a_torn_append_is_cut_and_redone(setup: tuple[Ledger, Audit]) -> None:
    ledger, audit = setup
    history(ledger, "T3")
    complete = Audit(audit.path.with_name("complete.jsonl"))
    complete.sync(ledger)
    with audit.path.open("ab") as fh:
        fh.write(b'{"at":"2026-11-27T03:00:00.0')  # the crash hit mid-write
    assert check(audit)[0] == 11
    assert audit.sync(ledger) == 5
    assert audit.path.read_bytes() == complete.path.read_bytes()


def test_edit_is_detected_at_the_edited_line(setup: tuple[Ledger, Audit]) -> None:
    ledger, audit = setup
    raw = lines(audit)
    write(audit, [*raw[:2], raw[2].replace(b'"uploaded"', b'"failed"'), *raw[3:]])
    bad, problem = check(audit)
    assert bad == 3 and "hash does not match" in problem
    # Edited with its hash recomputed: the next line no longer chains.
    line = json.loads(raw[2])
    line["data"]["ssh_kex"] = "none"
    line["hash"] = line_hash(line)
    write(audit, [*raw[:2], (canonical(line) + "\n").encode(), *raw[3:]])
    assert check(audit)[0] == 4
    assert check(audit, ledger)[0] == 3  # and the ledger says what line 3 should say
    write(audit, [*raw[:2], raw[2].replace(b",", b", ", 1), *raw[3:]])  # whitespace only
    assert check(audit) == (3, "line 3: damaged: not in canonical form (edited by hand?)")


def test_deletion_insertion_and_reordering_are_detected(setup: tuple[Ledger, Audit]) -> None:
    _, audit = setup
    raw = lines(audit)
    write(audit, [*raw[:3], *raw[4:]])
    assert check(audit)[0] == 4
    write(audit, raw[1:])
    assert check(audit)[0] == 1
    write(audit, [*raw[:3], raw[7], *raw[3:]])
    assert check(audit)[0] == 4
    write(audit, [*raw[:3], raw[4], raw[3], *raw[5:]])
    bad, problem = check(audit)
    assert bad == 4 and "does not chain" in problem


def test_truncation_is_detected_by_the_head_and_by_the_ledger(setup: tuple[Ledger, Audit]) -> None:
    ledger, audit = setup
    raw = lines(audit)
    write(audit, raw[:8])
    bad, problem = check(audit)
    assert bad == 9 and "truncated" in problem
    assert check(audit, head=False) == (None, "")  # a chain alone cannot see a cut end
    assert check(audit, ledger, head=False)[0] == 9  # the ledger's copy of the head can
    with pytest.raises(AuditError, match="lines were removed"):
        audit.sync(ledger)  # never paper over a cut log
    # The last line rewritten with a valid hash: only the head can tell.
    last = json.loads(raw[9])
    last["detail"] = "forged"
    last["hash"] = line_hash(last)
    write(audit, [*raw[:9], (canonical(last) + "\n").encode()])
    bad, problem = check(audit)
    assert bad == 10 and "rewritten" in problem


def test_a_log_from_another_ledger_is_refused(setup: tuple[Ledger, Audit], tmp_path: Path) -> None:
    _, audit = setup
    other = SqliteLedger(tmp_path / "other.db", clock=FakeClock())
    with pytest.raises(AuditError, match="another ledger"):
        audit.sync(other)


def test_inbound_changes_are_audited(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db", clock=FakeClock())
    ledger.receive(
        partner="aggregator",
        transfer_id="T9",
        job="in",
        remote_name="T9.invoice.x.xml.pgp",
        document_type="invoice",
        ciphertext_sha256="c" * 64,
        ciphertext_size=5,
        received_at="2026-11-27T03:00:00.000Z",
        archive_path="/archive/x",
    )
    ledger.update_inbound("aggregator", "T9", state="accepted", receipt_json=b"{}", receipt_sig=b"s")
    audit = Audit(tmp_path / "audit.jsonl")
    assert audit.sync(ledger) == 2
    got = lines_for(audit.path, "T9")
    assert [(g["kind"], g["state"]) for g in got] == [("inbound", "received"), ("inbound", "accepted")]
    assert got[1]["data"]["receipt_sig_sha256"] and "archive_path" not in got[1]["data"]


def test_concurrent_syncs_never_interleave_or_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with SqliteLedger(path, clock=FakeClock()) as ledger:
        for n in range(20):
            history(ledger, f"T{n}")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with SqliteLedger(path) as mine:
                Audit(tmp_path / "audit.jsonl").sync(mine)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with SqliteLedger(path) as ledger:
        result = verify(tmp_path / "audit.jsonl", head=tmp_path / "audit.head", ledger=ledger)
    assert result.ok and result.lines == 100 and result.pending == 0
