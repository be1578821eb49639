"""The exceptions sftp-pipeline raises, and the exit code each one maps to.

Library exceptions (asyncssh, pysequoia, sqlite3, OSError…) are translated in
the adapter that calls the library, with ``raise … from exc``; nothing above
the adapters sees a foreign exception type.

    PipelineError                      exit 1
    ├── ConfigError                    exit 2  bad or missing configuration
    ├── KeyError_                      exit 2  key files: missing, unreadable, too open
    │   └── KeyPolicyError             exit 2  expired, revoked, weak or unusable key
    ├── CryptoError                    exit 1  sealing or opening a message failed
    │   └── OpenRejected               exit 1  an inbound message was refused (has a status code)
    ├── TransportError                 exit 1  SFTP / filesystem transfer problem
    │   ├── PermanentTransportError    exit 1  retrying will not help (auth, permission)
    │   │   └── HostKeyError           exit 1  unknown or changed host key
    │   └── TransientTransportError    exit 1  worth retrying (timeouts, resets)
    ├── LedgerError                    exit 1  the SQLite ledger failed
    ├── DiskFullError                  exit 1  a local file system is full (work area, delivery folder): retried
    └── IntakeError                    exit 1  a dropped file cannot be taken (quarantined)
"""

from __future__ import annotations

import errno
import os
import re
from typing import Literal

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class PipelineError(Exception):
    """Root of every error sftp-pipeline raises on purpose."""

    exit_code = EXIT_FAILED


class ConfigError(PipelineError):
    """The configuration is missing, malformed or inconsistent."""

    exit_code = EXIT_USAGE


class KeyError_(PipelineError):
    """A key file is missing, unreadable, unparsable or readable by others."""

    exit_code = EXIT_USAGE


class KeyPolicyError(KeyError_):
    """A key exists but may not be used: expired, revoked, too weak or lacking a capability."""


class CryptoError(PipelineError):
    """Sealing or opening an OpenPGP message failed."""


class OpenRejected(CryptoError):
    """An inbound message was refused; ``status`` is the receipt status code."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class SigningError(CryptoError):
    """Our own key could not sign (locked, expired, not signing-capable)."""


class SignatureRefused(CryptoError):
    """A detached signature was refused; ``reason`` is "unsigned", "bad-signature" or "wrong-signer"."""

    def __init__(self, reason: Literal["unsigned", "bad-signature", "wrong-signer"], message: str) -> None:
        super().__init__(message)
        self.reason: Literal["unsigned", "bad-signature", "wrong-signer"] = reason


ReceiptReason = Literal["bad-signature", "wrong-signer", "malformed", "wrong-parties", "unsigned"]


class ReceiptInvalid(PipelineError):
    """A receipt was refused; ``reason`` says why (docs/receipts.md)."""

    def __init__(self, reason: ReceiptReason, message: str) -> None:
        super().__init__(message)
        self.reason: ReceiptReason = reason


class TransportError(PipelineError):
    """Moving bytes to or from a partner failed."""

    retryable = False


class PermanentTransportError(TransportError):
    """Retrying will not help: authentication, permission, protocol refusal."""


class HostKeyError(PermanentTransportError):
    """The server's host key is not the pinned one."""


class TransientTransportError(TransportError):
    """A timeout, reset or similar: worth another attempt."""

    retryable = True


class LedgerError(PipelineError):
    """The ledger could not be read or written."""


class DuplicateContent(LedgerError):
    """The same name and content was already sent to this partner (``original`` is that transfer's id)."""

    def __init__(self, original: str) -> None:
        super().__init__(f"same name and content already sent as transfer {original}")
        self.original = original


class DiskFullError(PipelineError):
    """A local file system has no space left (or the quota is used up); the work stays queued for a retry."""


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
    return DiskFullError(
        f"{what}: no space left on device in {os.fspath(directory)}; nothing was written under a final name and "
        "the document stays queued. Free space there (or move it to a larger disk) and it is retried on the next run"
    )


class IntakeError(PipelineError):
    """A dropped file cannot be taken; it is quarantined with ``reason``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
