"""The ledger stores the contract suite runs against (``tests/contract/test_ledger_contract.py``).

To add a store, add one entry to :data:`STORES`: a function that opens (or reopens) the store kept under a
test's ``tmp_path`` with the given clock. Every contract test then runs against it too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sftp_pipeline.clock import Clock
from sftp_pipeline.ledger import Ledger
from sftp_pipeline.ledger.sqlite import SqliteLedger

Opener = Callable[[Path, Clock], Ledger]


def _sqlite(where: Path, clock: Clock) -> Ledger:
    return SqliteLedger(where / "ledger.sqlite3", clock=clock)


STORES: dict[str, Opener] = {"sqlite": _sqlite}


class StepClock:
    """A clock that moves one millisecond per reading, so every timestamp differs and sorts in order."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now
