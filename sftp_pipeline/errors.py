"""Every error sftp-pipeline raises, in one tree, each with its message template and its exit code.

    PipelineError                        exit 1
    ├── ConfigError                      exit 2  bad or missing configuration
    ├── KeyFileError                     exit 2  key files: missing, unreadable, too open
    │   └── KeyPolicyError               exit 2  expired, revoked, weak or unusable key
    ├── CryptoError                      exit 1  sealing, opening or signing failed
    │   ├── OpenRejected                 exit 1  an inbound message was refused (``status``: the receipt's code)
    │   ├── SigningError                 exit 1  our own key could not sign
    │   ├── SignatureRefused             exit 1  a detached signature was refused (``reason``)
    │   └── PacketError                  exit 1  bytes that are not OpenPGP packets
    │       └── PacketsTruncated         exit 1  packets that run past the end of the data
    ├── ReceiptInvalid                   exit 1  a partner's receipt was refused (``reason``)
    ├── TransportError                   exit 1  moving bytes to or from a partner failed
    │   ├── PermanentTransportError      exit 1  retrying will not help (auth, permission)
    │   │   └── HostKeyError             exit 1  unknown or changed host key
    │   └── TransientTransportError      exit 1  worth retrying (timeouts, resets)
    ├── LedgerError                      exit 1  the ledger could not be read or written
    │   └── DuplicateContent             exit 1  the same name and content was sent before (``original``)
    ├── LocalFileError                   exit 1  a local file or folder could not be read or written
    │   └── DiskFullError                exit 1  a local file system is full: the work stays queued
    ├── AuditError                       exit 1  the audit log is damaged or cannot be written
    ├── EvidenceError                    exit 1  an evidence bundle cannot be made or read
    ├── ReportError                      exit 1  the report cannot be written
    ├── MailError                        exit 1  a report could not be emailed
    │   ├── MailTemporaryError           exit 1  server down or 4xx: stays queued
    │   ├── MailSecurityError            exit 1  sending would be insecure
    │   └── MailPermanentError           exit 1  5xx: retrying the same message will not help
    │       ├── MailAuthError            exit 1  our login was refused
    │       └── MailRecipientsRefused    exit 1  every recipient was refused (``refused``)
    └── AlreadyRunning                   exit 1  another daemon holds this state directory

A message names the thing (file, partner, key fingerprint), what is wrong and what to do. Most classes' template
is the detail alone, because only the place that raises knows the file and the fix; a class whose messages all
have one shape fills its template from named fields (``DiskFullError(what=…, directory=…)``).

Library exceptions (asyncssh, smtplib, sqlite3, pysequoia, OSError) are translated in the adapter that calls
the library, with ``raise … from exc``; :func:`translate` is the last line, used where a command ends, so that
no foreign exception (and no traceback) reaches an operator.
"""

from __future__ import annotations

import errno
import os
import re
import smtplib
import sqlite3
import ssl
from typing import Any, ClassVar, Literal

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class PipelineError(Exception):
    """Root of every error sftp-pipeline raises on purpose."""

    exit_code: ClassVar[int] = EXIT_FAILED
    template: ClassVar[str] = "{detail}"

    def __init__(self, detail: str = "", /, **fields: Any) -> None:
        self.detail = detail
        self.fields = fields
        super().__init__(self.template.format(detail=detail, **fields))


class ConfigError(PipelineError):
    """The configuration is missing, malformed or inconsistent."""

    exit_code = EXIT_USAGE


class KeyFileError(PipelineError):
    """A key file is missing, unreadable, unparsable or readable by others."""

    exit_code = EXIT_USAGE


class KeyPolicyError(KeyFileError):
    """A key exists but may not be used: expired, revoked, too weak or lacking a capability."""


# -- OpenPGP -------------------------------------------------------------------------------------------------


class CryptoError(PipelineError):
    """Sealing, opening or signing an OpenPGP message failed."""


class OpenRejected(CryptoError):
    """An inbound message was refused; ``status`` is the receipt status code."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(detail, status=status)
        self.status = status


class SigningError(CryptoError):
    """Our own key could not sign (locked, expired, not signing-capable)."""


SignatureReason = Literal["unsigned", "bad-signature", "wrong-signer"]


class SignatureRefused(CryptoError):
    """A detached signature was refused; ``reason`` is "unsigned", "bad-signature" or "wrong-signer"."""

    def __init__(self, reason: SignatureReason, detail: str) -> None:
        super().__init__(detail, reason=reason)
        self.reason: SignatureReason = reason


class PacketError(CryptoError):
    """Bytes that are not a sequence of OpenPGP packets (from ``offset`` on)."""

    template = "byte {offset}: {detail}"

    def __init__(self, offset: int, detail: str) -> None:
        super().__init__(detail, offset=offset)
        self.offset = offset


class PacketsTruncated(PacketError):
    """A packet header or body runs past the end of the data (for a prefix of a message: a header does)."""


ReceiptReason = Literal["bad-signature", "wrong-signer", "malformed", "wrong-parties", "unsigned"]


class ReceiptInvalid(PipelineError):
    """A receipt was refused; ``reason`` says why (docs/receipts.md)."""

    def __init__(self, reason: ReceiptReason, detail: str) -> None:
        super().__init__(detail, reason=reason)
        self.reason: ReceiptReason = reason


# -- moving bytes -------------------------------------------------------------------------------------------


class TransportError(PipelineError):
    """Moving bytes to or from a partner failed."""

    retryable: ClassVar[bool] = False


class PermanentTransportError(TransportError):
    """Retrying will not help: authentication, permission, protocol refusal."""


class HostKeyError(PermanentTransportError):
    """The server's host key is not the pinned one."""


class TransientTransportError(TransportError):
    """A timeout, reset or similar: worth another attempt."""

    retryable = True


# -- our own state ------------------------------------------------------------------------------------------


class LedgerError(PipelineError):
    """The ledger could not be read or written."""


class DuplicateContent(LedgerError):
    """The same name and content was already sent to this partner (``original`` is that transfer's id)."""

    template = "same name and content already sent as transfer {original}"

    def __init__(self, original: str) -> None:
        super().__init__(original=original)
        self.original = original


class LocalFileError(PipelineError):
    """A local file or folder could not be read or written (missing, permissions, not a directory…)."""

    template = "{path}: {detail}; check that it exists and that this account may read and write it"


class DiskFullError(LocalFileError):
    """A local file system has no space left (or the quota is used up); the work stays queued for a retry."""

    template = (
        "{what}: no space left on device in {directory}; nothing was written under a final name and the document "
        "stays queued. Free space there (or move it to a larger disk) and it is retried on the next run"
    )


class AuditError(PipelineError):
    """The audit log is damaged or cannot be written."""


class EvidenceError(PipelineError):
    """An evidence bundle cannot be made, or a bundle to check cannot be read."""


class ReportError(PipelineError):
    """The report could not be written."""


# -- email --------------------------------------------------------------------------------------------------


class MailError(PipelineError):
    """A report could not be emailed."""

    retryable: ClassVar[bool] = False


class MailTemporaryError(MailError):
    """The server is down, timed out or answered 4xx: the message stays queued and goes on the next run."""

    retryable = True


class MailSecurityError(MailError):
    """Sending would be insecure (no STARTTLS, untrusted certificate, a password over clear text)."""


class MailPermanentError(MailError):
    """The server refused the message with 5xx: retrying the same message will not help."""


class MailAuthError(MailPermanentError):
    """The server refused our login; fix the password or username, the message waits in the outbox."""


class MailRecipientsRefused(MailPermanentError):
    """Every recipient was refused, at least one for good; ``refused`` maps each to ``(code, reply)``."""

    def __init__(self, detail: str, refused: dict[str, tuple[int, str]]) -> None:
        super().__init__(detail, refused=refused)
        self.refused = refused


# -- running ------------------------------------------------------------------------------------------------


class AlreadyRunning(PipelineError):
    """Another daemon holds this state directory: the work is done there, not here (not a usage error)."""

    template = (
        "{lock}: another sftp-pipeline daemon (pid {pid}) is running on this state directory; stop it first "
        "(systemctl stop sftp-pipeline) — two daemons would race for the same files"
    )


# -- full disks ---------------------------------------------------------------------------------------------

# The errnos that mean "this file system (or this user's quota on it) is full".
NO_SPACE_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT})
# How Rust (pysequoia) and other libraries that flatten an OSError into text spell the same thing.
_NO_SPACE_TEXT = re.compile(r"no space left on device|disk quota exceeded|os error (?:28|122)\b", re.IGNORECASE)


def is_no_space(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an exception it was raised from) says a file system or quota is full."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return True
        if _NO_SPACE_TEXT.search(str(exc).split("\n", 1)[0]):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full(what: str, directory: os.PathLike[str] | str) -> DiskFullError:
    """The error for ``what`` (e.g. "sealing invoice-7.xml") failing because ``directory``'s file system is full."""
    return DiskFullError(what=what, directory=os.fspath(directory))


# -- the last line ------------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def translate(exc: BaseException) -> PipelineError | None:
    """The error of ours that ``exc`` means, for a library exception no adapter translated; None for one that is
    not a library's (a bug: the caller reports it as one). A PipelineError is returned as it is."""
    if isinstance(exc, PipelineError):
        return exc
    import asyncssh  # here, not at the top: every module imports this one, few need asyncssh

    if isinstance(exc, asyncssh.Error):
        return _from_asyncssh(exc, asyncssh)
    if isinstance(exc, sqlite3.Error):
        return LedgerError(f"the ledger failed: {_first_line(exc)}")
    if isinstance(exc, smtplib.SMTPResponseException):
        kind = MailTemporaryError if 400 <= exc.smtp_code < 500 else MailPermanentError
        return kind(f"the mail server answered {exc.smtp_code}: {_text(exc.smtp_error)}")
    if isinstance(exc, smtplib.SMTPException):
        return MailTemporaryError(f"talking to the mail server failed: {_first_line(exc)}")
    if isinstance(exc, ssl.SSLError):
        return TransientTransportError(f"a TLS connection failed: {_first_line(exc)}")
    if isinstance(exc, OSError):
        return _from_os(exc)
    return None


def _from_asyncssh(exc: Any, asyncssh: Any) -> TransportError:
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return HostKeyError(f"the SSH server's host key is not the pinned one: {_first_line(exc)}")
    if isinstance(exc, asyncssh.PermissionDenied | asyncssh.SFTPPermissionDenied):
        return PermanentTransportError(f"the SSH server refused: {_first_line(exc)}")
    if isinstance(exc, asyncssh.SFTPNoSpaceOnFilesystem | asyncssh.SFTPQuotaExceeded):
        return TransientTransportError(f"the partner's SFTP server is out of space: {_first_line(exc)}")
    if isinstance(exc, asyncssh.SFTPConnectionLost | asyncssh.SFTPNoConnection):
        return TransientTransportError(f"the SFTP connection was lost: {_first_line(exc)}")
    if isinstance(exc, asyncssh.SFTPError):
        return PermanentTransportError(f"the SFTP server refused a request: {_first_line(exc)}")
    return TransientTransportError(f"the SSH connection failed: {_first_line(exc)}")


def _from_os(exc: OSError) -> PipelineError:
    path = exc.filename if exc.filename is not None else "a local file"
    if is_no_space(exc):
        directory = os.path.dirname(os.fspath(path)) if exc.filename is not None else "a local file system"
        return disk_full(f"writing {os.fspath(path)}", directory or ".")
    if isinstance(exc, ConnectionError | TimeoutError):
        return TransientTransportError(f"a network connection failed: {exc.strerror or _first_line(exc)}")
    return LocalFileError(exc.strerror or _first_line(exc), path=os.fspath(path))


def _text(reply: bytes | str) -> str:
    return (reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply).strip()
