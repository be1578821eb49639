"""File locks on the state directory: one daemon per state directory, one run per partner and direction.

A send run starts by finishing the partner's unfinished transfers, a collect run the partner's unfinished
inbound documents: two runs for the same partner at once (the daemon's invoice and aggregation jobs, an
operator's ``send`` while the daemon sends) would both take the same in-flight document — seal it twice,
overwrite the sealed file whose hash the ledger recorded, fight over its state. So each run holds
``state_dir/locks/<direction>-<partner>.lock`` while it works; a second run waits its turn.

``flock`` locks belong to an open file description, so they exclude other processes *and* other runs in the
same process (each opens the file afresh); the kernel releases them when a process dies, so a crash never
leaves a stale lock behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from .names import is_safe_name

log = logging.getLogger(__name__)

LOCK_DIR = "locks"
# Why 0.05 s doubling to 1 s: a waiting run starts promptly after a short run, and costs nothing behind a long one.
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 1.0


def try_lock(path: Path) -> IO[str] | str:
    """Take an exclusive lock on ``path`` and write our pid in it; the open file (closing it releases the
    lock), or — when another holds it — what the holder wrote (its pid, or "unknown")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh: IO[str] = path.open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        return holder
    except BaseException:
        fh.close()
        raise
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def partner_lock_path(state_dir: Path, direction: str, partner_id: str) -> Path:
    name = f"{direction}-{partner_id}.lock"
    if not is_safe_name(name):  # partner ids are checked when the configuration loads; never join a stray one
        raise ValueError(f"partner id {partner_id!r} cannot name a lock file")
    return state_dir / LOCK_DIR / name


@contextlib.asynccontextmanager
async def partner_turn(state_dir: Path, direction: str, partner_id: str) -> AsyncIterator[None]:
    """Hold the ``direction`` lock for ``partner_id`` (waiting, cancellably, while another run holds it)."""
    path = partner_lock_path(state_dir, direction, partner_id)
    delay = FIRST_POLL_SECONDS
    said = False
    while True:
        held = await asyncio.to_thread(try_lock, path)
        if not isinstance(held, str):
            break
        if not said:
            # Our own daemon's jobs taking turns is routine; another process (an operator's run beside the
            # daemon) is worth a line the operator sees, or their command seems to hang.
            level = logging.INFO if held == str(os.getpid()) else logging.WARNING
            log.log(
                level, "partner %s: another %s run (pid %s) is working; this one starts when it ends (%s)",
                partner_id, direction, held, path,
            )  # fmt: skip
            said = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_POLL_SECONDS)
    try:
        yield
    finally:
        held.close()
