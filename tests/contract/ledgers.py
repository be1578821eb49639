"""The ledger stores the contract suite runs against (``tests/contract/test_ledger_contract.py``).

To add a store, add one entry to :data:`STORES`: a function that opens (or reopens) the store kept under a
test's ``tmp_path`` with the given clock. Every contract test then runs against it too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sftp_pipeline.clock import Clock
from sftp_pipeline.ledger import Ledger
from sftp_pipeline.ledger.sqlite import SqliteLedger

Opener = Callable[[Path, Clock], Ledger]


def _sqlite(where: Path, clock: Clock) -> Ledger:
    return SqliteLedger(where / "ledger.sqlite3", clock=clock)


STORES: dict[str, Opener] = {"sqlite": _sqlite}
