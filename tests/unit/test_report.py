"""The reconciliation report: HTML and CSV rendered from Line objects covering every status, signed and written."""

from __future__ import annotations

import csv
import io
import os
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pysequoia
import pytest

from sftp_pipeline.errors import ReportError
from sftp_pipeline.openpgp import SigningKey
from sftp_pipeline.proof.reconcile import IN_CLASSES, OUT_CLASSES, Alert, Line, ReceiptNote, Reconciliation
from sftp_pipeline.reporting.render import (
    CSV_COLUMNS,
    defuse,
    format_latency,
    format_local,
    format_pq,
    render_csv,
    render_html,
    report_subject,
    verify_report_signature,
    write_report,
)

CHICAGO = ZoneInfo("America/Chicago")
NOW = datetime(2026, 11, 27, 9, 44, 12, 345000, tzinfo=UTC)
SENT_AT = NOW - timedelta(hours=30)
SLA = timedelta(hours=4)
EVIL_NAME = "<script>alert(1)</script>.xml"
FORMULA_NAME = '=HYPERLINK("http://evil.example/x","click")'
QUOTED_NAME = 'INV "2026", line\r\nbreak.xml'
AUDIT_HEAD = "f" * 64


def _line(status: str, *, direction: str = "sent", partner: str = "utility", n: int = 0, **kw: object) -> Line:
    values: dict[str, object] = {
        "direction": direction,
        "partner": partner,
        "transfer_id": f"01JDQ6Z6M2W4K8T9V0B3C5D7{n:02d}",
        "document_type": "invoice",
        "file": f"INV-{status}-{n}.xml",
        "size": 1234 + n,
        "sha256": f"{n:02d}" * 32,
        "ciphertext_sha256": f"{n + 1:02d}" * 32,
        "sent_at": SENT_AT if direction == "sent" else None,
        "partner_received_at": SENT_AT + timedelta(minutes=2, seconds=13) if status != "overdue" else None,
        "receipt_verified_at": NOW - timedelta(hours=1) if status != "overdue" else None,
        "latency": timedelta(minutes=2, seconds=13) if direction == "sent" and status != "overdue" else None,
        "status": status,
        "status_code": "signature-invalid" if status == "rejected" else None,
        "detail": f"detail of {status}",
        "action": f"action for {status}",
        "transport_pq": True if direction == "sent" else None,
        "content_pq": False if direction == "sent" else None,
        "sla": SLA if direction == "sent" else None,
    }
    values.update(kw)
    return Line(**values)  # type: ignore[arg-type]


def _rec(lines: tuple[Line, ...] | None = None) -> Reconciliation:
    if lines is None:
        sent = [_line(s, n=i) for i, s in enumerate(OUT_CLASSES)]
        received = [_line(s, direction="received", partner="aggregator2", n=20 + i) for i, s in enumerate(IN_CLASSES)]
        extra = [
            _line("rejected", n=40, file=EVIL_NAME, detail='partner said <b>no</b> & "quoted"'),
            _line("delivered", n=41, file=FORMULA_NAME, detail="-2+3"),
            _line("accepted", direction="received", partner="aggregator2", n=42, file=QUOTED_NAME, detail="@SUM(A1)"),
        ]
        # Delivered first on purpose: the renderer, not the input order, must put exceptions first.
        lines = tuple(sorted((*sent, *received, *extra), key=lambda x: x.status != "delivered"))
    note = ReceiptNote("utility", "01JX.receipt.json", None, "unknown-transfer", "<i>no such transfer</i>", NOW)
    dup = ReceiptNote("utility", "01JY.receipt.json", "01JY", "duplicate", None, NOW)
    return Reconciliation(
        party_id="aggregator",
        party_name="DER Aggregator & Co",
        period_start=NOW - timedelta(days=1),
        period_end=NOW,
        generated_at=NOW,
        lines=lines,
        unsolicited=(note,),
        duplicates=(dup,),
        alerts=(
            Alert("warning", "partner utility's OpenPGP key expires in 12 days", "AB12 expires", "Agree a roll-over."),
            Alert("critical", "1 overdue document(s) for utility", "no receipt", "Call the partner."),
        ),
    )


# ------------------------------------------------------------------------------------------------ format


@pytest.mark.parametrize(
    ("latency", "text"),
    [
        (None, "\u2013"),
        (timedelta(milliseconds=850), "850 ms"),
        (timedelta(seconds=7), "7 s"),
        (timedelta(minutes=2, seconds=13), "2 min 13 s"),
        (timedelta(hours=1, minutes=5, seconds=9), "1 h 5 min"),
        (timedelta(hours=1, seconds=9), "1 h"),
        (timedelta(days=3, hours=2, minutes=1), "3 d 2 h"),
        (timedelta(seconds=-90), "-1 min 30 s"),
    ],
)
def test_latency_is_human_readable(latency: timedelta | None, text: str) -> None:
    assert format_latency(latency) == text


def test_local_time_names_the_zone_and_pq_marks() -> None:
    assert format_local(datetime(2026, 11, 27, 9, 44, tzinfo=UTC), CHICAGO) == "2026-11-27 03:44 CST"
    assert format_local(datetime(2026, 7, 1, 9, 44, tzinfo=UTC), CHICAGO) == "2026-07-01 04:44 CDT"
    assert [format_pq(x) for x in (True, False, None)] == ["yes", "no", "\u2013"]


def test_defuse_only_formula_starts() -> None:
    assert defuse("=1+2") == "'=1+2"
    assert defuse("+1") == "'+1"
    assert defuse("-1") == "'-1"
    assert defuse("@SUM(A1)") == "'@SUM(A1)"
    assert defuse("INV=1.xml") == "INV=1.xml"
    assert defuse("") == ""


def test_subject_counts_exceptions_and_critical_alerts() -> None:
    rec = _rec()
    assert len(rec.exceptions()) == 8  # 5 sent classes + extra rejected + received rejected/pending
    assert report_subject(rec, CHICAGO) == (
        "[sftp-pipeline] aggregator reconciliation 2026-11-27: 8 exceptions, 1 critical alert"
    )
    calm = Reconciliation("utility", "Utility", None, NOW, NOW, (_line("delivered"),), (), (), ())
    assert report_subject(calm, ZoneInfo("UTC")) == "[sftp-pipeline] utility reconciliation 2026-11-27: no exceptions"


# -------------------------------------------------------------------------------------------------- HTML


class _Tags(HTMLParser):
    """Every tag and attribute, and whether open/close tags balance."""

    VOID = frozenset({"br", "hr", "meta"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs.update(name for name, _ in attrs)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> after {self.stack[-3:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def page() -> str:
    return render_html(_rec(), tz=CHICAGO, audit_head=AUDIT_HEAD)


def test_html_is_one_standalone_document_without_scripts_or_external_resources(page: str) -> None:
    parser = _Tags()
    parser.feed(page)
    parser.close()
    assert page.startswith("<!DOCTYPE html>")
    assert parser.stack == []
    assert parser.tags <= {"html", "head", "meta", "title", "body", "h1", "h2", "p", "table", "tr", "th", "td",
                           "span", "b", "br", "hr"}  # fmt: skip
    assert not {a for a in parser.attrs if a.startswith("on")}
    assert parser.attrs <= {"lang", "charset", "name", "content", "style", "cellpadding", "cellspacing", "border",
                            "colspan"}  # fmt: skip
    lowered = page.lower()
    for forbidden in ("<script", "<style", "<link", "<img", "<iframe", "javascript:", "src=", "href=", "url("):
        assert forbidden not in lowered, forbidden


def test_partner_text_is_escaped(page: str) -> None:
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.xml" in page
    assert "partner said &lt;b&gt;no&lt;/b&gt; &amp; &quot;quoted&quot;" in page
    assert "&lt;i&gt;no such transfer&lt;/i&gt;" in page
    assert "DER Aggregator &amp; Co" in page
    parser = _Tags()
    parser.feed(page)
    assert EVIL_NAME in "".join(parser.text)  # shown to the reader as typed, never run


def test_sections_in_order_alerts_on_top_critical_first(page: str) -> None:
    order = ["Alerts", "At a glance", "Exceptions (8)", "Sent (", "Received (", "Unsolicited receipts (1)",
             "Duplicate receipts (1)", "Audit log head"]  # fmt: skip
    positions = [page.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert (
        page.index("1 overdue document(s) for utility") < page.index("expires in 12 days") < page.index("At a glance")
    )
    assert "#fde8e8" in page[page.index("Alerts") : page.index("At a glance")]  # critical is coloured


def test_exceptions_most_urgent_first_with_actions(page: str) -> None:
    section = page[page.index("Exceptions (8)") : page.index("Sent (")]
    expected = ["overdue", "rejected", "mismatch", "invalid-receipt", "failed"]
    positions = [section.index(f"action for {status}") for status in expected]
    assert positions == sorted(positions)
    # Overdue is listed before anything delivered, in the section and in the whole page.
    assert section.index("INV-overdue-0.xml") < section.index("INV-delivered-late-5.xml")
    assert "INV-delivered-7.xml" not in section
    assert page.index("INV-overdue-0.xml") < page.index("INV-delivered-7.xml")
    assert "action for pending" in section  # a received document still being opened needs someone
    assert "signature-invalid" in section


def test_glance_counts_per_partner_and_status(page: str) -> None:
    start, end = page.index("At a glance"), page.index("Exceptions (8)")
    glance = page[page.rindex("<h2", 0, start) : page.rindex("<h2", 0, end)]
    for header in ("sent overdue", "sent delivered", "received accepted", "received rejected", "Total"):
        assert header in glance
    parser = _Tags()
    parser.feed(glance)
    text = " ".join(t.strip() for t in parser.text if t.strip())
    assert "utility" in text and "aggregator2" in text and "all partners" in text
    assert text.endswith(str(len(_rec().lines)))  # the grand total is the last cell


def test_full_table_columns_and_both_time_zones(page: str) -> None:
    sent = page[page.index("Sent (") : page.index("Received (")]
    for header in ("Transfer id", "Document type", "File", "Size", "SHA-256", "Sent at", "Partner received at",
                   "Receipt verified at", "Latency", "Status", "Transport PQ", "Content PQ"):  # fmt: skip
        assert f">{header}</th>" in sent, header
    assert "2026-11-26T03:44:12.345Z" in sent  # SENT_AT in UTC, ms
    assert "2026-11-25 21:44 CST" in sent  # the same moment in Chicago
    assert "2 min 13 s" in sent
    assert "1,234 B" in sent
    assert ">yes</td>" in sent and ">no</td>" in sent
    assert "00" * 32 in sent
    received = page[page.index("Received (") : page.index("Unsolicited")]
    assert "Received at (complete)" in received and "\u2013</td>" in received
    assert "America/Chicago" in page and "Generated at" in page


def test_footer_tells_how_to_verify(page: str) -> None:
    assert AUDIT_HEAD in page
    assert "gpg --verify report-20261127T094412Z.html.sig report-20261127T094412Z.html" in page


def test_empty_reconciliation_renders() -> None:
    rec = Reconciliation("utility", "Utility", None, NOW, NOW, (), (), (), ())
    page = render_html(rec, tz=ZoneInfo("UTC"))
    assert "All clear" in page and "the beginning" in page and "Audit log head" not in page
    assert render_csv(rec, tz=ZoneInfo("UTC")) == (",".join(CSV_COLUMNS) + "\r\n").encode()


# --------------------------------------------------------------------------------------------------- CSV


def test_csv_parses_back_to_the_same_values() -> None:
    rec = _rec()
    data = render_csv(rec, tz=CHICAGO)
    assert data.endswith(b"\r\n")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(rec.lines) + 1
    for line, row in zip(rec.lines, rows[1:], strict=True):
        got = dict(zip(CSV_COLUMNS, row, strict=True))
        assert got["transfer_id"] == line.transfer_id
        assert got["status"] == line.status
        assert got["size"] == str(line.size)
        assert got["sha256"] == line.sha256 and got["ciphertext_sha256"] == line.ciphertext_sha256
        assert got["status_code"] == (line.status_code or "")
        assert got["file"] == defuse(line.file)
        assert got["detail"] == defuse(line.detail)
        if line.direction == "sent":
            assert got["sent_at_utc"] == "2026-11-26T03:44:12.345Z"
            assert got["sent_at_local"] == "2026-11-25T21:44:12.345-06:00"
            assert (got["transport_pq"], got["content_pq"]) == ("yes", "no")
        else:
            assert got["sent_at_utc"] == got["sent_at_local"] == got["transport_pq"] == ""
        if line.latency is not None:
            assert float(got["latency_seconds"]) == line.latency.total_seconds()
        else:
            assert got["latency_seconds"] == ""
    by_id = {row[2]: dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]}
    assert by_id["01JDQ6Z6M2W4K8T9V0B3C5D741"]["file"] == "'" + FORMULA_NAME
    assert by_id["01JDQ6Z6M2W4K8T9V0B3C5D741"]["detail"] == "'-2+3"
    assert by_id["01JDQ6Z6M2W4K8T9V0B3C5D742"]["file"] == QUOTED_NAME  # quotes, comma, CRLF survive
    assert by_id["01JDQ6Z6M2W4K8T9V0B3C5D742"]["detail"] == "'@SUM(A1)"
    assert by_id["01JDQ6Z6M2W4K8T9V0B3C5D740"]["file"] == EVIL_NAME


def test_csv_no_cell_starts_a_formula() -> None:
    rows = list(csv.reader(io.StringIO(render_csv(_rec(), tz=CHICAGO).decode(), newline="")))
    for row in rows[1:]:
        for column, cell in zip(CSV_COLUMNS, row, strict=True):
            if column != "latency_seconds":
                assert not cell.startswith(("=", "+", "-", "@")), (column, cell)


# ------------------------------------------------------------------------------------------ sign & write


@pytest.fixture(scope="module")
def signer() -> SigningKey:
    tsk = pysequoia.Tsk.generate("Aggregator (report unit)")
    return SigningKey(tsk.extract_certificate(), tsk.signer())


def test_write_report_writes_four_signed_files(tmp_path: Path, signer: SigningKey) -> None:
    reports = tmp_path / "state" / "reports"
    files = write_report(_rec(), reports, signer=signer, tz=CHICAGO, audit_head=AUDIT_HEAD)
    assert sorted(p.name for p in reports.iterdir()) == [
        "report-20261127T094412Z.csv",
        "report-20261127T094412Z.csv.sig",
        "report-20261127T094412Z.html",
        "report-20261127T094412Z.html.sig",
    ]
    assert files.subject.startswith("[sftp-pipeline] aggregator reconciliation 2026-11-27: 8 exceptions")
    assert files.csv.read_bytes() == render_csv(_rec(), tz=CHICAGO)
    html = files.html.read_text(encoding="utf-8")
    assert signer.cert.fingerprint in html and AUDIT_HEAD in html
    assert verify_report_signature(files.html, files.html_sig, signer.cert)
    assert verify_report_signature(files.csv, files.csv_sig, signer.cert)
    assert not verify_report_signature(files.csv, files.html_sig, signer.cert)  # a signature is for its own file


@pytest.mark.parametrize("which", ["html", "csv"])
def test_one_changed_byte_fails_verification(tmp_path: Path, signer: SigningKey, which: str) -> None:
    files = write_report(_rec(), tmp_path, signer=signer, tz=CHICAGO)
    data, sig = (files.html, files.html_sig) if which == "html" else (files.csv, files.csv_sig)
    body = bytearray(data.read_bytes())
    body[len(body) // 2] ^= 0x01
    data.write_bytes(bytes(body))
    assert not verify_report_signature(data, sig, signer.cert)


def test_other_key_or_garbage_signature_fails(tmp_path: Path, signer: SigningKey) -> None:
    files = write_report(_rec(), tmp_path, signer=signer, tz=CHICAGO)
    other = pysequoia.Tsk.generate("Someone else (report unit)").extract_certificate()
    assert not verify_report_signature(files.html, files.html_sig, other)
    files.html_sig.write_bytes(b"not a signature")
    assert not verify_report_signature(files.html, files.html_sig, signer.cert)


def test_the_report_verifier_is_as_strict_as_the_receipts(tmp_path: Path, signer: SigningKey) -> None:
    """One verifier for reports and receipts: a .sig with anything beside its one signature is refused (the
    report's old verifier took any valid signature among several, and ignored trailing bytes)."""
    files = write_report(_rec(), tmp_path, signer=signer, tz=CHICAGO)
    sig = files.html_sig.read_bytes()
    files.html_sig.write_bytes(sig + sig)  # two valid signatures by the right key
    assert not verify_report_signature(files.html, files.html_sig, signer.cert)
    files.html_sig.write_bytes(sig + b"\x00trailing")
    assert not verify_report_signature(files.html, files.html_sig, signer.cert)
    files.html_sig.write_bytes(sig)
    assert verify_report_signature(files.html, files.html_sig, signer.cert)


def test_never_overwrites_an_existing_report(tmp_path: Path, signer: SigningKey) -> None:
    first = write_report(_rec(), tmp_path, signer=signer, tz=CHICAGO)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    second = write_report(_rec(), tmp_path, signer=signer, tz=CHICAGO)
    assert second.html.name == "report-20261127T094412Z-2.html"
    assert second.csv_sig.name == "report-20261127T094412Z-2.csv.sig"
    assert "gpg --verify report-20261127T094412Z-2.html.sig report-20261127T094412Z-2.html" in second.html.read_text()
    assert {p: p.read_bytes() for p in before} == before
    assert first.html != second.html
    assert verify_report_signature(second.html, second.html_sig, signer.cert)
    assert len(list(tmp_path.iterdir())) == 8  # no temporary files left behind


def test_unwritable_directory_is_a_clear_error(tmp_path: Path, signer: SigningKey) -> None:
    blocker = tmp_path / "reports"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(ReportError, match=r"report directory .*reports"):
        write_report(_rec(), blocker, signer=signer, tz=CHICAGO)
    if os.geteuid() != 0:  # root ignores directory permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ReportError, match="locked"):
            write_report(_rec(), locked, signer=signer, tz=CHICAGO)
