"""The ledger interface: what the flows, the proof and the reports may ask of a ledger store.

Contract (every store passes ``tests/contract/test_ledger_contract.py``)
-----------------------------------------------------------------------
* **Transfers** (documents we send) move only along :data:`~sftp_pipeline.ledger.states.TRANSITIONS`; a
  transition sets the state's timestamp column (``sealed_at``…) unless given, and ``updated_at`` always.
  Every transition, and every change given a ``detail``, appends an :class:`~.rows.Event`.
* **Once per content**: the same partner, document type, source name and plaintext SHA-256 is sent once —
  :meth:`Ledger.set_plaintext` raises :class:`~sftp_pipeline.errors.DuplicateContent` naming the first
  transfer (failed and duplicate transfers do not count). Race-free: two workers cannot both pass it.
* **Group commit**: :meth:`Ledger.apply` applies many changes in ONE transaction, in order; a refused change
  (illegal transition, duplicate content, unknown column) is rolled back alone and returned as its error.
* **Inbound documents** (partners' documents) are ``received`` once, then ``accepted`` or ``rejected``.
* **Receipts** partners sent us are recorded whatever our verdict, bytes included.
* **Audit feed**: every change of a transfer, inbound document or receipt appends an
  :class:`~.rows.AuditEvent` in the same transaction as the change; ``seq`` orders all three kinds, without
  gaps or forks however many processes write.
* **Meta**: small named values (last report, schedule marks, the audit head).
* **Run locks**: :meth:`Ledger.turn` gives one run at a time per (direction, key) — across processes, and
  across runs within one process; a store uses the locks its deployment can share (``flock`` files beside
  an SQLite file on one machine; a database's own locks where several machines share it). A holder that
  dies releases its locks.
* **Errors**: a store's own failures are :class:`~sftp_pipeline.errors.LedgerError`, naming the store
  (:attr:`Ledger.where`) and what failed; nothing else escapes.
* Timestamps are the store's clock, RFC 3339 UTC with milliseconds (:meth:`Ledger.now`).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any

from sftp_pipeline.errors import LedgerError
from sftp_pipeline.ledger.rows import AuditEvent, Change, Event, Inbound, ReceiptRecord, Transfer
from sftp_pipeline.ledger.states import OutboundState


class Ledger(abc.ABC):
    """A ledger store; see the module docstring for the contract. A context manager; ``close`` is final."""

    #: Where the store is, for messages (a file path; a database without its credentials).
    where: str

    # -- lifecycle --------------------------------------------------------------------------------------

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store."""

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @abc.abstractmethod
    def now(self) -> str:
        """The store's clock, as it stamps rows: RFC 3339 UTC with milliseconds."""

    # -- transfers (documents we send) --------------------------------------------------------------------

    @abc.abstractmethod
    def apply(self, changes: Sequence[Change]) -> list[Transfer | LedgerError]:
        """Apply ``changes`` in order in one transaction; each change's resulting row, or its refusal.
        A failing commit raises for all of them."""

    def claim(
        self,
        transfer_id: str,
        *,
        partner: str,
        job: str,
        document_type: str,
        source_name: str,
        source_path: str,
        work_path: str,
        remote_name: str,
    ) -> Transfer:
        """Record that we take ``source_path`` (state ``claimed``); the caller moves it to ``work_path`` next."""
        values = {"partner": partner, "job": job, "document_type": document_type, "source_name": source_name,
                  "source_path": source_path, "work_path": work_path, "remote_name": remote_name}  # fmt: skip
        return _one(self.apply([Change(transfer_id, "claim", values=values)]))

    def set_plaintext(self, transfer_id: str, sha256: str, size: int) -> None:
        """Record the content hash; raise DuplicateContent when this content was already sent."""
        _one(self.apply([Change(transfer_id, "plaintext", values={"sha256": sha256, "size": size})]))

    def transition(
        self, transfer_id: str, new_state: OutboundState, detail: str | None = None, **values: Any
    ) -> Transfer:
        """Move a transfer to ``new_state``, setting ``values`` and the state's timestamp, in one transaction."""
        return _one(self.apply([Change(transfer_id, "transition", new_state, detail, values)]))

    def update(self, transfer_id: str, detail: str | None = None, **values: Any) -> Transfer:
        """Set columns without a state change (attempts, last_error, archive paths…)."""
        return _one(self.apply([Change(transfer_id, "update", None, detail, values)]))

    @abc.abstractmethod
    def get(self, transfer_id: str) -> Transfer:
        """The transfer; LedgerError when there is none."""

    @abc.abstractmethod
    def get_many(self, transfer_ids: Sequence[str]) -> list[Transfer]:
        """Several transfers, in the order asked; LedgerError naming the first missing one."""

    @abc.abstractmethod
    def find_outbound(self, partner: str, transfer_id: str) -> Transfer | None:
        """The transfer we sent ``partner`` under this id, if any."""

    @abc.abstractmethod
    def unfinished(self, partner: str, job: str | None = None) -> list[Transfer]:
        """Transfers a run must finish (claimed, sealed, or uploaded but not archived), oldest first."""

    @abc.abstractmethod
    def by_state(self, state: OutboundState, partner: str | None = None) -> list[Transfer]:
        """Transfers in ``state``, oldest first."""

    @abc.abstractmethod
    def recent(self, limit: int = 50, partner: str | None = None) -> list[Transfer]:
        """The newest transfers first."""

    @abc.abstractmethod
    def events(self, transfer_id: str) -> list[Event]:
        """A transfer's history, in order."""

    @abc.abstractmethod
    def counts(self) -> dict[tuple[str, str], int]:
        """(partner, state) → how many transfers."""

    # -- inbound documents ------------------------------------------------------------------------------

    @abc.abstractmethod
    def receive(
        self,
        *,
        partner: str,
        transfer_id: str,
        job: str,
        remote_name: str,
        document_type: str,
        ciphertext_sha256: str,
        ciphertext_size: int,
        received_at: str,
        archive_path: str,
    ) -> Inbound:
        """Record a partner's document as ``received`` (before it is opened); LedgerError if it already is."""

    @abc.abstractmethod
    def update_inbound(self, partner: str, transfer_id: str, **values: Any) -> Inbound:
        """Set columns of an inbound document (``state`` only to accepted or rejected)."""

    @abc.abstractmethod
    def inbound(self, partner: str, transfer_id: str) -> Inbound | None:
        """The inbound document, if any."""

    @abc.abstractmethod
    def inbound_unfinished(self, partner: str) -> list[Inbound]:
        """Inbound documents a run must finish: not yet opened, receipt not sent, or source not removed."""

    @abc.abstractmethod
    def inbound_recent(self, limit: int = 50, partner: str | None = None) -> list[Inbound]:
        """The most recently received first."""

    @abc.abstractmethod
    def inbound_by_id(self, transfer_id: str) -> list[Inbound]:
        """Inbound documents with this (sender's) transfer id, from any partner."""

    # -- receipts partners sent us ----------------------------------------------------------------------

    @abc.abstractmethod
    def record_receipt(
        self,
        *,
        partner: str,
        name: str,
        transfer_id: str | None,
        verdict: str,
        reason: str | None = None,
        status: str | None = None,
        received_at: str | None = None,
        validated_at: str | None = None,
        stored_path: str | None = None,
        receipt_json: bytes | None = None,
        receipt_sig: bytes | None = None,
    ) -> None:
        """Keep a receipt and our verdict on it."""

    @abc.abstractmethod
    def receipts_for(self, partner: str, transfer_id: str) -> list[ReceiptRecord]:
        """Every receipt recorded for this transfer, in order, bytes included."""

    @abc.abstractmethod
    def receipt_records_with(self, verdicts: Sequence[str], since: str | None) -> list[ReceiptRecord]:
        """Receipts fetched since ``since`` (all when None) with one of ``verdicts``, without their bytes."""

    # -- reconciliation ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def reconcile_rows(
        self, out_columns: Sequence[str], in_columns: Sequence[str], since: str | None
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Outbound rows (no duplicates) and inbound rows a report for ``[since, now)`` may show — changed since
        then, or still open — as tuples of the named columns (only the tables' own columns may be named)."""

    # -- meta and the audit feed ------------------------------------------------------------------------

    @abc.abstractmethod
    def meta(self, key: str) -> str | None:
        """A named value, or None."""

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Set a named value."""

    @abc.abstractmethod
    def audit_events_after(self, seq: int, limit: int = 1000) -> list[AuditEvent]:
        """Up to ``limit`` audit events with ``seq`` greater than ``seq``, in order."""

    @abc.abstractmethod
    def audit_last_seq(self) -> int:
        """The highest audit ``seq`` (0 when there is none)."""

    @abc.abstractmethod
    def integrity_ok(self) -> bool:
        """Whether the store's own consistency check passes."""

    # -- run locks --------------------------------------------------------------------------------------

    @abc.abstractmethod
    def turn(self, direction: str, key: str, *, shared: bool = False) -> AbstractAsyncContextManager[None]:
        """Hold the run lock for (``direction``, ``key``), waiting (cancellably) while another run holds it.

        ``shared``: work on one named document (the embedded server collecting an upload), which may run
        beside other shared holders but never beside an exclusive run.
        """

    @abc.abstractmethod
    def turns(self, direction: str, keys: Iterable[str]) -> AbstractAsyncContextManager[None]:
        """Hold several run locks, taken in one order (two runs wanting overlapping sets never deadlock)."""

    @abc.abstractmethod
    def try_turn(self, direction: str, key: str) -> AbstractContextManager[bool]:
        """Hold the run lock if it is free (True), or go on without it (False); never waits."""


def _one(results: list[Transfer | LedgerError]) -> Transfer:
    result = results[0]
    if isinstance(result, LedgerError):
        raise result
    return result
