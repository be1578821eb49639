"""The ledger: every document's state and history, the receipts we received, and the audit feed.

* :mod:`.interface` — :class:`Ledger`, the contract every store keeps (the flows see only this);
* :mod:`.rows` — the typed rows a store returns;
* :mod:`.states` — the states and the one transition table;
* :mod:`.sqlite` — the SQLite store (one machine, the default);
* :mod:`.migrations` — schema versions and the steps that upgrade an older ledger in place.

Which store a party uses is chosen in one place, :mod:`sftp_pipeline.wiring`.
"""

from sftp_pipeline.ledger.interface import Ledger
from sftp_pipeline.ledger.rows import AuditEvent, Change, Event, Inbound, ReceiptRecord, Transfer
from sftp_pipeline.ledger.states import InboundState, OutboundState, check_transition

__all__ = [
    "AuditEvent",
    "Change",
    "Event",
    "Inbound",
    "InboundState",
    "Ledger",
    "OutboundState",
    "ReceiptRecord",
    "Transfer",
    "check_transition",
]
