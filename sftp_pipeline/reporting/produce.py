"""The reporting service: reconcile a period, write the signed report, email it — one call for the CLI,
the daemon's report jobs and the demo."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from sftp_pipeline.clock import rfc3339
from sftp_pipeline.config import Config
from sftp_pipeline.faults import crash_point
from sftp_pipeline.keys import OurKeys
from sftp_pipeline.ledger import Ledger
from sftp_pipeline.proof.audit import audit_path, head_path, read_head, sync_audit
from sftp_pipeline.proof.reconcile import LAST_REPORT_KEY, Reconciliation, from_ledger, last_report_until
from sftp_pipeline.reporting.mail import MailQueue, SendResult, build_message, email_report, report_mail
from sftp_pipeline.reporting.render import ReportFiles, write_report

# The outbox name of a report mail starts with its period's start in this form, so name order stays age order.
QUEUE_STAMP = "%Y%m%dT%H%M%S%fZ"
# The start of a first report's period (nothing reported yet).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Context(Protocol):
    """What a report is made from: the configuration, the ledger, our keys (:class:`~sftp_pipeline.wiring.Runtime`)."""

    @property
    def config(self) -> Config: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def keys(self) -> OurKeys: ...


@dataclass(frozen=True)
class Produced:
    reconciliation: Reconciliation
    files: ReportFiles
    mail: SendResult | None  # None: not asked to email


def audit_anchor(rt: Context) -> str | None:
    """Bring the audit log up to date and describe its head, which the signed report then anchors."""
    sync_audit(rt.config, rt.ledger)
    head = read_head(head_path(audit_path(rt.config)))
    return f"line {head.lines}, seq {head.seq}, sha256 {head.hash}" if head else None


def produce_report(rt: Context, *, now: datetime, since: datetime | str | None = "last", email: bool) -> Produced:
    """Reconcile ``[since, now)`` (default: since the last report), write and sign the report, email it if asked.

    The report is on disk, and the period marked as reported, before any email is attempted: a relay that is
    down only delays the email (the outbox keeps it), never the report.
    """
    config = rt.config
    start = last_report_until(rt.ledger) if since == "last" else since
    assert not isinstance(start, str)
    rec = from_ledger(config, rt.ledger, now=now, since=start)
    files = write_report(
        rec,
        config.state_dir / "reports",
        signer=rt.keys.signer,
        tz=ZoneInfo(config.report.timezone),
        audit_head=audit_anchor(rt),
    )
    crash_point("after-report-written")
    queue, result = MailQueue.in_state_dir(config.state_dir), None
    if email and config.smtp is not None:
        # Queued before the period is marked reported (else a crash between the two loses the mail), under a
        # name fixed by the period (else a crash between them mails the re-made report twice).
        key = f"{(start or EPOCH).strftime(QUEUE_STAMP)}-period" if since == "last" else None
        mail = report_mail(files.subject, files.html, [files.csv, files.html_sig, files.csv_sig])
        queue.put(build_message(mail, config.smtp), key=key)
        crash_point("after-report-queued")
    rt.ledger.set_meta(LAST_REPORT_KEY, rfc3339(now))
    if email and config.smtp is not None:
        result = email_report(None, config.smtp, queue)
    return Produced(rec, files, result)
