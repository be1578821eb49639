"""A reconciliation of many documents: the HTML lists the first MAX_HTML_ROWS per table, the CSV every line."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sftp_pipeline.proof.reconcile import Line, Reconciliation
from sftp_pipeline.reporting.render import MAX_HTML_ROWS, render_csv, render_html

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def line(n: int) -> Line:
    return Line(
        direction="sent",
        partner="utility",
        transfer_id=f"T{n:06d}",
        document_type="invoice",
        file=f"INV-{n}.xml",
        size=10,
        sha256="a" * 64,
        ciphertext_sha256="b" * 64,
        sent_at=NOW,
        partner_received_at=NOW,
        receipt_verified_at=NOW,
        latency=None,
        status="delivered",
        status_code=None,
        detail="",
        action="",
        transport_pq=False,
        content_pq=False,
        sla=None,
    )


def test_the_html_caps_each_table_and_points_to_the_csv() -> None:
    extra = 5
    rec = Reconciliation(
        "aggregator", "A", None, NOW, NOW, tuple(line(n) for n in range(MAX_HTML_ROWS + extra)), (), (), ()
    )
    html = render_html(rec, tz=ZoneInfo("UTC"))
    assert f"… and {extra} more" in html
    assert f"INV-{MAX_HTML_ROWS - 1}.xml" in html and f"INV-{MAX_HTML_ROWS}.xml" not in html
    assert render_csv(rec, tz=ZoneInfo("UTC")).count(b"\r\n") == MAX_HTML_ROWS + extra + 1  # header + every line
