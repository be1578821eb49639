"""The transport interface: how sealed files reach a partner and how we fetch theirs.

One small contract, documented once here; :mod:`.sftp` (asyncssh client) and
:mod:`.local` (a directory our own server serves) implement it, and
:mod:`.retry` wraps any of them with bounded retries.

Contract
--------
* Remote paths are ``directory/name`` strings relative to the partner's root;
  ``name`` is always a validated safe name (see :mod:`sftp_pipeline.names`).
* ``put_atomic`` never leaves a partial file at the final name: it writes
  ``.<name>.part``, checks the size, then renames. If the final name already
  holds a file of the expected size (a re-run after a crash between rename and
  ledger commit) it succeeds without uploading again.
* Errors are :class:`~sftp_pipeline.errors.TransportError`; the subclass says
  whether a retry can help (``TransientTransportError``) or not
  (``PermanentTransportError``, ``HostKeyError``).
* ``get`` may be given a ``tee``: it sees every downloaded byte once, in file
  order, as ``(offset, data)`` right after it is written, so a caller can hash or
  decrypt while the file arrives instead of reading it again. A retried
  download starts again at offset 0; the tee must notice (offset ≠ bytes seen).
* A transport is an async context manager; ``close`` is idempotent.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

# Why 255 KiB: an upload this small is one SFTP write request (OpenSSH's sftp-server takes at most 261120 bytes a
# write): a few round trips of latency rather than bandwidth, so a caller may run many such uploads at once.
SMALL_FILE_BYTES = 261120

Progress = Callable[[int], None]  # called with the number of bytes just moved
Tee = Callable[[int, bytes], Awaitable[None]]  # (offset, data) of a download, in file order; see the contract


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    name: str
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class PutResult:
    remote_path: str
    size: int
    already_present: bool = False  # the final name held the file already (idempotent re-run)


@dataclass(slots=True)
class SessionInfo:
    """What the connection negotiated, recorded per transfer in the ledger."""

    transport: str = "local"
    kex: str = "local"
    cipher: str = "local"
    mac: str = ""
    host_key: str = ""
    post_quantum: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class Transport(abc.ABC):
    """Move files to and from one partner. See the module docstring for the contract."""

    session: SessionInfo

    @abc.abstractmethod
    async def put_atomic(self, local: Path, directory: str, name: str, progress: Progress | None = None) -> PutResult:
        """Upload ``local`` to ``directory/name`` via a temporary name and a rename."""

    @abc.abstractmethod
    async def list(self, directory: str) -> list[RemoteEntry]:
        """Complete regular files in ``directory`` (temporary names excluded), sorted by name."""

    @abc.abstractmethod
    async def get(
        self, directory: str, name: str, local: Path, progress: Progress | None = None, *, tee: Tee | None = None
    ) -> int:
        """Download ``directory/name`` to ``local`` (written whole or not at all); return its size."""

    @abc.abstractmethod
    async def remove(self, directory: str, name: str) -> None:
        """Delete ``directory/name``; a missing file is not an error."""

    @abc.abstractmethod
    async def rename(self, directory: str, old: str, new: str) -> None:
        """Rename within ``directory``, replacing nothing: an existing ``new`` is an error."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection; safe to call twice."""

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
