"""The fast reconciliation (plain ledger tuples, named-tuple lines, a CSV written without csv.writer where no cell
needs quoting) against the reference semantics it replaced, on a varied generated ledger.

The reference below is the former implementation, kept verbatim in spirit: one Transfer/Inbound object per row,
every timestamp through ``parse_rfc3339``, one ``sla()`` call per row, a dict per CSV row and csv.writer for all.
"""

from __future__ import annotations

import csv
import io
import random
import shutil
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sftp_pipeline.clock import parse_rfc3339, rfc3339
from sftp_pipeline.config import Config, load_config
from sftp_pipeline.ledger import Inbound, Ledger, Transfer
from sftp_pipeline.proof.reconcile import (
    ACTIONS,
    EXCEPTIONS,
    IN_ACTIONS,
    IN_CLASSES,
    OUT_CLASSES,
    Line,
    ReceiptNote,
    Reconciliation,
    from_ledger,
)
from sftp_pipeline.reporting.render import CSV_COLUMNS, PARTNER_TEXT_COLUMNS, defuse, render_csv
from sftp_pipeline.wiring import open_ledger

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)  # sub-millisecond on purpose: stored times are ms
PARTNERS = ("utility", "other")
TYPES = ("invoice", "transaction_confirmation", "aggregation_data", "billing_payment")
OUT_STATES = ("claimed", "sealed", "uploaded", "failed", "duplicate", "receipted", "rejected", "mismatch",
              "invalid-receipt")  # fmt: skip
# Partner-chosen text: formulas, CSV quoting (comma, quote, CR, LF), markup, plain.
TEXTS = (None, "", "plain", "=1+2", "-3", "@SUM(A1)", "a,b", 'say "hi"', "line\nbreak", "cr\rhere", "<b>x</b>")
VERDICTS = ("receipted", "rejected", "mismatch", "unknown-transfer", "invalid", "duplicate", "conflict")


# ------------------------------------------------------------------------------------------ the reference


def _ref_at(text: str | None) -> datetime | None:
    return parse_rfc3339(text) if text else None


def _ref_classify(t: Transfer, now: datetime, sla: timedelta) -> tuple[str, str]:
    sent = _ref_at(t.uploaded_at)
    if t.state == "receipted":
        received = _ref_at(t.partner_received_at)
        if sent and received and received - sent > sla:
            return "delivered-late", f"received {received - sent} after sending; SLA {sla}"
        return "delivered", ""
    if t.state in ("rejected", "mismatch", "invalid-receipt"):
        return t.state, t.last_error or ""
    if t.state == "failed":
        return "failed", t.last_error or "failed"
    if t.state == "uploaded" and sent is not None:
        if now - sent > sla:
            return "overdue", f"no receipt {now - sent} after sending; SLA {sla}"
        return "pending", f"receipt due by {(sent + sla).isoformat(timespec='seconds')}"
    if t.last_error:
        return "failed", t.last_error
    return "pending", "being sent"


def _ref_sent(t: Transfer, now: datetime, sla: timedelta) -> dict[str, Any]:
    status, detail = _ref_classify(t, now, sla)
    sent, received = _ref_at(t.uploaded_at), _ref_at(t.partner_received_at)
    verified = _ref_at(t.receipted_at or t.rejected_at or t.mismatch_at or t.invalid_receipt_at)
    return dict(
        direction="sent", partner=t.partner, transfer_id=t.id, document_type=t.document_type, file=t.source_name,
        size=t.plaintext_size, sha256=t.plaintext_sha256, ciphertext_sha256=t.ciphertext_sha256, sent_at=sent,
        partner_received_at=received, receipt_verified_at=verified,
        latency=(received - sent) if sent and received else None, status=status,
        status_code=t.receipt_status if t.receipt_status not in (None, "ok") else None, detail=detail,
        action=ACTIONS.get(status, ""), transport_pq=None if t.transport_pq is None else bool(t.transport_pq),
        content_pq=None if t.content_pq is None else bool(t.content_pq), sla=sla, kex=t.ssh_kex,
    )  # fmt: skip


def _ref_received(r: Inbound) -> dict[str, Any]:
    status = "pending" if r.state == "received" else r.state
    return dict(
        direction="received", partner=r.partner, transfer_id=r.transfer_id, document_type=r.document_type,
        file=r.remote_name, size=r.plaintext_size or r.ciphertext_size, sha256=r.plaintext_sha256,
        ciphertext_sha256=r.ciphertext_sha256, sent_at=None, partner_received_at=_ref_at(r.received_at),
        receipt_verified_at=_ref_at(r.receipt_sent_at), latency=None, status=status,
        status_code=r.status if r.status not in (None, "ok") else None, detail=r.detail or "",
        action=IN_ACTIONS.get(status, ""), transport_pq=None, content_pq=None, sla=None, kex=None,
    )  # fmt: skip


def _ref_in_period(moment: str | None, start: datetime | None, end: datetime) -> bool:
    at = _ref_at(moment)
    return at is not None and (start is None or at >= start) and at < end


def _read(ledger: Ledger, query: str, params: tuple[str, ...] = ()) -> list[sqlite3.Row]:
    db = sqlite3.connect(ledger.path)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(query, params).fetchall()
    finally:
        db.close()


def _for_reconcile(ledger: Ledger, since: str | None) -> tuple[list[Transfer], list[Inbound]]:
    """The former ledger query: documents a report for ``[since, now)`` may show (changed since, or still open)."""
    if since is None:
        out = _read(ledger, "SELECT * FROM transfers WHERE direction = 'out'")
        inb = _read(ledger, "SELECT * FROM inbound")
    else:
        out = _read(
            ledger,
            """SELECT * FROM transfers WHERE direction = 'out' AND (updated_at >= ? OR created_at >= ?
               OR state IN ('claimed', 'sealed', 'uploaded', 'invalid-receipt', 'failed'))""",
            (since, since),
        )
        inb = _read(ledger, "SELECT * FROM inbound WHERE updated_at >= ? OR state = 'received'", (since,))
    return [Transfer(**dict(r)) for r in out], [Inbound(**dict(r)) for r in inb]


def _receipt_records(ledger: Ledger, since: str | None) -> list[dict[str, Any]]:
    """The former ledger query: receipts fetched since ``since`` (all when None), without their bytes."""
    query = "SELECT seq, partner, name, transfer_id, verdict, reason, status, fetched_at FROM receipts"
    rows = _read(ledger, query + " WHERE fetched_at >= ? ORDER BY seq", (since,)) if since else _read(ledger, query)
    return [dict(r) for r in rows]


def reference(
    ledger: Ledger, *, now: datetime, since: datetime | None, sla: Callable[[str, str], timedelta]
) -> tuple[list[dict[str, Any]], list[ReceiptNote], list[ReceiptNote]]:
    """(lines as dicts in report order, unsolicited, duplicates) the way the former implementation built them."""
    transfers, inbound = _for_reconcile(ledger, rfc3339(since) if since else None)
    lines = []
    for t in transfers:
        if t.direction != "out" or t.state == "duplicate":
            continue
        line = _ref_sent(t, now, sla(t.partner, t.document_type))
        settled = line["status"] in ("delivered", "delivered-late", "rejected", "mismatch")
        if _ref_in_period(t.created_at, since, now) or not settled or _ref_in_period(t.updated_at, since, now):
            lines.append(line)
    for r in inbound:
        if (
            _ref_in_period(r.received_at, since, now)
            or r.state == "received"
            or _ref_in_period(r.updated_at, since, now)
        ):
            lines.append(_ref_received(r))
    order = {s: i for i, s in enumerate(OUT_CLASSES)}
    lines.sort(key=lambda x: (x["direction"], x["partner"], order.get(x["status"], 99), x["transfer_id"]))
    records = _receipt_records(ledger, rfc3339(since) if since else None)
    notes = [
        ReceiptNote(
            r["partner"], r["name"], r["transfer_id"], r["verdict"], r["reason"], parse_rfc3339(r["fetched_at"])
        )
        for r in records
    ]
    notes = [n for n in notes if since is None or n.fetched_at >= since]
    unsolicited = [
        n for n in notes if n.verdict == "unknown-transfer" or (n.verdict == "invalid" and n.transfer_id is None)
    ]
    duplicates = [n for n in notes if n.verdict in ("duplicate", "conflict")]
    return lines, unsolicited, duplicates


def reference_csv(lines: list[dict[str, Any]], tz: ZoneInfo) -> bytes:
    def opt(value: object) -> str:
        return "" if value is None else ("yes" if value else "no") if isinstance(value, bool) else str(value)

    def utc(moment: datetime | None) -> str:
        return rfc3339(moment) if moment is not None else ""

    def local(moment: datetime | None) -> str:
        return moment.astimezone(tz).isoformat(timespec="milliseconds") if moment is not None else ""

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CSV_COLUMNS)
    for x in lines:
        values = {
            "direction": x["direction"], "partner": x["partner"], "transfer_id": x["transfer_id"],
            "document_type": x["document_type"], "file": x["file"], "size": opt(x["size"]), "sha256": opt(x["sha256"]),
            "ciphertext_sha256": opt(x["ciphertext_sha256"]), "sent_at_utc": utc(x["sent_at"]),
            "partner_received_at_utc": utc(x["partner_received_at"]),
            "receipt_verified_at_utc": utc(x["receipt_verified_at"]), "sent_at_local": local(x["sent_at"]),
            "partner_received_at_local": local(x["partner_received_at"]),
            "latency_seconds": "" if x["latency"] is None else f"{x['latency'].total_seconds():.3f}",
            "status": x["status"], "status_code": opt(x["status_code"]), "transport_pq": opt(x["transport_pq"]),
            "content_pq": opt(x["content_pq"]), "detail": x["detail"],
        }  # fmt: skip
        writer.writerow([defuse(values[c]) if c in PARTNER_TEXT_COLUMNS else values[c] for c in CSV_COLUMNS])
    return buffer.getvalue().encode("utf-8")


# --------------------------------------------------------------------------------------- a varied ledger


def _stamp(rng: random.Random, *, nullable: bool = True) -> str | None:
    """A time around NOW in the forms a ledger may hold: ours (ms, Z) mostly, and other RFC 3339 shapes."""
    if nullable and rng.random() < 0.15:
        return None
    moment = NOW + timedelta(seconds=rng.randint(-10 * 86400, 3600), microseconds=rng.randint(0, 999_999))
    shape = rng.random()
    if shape < 0.7:
        return rfc3339(moment)
    if shape < 0.8:
        return moment.astimezone(ZoneInfo("Europe/Berlin")).isoformat(timespec="milliseconds")  # +01:00
    if shape < 0.9:
        return moment.isoformat().replace("+00:00", "Z")  # microseconds
    return rfc3339(NOW.replace(microsecond=123000))  # exactly on the millisecond of NOW


def _fill(path: Path, rng: random.Random, count: int) -> None:
    transfers, inbound, receipts = [], [], []
    for n in range(count):
        state = rng.choice(OUT_STATES)
        created = _stamp(rng, nullable=False)
        transfers.append((
            f"T{n:05d}", rng.choice(("out",) * 9 + ("in",)), rng.choice(PARTNERS), rng.choice(TYPES),
            rng.choice(TEXTS[2:]) + f"-{n}", state, rng.choice((None, f"{n:064x}")), rng.choice((None, 0, 4096 + n)),
            rng.choice((None, f"{n + 1:064x}")), rng.choice(TEXTS), rng.choice((None, "curve25519-sha256")),
            rng.choice((None, 0, 1)), rng.choice((None, 0, 1)), created, _stamp(rng),
            rng.choice((None, "ok", "accepted", "decryption-failed", "=cmd")), _stamp(rng), _stamp(rng), _stamp(rng),
            _stamp(rng), _stamp(rng), _stamp(rng, nullable=False),
        ))  # fmt: skip
    for n in range(count // 3):
        inbound.append((
            rng.choice(PARTNERS), f"I{n:05d}", rng.choice(TEXTS[2:]) + f"-{n}.pgp", rng.choice(TYPES),
            rng.choice(("received", "accepted", "rejected")), f"{n:064x}", rng.choice((0, 5000 + n)),
            rng.choice((None, f"{n + 2:064x}")), rng.choice((None, 0, 4000 + n)),
            rng.choice((None, "ok", "signature-invalid")), rng.choice(TEXTS), _stamp(rng, nullable=False),
            _stamp(rng), _stamp(rng, nullable=False), _stamp(rng, nullable=False),
        ))  # fmt: skip
    for n in range(count // 4):
        receipts.append((
            rng.choice(PARTNERS), f"R{n}.receipt.json", rng.choice((None, f"T{n:05d}")), rng.choice(VERDICTS),
            rng.choice(TEXTS), _stamp(rng, nullable=False),
        ))  # fmt: skip
    with sqlite3.connect(path) as db:
        db.executemany(
            """INSERT INTO transfers (id, direction, partner, document_type, source_name, state, plaintext_sha256,
                   plaintext_size, ciphertext_sha256, last_error, ssh_kex, transport_pq, content_pq, created_at,
                   uploaded_at, receipt_status, partner_received_at, receipted_at, rejected_at, mismatch_at,
                   invalid_receipt_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            transfers,
        )
        db.executemany(
            """INSERT INTO inbound (partner, transfer_id, remote_name, document_type, state, ciphertext_sha256,
                   ciphertext_size, plaintext_sha256, plaintext_size, status, detail, received_at, receipt_sent_at,
                   created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            inbound,
        )
        db.executemany(
            "INSERT INTO receipts (partner, name, transfer_id, verdict, reason, fetched_at) VALUES (?, ?, ?, ?, ?, ?)",
            receipts,
        )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The shipped example (no keys on disk: key alerts only), with SLAs per partner and per type, and a ledger."""
    root = tmp_path_factory.mktemp("fast")
    shutil.copytree(ROOT / "jobs", root / "jobs")
    text = (ROOT / "sftp-pipeline.example.toml").read_text()
    text = text.replace(
        "[partners.utility.sftp]", "sla_hours = 30\nsla_hours_by_type = { invoice = 2 }\n\n[partners.utility.sftp]", 1
    )
    (root / "sftp-pipeline.toml").write_text(text)
    loaded = load_config(root / "sftp-pipeline.toml")
    with open_ledger(loaded) as ledger:
        path = ledger.path
    _fill(path, random.Random(6), 1500)
    return loaded


def _fields(line: Line) -> dict[str, Any]:
    return line._asdict()


@pytest.mark.parametrize(
    "since",
    [None, NOW - timedelta(days=4, microseconds=500), NOW - timedelta(days=2), NOW.replace(microsecond=123000)],
    ids=["all", "sub-ms-start", "two-days", "on-a-stored-ms"],
)
def test_fast_reconciliation_equals_the_reference(config: Config, since: datetime | None) -> None:
    with open_ledger(config) as ledger:
        rec = from_ledger(config, ledger, now=NOW, since=since)
        lines, unsolicited, duplicates = reference(
            ledger, now=NOW, since=since, sla=lambda p, t: timedelta(hours=config.sla(p, t))
        )
    assert len(rec.lines) > 100  # the period is not empty
    if since is None:
        assert {x.status for x in rec.lines} == {*OUT_CLASSES, *IN_CLASSES}  # every class is exercised
    for got, want in zip(rec.lines, lines, strict=True):
        assert _fields(got) == want
        assert [type(v) for v in _fields(got).values()] == [type(v) for v in want.values()]
    assert list(rec.unsolicited) == unsolicited and list(rec.duplicates) == duplicates
    for tz in (ZoneInfo("UTC"), ZoneInfo("America/Chicago")):
        assert render_csv(rec, tz=tz) == reference_csv(lines, tz)


def test_lines_are_immutable_records(config: Config) -> None:
    with open_ledger(config) as ledger:
        rec = from_ledger(config, ledger, now=NOW, since=None)
    line = rec.lines[0]
    with pytest.raises(AttributeError):
        line.status = "delivered"  # type: ignore[misc]
    assert hash(line) == hash(line._replace())
    assert [x.is_exception for x in rec.lines] == [x.status in EXCEPTIONS for x in rec.lines]


def test_exceptions_are_computed_once_and_handed_out_as_copies(config: Config) -> None:
    with open_ledger(config) as ledger:
        rec: Reconciliation = from_ledger(config, ledger, now=NOW, since=None)
    first = rec.exceptions()
    first.clear()
    assert rec.exceptions() and rec.exceptions() == rec.exceptions()
