"""Emailing the report through a real SMTP server (aiosmtpd) on 127.0.0.1: TLS, AUTH, refusals, the outbox."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

import pytest

from sftp_pipeline.config import Smtp
from sftp_pipeline.errors import MailAuthError, MailSecurityError, MailTemporaryError, PipelineError
from sftp_pipeline.keys import Passphrase
from sftp_pipeline.reporting.mail import (
    ENVELOPE_HEADER,
    MailQueue,
    ReportMail,
    SendResult,
    build_message,
    deliver,
    email_report,
    send_or_queue,
    smtp_password,
)
from tests.peers.smtp import (
    LOOPBACK,
    PASSWORD_ENV,
    RECIPIENTS,
    SENDER,
    SMTP_PASSWORD,
    SMTP_USER,
    SmtpPeer,
    SmtpPeerFactory,
)

CSV = "partner,status,count\r\nutility,delivered,12\r\nutility,overdue,1\r\nÜberlandwerk,pending,3\r\n".encode()
SIGNATURE = b"-----BEGIN PGP SIGNATURE-----\n\nwnUEARYKAB0WIQ==\n-----END PGP SIGNATURE-----\n"
HTML = "<html><body><h1>Reconciliation 2026-11-27</h1><table><tr><td>overdue</td><td>1</td></tr></table></body></html>"


def report(subject: str = "Reconciliation report 2026-11-27") -> ReportMail:
    return ReportMail(
        subject=subject,
        html=HTML,
        attachments=[
            ("reconciliation-2026-11-27.csv", CSV, "text/csv"),
            ("reconciliation-2026-11-27.csv.asc", SIGNATURE, "application/pgp-signature"),
        ],
    )


@pytest.fixture
def queue(tmp_path: Path) -> MailQueue:
    return MailQueue.in_state_dir(tmp_path / "state")


@pytest.fixture(autouse=True)
def no_password_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    assert SMTP_PASSWORD not in caplog.text
    assert "wrong-" not in caplog.text


def send(peer_smtp: Smtp, queue: MailQueue, msg: EmailMessage | None) -> SendResult:
    result = send_or_queue(msg, peer_smtp, queue, password=smtp_password(peer_smtp))
    if result.error is not None:
        assert_no_secret(result.error)
    return result


def assert_no_secret(error: BaseException) -> None:
    seen: BaseException | None = error
    while seen is not None:
        assert SMTP_PASSWORD not in str(seen) and "wrong-" not in str(seen)
        seen = seen.__cause__ or seen.__context__


def check_report(peer: SmtpPeer, index: int = 0) -> EmailMessage:
    got = peer.received[index]
    assert got.mail_from == SENDER
    assert got.tls
    msg = got.message()
    assert msg.get_content_type() == "multipart/mixed"
    body = msg.get_body(preferencelist=("html",))
    assert body is not None and "Reconciliation 2026-11-27" in body.get_content()
    text = msg.get_body(preferencelist=("plain",))
    assert text is not None and "overdue\t1" in text.get_content()
    attachments = {part.get_filename(): part for part in msg.iter_attachments()}
    assert sorted(attachments) == ["reconciliation-2026-11-27.csv", "reconciliation-2026-11-27.csv.asc"]
    assert attachments["reconciliation-2026-11-27.csv"].get_content_type() == "text/csv"
    assert attachments["reconciliation-2026-11-27.csv"].get_payload(decode=True) == CSV
    assert attachments["reconciliation-2026-11-27.csv.asc"].get_payload(decode=True) == SIGNATURE
    assert ENVELOPE_HEADER not in msg
    return msg


def test_starttls_with_login_delivers_html_and_csv(smtp_peer: SmtpPeer, queue: MailQueue) -> None:
    smtp = smtp_peer.smtp()
    msg = build_message(report(), smtp)
    result = send(smtp, queue, msg)
    assert result.ok and len(result.sent) == 1
    got = smtp_peer.received[0]
    assert got.login == SMTP_USER
    assert got.rcpt_tos == RECIPIENTS
    assert check_report(smtp_peer)["Message-ID"] == msg["Message-ID"]
    assert queue.pending() == [] and queue.failed() == []


def test_implicit_tls_with_login_delivers(smtp_peer_factory: SmtpPeerFactory, queue: MailQueue) -> None:
    peer = smtp_peer_factory("tls")
    smtp = peer.smtp()
    assert send(smtp, queue, build_message(report(), smtp)).ok
    assert peer.received[0].login == SMTP_USER
    check_report(peer)


def test_server_down_queues_then_older_reports_go_first(smtp_peer_factory: SmtpPeerFactory, queue: MailQueue) -> None:
    peer = smtp_peer_factory("starttls")
    smtp = peer.smtp()
    peer.stop()  # nothing listens on the port now
    first = send(smtp, queue, build_message(report("first"), smtp))
    second = send(smtp, queue, build_message(report("second"), smtp))
    assert isinstance(second.error, MailTemporaryError)
    assert f"{LOOPBACK}:{peer.port}" in str(second.error)
    assert not first.sent and len(first.queued) == 1 and len(second.queued) == 2
    assert all(p.suffix == ".eml" and p.stat().st_mode & 0o077 == 0 for p in queue.pending())

    peer.start()  # same port, server back
    result = send(smtp, queue, None)
    assert result.ok and result.sent == second.queued
    assert [r.message()["Subject"] for r in peer.received] == ["first", "second"]
    check_report(peer, 0)
    assert queue.pending() == []


def test_server_that_never_answers_times_out_and_queues(smtp_peer: SmtpPeer, queue: MailQueue) -> None:
    with socket.create_server((LOOPBACK, 0)) as silent:  # accepts TCP, never says 220
        smtp = smtp_peer.smtp(port=silent.getsockname()[1], timeout=0.5)
        result = send(smtp, queue, build_message(report(), smtp))
    assert isinstance(result.error, MailTemporaryError) and "did not answer in time" in str(result.error)
    assert len(queue.pending()) == 1


@pytest.mark.parametrize("where", ["rcpt", "data"])
def test_451_queues_then_delivers(smtp_peer_factory: SmtpPeerFactory, queue: MailQueue, where: str) -> None:
    busy = "451 4.3.0 Mailbox temporarily unavailable"
    if where == "rcpt":
        peer = smtp_peer_factory(rcpt_replies=dict.fromkeys(RECIPIENTS, busy))
    else:
        peer = smtp_peer_factory(data_reply=busy)
    smtp = peer.smtp()
    result = send(smtp, queue, build_message(report(), smtp))
    assert isinstance(result.error, MailTemporaryError) and "451" in str(result.error)
    assert len(result.queued) == 1 and not peer.received

    peer.handler.rcpt_replies.clear()
    peer.handler.data_reply = None
    again = send(smtp, queue, None)
    assert again.ok and again.sent == result.queued
    assert peer.received[0].rcpt_tos == RECIPIENTS
    check_report(peer)


def test_no_starttls_is_refused_and_the_report_waits(smtp_peer_factory: SmtpPeerFactory, queue: MailQueue) -> None:
    peer = smtp_peer_factory("plain")
    smtp = peer.smtp()  # security = "starttls"
    result = send(smtp, queue, build_message(report(), smtp))
    assert isinstance(result.error, MailSecurityError)
    assert "does not offer STARTTLS" in str(result.error) and "stays in the outbox" in str(result.error)
    assert not peer.received and not peer.handler.auth_attempts
    assert len(queue.pending()) == 1 and queue.failed() == []


def test_untrusted_certificate_is_refused(smtp_peer: SmtpPeer, queue: MailQueue) -> None:
    smtp = smtp_peer.smtp(ca_file=None)
    result = send(smtp, queue, build_message(report(), smtp))
    assert isinstance(result.error, MailSecurityError) and "ca_file" in str(result.error)
    assert not smtp_peer.received and not smtp_peer.handler.auth_attempts
    assert len(queue.pending()) == 1


def test_bad_password_is_an_auth_error_naming_user_and_source(
    smtp_peer: SmtpPeer, queue: MailQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong-password")
    smtp = smtp_peer.smtp()
    result = send(smtp, queue, build_message(report(), smtp))
    error = result.error
    assert isinstance(error, MailAuthError) and isinstance(error, PipelineError)
    assert "535" in str(error) and SMTP_USER in str(error) and PASSWORD_ENV in str(error)
    assert set(smtp_peer.handler.auth_attempts) == {SMTP_USER}  # smtplib tries PLAIN, then LOGIN
    assert not smtp_peer.received and len(queue.pending()) == 1 and queue.failed() == []

    monkeypatch.setenv(PASSWORD_ENV, SMTP_PASSWORD)  # fixed: the waiting report goes
    assert send(smtp, queue, None).ok
    check_report(smtp_peer)


def test_password_from_a_0600_file(smtp_peer: SmtpPeer, queue: MailQueue, tmp_path: Path) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text(SMTP_PASSWORD + "\n")
    secret.chmod(0o600)
    smtp = smtp_peer.smtp(password={"file": secret})
    assert send(smtp, queue, build_message(report(), smtp)).ok
    assert smtp_peer.received[0].login == SMTP_USER


@pytest.mark.parametrize("where", ["rcpt", "data"])
def test_550_moves_the_report_to_failed_with_a_reason(
    smtp_peer_factory: SmtpPeerFactory, queue: MailQueue, where: str
) -> None:
    refused = "550 5.1.1 No such user here"
    if where == "rcpt":
        peer = smtp_peer_factory(rcpt_replies=dict.fromkeys(RECIPIENTS, refused))
    else:
        peer = smtp_peer_factory(data_reply="554 5.6.0 Message content rejected")
    smtp = peer.smtp()
    older = send(smtp_peer_factory("starttls", start=False).smtp(port=1), queue, build_message(report("older"), smtp))
    assert older.queued  # port 1: nothing listens; it waits in the outbox

    result = send(smtp, queue, build_message(report("newer"), smtp))
    assert result.error is None and not result.sent and not result.queued
    assert len(result.failed) == 2  # both refused for good, neither lost
    failed = queue.failed()
    assert [p.name for p in failed] == [name for name, _ in result.failed]
    for path in failed:
        reason = path.with_name(path.name + ".reason").read_text()
        assert ("550" if where == "rcpt" else "554") in reason
        assert queue.load(path)["Subject"] in {"older", "newer"}
    assert queue.pending() == [] and not peer.received


def test_partly_refused_recipients_are_split(smtp_peer_factory: SmtpPeerFactory, queue: MailQueue) -> None:
    later, never = RECIPIENTS[1], "nobody@aggregator.example"
    peer = smtp_peer_factory(rcpt_replies={later: "452 4.2.2 Mailbox full", never: "550 5.1.1 No such user"})
    smtp = peer.smtp(recipients=[*RECIPIENTS, never])
    result = send(smtp, queue, build_message(report(), smtp))
    assert len(result.sent) == 1 and len(result.queued) == 1 and len(result.failed) == 1
    assert peer.received[0].rcpt_tos == [RECIPIENTS[0]]
    assert never in result.failed[0][1] and "550" in result.failed[0][1]
    failed_copy = queue.load(queue.failed()[0])
    assert failed_copy[ENVELOPE_HEADER] == never

    peer.handler.rcpt_replies.clear()
    again = send(smtp, queue, None)
    assert again.ok and peer.received[1].rcpt_tos == [later]
    check_report(peer, 1)  # the envelope header is not sent


def test_trusted_local_relay_without_tls(smtp_peer_factory: SmtpPeerFactory, queue: MailQueue) -> None:
    peer = smtp_peer_factory("plain")
    smtp = peer.smtp(security="none", trusted_local_relay=True, username=None, password=None, ca_file=None)
    assert send(smtp, queue, build_message(report(), smtp)).ok
    assert peer.received[0].login is None and not peer.received[0].tls


def test_no_password_over_clear_text_even_to_a_trusted_relay(
    smtp_peer_factory: SmtpPeerFactory, queue: MailQueue
) -> None:
    peer = smtp_peer_factory("plain")
    smtp = peer.smtp(security="none", trusted_local_relay=True)
    with pytest.raises(MailSecurityError, match="without TLS") as caught:
        deliver(build_message(report(), smtp), smtp, password=Passphrase(SMTP_PASSWORD))
    assert_no_secret(caught.value)
    assert not peer.received and not peer.handler.auth_attempts


def test_email_report_queues_before_reading_the_password(
    smtp_peer: SmtpPeer, queue: MailQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV)
    smtp = smtp_peer.smtp()
    result = email_report(build_message(report(), smtp), smtp, queue)
    assert isinstance(result.error, MailAuthError) and PASSWORD_ENV in str(result.error)
    assert len(result.queued) == 1 and not smtp_peer.received

    monkeypatch.setenv(PASSWORD_ENV, SMTP_PASSWORD)
    again = email_report(None, smtp, queue)
    assert again.ok and again.sent == result.queued
    check_report(smtp_peer)


def test_two_flushes_at_once_send_each_queued_report_once(smtp_peer: SmtpPeer, queue: MailQueue) -> None:
    """The daemon's report job and an operator's `report --email` emptying the outbox at the same moment."""
    smtp = smtp_peer.smtp()
    sent_ids = {queue.load(queue.put(build_message(report(f"r{n}"), smtp)))["Message-ID"] for n in range(4)}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: send(smtp, queue, None), range(2)))

    assert all(r.error is None for r in results), [r.error for r in results]
    assert sorted(name for r in results for name in r.sent) == sorted(set(n for r in results for n in r.sent))
    assert sum(len(r.sent) for r in results) == 4
    assert sorted(got.message()["Message-ID"] for got in smtp_peer.received) == sorted(sent_ids)
    assert queue.pending() == []
