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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from .clock import parse_rfc3339, rfc3339
from .config import Config
from .keys import list_keys
from .ledger import Inbound, Ledger, Transfer

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


@dataclass(frozen=True, slots=True)
class Line:
    """One document in the report."""

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
        rank = {status: i for i, status in enumerate(EXCEPTIONS)}
        found = [
            line
            for line in self.lines
            if line.is_exception or (line.direction == "received" and line.status in IN_ACTIONS)
        ]
        return sorted(found, key=lambda x: (rank.get(x.status, len(rank)), x.partner, x.transfer_id))

    @property
    def ok(self) -> bool:
        return not self.exceptions() and not any(a.severity == "critical" for a in self.alerts)


def _at(text: str | None) -> datetime | None:
    return parse_rfc3339(text) if text else None


def classify_sent(t: Transfer, *, now: datetime, sla: timedelta) -> tuple[str, str]:
    """(class, detail) of one outbound transfer."""
    sent = _at(t.uploaded_at)
    if t.state == "receipted":
        received = _at(t.partner_received_at)
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
    if t.last_error:  # claimed or sealed, and the last attempt failed
        return "failed", t.last_error
    return "pending", "being sent"


def _sent_line(t: Transfer, *, now: datetime, sla: timedelta) -> Line:
    status, detail = classify_sent(t, now=now, sla=sla)
    sent, received = _at(t.uploaded_at), _at(t.partner_received_at)
    verified = _at(t.receipted_at or t.rejected_at or t.mismatch_at or t.invalid_receipt_at)
    return Line(
        direction="sent",
        partner=t.partner,
        transfer_id=t.id,
        document_type=t.document_type,
        file=t.source_name,
        size=t.plaintext_size,
        sha256=t.plaintext_sha256,
        ciphertext_sha256=t.ciphertext_sha256,
        sent_at=sent,
        partner_received_at=received,
        receipt_verified_at=verified,
        latency=(received - sent) if sent and received else None,
        status=status,
        status_code=t.receipt_status if t.receipt_status not in (None, "ok") else None,
        detail=detail,
        action=ACTIONS.get(status, ""),
        transport_pq=None if t.transport_pq is None else bool(t.transport_pq),
        content_pq=None if t.content_pq is None else bool(t.content_pq),
        sla=sla,
        kex=t.ssh_kex,
    )


def _received_line(r: Inbound) -> Line:
    status = "pending" if r.state == "received" else r.state
    return Line(
        direction="received",
        partner=r.partner,
        transfer_id=r.transfer_id,
        document_type=r.document_type,
        file=r.remote_name,
        size=r.plaintext_size or r.ciphertext_size,
        sha256=r.plaintext_sha256,
        ciphertext_sha256=r.ciphertext_sha256,
        sent_at=None,
        partner_received_at=_at(r.received_at),
        receipt_verified_at=_at(r.receipt_sent_at),
        latency=None,
        status=status,
        status_code=r.status if r.status not in (None, "ok") else None,
        detail=r.detail or "",
        action=IN_ACTIONS.get(status, ""),
        transport_pq=None,
        content_pq=None,
        sla=None,
    )


def _in_period(moment: str | None, start: datetime | None, end: datetime) -> bool:
    at = _at(moment)
    return at is not None and (start is None or at >= start) and at < end


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
    lines: list[Line] = []
    for t in transfers:
        if t.direction != "out" or t.state == "duplicate":
            continue
        line = _sent_line(t, now=now, sla=sla(t.partner, t.document_type))
        settled = line.status in ("delivered", "delivered-late", "rejected", "mismatch")
        if _in_period(t.created_at, since, now) or not settled or _in_period(t.updated_at, since, now):
            lines.append(line)
    for r in inbound:
        if _in_period(r.received_at, since, now) or r.state == "received" or _in_period(r.updated_at, since, now):
            lines.append(_received_line(r))
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
    transfers, inbound = ledger.for_reconcile(rfc3339(since) if since else None)
    notes = [
        ReceiptNote(
            r["partner"], r["name"], r["transfer_id"], r["verdict"], r["reason"], parse_rfc3339(r["fetched_at"])
        )
        for r in ledger.receipt_records(rfc3339(since) if since else None)
    ]
    facts = []
    for row in list_keys(config, now):
        owner = "us" if row.owner.startswith("us") else row.owner.removeprefix("partner ").split()[0]
        if row.kind in ("pinned host key", "SSH login key"):
            continue  # SSH keys carry no expiry
        problems = tuple(p for p in row.problems if "expire" not in p)
        facts.append(KeyFact(owner, row.kind, row.fingerprint, _at(row.expires), problems))
    return reconcile(
        transfers,
        inbound,
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
