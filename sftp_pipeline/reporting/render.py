"""Report: the reconciliation as a signed HTML page and a signed CSV file, for settlement staff.

Pure renderers (:func:`render_html`, :func:`render_csv`) turn a
:class:`~sftp_pipeline.proof.reconcile.Reconciliation` into text; :func:`write_report`
signs both with our OpenPGP key (detached, binary) and writes the four files
atomically under ``<state_dir>/reports``::

    report-20261127T094400Z.html       the page (what is emailed)
    report-20261127T094400Z.html.sig   detached OpenPGP signature over exactly those bytes
    report-20261127T094400Z.csv        one row per document, for spreadsheets
    report-20261127T094400Z.csv.sig

A recipient checks a report with ``gpg --verify report-….html.sig report-….html``
after importing our certificate, or with :func:`verify_report_signature`.

The HTML is written for mail clients: one standalone document, table layout,
inline ``style=`` attributes only (no ``<style>`` block, no scripts, no images,
no external resources), every value escaped — file names and details come from
partners. Times are shown in UTC (RFC 3339, milliseconds) and in the configured
local time zone.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from zoneinfo import ZoneInfo

from sftp_pipeline.clock import rfc3339
from sftp_pipeline.errors import ReportError, SignatureRefused
from sftp_pipeline.fsutil import remove_stale_temps
from sftp_pipeline.openpgp import Cert, SigningKey
from sftp_pipeline.openpgp.signatures import sign_detached, verify_detached
from sftp_pipeline.proof.reconcile import EXCEPTIONS, IN_CLASSES, OUT_CLASSES, Line, ReceiptNote, Reconciliation

CSV_COLUMNS = (
    "direction", "partner", "transfer_id", "document_type", "file", "size", "sha256", "ciphertext_sha256",
    "sent_at_utc", "partner_received_at_utc", "receipt_verified_at_utc", "sent_at_local",
    "partner_received_at_local", "latency_seconds", "status", "status_code", "transport_pq", "content_pq", "detail",
)  # fmt: skip
# Cells a spreadsheet would run as a formula (OWASP "CSV injection"); partner-supplied text starting so is defused.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# Columns whose text a partner (or a partner's file name) can choose; only these are defused, numbers stay numbers.
PARTNER_TEXT_COLUMNS = frozenset({"partner", "transfer_id", "document_type", "file", "status_code", "detail"})
SUBJECT_PREFIX = "[sftp-pipeline]"
# Shown for a value that does not apply or is unknown (an en dash, as in printed tables).
NONE_MARK = "\u2013"
# Why 12: a stray file per report second is unusual; a dozen same-second reports means a loop, stop.
MAX_NAME_SUFFIX = 12

# Colours: (text, background). Conservative hex values every mail client renders; red/amber/green/grey.
_CRITICAL = ("#8b0000", "#fde8e8")
_WARNING = ("#7a4a00", "#fff4e0")
_GOOD = ("#0b5d1e", "#e7f6ea")
_NEUTRAL = ("#333333", "#f2f2f2")
_STATUS_COLOURS = {
    **{status: _CRITICAL for status in EXCEPTIONS},
    "delivered-late": _WARNING,
    "pending": _NEUTRAL,
    "delivered": _GOOD,
    "accepted": _GOOD,
}
_FONT = "font-family:Arial,Helvetica,sans-serif;font-size:13px;color:#222222;"
_TABLE = 'cellpadding="4" cellspacing="0" border="1" style="border-collapse:collapse;border-color:#cccccc;'
_TH = "text-align:left;background-color:#e9eef4;font-weight:bold;vertical-align:bottom;"
_TD = "vertical-align:top;"
_MONO = "font-family:Consolas,Menlo,monospace;font-size:12px;word-break:break-all;"
_EXCEPTION_HEADERS = ("Status", "Direction", "Partner", "Transfer id", "Document type", "File",
                      "Sent / received at", "Detail", "What to do")  # fmt: skip
_SMALL = "color:#666666;font-size:11px;"
_H2 = "font-size:16px;margin:18px 0 6px 0;"


@dataclass(frozen=True)
class ReportFiles:
    """The four files :func:`write_report` wrote, and a mail subject summarising them."""

    html: Path
    csv: Path
    html_sig: Path
    csv_sig: Path
    subject: str


# --------------------------------------------------------------------------------------------- formatting


def format_utc(moment: datetime | None) -> str:
    return rfc3339(moment) if moment is not None else NONE_MARK


def format_local(moment: datetime | None, tz: ZoneInfo) -> str:
    """``2026-11-27 03:44 CST`` — minutes are enough for a reader; the UTC column carries the precision."""
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z") if moment is not None else NONE_MARK


def format_latency(latency: timedelta | None) -> str:
    """``2 min 13 s``, ``1 h 5 min``, ``3 d 2 h``, ``850 ms``: the two most significant units."""
    if latency is None:
        return NONE_MARK
    sign = "-" if latency < timedelta(0) else ""
    total_ms = round(abs(latency).total_seconds() * 1000)
    if total_ms < 1000:
        return f"{sign}{total_ms} ms"
    seconds = total_ms // 1000
    parts = [(seconds // 86400, "d"), (seconds // 3600 % 24, "h"), (seconds // 60 % 60, "min"), (seconds % 60, "s")]
    while parts and parts[0][0] == 0:
        parts.pop(0)
    shown = [f"{value} {unit}" for value, unit in parts[:2] if value]
    return sign + " ".join(shown)


def format_pq(flag: bool | None) -> str:
    return NONE_MARK if flag is None else ("yes" if flag else "no")


def format_size(size: int | None) -> str:
    """Exact bytes with thousands separators (hashes and sizes are compared digit by digit)."""
    return NONE_MARK if size is None else f"{size:,} B"


def report_subject(rec: Reconciliation, tz: ZoneInfo) -> str:
    """``[sftp-pipeline] aggregator reconciliation 2026-11-27: 2 exceptions`` (the date is local)."""
    day = rec.period_end.astimezone(tz).strftime("%Y-%m-%d")
    exceptions = len(rec.exceptions())
    critical = sum(1 for a in rec.alerts if a.severity == "critical")
    summary = f"{exceptions} exception{'s' if exceptions != 1 else ''}" if exceptions else "no exceptions"
    if critical:
        summary += f", {critical} critical alert{'s' if critical != 1 else ''}"
    return f"{SUBJECT_PREFIX} {rec.party_id} reconciliation {day}: {summary}"


def report_stem(rec: Reconciliation) -> str:
    """``report-20261127T094400Z``: the generation time in UTC, sortable."""
    return "report-" + rec.generated_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


# -------------------------------------------------------------------------------------------------- HTML


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _when(moment: datetime | None, tz: ZoneInfo) -> str:
    if moment is None:
        return NONE_MARK
    return f'{_e(format_utc(moment))}<br><span style="{_SMALL}">{_e(format_local(moment, tz))}</span>'


def _badge(status: str) -> str:
    fg, bg = _STATUS_COLOURS.get(status, _NEUTRAL)
    return f'<span style="color:{fg};background-color:{bg};font-weight:bold;padding:1px 4px;">{_e(status)}</span>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, row_styles: Sequence[str] = ()) -> str:
    """A bordered table; ``rows`` are already-escaped HTML cells."""
    head = "".join(f'<th style="{_TH}">{_e(h)}</th>' for h in headers)
    body = []
    for i, row in enumerate(rows):
        style = row_styles[i] if i < len(row_styles) else ""
        cells = "".join(f'<td style="{_TD}">{cell}</td>' for cell in row)
        body.append(f'<tr style="{style}">{cells}</tr>' if style else f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}" style="{_TD}{_SMALL}">none</td></tr>')
    return f'<table {_TABLE}width:100%;{_FONT}"><tr>{head}</tr>{"".join(body)}</table>'


def _section(title: str, content: str) -> str:
    return f'<h2 style="{_FONT}{_H2}">{_e(title)}</h2>{content}'


def _header(rec: Reconciliation, tz: ZoneInfo) -> str:
    start_utc = format_utc(rec.period_start) if rec.period_start else "the beginning"
    start_local = format_local(rec.period_start, tz) if rec.period_start else "the beginning"
    exceptions = len(rec.exceptions())
    critical = sum(1 for a in rec.alerts if a.severity == "critical")
    if rec.ok:
        (fg, bg), verdict = _GOOD, "All clear: no exceptions and no critical alerts."
    else:
        (fg, bg), verdict = _CRITICAL, f"Action needed: {exceptions} exception(s), {critical} critical alert(s)."
    rows = [
        ("Party", f"{_e(rec.party_name)} ({_e(rec.party_id)})"),
        ("Period (UTC)", f"{_e(start_utc)} to {_e(format_utc(rec.period_end))}"),
        (f"Period ({_e(tz.key)})", f"{_e(start_local)} to {_e(format_local(rec.period_end, tz))}"),
        ("Generated at", _when(rec.generated_at, tz)),
    ]
    facts = "".join(
        f'<tr><td style="{_TD}font-weight:bold;padding-right:12px;">{k}</td><td style="{_TD}">{v}</td></tr>'
        for k, v in rows
    )
    return (
        f'<h1 style="{_FONT}font-size:20px;margin:0 0 8px 0;">Reconciliation report: {_e(rec.party_name)}</h1>'
        f'<table cellpadding="2" cellspacing="0" border="0" style="{_FONT}">{facts}</table>'
        f'<p style="{_FONT}color:{fg};background-color:{bg};font-weight:bold;padding:8px;margin:10px 0;">'
        f"{_e(verdict)}</p>"
    )


def _alerts(rec: Reconciliation) -> str:
    ordered = sorted(rec.alerts, key=lambda a: a.severity != "critical")
    rows, styles = [], []
    for alert in ordered:
        fg, bg = _CRITICAL if alert.severity == "critical" else _WARNING
        styles.append(f"color:{fg};background-color:{bg};")
        subject = f"<b>{_e(alert.subject)}</b><br>{_e(alert.message)}"
        rows.append((f"<b>{_e(alert.severity)}</b>", subject, _e(alert.action)))
    return _section("Alerts", _table(("Severity", "Alert", "What to do"), rows, row_styles=styles))


def _glance(rec: Reconciliation) -> str:
    counts = rec.counts()
    seen = {key for row in counts.values() for key in row}
    columns = [f"sent:{s}" for s in OUT_CLASSES if f"sent:{s}" in seen]
    columns += [f"received:{s}" for s in IN_CLASSES if f"received:{s}" in seen]
    columns += sorted(seen - set(columns))  # a status reconcile may add later still shows
    headers = ["Partner", *(c.replace(":", " ") for c in columns), "Total"]
    rows = []
    for partner in sorted(counts):
        row = counts[partner]
        cells = [_count_cell(row.get(c, 0), c) for c in columns]
        rows.append([_e(partner), *cells, str(sum(row.values()))])
    if len(counts) > 1:
        totals = [sum(counts[p].get(c, 0) for p in counts) for c in columns]
        rows.append(["<b>all partners</b>", *(f"<b>{n}</b>" for n in totals), f"<b>{sum(totals)}</b>"])
    return _section("At a glance", _table(headers, rows))


def _count_cell(count: int, column: str) -> str:
    if not count:
        return f'<span style="{_SMALL}">0</span>'
    fg, _bg = _STATUS_COLOURS.get(column.split(":", 1)[1], _NEUTRAL)
    return f'<span style="color:{fg};font-weight:bold;">{count}</span>'


def _exceptions(rec: Reconciliation, tz: ZoneInfo) -> str:
    found = rec.exceptions()
    late = [line for line in rec.lines if line.status == "delivered-late"]
    rows = [
        (_badge(x.status) + (f"<br>{_e(x.status_code)}" if x.status_code else ""), _e(x.direction), _e(x.partner),
         f'<span style="{_MONO}">{_e(x.transfer_id)}</span>', _e(x.document_type), _e(x.file),
         _when(x.sent_at or x.partner_received_at, tz), _e(x.detail) or NONE_MARK, _e(x.action) or NONE_MARK)
        for x in (*found, *late)
    ]  # fmt: skip
    return _section(f"Exceptions ({len(found)}), most urgent first", _table(_EXCEPTION_HEADERS, rows))


Column = tuple[str, Callable[[Line], str]]


def _columns(tz: ZoneInfo, *, sent: bool) -> list[Column]:
    cols: list[Column] = [
        ("Partner", lambda x: _e(x.partner)),
        ("Transfer id", lambda x: f'<span style="{_MONO}">{_e(x.transfer_id)}</span>'),
        ("Document type", lambda x: _e(x.document_type)),
        ("File", lambda x: _e(x.file)),
        ("Size", lambda x: _e(format_size(x.size))),
        ("SHA-256", lambda x: f'<span style="{_MONO}">{_e(x.sha256 or NONE_MARK)}</span>'),
    ]
    if sent:
        cols += [
            ("Sent at", lambda x: _when(x.sent_at, tz)),
            ("Partner received at", lambda x: _when(x.partner_received_at, tz)),
            ("Receipt verified at", lambda x: _when(x.receipt_verified_at, tz)),
            ("Latency", lambda x: _e(format_latency(x.latency))),
        ]
    else:
        cols += [
            ("Received at (complete)", lambda x: _when(x.partner_received_at, tz)),
            ("Our receipt sent at", lambda x: _when(x.receipt_verified_at, tz)),
        ]
    cols += [
        ("Status", lambda x: _badge(x.status) + (f"<br>{_e(x.status_code)}" if x.status_code else "")),
        ("Transport PQ", lambda x: _e(format_pq(x.transport_pq))),
        ("Content PQ", lambda x: _e(format_pq(x.content_pq))),
    ]
    return cols


# Why 2,000: a mail client opens that many rows in a second; 100k rows made a 125 MB page no one reads.
# Exceptions are always listed in full above; the signed CSV carries every line.
MAX_HTML_ROWS = 2000


def _lines(title: str, lines: Sequence[Line], columns: Sequence[Column]) -> str:
    shown = lines[:MAX_HTML_ROWS]
    rows = [[render(line) for _name, render in columns] for line in shown]
    body = _table([name for name, _r in columns], rows)
    if len(lines) > len(shown):
        body += f"<p>… and {len(lines) - len(shown):,} more: every line is in the attached, signed CSV.</p>"
    return _section(f"{title} ({len(lines)})", body)


def _notes(title: str, notes: Sequence[ReceiptNote], tz: ZoneInfo) -> str:
    rows = [
        (_e(n.partner), f'<span style="{_MONO}">{_e(n.name)}</span>', _e(n.transfer_id or NONE_MARK),
         _e(n.verdict), _e(n.reason or NONE_MARK), _when(n.fetched_at, tz))
        for n in notes
    ]  # fmt: skip
    headers = ("Partner", "Receipt file", "Transfer id", "Verdict", "Reason", "Fetched at")
    return _section(f"{title} ({len(notes)})", _table(headers, rows))


def _footer(rec: Reconciliation, stem: str, audit_head: str | None, signer_fingerprint: str | None) -> str:
    items = []
    if audit_head:
        items.append(f'Audit log head (hash chain): <span style="{_MONO}">{_e(audit_head)}</span>')
    who = f' by key <span style="{_MONO}">{_e(signer_fingerprint)}</span>' if signer_fingerprint else ""
    items.append(
        f"This report is signed{who} with a detached OpenPGP signature. To check it, import "
        f"{_e(rec.party_name)}'s certificate and run "
        f'<span style="{_MONO}">gpg --verify {_e(stem)}.html.sig {_e(stem)}.html</span> '
        f'(and <span style="{_MONO}">gpg --verify {_e(stem)}.csv.sig {_e(stem)}.csv</span> for the CSV).'
    )
    items.append("Times are UTC (RFC 3339, milliseconds) with the local time below each.")
    paragraphs = "".join(f'<p style="{_FONT}{_SMALL}margin:4px 0;">{item}</p>' for item in items)
    return f'<hr style="border:0;border-top:1px solid #cccccc;margin-top:24px;">{paragraphs}'


def render_html(
    rec: Reconciliation,
    *,
    tz: ZoneInfo,
    audit_head: str | None = None,
    stem: str | None = None,
    signer_fingerprint: str | None = None,
) -> str:
    """The whole report as one standalone HTML document (inline styles, no scripts, everything escaped).

    ``stem`` names the files in the verification hint (default :func:`report_stem`);
    ``signer_fingerprint`` is shown in the footer when given.
    """
    sent = [line for line in rec.lines if line.direction == "sent"]
    received = [line for line in rec.lines if line.direction == "received"]
    parts = [
        _header(rec, tz),
        _alerts(rec),
        _glance(rec),
        _exceptions(rec, tz),
        _lines("Sent", sent, _columns(tz, sent=True)),
        _lines("Received", received, _columns(tz, sent=False)),
        _notes("Unsolicited receipts", rec.unsolicited, tz),
        _notes("Duplicate receipts", rec.duplicates, tz),
        _footer(rec, stem or report_stem(rec), audit_head, signer_fingerprint),
    ]
    title = _e(report_subject(rec, tz))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title></head>\n"
        f'<body style="margin:0;padding:12px;background-color:#ffffff;{_FONT}">\n'
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


# --------------------------------------------------------------------------------------------------- CSV


def defuse(cell: str) -> str:
    """Prefix an apostrophe to text a spreadsheet would evaluate as a formula."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


_MS = "milliseconds"


def _opt(value: object) -> str:
    return "" if value is None else ("yes" if value else "no") if isinstance(value, bool) else str(value)


def _csv_rows(lines: Iterable[Line], tz: ZoneInfo) -> Iterator[tuple[str, ...]]:
    """One row per line, in ``CSV_COLUMNS`` order; partner-chosen text defused (``PARTNER_TEXT_COLUMNS``).

    Written out column by column rather than through a dict per row: 100k lines are rendered in one go.
    """
    for (
        direction, partner, transfer_id, document_type, file, size, sha256, ciphertext_sha256, sent_at,
        partner_received_at, receipt_verified_at, latency, status, status_code, detail, _action, transport_pq,
        content_pq, _sla, _kex,
    ) in lines:  # fmt: skip
        yield (
            direction,
            defuse(partner),
            defuse(transfer_id),
            defuse(document_type),
            defuse(file),
            "" if size is None else str(size),
            sha256 or "",
            ciphertext_sha256 or "",
            "" if sent_at is None else rfc3339(sent_at),
            "" if partner_received_at is None else rfc3339(partner_received_at),
            "" if receipt_verified_at is None else rfc3339(receipt_verified_at),
            "" if sent_at is None else sent_at.astimezone(tz).isoformat(timespec=_MS),
            "" if partner_received_at is None else partner_received_at.astimezone(tz).isoformat(timespec=_MS),
            "" if latency is None else f"{latency.total_seconds():.3f}",
            status,
            defuse(status_code or ""),
            _opt(transport_pq),
            _opt(content_pq),
            defuse(detail),
        )


def render_csv(rec: Reconciliation, *, tz: ZoneInfo) -> bytes:
    """UTF-8 CSV (RFC 4180: CRLF, minimal quoting), a header row and one row per document.

    Empty cell = not applicable; local times are ISO 8601 with the zone's offset; ``latency_seconds`` has
    millisecond precision. Partner-chosen text that starts like a formula carries a leading apostrophe.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CSV_COLUMNS)
    separators = len(CSV_COLUMNS) - 1
    for row in _csv_rows(rec.lines, tz):
        text = ",".join(row)
        if text.count(",") == separators and '"' not in text and "\r" not in text and "\n" not in text:
            # No cell holds a comma, quote or line break, so none needs quoting: exactly what csv.writer writes
            # (QUOTE_MINIMAL), in a tenth of the time. The others go through csv.writer itself.
            buffer.write(text + "\r\n")
        else:
            writer.writerow(row)
    return buffer.getvalue().encode("utf-8")


# ------------------------------------------------------------------------------------------ sign & write


def verify_report_signature(data_path: Path, sig_path: Path, cert: Cert, *, now: datetime | None = None) -> bool:
    """True when ``sig_path`` is a valid detached signature over ``data_path`` by ``cert``, by the same strict
    rules as a receipt's (:func:`~sftp_pipeline.openpgp.signatures.verify_detached`, at ``now``).

    The same check with GnuPG: ``gpg --import cert.asc && gpg --verify report-….html.sig report-….html``.
    """
    try:
        verify_detached(data_path.read_bytes(), sig_path.read_bytes(), cert, now=now or datetime.now(UTC))
    except SignatureRefused:
        return False
    return True


def _publish(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``directory/name`` atomically, failing if that name exists (never overwrite)."""
    target, tmp = directory / name, None
    remove_stale_temps(directory)  # left by a run killed mid-write
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        # os.link is the atomic no-clobber rename: os.replace would silently overwrite an existing report.
        os.link(tmp, target)
    except FileExistsError as exc:
        raise ReportError(f"report file {target} already exists; refusing to overwrite it") from exc
    except OSError as exc:
        why = exc.strerror or exc
        raise ReportError(f"cannot write report {target}: {why}; check the directory is writable, has space") from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return target


def _free_stem(directory: Path, stem: str) -> str:
    suffixes = (".html", ".html.sig", ".csv", ".csv.sig")
    for n in range(MAX_NAME_SUFFIX):
        candidate = stem if n == 0 else f"{stem}-{n + 1}"
        if not any((directory / f"{candidate}{s}").exists() for s in suffixes):
            return candidate
    raise ReportError(f"{MAX_NAME_SUFFIX} reports {stem}* already exist in {directory}; is a report job looping?")


def write_report(
    rec: Reconciliation,
    directory: Path,
    *,
    signer: SigningKey,
    tz: ZoneInfo,
    audit_head: str | None = None,
) -> ReportFiles:
    """Render, sign and write the report under ``directory`` (``<state_dir>/reports``); never overwrites.

    A second report in the same second gets a ``-2``, ``-3``… suffix. Each data file is published
    before its signature, so a signature never exists without the bytes it signs.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create the report directory {directory}: {exc.strerror or exc}") from exc
    stem = _free_stem(directory, report_stem(rec))
    fingerprint = signer.cert.fingerprint
    html = render_html(rec, tz=tz, audit_head=audit_head, stem=stem, signer_fingerprint=fingerprint).encode()
    table = render_csv(rec, tz=tz)
    html_sig = sign_detached(signer, html, what=f"the report {stem}.html")
    csv_sig = sign_detached(signer, table, what=f"the report {stem}.csv")
    files = ReportFiles(
        html=_publish(directory, f"{stem}.html", html),
        html_sig=_publish(directory, f"{stem}.html.sig", html_sig),
        csv=_publish(directory, f"{stem}.csv", table),
        csv_sig=_publish(directory, f"{stem}.csv.sig", csv_sig),
        subject=report_subject(rec, tz),
    )
    dir_fd = os.open(directory, os.O_RDONLY)  # make the four names durable, not only their bytes
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return files
