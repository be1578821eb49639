"""The states a document goes through, and the one table of which state may follow which.

Outbound (a document we send)::

    claimed ──▶ sealed ──▶ uploaded ──▶ receipted | rejected | mismatch | invalid-receipt
       │           │                                                      │ (a later valid receipt
       │           │                                                      └──▶ still settles it)
       ├──▶ duplicate (same name + same content already sent to this partner)
       └──▶ failed ◀┘  (permanent error; ``send --retry-failed`` puts it back)

A transient error leaves the state unchanged (``last_error`` and ``attempts`` say why), so the next run picks
the document up again.

Inbound (a document a partner sent us): ``received`` → ``accepted`` | ``rejected``.

Pure data and one pure function (:func:`check_transition`); every ledger store applies the same table.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from sftp_pipeline.errors import LedgerError

OutboundState = Literal[
    "claimed", "sealed", "uploaded", "failed", "duplicate", "receipted", "rejected", "mismatch", "invalid-receipt"
]
InboundState = Literal["received", "accepted", "rejected"]
ChangeKind = Literal["claim", "transition", "update", "plaintext"]
AuditKind = Literal["transfer", "inbound", "receipt"]

OUTBOUND_STATES: Final[tuple[OutboundState, ...]] = get_args(OutboundState)
INBOUND_STATES: Final[tuple[InboundState, ...]] = get_args(InboundState)
# What a receipt settles an uploaded transfer to.
RECEIPT_STATES: Final[tuple[OutboundState, ...]] = ("receipted", "rejected", "mismatch", "invalid-receipt")
# Claimed or sealed: a run must finish it before it takes anything new.
IN_PROGRESS: Final[tuple[OutboundState, ...]] = ("claimed", "sealed")
# Not settled for good: a reconciliation shows these whenever they changed.
OPEN_STATES: Final[tuple[OutboundState, ...]] = ("claimed", "sealed", "uploaded", "invalid-receipt", "failed")
# The inbound states an update may set (``received`` is only ever the first).
INBOUND_OUTCOMES: Final[tuple[InboundState, ...]] = ("accepted", "rejected")

TRANSITIONS: Final[dict[OutboundState, frozenset[OutboundState]]] = {
    "claimed": frozenset({"sealed", "failed", "duplicate"}),
    "sealed": frozenset({"uploaded", "failed"}),
    "uploaded": frozenset(RECEIPT_STATES),
    # A forged or broken receipt proves nothing either way; a later valid receipt still settles the transfer.
    "invalid-receipt": frozenset({"receipted", "rejected", "mismatch"}),
    "failed": frozenset({"claimed", "sealed"}),
    "duplicate": frozenset(),
    "receipted": frozenset(),
    "rejected": frozenset(),
    "mismatch": frozenset(),
}


def check_transition(current: str, new: str) -> None:
    """Raise LedgerError unless ``current → new`` is a legal state change."""
    if new not in TRANSITIONS.get(current, frozenset()):  # type: ignore[call-overload]
        raise LedgerError(f"illegal state change {current} → {new}")


def timestamp_column(state: OutboundState) -> str:
    """The column that records when a transfer reached ``state`` (``invalid-receipt`` → ``invalid_receipt_at``)."""
    return f"{state.replace('-', '_')}_at"
