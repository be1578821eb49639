"""The on-disk mail outbox: atomic, ordered, private, and nothing in it is ever deleted unsent."""

from __future__ import annotations

import time
from pathlib import Path

from sftp_pipeline.config import Smtp
from sftp_pipeline.reporting.mail import MailQueue, ReportMail, build_message

SMTP = Smtp(host="127.0.0.1", sender="reports@aggregator.example", recipients=["s@aggregator.example"])


def message(subject: str) -> ReportMail:
    return ReportMail(subject, "<p>x</p>", [("r.csv", b"a,b\r\n", "text/csv")])


def test_put_is_private_ordered_and_round_trips(tmp_path: Path) -> None:
    queue = MailQueue.in_state_dir(tmp_path / "state")
    assert queue.pending() == [] and queue.failed() == []
    first = queue.put(build_message(message("first"), SMTP))
    time.sleep(0.002)
    second = queue.put(build_message(message("second"), SMTP))
    assert queue.pending() == [first, second]
    assert queue.directory == tmp_path / "state" / "outbox-mail"
    assert queue.directory.stat().st_mode & 0o077 == 0 and first.stat().st_mode & 0o777 == 0o600
    loaded = queue.load(first)
    assert loaded["Subject"] == "first"
    (attachment,) = loaded.iter_attachments()
    assert attachment.get_payload(decode=True) == b"a,b\r\n"


def test_temporary_files_from_a_crash_are_not_pending(tmp_path: Path) -> None:
    queue = MailQueue(tmp_path / "outbox")
    kept = queue.put(build_message(message("kept"), SMTP))
    (queue.directory / ".20260101T000000000000Z-dead.eml.1234.tmp").write_bytes(b"partial")
    assert queue.pending() == [kept]


def test_fail_moves_with_a_reason_and_remove_forgets(tmp_path: Path) -> None:
    queue = MailQueue(tmp_path / "outbox")
    bad = queue.put(build_message(message("bad"), SMTP))
    good = queue.put(build_message(message("good"), SMTP))
    moved = queue.fail(bad, "550 5.1.1 no such user")
    assert queue.failed() == [moved] and not bad.exists()
    assert moved.with_name(moved.name + ".reason").read_text() == "550 5.1.1 no such user\n"
    queue.remove(good)
    queue.remove(good)  # twice is harmless (a crash after the first)
    assert queue.pending() == []
    assert queue.load(moved)["Subject"] == "bad"
