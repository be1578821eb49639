"""The rows a ledger stores and returns, typed; every store returns exactly these.

The field order of :class:`Transfer` and :class:`Inbound` is the column order of their tables (a store may
build a row positionally from a query, which is much cheaper than by name: 1.5 s per 100k rows in a
reconciliation); a column a migration adds is appended at the end of both.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from sftp_pipeline.ledger.states import AuditKind, ChangeKind, InboundState, OutboundState


@dataclass(frozen=True, slots=True)
class Transfer:
    """A document we send: one row per transfer id, every timestamp RFC 3339 UTC."""

    id: str
    direction: str
    partner: str
    job: str | None
    document_type: str
    source_name: str
    source_path: str | None
    work_path: str | None
    sealed_path: str | None
    remote_name: str | None
    state: OutboundState
    plaintext_sha256: str | None
    plaintext_size: int | None
    ciphertext_sha256: str | None
    ciphertext_size: int | None
    attempts: int
    last_error: str | None
    ssh_kex: str | None
    ssh_cipher: str | None
    transport_pq: int | None
    pgp_algorithms: str | None
    content_pq: int | None
    archive_path: str | None
    archive_sealed_path: str | None
    duplicate_of: str | None
    created_at: str
    claimed_at: str | None
    sealed_at: str | None
    uploaded_at: str | None
    failed_at: str | None
    archived_at: str | None
    receipt_status: str | None
    partner_received_at: str | None
    partner_validated_at: str | None
    receipted_at: str | None
    rejected_at: str | None
    mismatch_at: str | None
    invalid_receipt_at: str | None
    updated_at: str
    # schema 2
    transport: str | None = None  # "sftp", or "local" for a partner we host
    peer_key: str | None = None  # the key the connection verified (an SFTP host key's SHA256 fingerprint)


@dataclass(frozen=True, slots=True)
class Inbound:
    """A document a partner sent us, keyed by (partner, *their* transfer id)."""

    partner: str
    transfer_id: str
    job: str | None
    remote_name: str
    document_type: str
    state: InboundState
    ciphertext_sha256: str
    ciphertext_size: int
    plaintext_sha256: str | None
    plaintext_size: int | None
    sender_key_fingerprint: str | None
    status: str | None
    detail: str | None
    engine: str | None
    received_at: str
    validated_at: str | None
    archive_path: str | None
    delivered_path: str | None
    receipt_json: bytes | None
    receipt_sig: bytes | None
    receipt_sent_at: str | None
    source_removed_at: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    """A receipt a partner sent us for something we sent, with our verdict on it; kept whatever the verdict.

    ``receipt_json`` and ``receipt_sig`` are None when the bytes were not downloaded (an oversize pair) and in
    the summaries :meth:`~sftp_pipeline.ledger.Ledger.receipt_records_with` returns.
    """

    seq: int
    partner: str
    name: str
    transfer_id: str | None
    verdict: str
    reason: str | None
    status: str | None
    received_at: str | None
    validated_at: str | None
    stored_path: str | None
    receipt_json: bytes | None
    receipt_sig: bytes | None
    fetched_at: str


class Event(NamedTuple):
    """One state change (or noted detail) of a transfer."""

    at: str
    state: str
    detail: str | None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One change of a transfer, an inbound document or a received receipt, in the order the ledger made them:
    what :mod:`sftp_pipeline.proof.audit` chains into the audit log. ``data`` snapshots the row's hashes, sizes
    and timestamps at that moment (never local paths or receipt bytes, only their hashes)."""

    seq: int
    kind: AuditKind
    ref: str
    partner: str
    at: str
    state: str
    detail: str | None
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    """One change for :meth:`~sftp_pipeline.ledger.Ledger.apply`: a ``claim`` (``values`` = the new row's
    columns), a ``transition`` to ``new_state``, an ``update`` of columns, or the ``plaintext`` hash
    (``values`` = sha256, size)."""

    transfer_id: str
    kind: ChangeKind
    new_state: OutboundState | None = None
    detail: str | None = None
    values: dict[str, Any] = field(default_factory=dict)


TRANSFER_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Transfer))
INBOUND_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Inbound))
