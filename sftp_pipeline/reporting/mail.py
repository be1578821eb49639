"""Emailing the reconciliation report to settlement staff, with an on-disk outbox so no report is lost.

Every report goes through the outbox (``state_dir/outbox-mail``) first: :func:`email_report` (what the
CLI calls) writes the message there atomically, reads the password, then sends every queued message oldest
first; ``email_report(None, …)`` just retries the outbox. What happens to a queued message:

* sent → removed from the outbox (a crash between the two re-sends it once; the Message-ID is unchanged,
  so mail systems can tell it is the same report);
* server down, timeout, 4xx, TLS or login problem → stays in the outbox and goes on the next run;
* 5xx to the sender, the recipients or the content → moved to ``outbox-mail/failed/`` with a ``.reason``
  file beside it (kept, never deleted) and reported.

Security: STARTTLS or implicit TLS with the server certificate and host name verified (never disabled;
``ca_file`` adds a private CA); no fallback to clear text when STARTTLS is not offered; clear text only to a
``trusted_local_relay``, and never a password over a connection without TLS. The password is a
:class:`~sftp_pipeline.keys.Passphrase` and appears in no message or log line.

Errors (all :class:`~sftp_pipeline.errors.PipelineError`)::

    MailError                    a report could not be emailed
    ├── MailTemporaryError       server down, timeout, 4xx: retried on the next run
    ├── MailSecurityError        no STARTTLS offered, certificate not trusted, AUTH without TLS
    └── MailPermanentError       5xx: the server refuses this message (moved to failed/)
        ├── MailAuthError        the login is refused (kept queued until the password is fixed)
        └── MailRecipientsRefused  every recipient refused, some for good (split per recipient)
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
import smtplib
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, getaddresses, make_msgid
from html.parser import HTMLParser
from pathlib import Path

from sftp_pipeline.config import Smtp
from sftp_pipeline.errors import (
    MailAuthError,
    MailError,
    MailPermanentError,
    MailRecipientsRefused,
    MailSecurityError,
    MailTemporaryError,
    PipelineError,
)
from sftp_pipeline.faults import crash_point
from sftp_pipeline.fsutil import fsync_dir, remove_stale_temps
from sftp_pipeline.keys import Passphrase, read_passphrase
from sftp_pipeline.locks import hold, lock_path

log = logging.getLogger(__name__)

OUTBOX_DIR_NAME = "outbox-mail"  # under state_dir
FAILED_DIR_NAME = "failed"  # under the outbox: refused for good, kept with a .reason file
QUEUE_SUFFIX = ".eml"
REASON_SUFFIX = ".reason"
# Why a private header: a report partly refused (some recipients 4xx) is re-queued for just those
# recipients; the header carries that envelope and is removed before the message is sent.
ENVELOPE_HEADER = "X-Sftp-Pipeline-Envelope-To"
# Why 0600/0700: reports carry settlement figures; only the service account reads the outbox.
FILE_MODE = 0o600
DIR_MODE = 0o700
# Why TLS 1.2: the oldest version still considered safe (RFC 8996 retired 1.0 and 1.1).
MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2
# Why the host name and not getfqdn(): getfqdn() does a DNS lookup that can hang for the whole timeout.
EHLO_NAME = socket.gethostname() or "localhost"


# ---------------------------------------------------------------------------------------------- errors


# ---------------------------------------------------------------------------------------------- message


@dataclass(frozen=True)
class ReportMail:
    """What to send: a subject, the HTML report, and attachments ``(filename, bytes, "type/subtype")``."""

    subject: str
    html: str
    attachments: Sequence[tuple[str, bytes, str]] = ()
    text: str | None = None  # the plain-text alternative; derived from the HTML when None


# MIME types of the files a report consists of; anything else goes as opaque bytes.
MIME_BY_SUFFIX = {
    ".csv": "text/csv",
    ".html": "text/html",
    ".sig": "application/pgp-signature",
    ".asc": "application/pgp-signature",
}


def report_mail(subject: str, html: Path, attachments: Sequence[Path]) -> ReportMail:
    """A :class:`ReportMail` from files on disk: ``html`` is the body, each attachment goes byte for byte."""
    try:
        body = html.read_text(encoding="utf-8")
        parts = [
            (p.name, p.read_bytes(), MIME_BY_SUFFIX.get(p.suffix, "application/octet-stream")) for p in attachments
        ]
    except (OSError, UnicodeDecodeError) as exc:
        raise MailError(f"cannot read the report to email: {exc}; check that the report was written") from exc
    return ReportMail(subject=subject, html=body, attachments=parts)


class _TextOf(HTMLParser):
    """The visible text of an HTML document, one block per line (for the text/plain alternative)."""

    _BLOCKS = frozenset({"p", "div", "tr", "br", "h1", "h2", "h3", "h4", "li", "table", "section"})
    _HIDDEN = frozenset({"style", "script", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append("\t")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(" ".join(data.split()) if data.strip() else "")

    def text(self) -> str:
        lines = [line.strip() for line in "".join(self.parts).splitlines()]
        return "\n".join(line for line in lines if line) + "\n"


def html_to_text(html: str) -> str:
    parser = _TextOf()
    parser.feed(html)
    parser.close()
    return parser.text()


def build_message(mail: ReportMail, smtp: Smtp, *, now: datetime | None = None) -> EmailMessage:
    """multipart/mixed: (text/plain + text/html alternatives), then each attachment, byte for byte."""
    for name, _, mime in mail.attachments:
        if not name or any(c in name for c in '/\\"') or any(ord(c) < 0x20 for c in name) or name in (".", ".."):
            raise ValueError(f"attachment name {name!r} is not a plain file name")
        if mime.count("/") != 1:
            raise ValueError(f"attachment {name!r}: {mime!r} is not a 'type/subtype' MIME type")
    msg = EmailMessage()
    msg["Subject"] = mail.subject
    msg["From"] = smtp.sender
    msg["To"] = ", ".join(smtp.recipients)
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    domain = smtp.sender.rpartition("@")[2].strip("<> ") or None
    msg["Message-ID"] = make_msgid(domain=domain)
    msg.set_content(mail.text if mail.text is not None else html_to_text(mail.html))
    msg.add_alternative(mail.html, subtype="html")
    for name, data, mime in mail.attachments:
        maintype, subtype = mime.split("/")
        msg.add_attachment(bytes(data), maintype=maintype, subtype=subtype, filename=name)
    return msg


def envelope_recipients(msg: EmailMessage) -> list[str]:
    """Who gets ``msg``: the re-queue header when present, else every To and Cc address."""
    override = msg.get_all(ENVELOPE_HEADER)
    fields = override if override else [*(msg.get_all("To") or []), *(msg.get_all("Cc") or [])]
    return [addr for _, addr in getaddresses([str(f) for f in fields]) if addr]


# ---------------------------------------------------------------------------------------------- queue


class MailQueue:
    """The on-disk outbox: one ``.eml`` per message, named so that name order is age order."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.failed_dir = self.directory / FAILED_DIR_NAME

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> MailQueue:
        return cls(Path(state_dir) / OUTBOX_DIR_NAME)

    def __repr__(self) -> str:
        return f"MailQueue({str(self.directory)!r})"

    def put(self, msg: EmailMessage, *, key: str | None = None) -> Path:
        """Write ``msg`` into the outbox atomically (temp file, fsync, rename, fsync dir); returns its path.

        ``key`` (a file-name-safe string that sorts by age) names the message for good: putting the same key
        again replaces a still queued copy, so a report re-made after a crash is mailed once, not twice.
        """
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.directory / f"{key or f'{stamp}-{secrets.token_hex(4)}'}{QUEUE_SUFFIX}"
        self._write_atomic(path, msg.as_bytes(policy=policy.SMTP))
        return path

    def pending(self) -> list[Path]:
        """Queued messages, oldest first."""
        return self._list(self.directory, QUEUE_SUFFIX)

    def failed(self) -> list[Path]:
        """Messages refused for good, oldest first (each with a ``.reason`` file beside it)."""
        return self._list(self.failed_dir, QUEUE_SUFFIX)

    def load(self, path: Path) -> EmailMessage:
        try:
            with path.open("rb") as fh:
                parsed = BytesParser(policy=policy.default).parse(fh)
        except OSError as exc:
            raise MailError(f"{path}: cannot read the queued report mail: {exc.strerror}") from exc
        assert isinstance(parsed, EmailMessage)  # policy.default always builds EmailMessage
        return parsed

    def remove(self, path: Path) -> None:
        """Forget a sent message."""
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise MailError(f"{path}: sent, but cannot remove it from the outbox: {exc.strerror}") from exc
        fsync_dir(self.directory)

    def fail(self, path: Path, reason: str) -> Path:
        """Move a queued message to ``failed/`` with ``<name>.reason`` beside it; returns the new path."""
        target = self.failed_dir / path.name
        self._write_atomic(self.failed_dir / (path.name + REASON_SUFFIX), (reason.rstrip() + "\n").encode())
        try:
            os.replace(path, target)
        except OSError as exc:
            raise MailError(f"{path}: cannot move the refused report mail to {self.failed_dir}: {exc}") from exc
        fsync_dir(self.failed_dir)
        fsync_dir(self.directory)
        return target

    @staticmethod
    def _list(directory: Path, suffix: str) -> list[Path]:
        try:
            names = sorted(p for p in directory.iterdir() if p.name.endswith(suffix) and not p.name.startswith("."))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise MailError(f"{directory}: cannot list the mail outbox: {exc.strerror}") from exc
        return [p for p in names if p.is_file()]

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise MailError(f"{path}: cannot write to the mail outbox: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------------------------------------- SMTP


def smtp_password(smtp: Smtp, environ: Mapping[str, str] | None = None) -> Passphrase | None:
    """The SMTP password from the env var or 0600 file ``[smtp] password`` names, or None when none is set."""
    if smtp.password is None:
        return None
    return read_passphrase(smtp.password, what="SMTP account", environ=environ)


def tls_context(smtp: Smtp) -> ssl.SSLContext:
    """System CAs plus ``ca_file``; certificate and host name always verified."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = MIN_TLS_VERSION
    if smtp.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(smtp.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise MailSecurityError(
                f"{smtp.ca_file}: cannot load the CA certificate named by [smtp] ca_file ({exc}); "
                "give a PEM file with the relay's CA certificate"
            ) from exc
    return ctx


def _where(smtp: Smtp) -> str:
    return f"SMTP server {smtp.host}:{smtp.effective_port}"


def _password_source(smtp: Smtp) -> str:
    if smtp.password is not None and smtp.password.env:
        return f"environment variable {smtp.password.env}"
    if smtp.password is not None and smtp.password.file:
        return f"file {smtp.password.file}"
    return "the [smtp] password setting"


def _reply(exc: smtplib.SMTPResponseException, password: Passphrase | None) -> str:
    raw = exc.smtp_error
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    text = f"{exc.smtp_code} {' '.join(text.split())}"
    secret = password.reveal() if password is not None else ""
    return text.replace(secret, "<hidden>") if secret else text


def _by_code(code: int, message: str) -> MailError:
    return MailTemporaryError(message) if 400 <= code < 500 else MailPermanentError(message)


def _open(smtp: Smtp) -> smtplib.SMTP:
    """Connect and secure the session as ``smtp.security`` says (refusing any downgrade)."""
    where = _where(smtp)
    conn: smtplib.SMTP
    if smtp.security == "tls":
        conn = smtplib.SMTP_SSL(
            smtp.host, smtp.effective_port, local_hostname=EHLO_NAME, timeout=smtp.timeout, context=tls_context(smtp)
        )
    else:
        conn = smtplib.SMTP(smtp.host, smtp.effective_port, local_hostname=EHLO_NAME, timeout=smtp.timeout)
    try:
        conn.ehlo()
        if smtp.security == "starttls":
            if not conn.has_extn("starttls"):
                raise MailSecurityError(
                    f"{where} does not offer STARTTLS, and [smtp] security = 'starttls'; refusing to send the "
                    "report in clear text. Enable STARTTLS on the relay, or use security = 'tls' if it listens "
                    "with implicit TLS (port 465). The report stays in the outbox and goes once this is fixed"
                )
            conn.starttls(context=tls_context(smtp))
            conn.ehlo()
    except BaseException:
        conn.close()
        raise
    return conn


def _check_login_settings(smtp: Smtp, password: Passphrase | None) -> None:
    """Before connecting: a login needs a username and a password, and never goes over clear text."""
    where, user = _where(smtp), smtp.username or ""
    if smtp.username is not None and password is None:
        raise MailAuthError(
            f"{where}: [smtp] username = {user!r} is set but no password was given; set [smtp] password "
            '(env = "VAR" or file = "path", mode 0600). The report stays in the outbox'
        )
    if password is not None and smtp.username is None:
        raise MailAuthError(f"{where}: a password was given but [smtp] username is not set; add it")
    if password is not None and smtp.security == "none":
        raise MailSecurityError(
            f"{where}: refusing to send the SMTP password for user {user!r} over a connection without TLS "
            "(security = 'none'); remove [smtp] username/password for a trusted relay that needs no login, "
            "or use security = 'starttls' or 'tls'. The report stays in the outbox"
        )


def _login(conn: smtplib.SMTP, smtp: Smtp, password: Passphrase) -> None:
    where, user = _where(smtp), smtp.username or ""
    if not conn.has_extn("auth"):
        raise MailAuthError(
            f"{where} does not offer AUTH after TLS, but [smtp] username = {user!r} is set; remove the "
            "username/password if the relay needs no login, or enable authentication on it. "
            "The report stays in the outbox"
        )
    try:
        conn.login(user, password.reveal())
    except smtplib.SMTPAuthenticationError as exc:
        reply = _reply(exc, password)
        if 400 <= exc.smtp_code < 500:
            raise MailTemporaryError(
                f"{where}: login of user {user!r} failed for now ({reply}); retried next run"
            ) from exc
        raise MailAuthError(
            f"{where} refused the login of user {user!r} ({reply}); check the password in "
            f"{_password_source(smtp)} and [smtp] username. The report stays in the outbox and goes once "
            "the login works"
        ) from exc


def deliver(msg: EmailMessage, smtp: Smtp, *, password: Passphrase | None) -> dict[str, tuple[int, str]]:
    """Send ``msg`` to its envelope recipients; returns recipients refused while others accepted it.

    Raises MailTemporaryError (down, timeout, 4xx), MailSecurityError (no TLS possible), MailAuthError (login
    refused) or MailPermanentError (5xx). The password is used only after TLS is up.
    """
    where = _where(smtp)
    recipients = envelope_recipients(msg)
    if not recipients:
        raise MailPermanentError(f"report mail {msg['Message-ID']}: no recipients (To/Cc are empty)")
    if msg.get(ENVELOPE_HEADER) is not None:
        msg = copy.deepcopy(msg)
        del msg[ENVELOPE_HEADER]
    _check_login_settings(smtp, password)
    try:
        conn = _open(smtp)
        try:
            if password is not None:
                _login(conn, smtp, password)
            crash_point("mid-email")
            refused = conn.send_message(msg, from_addr=smtp.sender, to_addrs=recipients)
        finally:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()  # the message is already accepted (or already failed); a rude goodbye changes nothing
    except MailError:
        raise
    except smtplib.SMTPRecipientsRefused as exc:
        every = {r: (c, _text(t)) for r, (c, t) in exc.recipients.items()}
        details = "; ".join(f"{r}: {c} {t}" for r, (c, t) in every.items())
        if all(400 <= c < 500 for c, _ in every.values()):
            raise MailTemporaryError(f"{where} refused every recipient for now ({details})") from exc
        raise MailRecipientsRefused(f"{where} refused every recipient ({details})", every) from exc
    except smtplib.SMTPSenderRefused as exc:
        raise _by_code(
            exc.smtp_code,
            f"{where} refused the sender {smtp.sender!r} ({_reply(exc, password)}); "
            "check [smtp] sender is an address the relay lets you send from",
        ) from exc
    except smtplib.SMTPDataError as exc:
        raise _by_code(
            exc.smtp_code, f"{where} refused the report mail {msg['Message-ID']} ({_reply(exc, password)})"
        ) from exc
    except smtplib.SMTPResponseException as exc:
        raise _by_code(exc.smtp_code, f"{where} answered {_reply(exc, password)}") from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise MailPermanentError(f"{where} does not support what sending needs: {exc}") from exc
    except ssl.SSLCertVerificationError as exc:
        raise MailSecurityError(
            f"{where}: the TLS certificate is not trusted ({exc.verify_message}); if the relay uses a private "
            "CA, name its certificate in [smtp] ca_file. Verification is never switched off; the report stays "
            "in the outbox"
        ) from exc
    except ssl.SSLError as exc:
        raise MailTemporaryError(f"{where}: the TLS handshake failed ({exc.reason or exc}); retried next run") from exc
    except (smtplib.SMTPException, OSError) as exc:  # refused, reset, timeout, DNS, disconnected
        timed_out = isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)
        what = f"did not answer in time ({smtp.timeout:g} s)" if timed_out else f"is unreachable ({exc})"
        raise MailTemporaryError(f"{where} {what}; the report stays in the outbox for the next run") from exc
    partial = {r: (c, _text(t)) for r, (c, t) in refused.items()}
    log.info("report mail %s sent via %s to %d recipient(s)", msg["Message-ID"], where, len(recipients) - len(partial))
    return partial


def _text(raw: bytes | str) -> str:
    return " ".join((raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw).split())


# ---------------------------------------------------------------------------------------------- outbox


@dataclass
class SendResult:
    """Outcome of one pass over the outbox; names are outbox file names."""

    sent: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)  # still in the outbox, retried on the next run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name in failed/, why), kept on disk
    error: MailError | None = None  # why the queued ones did not go this time (down, 4xx, TLS, login)

    @property
    def ok(self) -> bool:
        return not self.queued and not self.failed and self.error is None


def _requeue(queue: MailQueue, msg: EmailMessage, recipients: list[str]) -> Path:
    again = copy.deepcopy(msg)
    del again[ENVELOPE_HEADER]
    again[ENVELOPE_HEADER] = ", ".join(recipients)
    return queue.put(again)


def _settle_refused(
    queue: MailQueue, msg: EmailMessage, refused: dict[str, tuple[int, str]], smtp: Smtp, result: SendResult
) -> None:
    """Recipients refused with 4xx get a re-queued copy; those refused with 5xx a copy in failed/ with why."""
    later = [r for r, (code, _) in refused.items() if 400 <= code < 500]
    never = {r: v for r, v in refused.items() if r not in later}
    if later:
        _requeue(queue, msg, later)
    if never:
        why = "; ".join(f"{r}: {c} {t}" for r, (c, t) in never.items())
        reason = f"{_where(smtp)} refused these recipients for good: {why}; fix the address in [smtp] recipients"
        moved = queue.fail(_requeue(queue, msg, list(never)), reason)
        log.error("report mail %s refused for good, kept in %s: %s", moved.name, moved.parent, reason)
        result.failed.append((moved.name, reason))


def flush(queue: MailQueue, smtp: Smtp, *, password: Passphrase | None) -> SendResult:
    """Send every queued message, oldest first; stop at the first server-wide problem (it would repeat).

    One flush at a time (the daemon's report job, an operator's ``report --email``): two would both send every
    queued message, and settlement staff would get each report twice.
    """
    if not queue.directory.is_dir():
        return _flush(queue, smtp, password=password)  # nothing queued, ever: nothing to guard (or to create)
    flushing = lock_path(queue.directory.parent, "mail", queue.directory.name)  # state/locks/mail-outbox-mail.lock
    with hold(flushing, f"sending the mail outbox {queue.directory}"):
        return _flush(queue, smtp, password=password)


def _flush(queue: MailQueue, smtp: Smtp, *, password: Passphrase | None) -> SendResult:
    result = SendResult()
    for stale in remove_stale_temps(queue.directory):
        log.info("removed %s, left by a process killed while queueing a mail", stale)
    for path in queue.pending():
        try:
            msg = queue.load(path)
            refused = deliver(msg, smtp, password=password)
        except MailRecipientsRefused as exc:
            _settle_refused(queue, msg, exc.refused, smtp, result)
            queue.remove(path)
            continue
        except MailAuthError as exc:
            result.error = exc
            break
        except MailPermanentError as exc:
            moved = queue.fail(path, str(exc))
            log.error("report mail %s refused for good, kept in %s: %s", path.name, moved.parent, exc)
            result.failed.append((moved.name, str(exc)))
            continue
        except MailError as exc:
            result.error = exc
            break
        _settle_refused(queue, msg, refused, smtp, result)
        queue.remove(path)
        result.sent.append(path.name)
    result.queued = [p.name for p in queue.pending()]
    if result.error is not None:
        log.warning("%d report mail(s) stay in %s: %s", len(result.queued), queue.directory, result.error)
    return result


def send_or_queue(msg: EmailMessage | None, smtp: Smtp, queue: MailQueue, *, password: Passphrase | None) -> SendResult:
    """Queue ``msg`` (if any) on disk first, then send the whole outbox oldest first (older reports go first)."""
    if msg is not None:
        queue.put(msg)
    return flush(queue, smtp, password=password)


def email_report(
    msg: EmailMessage | None, smtp: Smtp, queue: MailQueue, *, environ: Mapping[str, str] | None = None
) -> SendResult:
    """What ``report --email`` calls: queue ``msg`` first, then read the password, then send the outbox.

    A password that cannot be read (variable unset, file too open) leaves everything queued and is
    reported in ``error``: the report is on disk before anything can go wrong.
    """
    if msg is not None:
        queue.put(msg)
    try:
        password = smtp_password(smtp, environ)
    except PipelineError as exc:
        error = MailAuthError(f"{_where(smtp)}: cannot read the SMTP password: {exc}; the report stays in the outbox")
        error.__cause__ = exc
        log.warning("%s", error)
        return SendResult(queued=[p.name for p in queue.pending()], error=error)
    return flush(queue, smtp, password=password)
