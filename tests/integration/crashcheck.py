"""The guarantees every crash test checks once the parties have run clean after being killed.

Shared by test_faults_crash (one named point at a time) and test_soak (random kills).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

from sftp_pipeline.names import is_temporary
from sftp_pipeline.proof.receipts import receipt_file_names
from sftp_pipeline.wiring import LEDGER_NAME
from tests.peers.parties import Party

REMOTE_FOLDERS = ("inbox", "outbox", "receipts-in", "receipts-out")


def integrity(party: Party) -> str:
    db = sqlite3.connect(party.config().state_dir / LEDGER_NAME)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def orphans(*roots: Path) -> list[Path]:
    """Temporary or partial files anywhere under ``roots`` (uploads, downloads, seals, outbox writes)."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and (is_temporary(path.name) or path.name.endswith((".tmp", ".part"))):
                found.append(path)
    return found


def assert_exactly_once(aggregator: Party, utility: Party, remote_root: Path, documents: dict[str, bytes]) -> None:
    """Every document delivered once, every receipt issued and settled once, ledgers sound, nothing left over."""
    sent = {t.source_name: t for t in aggregator.transfers()}
    assert sorted(sent) == sorted(documents), "every dropped document is one transfer, none twice"
    by_id = {t.id: t for t in sent.values()}
    for name, t in sent.items():
        assert t.state == "receipted" and t.receipt_status == "ok", (name, t.state, t.last_error)
        assert t.archived_at, name
    received = utility.inbound()
    assert sorted(r.transfer_id for r in received) == sorted(by_id), "each transfer received once"
    delivered = [p for p in (utility.directory / "delivered").rglob("*") if p.is_file()]
    assert sorted(p.name for p in delivered) == sorted(f"{t.id}.{t.source_name}" for t in sent.values())
    for path in delivered:
        transfer = by_id[path.name.split(".", 1)[0]]
        assert path.read_bytes() == documents[transfer.source_name]
    for r in received:
        assert r.state == "accepted" and r.receipt_sent_at and r.source_removed_at, (r.transfer_id, r.state)
    issued = utility.config().state_dir / "receipts" / "issued" / "aggregator"
    expected = sorted(n for tid in by_id for n in receipt_file_names(tid))
    assert sorted(p.name for p in issued.iterdir()) == expected, "one receipt pair issued per transfer"
    stored = aggregator.config().state_dir / "receipts" / "utility"
    assert sorted(p.name for p in stored.iterdir()) == expected, "one receipt pair kept per transfer"
    agg_db = sqlite3.connect(aggregator.config().state_dir / LEDGER_NAME)
    try:
        rows = agg_db.execute("SELECT transfer_id FROM receipts WHERE verdict = 'receipted'")
        settled = Counter(tid for (tid,) in rows)
    finally:
        agg_db.close()
    assert settled == Counter(dict.fromkeys(by_id, 1)), "each receipt settles its transfer exactly once"
    assert integrity(aggregator) == "ok" and integrity(utility) == "ok"
    for folder in REMOTE_FOLDERS:
        assert not list((remote_root / folder).iterdir()), f"{folder} is not empty"
    assert not orphans(aggregator.directory, utility.directory, remote_root)
    agg_state, util_state = aggregator.config().state_dir, utility.config().state_dir
    assert not [p for p in (agg_state / "work").glob("*") if any(p.iterdir())], "work dirs left"
    assert not list((agg_state / "receipts" / "staging").rglob("*.*")), "receipt staging left"
    assert not list((util_state / "inbound" / "staging").glob("*")), "collect staging left"
    assert not list((agg_state / "quarantine").rglob("*")) if (agg_state / "quarantine").exists() else True
    for party in (aggregator, utility):
        for dropped in (party.directory / "drop").rglob("*"):
            assert not dropped.is_file(), f"{dropped} was never sent"
