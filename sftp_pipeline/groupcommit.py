"""Group commit: the ledger changes of many documents in flight, committed together in one transaction.

Each document's step still waits for its own change to be committed before it moves on (so a state is
recorded before the next step acts on it, exactly as with one commit per change), but while one commit
is being made (an fsync of the WAL, milliseconds) the changes of every other document queue up and go
into the next commit together. The commit runs in a worker thread, so the event loop keeps serving the
uploads meanwhile. Each change keeps its own events and audit rows, in order (:meth:`Ledger.apply`).
"""

from __future__ import annotations

import asyncio

from .errors import LedgerError
from .ledger import Change, Ledger, Transfer


class GroupCommitter:
    """Queue :class:`Change` s from many coroutines; one flusher commits whatever has queued, repeatedly."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._queue: list[tuple[Change, asyncio.Future[Transfer]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def apply(self, change: Change) -> Transfer:
        """Commit ``change`` (with others queued meanwhile); its refusal is raised here as its LedgerError."""
        future: asyncio.Future[Transfer] = asyncio.get_running_loop().create_future()
        self._queue.append((change, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def transition(
        self, transfer_id: str, new_state: str, detail: str | None = None, **values: object
    ) -> Transfer:
        return await self.apply(Change(transfer_id, "transition", new_state, detail, dict(values)))

    async def update(self, transfer_id: str, detail: str | None = None, **values: object) -> Transfer:
        return await self.apply(Change(transfer_id, "update", None, detail, dict(values)))

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                results = await asyncio.to_thread(self.ledger.apply, [change for change, _ in batch])
            except BaseException as exc:  # the commit failed (or we were cancelled): none of these happened
                for _, future in batch:
                    if future.done():
                        continue
                    if isinstance(exc, Exception):
                        future.set_exception(exc)
                    else:
                        future.cancel()
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, LedgerError):
                    future.set_exception(result)
                else:
                    future.set_result(result)
