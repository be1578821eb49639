"""File locks (``flock``) on the state directory, for what one machine shares: one daemon per state directory,
one flush of the mail outbox, and — as the SQLite ledger's run locks (:meth:`~sftp_pipeline.ledger.Ledger.turn`)
— a send job, or a partner's collect or receipt work, one run at a time.

A send run starts by finishing its job's unfinished transfers, a collect run the partner's unfinished inbound
documents: two runs doing that at once (the daemon's watched job and an operator's ``send`` of the same job, a
scheduled collect and an operator's ``collect``) would both take the same in-flight document — seal it twice,
overwrite the sealed file whose hash the ledger recorded, fight over its state. So each run holds
``state_dir/locks/<direction>-<job or partner>.lock`` while it works and a second one waits its turn. Send locks
are per job, not per partner, so invoices never wait behind a partner's gigabyte aggregation upload.

``flock`` locks belong to an open file description, so they exclude other processes *and* other runs in the
same process (each opens the file afresh); the kernel releases them when a process dies, so a crash never
leaves a stale lock behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import IO

from sftp_pipeline.names import is_safe_name

log = logging.getLogger(__name__)

LOCK_DIR = "locks"
# Why 0.05 s doubling to 1 s: a waiting run starts promptly after a short run, and costs nothing behind a long one.
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 1.0


def try_lock(path: Path, *, shared: bool = False) -> IO[str] | str:
    """Take an exclusive lock on ``path`` and write our pid in it (or a shared one, which writes nothing);
    the open file (closing it releases the lock), or — when another holds it — what the last exclusive
    holder wrote (its pid, or "unknown")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh: IO[str] = path.open("a+")
    try:
        fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        return holder
    except BaseException:
        fh.close()
        raise
    if not shared:
        _sign(fh)
    return fh


def _sign(fh: IO[str]) -> None:
    """Write our pid into a lock file we hold exclusively: whoever waits for it can say for whom."""
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()


@contextlib.contextmanager
def try_hold(path: Path) -> Iterator[bool]:
    """Hold ``path``'s exclusive lock if it is free (True), or go on without it (False); never waits."""
    held = try_lock(path)
    try:
        yield not isinstance(held, str)
    finally:
        if not isinstance(held, str):
            held.close()


def lock_path(state_dir: Path, direction: str, key: str) -> Path:
    """``locks/<direction>-<key>.lock``; a key that is no safe file name (a job file named with spaces) is hashed."""
    name = f"{direction}-{key}.lock"
    if not is_safe_name(name):
        name = f"{direction}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.lock"
    return state_dir / LOCK_DIR / name


@contextlib.asynccontextmanager
async def turn(state_dir: Path, direction: str, key: str, *, shared: bool = False) -> AsyncIterator[None]:
    """Hold the ``direction`` lock for ``key`` (waiting, cancellably, while another run holds it).

    ``shared``: for work on one named document (the embedded server collecting an upload as it completes),
    which may run beside other such work — its own per-document locks keep those apart — but not beside a run.
    """
    path = lock_path(state_dir, direction, key)
    delay = FIRST_POLL_SECONDS
    said = False
    while True:
        held = await asyncio.to_thread(try_lock, path, shared=shared)
        if not isinstance(held, str):
            break
        if not said:
            # Our own daemon's work taking turns is routine; another process (an operator's run beside the
            # daemon) is worth a line the operator sees, or their command seems to hang.
            level = logging.INFO if held == str(os.getpid()) else logging.WARNING
            log.log(
                level, "%s %s: another run (pid %s) is working on it; this one starts when it ends (%s)",
                direction, key, held, path,
            )  # fmt: skip
            said = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_POLL_SECONDS)
    try:
        yield
    finally:
        held.close()


@contextlib.asynccontextmanager
async def turns(state_dir: Path, direction: str, keys: Iterable[str]) -> AsyncIterator[None]:
    """Hold several locks, taken in sorted order (two runs wanting overlapping sets can never deadlock)."""
    async with contextlib.AsyncExitStack() as stack:
        for key in sorted(set(keys)):
            await stack.enter_async_context(turn(state_dir, direction, key))
        yield


@contextlib.contextmanager
def hold(path: Path, what: str) -> Iterator[None]:
    """Hold ``path``'s exclusive lock, blocking while another holds it — for work that already runs in a worker
    thread (sending the mail outbox). Says once what it waits for."""
    held = try_lock(path)
    if isinstance(held, str):
        log.warning("%s: another run (pid %s) is at it; waiting for it to finish (%s)", what, held, path)
        fh: IO[str] = path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except BaseException:
            fh.close()
            raise
        _sign(fh)
        held = fh
    try:
        yield
    finally:
        held.close()
