"""An operator upgrades: the ledger release 0.1.0 wrote (tests/fixtures/ledger-0.1.0, made by that release's own
code, see make.py there) opens with this release, upgraded in place after a backup, with every transfer,
event, inbound document, receipt, meta value and audit line intact and the audit log still verifying."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sftp_pipeline.config import load_config
from sftp_pipeline.errors import LedgerError
from sftp_pipeline.ledger import migrations
from sftp_pipeline.ledger.sqlite import SqliteLedger
from sftp_pipeline.proof.audit import verify_log
from sftp_pipeline.proof.evidence import verify_evidence
from sftp_pipeline.wiring import LEDGER_NAME, open_ledger

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ledger-0.1.0"
EXPECTED: dict[str, list[dict[str, Any]]] = json.loads((FIXTURE / "expected.json").read_text())
ORDER = {"meta": "key", "transfers": "id", "events": "seq", "inbound": "partner, transfer_id", "receipts": "seq",
         "audit_events": "seq"}  # fmt: skip
CONFIG = """\
state_dir = "state"

[party]
id = "aggregator"
name = "Sunrise DER Aggregation LLC"
"""


@pytest.fixture
def party(tmp_path: Path) -> Path:
    """A party whose state directory holds the 0.1.0 ledger and audit log, as an upgrade finds them."""
    state = tmp_path / "state"
    state.mkdir()
    shutil.copyfile(FIXTURE / "ledger.sqlite3", state / LEDGER_NAME)
    for name in ("audit.jsonl", "audit.head"):
        shutil.copyfile(FIXTURE / name, state / name)
    (tmp_path / "sftp-pipeline.toml").write_text(CONFIG)
    return tmp_path


def _cell(value: object) -> object:
    return {"sha256": hashlib.sha256(value).hexdigest()} if isinstance(value, bytes) else value


def _tables(path: Path) -> dict[str, list[dict[str, Any]]]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return {
            table: [
                {k: _cell(v) for k, v in dict(r).items()} for r in db.execute(f"SELECT * FROM {table} ORDER BY {order}")
            ]
            for table, order in ORDER.items()
        }
    finally:
        db.close()


def test_the_fixture_is_schema_1_as_release_0_1_0_wrote_it() -> None:
    assert _tables(FIXTURE / "ledger.sqlite3") == EXPECTED
    meta = {row["key"]: row["value"] for row in EXPECTED["meta"]}
    assert meta["schema_version"] == "1"
    assert {t["state"] for t in EXPECTED["transfers"]} >= {"receipted", "failed", "duplicate", "invalid-receipt"}


def test_opening_upgrades_in_place_after_a_backup_and_loses_nothing(party: Path) -> None:
    config = load_config(party / "sftp-pipeline.toml")
    with open_ledger(config) as ledger:
        assert ledger.meta("schema_version") == str(migrations.SCHEMA_VERSION)
        for row in EXPECTED["transfers"]:
            transfer = ledger.get(row["id"])
            assert transfer.state == row["state"] and transfer.plaintext_sha256 == row["plaintext_sha256"]
            assert (transfer.transport, transfer.peer_key) == (None, None)  # schema 2's columns, unknown then
            assert [e.state for e in ledger.events(row["id"])] == [
                e["state"] for e in EXPECTED["events"] if e["transfer_id"] == row["id"]
            ]
        for row in EXPECTED["inbound"]:
            found = ledger.inbound(row["partner"], row["transfer_id"])
            assert found is not None and found.state == row["state"]
        assert ledger.audit_last_seq() == len(EXPECTED["audit_events"])
        result = verify_log(config, ledger)
    assert result.ok, result.problem
    assert result.lines == len(EXPECTED["audit_events"]) and result.pending == 0

    upgraded = _tables(party / "state" / LEDGER_NAME)
    for table, rows in EXPECTED.items():
        if table == "meta":
            continue
        new_columns = {"transfers": {"transport", "peer_key"}}.get(table, set())
        assert [{k: v for k, v in r.items() if k not in new_columns} for r in upgraded[table]] == rows, table
    old_meta = {r["key"]: r["value"] for r in EXPECTED["meta"]}
    new_meta = {r["key"]: r["value"] for r in upgraded["meta"]}
    assert new_meta == {**old_meta, "schema_version": str(migrations.SCHEMA_VERSION)}

    backups = sorted((party / "state").glob(f"{LEDGER_NAME}.schema1-*.bak"))
    assert len(backups) == 1
    assert _tables(backups[0]) == EXPECTED  # the ledger exactly as it was before the upgrade
    with open_ledger(config):  # opened again: nothing more to do, no second backup
        pass
    assert sorted((party / "state").glob("*.bak")) == backups


def test_the_operator_s_commands_work_on_the_upgraded_ledger(party: Path) -> None:
    """The first command after an upgrade says so once; `audit verify` and `status` then work as before."""
    cli = [sys.executable, "-m", "sftp_pipeline.cli", "-c", str(party / "sftp-pipeline.toml")]
    first = subprocess.run([*cli, "audit", "verify"], capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    assert f"OK: {len(EXPECTED['audit_events'])} lines" in first.stdout
    assert "upgraded the ledger" in first.stderr and "schema 1 to" in first.stderr
    second = subprocess.run([*cli, "status", "--limit", "50"], capture_output=True, text=True, timeout=60, check=False)
    assert "upgraded the ledger" not in second.stderr
    counts = Counter((row["partner"], row["state"]) for row in EXPECTED["transfers"])
    shown = " ".join(second.stdout.split())  # the terminal's width wraps the summary line
    for (partner, state), n in counts.items():
        assert f"{partner}/{state}: {n}" in shown


def test_an_evidence_bundle_made_by_0_1_0_still_verifies() -> None:
    """What an auditor was given before the upgrade still proves what it proved (checked as of the day after it
    was made: the receipt's signing key must be usable at the time of checking, and test keys expire)."""
    result = verify_evidence(FIXTURE / "evidence-0.1.0.zip", now=datetime(2026, 12, 3, tzinfo=UTC))
    assert result.ok, result.findings
    assert "accepted it" in result.summary


def test_a_failed_upgrade_leaves_the_ledger_as_it_was(party: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = party / "state" / LEDGER_NAME

    def broken(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE transfers ADD COLUMN half_done TEXT")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setitem(migrations.STEPS, migrations.SCHEMA_VERSION, ("a step that fails halfway", broken))
    with pytest.raises(LedgerError, match="cannot open the ledger: disk I/O error"):
        SqliteLedger(path)
    assert _tables(path) == EXPECTED  # one transaction: the half-done step was rolled back
    monkeypatch.undo()
    with SqliteLedger(path) as ledger:  # the next open upgrades it
        assert ledger.meta("schema_version") == str(migrations.SCHEMA_VERSION)


def test_a_ledger_of_a_later_release_is_refused_untouched(party: Path) -> None:
    path = party / "state" / LEDGER_NAME
    with SqliteLedger(path) as ledger:
        ledger.set_meta("schema_version", str(migrations.SCHEMA_VERSION + 1))
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="written by a later release"):
        SqliteLedger(path)
    assert path.read_bytes() == before


def test_a_new_ledger_and_an_upgraded_one_have_the_same_schema(party: Path, tmp_path: Path) -> None:
    with SqliteLedger(party / "state" / LEDGER_NAME), SqliteLedger(tmp_path / "new.sqlite3"):
        pass

    def schema(path: Path) -> list[tuple[str, str]]:
        db = sqlite3.connect(path)
        try:
            rows = db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name").fetchall()
            columns = [(t, c[1]) for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                       for c in db.execute(f"PRAGMA table_info({t})")]  # fmt: skip
        finally:
            db.close()
        return sorted((name, " ".join(sql.split())) for name, sql in rows) + sorted(columns)

    assert schema(party / "state" / LEDGER_NAME) == schema(tmp_path / "new.sqlite3")
