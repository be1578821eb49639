"""Reconcile: what was sent to and received from each partner, what is proven delivered, what needs action.

Pure: :func:`reconcile` takes ledger rows, receipt records, key facts, the
service levels and the clock, and returns a :class:`Reconciliation`; reading
the ledger and rendering happen elsewhere (:func:`load_inputs`, ``report``).

Classes of a document we sent::

    delivered       receipted, and the partner received it within the SLA
    delivered-late  receipted, but the partner's received_at is after the SLA
    pending         no receipt yet, still inside the SLA (or still being sent, no error)
    overdue         no receipt and the SLA has passed
    rejected        the partner's signed receipt rejects it (their status code)
    mismatch        a valid receipt, but for other bytes than we sent (hash or size differs)
    invalid-receipt only receipts that prove nothing (forged, wrong signer, malformed)
    failed          never uploaded: the reason is the last error

A document we received is ``accepted`` or ``rejected`` (with the receipt we
issued), or ``pending`` while being opened. Receipts that match no transfer
are *unsolicited*; receipts for an already settled transfer are *duplicates*.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from operator import attrgetter
from typing import Any, Literal, NamedTuple

from sftp_pipeline.clock import parse_rfc3339, rfc3339
from sftp_pipeline.config import Config
from sftp_pipeline.keys import list_keys
from sftp_pipeline.ledger import Inbound, Ledger, Transfer

OUT_CLASSES = ("overdue", "rejected", "mismatch", "invalid-receipt", "failed", "delivered-late", "pending", "delivered")
IN_CLASSES = ("rejected", "pending", "accepted")
# Classes that need someone to act, most urgent first; the report lists them before everything else.
EXCEPTIONS = ("overdue", "rejected", "mismatch", "invalid-receipt", "failed")

ACTIONS = {
    "overdue": "No receipt within the SLA: check the partner received it (their collect job, inbox), then call them.",
    "rejected": "The partner refused it (see the status code): fix the cause, then drop a corrected document.",
    "mismatch": "The partner's receipt names other bytes than we sent: treat as not delivered, investigate, resend.",
    "invalid-receipt": "Only unverifiable receipts so far (forged, wrong key, malformed): ask the partner to re-issue.",
    "failed": "Never uploaded: fix the reason shown (keys, host key, network), then `send --retry-failed`.",
    "delivered-late": "Delivered, but after the SLA: note it for the partner review.",
}
IN_ACTIONS = {
    "rejected": "We refused the partner's document (see the status code); they were told by our signed receipt.",
    "pending": "Received but not yet opened: run `collect` again or check the log.",
}


class Line(NamedTuple):
    """One document in the report.

    A named tuple rather than a frozen dataclass: just as immutable, but built ~10× faster (a frozen dataclass
    sets each of its 20 fields through ``object.__setattr__``), and a reconciliation builds one per document.
    """

    direction: Literal["sent", "received"]
    partner: str
    transfer_id: str
    document_type: str
    file: str
    size: int | None
    sha256: str | None  # plaintext
    ciphertext_sha256: str | None
    sent_at: datetime | None  # when our upload completed (sent) / None (received)
    partner_received_at: datetime | None  # the receiver's signed time the file was complete
    receipt_verified_at: datetime | None  # sent: when we verified their receipt; received: when we sent ours
    latency: timedelta | None  # partner_received_at - sent_at
    status: str
    status_code: str | None  # the rejection code in the receipt
    detail: str
    action: str
    transport_pq: bool | None
    content_pq: bool | None
    sla: timedelta | None
    kex: str | None = None

    @property
    def is_exception(self) -> bool:
        return self.status in EXCEPTIONS


@dataclass(frozen=True, slots=True)
class ReceiptNote:
    partner: str
    name: str
    transfer_id: str | None
    verdict: str
    reason: str | None
    fetched_at: datetime


@dataclass(frozen=True, slots=True)
class KeyFact:
    owner: str  # "us" or a partner id
    kind: str
    fingerprint: str
    expires: datetime | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Alert:
    severity: Literal["critical", "warning"]
    subject: str
    message: str
    action: str


@dataclass(frozen=True)
class Reconciliation:
    party_id: str
    party_name: str
    period_start: datetime | None
    period_end: datetime
    generated_at: datetime
    lines: tuple[Line, ...]
    unsolicited: tuple[ReceiptNote, ...]
    duplicates: tuple[ReceiptNote, ...]
    alerts: tuple[Alert, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{partner: {"sent:delivered": n, "received:accepted": m, …}}``."""
        table: dict[str, dict[str, int]] = {}
        for line in self.lines:
            row = table.setdefault(line.partner, {})
            key = f"{line.direction}:{line.status}"
            row[key] = row.get(key, 0) + 1
        return table

    def exceptions(self) -> list[Line]:
        """Lines that need someone to act, most urgent first."""
        return list(self._exceptions)

    @cached_property
    def _exceptions(self) -> tuple[Line, ...]:
        # Computed once: the report asks for them several times (subject, header, verdict, table).
        rank = {status: i for i, status in enumerate(EXCEPTIONS)}
        found = [
            line
            for line in self.lines
            if line.status in EXCEPTIONS or (line.direction == "received" and line.status in IN_ACTIONS)
        ]
        return tuple(sorted(found, key=lambda x: (rank.get(x.status, len(rank)), x.partner, x.transfer_id)))

    @property
    def ok(self) -> bool:
        return not self.exceptions() and not any(a.severity == "critical" for a in self.alerts)


# Python ≥ 3.11 reads a trailing "Z" as UTC (``tzinfo is UTC``), the same value parse_rfc3339 returns.
_fromisoformat = datetime.fromisoformat


def _at(text: str | None) -> datetime | None:
    if not text:
        return None
    if text[-1] == "Z":  # what clock.rfc3339 writes: already UTC, so parse without the offset round trip
        return _fromisoformat(text)
    return parse_rfc3339(text)


# The ledger columns a sent line is made of, in the order :meth:`Ledger.reconcile_rows` returns them.
SENT_COLUMNS = (
    "id", "partner", "document_type", "source_name", "state", "plaintext_size", "plaintext_sha256",
    "ciphertext_sha256", "last_error", "uploaded_at", "partner_received_at", "receipted_at", "rejected_at",
    "mismatch_at", "invalid_receipt_at", "receipt_status", "transport_pq", "content_pq", "ssh_kex", "created_at",
    "updated_at",
)  # fmt: skip
# The inbound columns a received line is made of, in that order.
RECEIVED_COLUMNS = (
    "partner", "transfer_id", "document_type", "remote_name", "state", "plaintext_size", "ciphertext_size",
    "plaintext_sha256", "ciphertext_sha256", "received_at", "receipt_sent_at", "status", "detail", "updated_at",
)  # fmt: skip
# Receipt verdicts the report lists (unsolicited, duplicates); the others are already on their transfer's line.
NOTE_VERDICTS = ("unknown-transfer", "invalid", "duplicate", "conflict")
# Sent classes that close a document: older ones drop out of the next period's report.
_SETTLED = frozenset({"delivered", "delivered-late", "rejected", "mismatch"})
_sent_values = attrgetter(*SENT_COLUMNS)
_received_values = attrgetter(*RECEIVED_COLUMNS)


def _classify(
    state: str, last_error: str | None, sent: datetime | None, received: datetime | None, now: datetime, sla: timedelta
) -> tuple[str, str]:
    if state == "receipted":
        if sent and received and received - sent > sla:
            return "delivered-late", f"received {received - sent} after sending; SLA {sla}"
        return "delivered", ""
    if state in ("rejected", "mismatch", "invalid-receipt"):
        return state, last_error or ""
    if state == "failed":
        return "failed", last_error or "failed"
    if state == "uploaded" and sent is not None:
        if now - sent > sla:
            return "overdue", f"no receipt {now - sent} after sending; SLA {sla}"
        return "pending", f"receipt due by {(sent + sla).isoformat(timespec='seconds')}"
    if last_error:  # claimed or sealed, and the last attempt failed
        return "failed", last_error
    return "pending", "being sent"


def classify_sent(t: Transfer, *, now: datetime, sla: timedelta) -> tuple[str, str]:
    """(class, detail) of one outbound transfer."""
    return _classify(t.state, t.last_error, _at(t.uploaded_at), _at(t.partner_received_at), now, sla)


def _in_period(moment: str | None, start: datetime | None, end: datetime) -> bool:
    at = _at(moment)
    return at is not None and (start is None or at >= start) and at < end


def _sent_lines(
    rows: Iterable[tuple[Any, ...]], *, now: datetime, since: datetime | None, sla: Callable[[str, str], timedelta]
) -> Iterator[Line]:
    """The report's lines for outbound rows (``SENT_COLUMNS``, duplicates left out) that belong in ``[since, now)``.

    The hot loop of a reconciliation (one pass per document): plain tuples in, no per-row objects but the line.
    """
    limits: dict[tuple[str, str], timedelta] = {}  # the SLA per (partner, type), asked of the config once
    for (
        tid, partner, doc_type, name, state, size, sha256, ciphertext_sha256, last_error, uploaded_at,
        partner_received_at, receipted_at, rejected_at, mismatch_at, invalid_receipt_at, receipt_status,
        transport_pq, content_pq, kex, created_at, updated_at,
    ) in rows:  # fmt: skip
        limit = limits.get((partner, doc_type))
        if limit is None:
            limit = limits[(partner, doc_type)] = sla(partner, doc_type)
        sent, received = _at(uploaded_at), _at(partner_received_at)
        status, detail = _classify(state, last_error, sent, received, now, limit)
        if status in _SETTLED and not (_in_period(created_at, since, now) or _in_period(updated_at, since, now)):
            continue  # settled before the period
        yield Line(
            "sent",
            partner,
            tid,
            doc_type,
            name,
            size,
            sha256,
            ciphertext_sha256,
            sent,
            received,
            _at(receipted_at or rejected_at or mismatch_at or invalid_receipt_at),  # receipt_verified_at
            (received - sent) if sent and received else None,  # latency
            status,
            receipt_status if receipt_status not in (None, "ok") else None,  # status_code
            detail,
            ACTIONS.get(status, ""),
            None if transport_pq is None else bool(transport_pq),
            None if content_pq is None else bool(content_pq),
            limit,  # sla
            kex,
        )


def _received_lines(rows: Iterable[tuple[Any, ...]], *, now: datetime, since: datetime | None) -> Iterator[Line]:
    """The report's lines for inbound rows (``RECEIVED_COLUMNS``) that belong in ``[since, now)``."""
    for (
        partner, transfer_id, doc_type, name, state, plaintext_size, ciphertext_size, sha256, ciphertext_sha256,
        received_at, receipt_sent_at, status_code, detail, updated_at,
    ) in rows:  # fmt: skip
        if not (_in_period(received_at, since, now) or state == "received" or _in_period(updated_at, since, now)):
            continue
        status = "pending" if state == "received" else state
        yield Line(
            "received",
            partner,
            transfer_id,
            doc_type,
            name,
            plaintext_size or ciphertext_size,  # size
            sha256,
            ciphertext_sha256,
            None,  # sent_at
            _at(received_at),  # partner_received_at
            _at(receipt_sent_at),  # receipt_verified_at: when we sent our receipt
            None,  # latency
            status,
            status_code if status_code not in (None, "ok") else None,
            detail or "",
            IN_ACTIONS.get(status, ""),
            None,  # transport_pq
            None,  # content_pq
            None,  # sla
        )


def key_alerts(keys: Iterable[KeyFact], *, now: datetime, window: timedelta) -> list[Alert]:
    alerts = []
    for key in keys:
        who = "our" if key.owner == "us" else f"partner {key.owner}'s"
        if key.expires is not None and key.expires <= now:
            alerts.append(
                Alert(
                    "critical",
                    f"{who} {key.kind} has expired",
                    f"{key.fingerprint} expired {key.expires.isoformat(timespec='seconds')}",
                    "Roll the key over and exchange the new certificate now.",
                )
            )
        elif key.expires is not None and key.expires - now <= window:
            alerts.append(
                Alert(
                    "warning",
                    f"{who} {key.kind} expires in {(key.expires - now).days} days",
                    f"{key.fingerprint} expires {key.expires.isoformat(timespec='seconds')}",
                    "Agree the roll-over with the partner and exchange the new certificate.",
                )
            )
        for problem in key.problems:
            if "expire" not in problem:
                alerts.append(
                    Alert(
                        "critical",
                        f"{who} {key.kind} is unusable",
                        f"{key.fingerprint}: {problem}",
                        "Replace the key; nothing can be sealed or verified with it.",
                    )
                )
    return alerts


def reconcile(
    transfers: Iterable[Transfer],
    inbound: Iterable[Inbound],
    receipt_notes: Iterable[ReceiptNote],
    *,
    party_id: str,
    party_name: str,
    now: datetime,
    since: datetime | None,
    sla: Callable[[str, str], timedelta],
    keys: Iterable[KeyFact] = (),
    key_window: timedelta = timedelta(days=30),
) -> Reconciliation:
    """Classify the period ``[since, now)``; documents still open from before it are carried forward."""
    return reconcile_rows(
        (_sent_values(t) for t in transfers if t.direction == "out" and t.state != "duplicate"),
        (_received_values(r) for r in inbound),
        receipt_notes,
        party_id=party_id,
        party_name=party_name,
        now=now,
        since=since,
        sla=sla,
        keys=keys,
        key_window=key_window,
    )


def reconcile_rows(
    sent: Iterable[tuple[Any, ...]],
    received: Iterable[tuple[Any, ...]],
    receipt_notes: Iterable[ReceiptNote],
    *,
    party_id: str,
    party_name: str,
    now: datetime,
    since: datetime | None,
    sla: Callable[[str, str], timedelta],
    keys: Iterable[KeyFact] = (),
    key_window: timedelta = timedelta(days=30),
) -> Reconciliation:
    """:func:`reconcile` over plain rows: outbound ``SENT_COLUMNS`` (no duplicates) and inbound ``RECEIVED_COLUMNS``,
    as :meth:`Ledger.reconcile_rows` returns them."""
    lines = [*_sent_lines(sent, now=now, since=since, sla=sla), *_received_lines(received, now=now, since=since)]
    notes = [n for n in receipt_notes if since is None or n.fetched_at >= since]
    unsolicited = tuple(
        n for n in notes if n.verdict in ("unknown-transfer",) or (n.verdict == "invalid" and n.transfer_id is None)
    )
    duplicates = tuple(n for n in notes if n.verdict in ("duplicate", "conflict"))
    alerts: list[Alert] = []
    by_partner: dict[tuple[str, str], int] = {}
    for line in lines:
        if line.direction == "sent" and line.status in EXCEPTIONS:
            by_partner[(line.partner, line.status)] = by_partner.get((line.partner, line.status), 0) + 1
    for (partner, status), count in sorted(by_partner.items()):
        alerts.append(
            Alert("critical", f"{count} {status} document(s) for {partner}", ACTIONS[status], ACTIONS[status])
        )
    rejected_in = [line for line in lines if line.direction == "received" and line.status == "rejected"]
    if rejected_in:
        alerts.append(
            Alert(
                "warning",
                f"we rejected {len(rejected_in)} document(s) from partners",
                ", ".join(sorted({f"{x.partner}: {x.status_code}" for x in rejected_in})),
                IN_ACTIONS["rejected"],
            )
        )
    if unsolicited:
        alerts.append(
            Alert(
                "warning",
                f"{len(unsolicited)} unsolicited receipt(s)",
                "receipts that match no document we sent (kept in quarantine)",
                "Check with the partner which transfer they meant.",
            )
        )
    alerts.extend(key_alerts(keys, now=now, window=key_window))
    order = {s: i for i, s in enumerate(OUT_CLASSES)}
    lines.sort(key=lambda x: (x.direction, x.partner, order.get(x.status, 99), x.transfer_id))
    return Reconciliation(
        party_id=party_id,
        party_name=party_name,
        period_start=since,
        period_end=now,
        generated_at=now,
        lines=tuple(lines),
        unsolicited=unsolicited,
        duplicates=duplicates,
        alerts=tuple(sorted(alerts, key=lambda a: a.severity != "critical")),
    )


# -- the adapter: read the ledger and the keys (I/O at the edge) -------------------------------------------

LAST_REPORT_KEY = "last_report_until"


def from_ledger(config: Config, ledger: Ledger, *, now: datetime, since: datetime | None) -> Reconciliation:
    """Build the reconciliation of ``[since, now)`` from the ledger and the configured keys."""
    start = rfc3339(since) if since else None
    sent, received = ledger.reconcile_rows(SENT_COLUMNS, RECEIVED_COLUMNS, start)
    notes = [
        ReceiptNote(r.partner, r.name, r.transfer_id, r.verdict, r.reason, parse_rfc3339(r.fetched_at))
        for r in ledger.receipt_records_with(NOTE_VERDICTS, start)
    ]
    facts = []
    for row in list_keys(config, now):
        owner = "us" if row.owner.startswith("us") else row.owner.removeprefix("partner ").split()[0]
        if row.kind in ("pinned host key", "SSH login key"):
            continue  # SSH keys carry no expiry
        problems = tuple(p for p in row.problems if "expire" not in p)
        facts.append(KeyFact(owner, row.kind, row.fingerprint, _at(row.expires), problems))
    return reconcile_rows(
        sent,
        received,
        notes,
        party_id=config.party.id,
        party_name=config.party.name,
        now=now,
        since=since,
        sla=lambda partner, doc_type: timedelta(hours=config.sla(partner, doc_type)),
        keys=facts,
        key_window=timedelta(days=config.report.key_expiry_warning_days),
    )


def last_report_until(ledger: Ledger) -> datetime | None:
    """The end of the last report's period: the default start of the next one."""
    return _at(ledger.meta(LAST_REPORT_KEY))
