"""Group commit: the ledger changes of many documents in flight, committed together in one transaction;
and group fsync: their small file steps, run together in one worker-thread call (:class:`GroupSync`).

Each document's step still waits for its own change to be committed before it moves on (so a state is
recorded before the next step acts on it, exactly as with one commit per change), but while one commit
is being made (an fsync of the WAL, milliseconds) the changes of every other document queue up and go
into the next commit together. The commit runs in a worker thread, so the event loop keeps serving the
uploads meanwhile. Each change keeps its own events and audit rows, in order (:meth:`Ledger.apply`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

from sftp_pipeline.fsutil import fsync_dir
from sftp_pipeline.ledger import Change, Ledger, OutboundState, Transfer

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Batches(Generic[Item, Result]):
    """Items queued by many coroutines; one flusher hands whatever has queued to :meth:`_run` at once,
    repeatedly, and gives each coroutine its own item's result or error."""

    def __init__(self) -> None:
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _run(self, items: list[Item]) -> list[Result | Exception]:
        """Each item's result, or its own error (raising fails the whole batch)."""
        raise NotImplementedError

    async def _submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                results = await self._run([item for item, _ in batch])
            except BaseException as exc:  # the batch failed (or we were cancelled): none of these happened
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
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


class GroupCommitter(_Batches[Change, Transfer]):
    """Queue :class:`Change` s from many coroutines; one flusher commits whatever has queued, repeatedly."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__()
        self.ledger = ledger

    async def apply(self, change: Change) -> Transfer:
        """Commit ``change`` (with others queued meanwhile); its refusal is raised here as its LedgerError."""
        return await self._submit(change)

    async def transition(
        self, transfer_id: str, new_state: OutboundState, detail: str | None = None, **values: object
    ) -> Transfer:
        return await self.apply(Change(transfer_id, "transition", new_state, detail, dict(values)))

    async def update(self, transfer_id: str, detail: str | None = None, **values: object) -> Transfer:
        return await self.apply(Change(transfer_id, "update", None, detail, dict(values)))

    async def _run(self, items: list[Change]) -> list[Transfer | Exception]:
        return list(await asyncio.to_thread(self.ledger.apply, items))


class GroupSync(_Batches["_Step", None]):
    """Group fsync: the small blocking file steps of many documents in flight (an fsync and a rename, a move
    into the archive) run together in ONE worker-thread call, and each folder is fsynced once per batch however
    many documents touched it.

    The same idea as :class:`GroupCommitter`, for the file system: each document still waits until its own step
    and the fsync of its folders are done before it moves on (so a file is durable before the ledger says so),
    but a thousand small documents cost a few dozen thread hand-overs instead of a few thousand — each hand-over
    is a GIL round trip that stalls the event loop driving the uploads — and the archive folder is fsynced once
    per batch instead of once per document.
    """

    async def run(
        self, work: Callable[[], None], *, sync: Iterable[Path] = (), then: Callable[[], None] | None = None
    ) -> None:
        """Run ``work``, then fsync the folders in ``sync``, then ``then`` (a clean-up that must follow the
        fsync); raise what failed. Runs in a worker thread with the other documents' steps queued meanwhile."""
        await self._submit(_Step(work, tuple(sync), then))

    async def _run(self, items: list[_Step]) -> list[Exception | None]:
        return await asyncio.to_thread(_run_steps, items)


class _Step(NamedTuple):
    work: Callable[[], None]
    sync: tuple[Path, ...]
    then: Callable[[], None] | None


def _run_steps(steps: list[_Step]) -> list[Exception | None]:
    """Each step's work, then one fsync per folder, then the clean-ups; each step's first failure, in order."""
    errors: list[Exception | None] = []
    for step in steps:
        try:
            step.work()
        except Exception as exc:  # one document's failure is that document's, not the batch's
            errors.append(exc)
        else:
            errors.append(None)
    folders = dict.fromkeys(d for step, error in zip(steps, errors, strict=True) if error is None for d in step.sync)
    failed: dict[Path, OSError] = {}
    for folder in folders:
        try:
            fsync_dir(folder)
        except OSError as exc:
            failed[folder] = exc
    for i, step in enumerate(steps):
        if errors[i] is not None:
            continue
        errors[i] = next((failed[d] for d in step.sync if d in failed), None)
        if errors[i] is None and step.then is not None:
            try:
                step.then()
            except Exception as exc:
                errors[i] = exc
    return errors
