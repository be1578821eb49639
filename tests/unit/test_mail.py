"""The report mail: message shape, envelope, login rules checked before any connection."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from sftp_pipeline.config import Secret, Smtp
from sftp_pipeline.errors import (
    MailAuthError,
    MailError,
    MailPermanentError,
    MailSecurityError,
    MailTemporaryError,
    PipelineError,
)
from sftp_pipeline.fsutil import STALE_TEMP_SECONDS
from sftp_pipeline.keys import Passphrase
from sftp_pipeline.reporting.mail import (
    ENVELOPE_HEADER,
    MailQueue,
    ReportMail,
    build_message,
    deliver,
    envelope_recipients,
    flush,
    html_to_text,
    report_mail,
    smtp_password,
)

PASSWORD = "never-shown-pw"


def smtp(**overrides: Any) -> Smtp:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 1,  # nothing listens: any test here that connects would fail loudly
        "sender": "Pipeline <reports@aggregator.example>",
        "recipients": ["a@aggregator.example", "b@aggregator.example"],
        "timeout": 1.0,
    }
    values.update(overrides)
    return Smtp(**values)


def test_message_shape_and_exact_attachment_bytes() -> None:
    csv = b"a,b\r\n1,\xc3\x9c\r\n"
    mail = ReportMail(
        "Report", "<p>Hello <b>team</b></p><table><tr><td>x</td><td>1</td></tr></table>", [("r.csv", csv, "text/csv")]
    )
    msg = build_message(mail, smtp(), now=datetime(2026, 11, 27, 9, 44, tzinfo=UTC))
    again = BytesParser(policy=policy.default).parsebytes(msg.as_bytes(policy=policy.SMTP))
    assert again["To"] == "a@aggregator.example, b@aggregator.example"
    assert again["Date"] == "Fri, 27 Nov 2026 09:44:00 +0000"
    assert again["Message-ID"].endswith("@aggregator.example>")
    alternative, attachment = again.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert attachment.get_filename() == "r.csv" and attachment.get_payload(decode=True) == csv


def test_html_to_text_keeps_rows_and_drops_styles() -> None:
    html = "<html><head><style>p{}</style></head><body><h1>Title</h1><tr><td>a</td><td>1</td></tr></body></html>"
    assert html_to_text(html) == "Title\na\t1\n"


@pytest.mark.parametrize("name", ["../x.csv", "a/b.csv", "", "x\n.csv", '"x".csv'])
def test_attachment_names_must_be_plain(name: str) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        build_message(ReportMail("s", "<p/>", [(name, b"", "text/csv")]), smtp())


def test_envelope_prefers_the_requeue_header() -> None:
    msg = build_message(ReportMail("s", "<p/>"), smtp())
    assert envelope_recipients(msg) == ["a@aggregator.example", "b@aggregator.example"]
    msg[ENVELOPE_HEADER] = "b@aggregator.example"
    assert envelope_recipients(msg) == ["b@aggregator.example"]


def test_report_mail_from_files(tmp_path: Path) -> None:
    html, csv, sig = tmp_path / "r.html", tmp_path / "r.csv", tmp_path / "r.csv.sig"
    html.write_text("<p>x</p>")
    csv.write_bytes(b"a\r\n")
    sig.write_bytes(b"\x88\x00")
    mail = report_mail("s", html, [csv, sig])
    assert mail.html == "<p>x</p>"
    assert mail.attachments == [
        ("r.csv", b"a\r\n", "text/csv"),
        ("r.csv.sig", b"\x88\x00", "application/pgp-signature"),
    ]
    with pytest.raises(MailError, match=r"r\.missing"):
        report_mail("s", html, [tmp_path / "r.missing"])


def test_error_tree() -> None:
    for cls in (MailTemporaryError, MailSecurityError, MailPermanentError, MailAuthError):
        assert issubclass(cls, MailError) and issubclass(cls, PipelineError)
    assert issubclass(MailAuthError, MailPermanentError)
    assert MailTemporaryError.retryable


def test_password_is_never_sent_in_clear_and_checked_before_connecting() -> None:
    relay = smtp(security="none", trusted_local_relay=True, username="u", password=Secret(env="X"))
    with pytest.raises(MailSecurityError, match="without TLS") as caught:
        deliver(build_message(ReportMail("s", "<p/>"), relay), relay, password=Passphrase(PASSWORD))
    assert PASSWORD not in str(caught.value)


def test_username_without_password_is_a_clear_error() -> None:
    cfg = smtp(username="u")
    with pytest.raises(MailAuthError, match="no password"):
        deliver(build_message(ReportMail("s", "<p/>"), cfg), cfg, password=None)


def test_smtp_password_sources(tmp_path: Path) -> None:
    assert smtp_password(smtp()) is None
    cfg = smtp(username="u", password=Secret(env="SMTP_PW"))
    got = smtp_password(cfg, environ={"SMTP_PW": PASSWORD})
    assert got is not None and got.reveal() == PASSWORD and PASSWORD not in repr(got)
    with pytest.raises(PipelineError, match="SMTP_PW"):
        smtp_password(cfg, environ={})
    loose = tmp_path / "pw"
    loose.write_text(PASSWORD)
    loose.chmod(0o644)
    with pytest.raises(PipelineError, match="chmod 600"):
        smtp_password(smtp(username="u", password=Secret(file=loose)))


def test_a_keyed_message_queued_again_replaces_the_queued_copy(tmp_path: Path) -> None:
    queue = MailQueue(tmp_path / "outbox")
    first = build_message(ReportMail("Report 1", "<p>one</p>", []), smtp())
    again = build_message(ReportMail("Report 1, re-made", "<p>one</p>", []), smtp())
    other = build_message(ReportMail("Report 2", "<p>two</p>", []), smtp())
    path = queue.put(first, key="20261126T000000000000Z-period")
    assert queue.put(again, key="20261126T000000000000Z-period") == path
    unkeyed = queue.put(other)
    assert queue.pending() == [path, unkeyed]  # a period's start sorts before the moment it is reported
    assert queue.load(path)["Subject"] == "Report 1, re-made"


def test_flush_removes_a_mail_a_killed_process_left_half_written(tmp_path: Path) -> None:
    queue = MailQueue(tmp_path / "outbox-mail")
    queue.directory.mkdir()
    half = queue.directory / ".20261127T010203000000Z-a1b2.eml.c3d4.tmp"
    half.write_bytes(b"Subject: cut off mid-wri")
    long_ago = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(half, (long_ago, long_ago))

    result = flush(queue, smtp(), password=None)  # nothing queued: no connection is made

    assert not half.exists()
    assert result.ok and result.sent == []
