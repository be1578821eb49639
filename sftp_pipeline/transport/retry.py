"""Bounded retries with exponential backoff and full jitter, as a wrapper around any transport.

The transports only classify their errors (:class:`TransientTransportError`
is worth another attempt, :class:`PermanentTransportError` is not); this
module decides how often and how long to wait. A transient error drops the
connection and the next attempt opens a fresh one through the factory, so a
half-dead SSH session is never reused.

Re-running ``put_atomic`` is safe: a file already complete at its final name
is reported as ``already_present`` instead of being sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from sftp_pipeline import config, errors
from sftp_pipeline.transport import Progress, PutResult, RemoteEntry, SessionInfo, Tee, Transport

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
TransportFactory = Callable[[], Awaitable[Transport]]

# Why 2 s: long enough for a partner's sshd to get past a restart or a MaxStartups burst.
BACKOFF_BASE = 2.0
# Why 60 s: a nightly batch should not sit idle for minutes per file; three attempts stay under ~2 min.
BACKOFF_CAP = 60.0


def backoff_delay(
    attempt: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP, rng: random.Random | None = None
) -> float:
    """Full jitter: uniform in [0, min(cap, base·2^(attempt-1))] after failed attempt ``attempt`` (1-based)."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return (rng or random).uniform(0.0, ceiling)


async def retry_call(
    op: Callable[[], Awaitable[T]],
    *,
    attempts: int = config.DEFAULT_ATTEMPTS,
    partner_id: str,
    what: str,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[errors.TransientTransportError], Awaitable[None]] | None = None,
) -> T:
    """Run ``op`` up to ``attempts`` times; retry only :class:`TransientTransportError`."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        try:
            return await op()
        except errors.TransientTransportError as exc:
            if attempt == attempts:
                raise errors.TransientTransportError(
                    f"{exc} (gave up after {attempts} attempt{'s' if attempts != 1 else ''})"
                ) from exc
            delay = backoff_delay(attempt, base=base, cap=cap, rng=rng)
            log.warning(
                "partner %s: %s failed (attempt %d of %d), retrying in %.1fs: %s",
                partner_id,
                what,
                attempt,
                attempts,
                delay,
                exc,
            )
            if on_retry is not None:
                await on_retry(exc)
            await sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


class RetryingTransport(Transport):
    """Wraps a transport *factory*: connects lazily, reconnects after transient errors."""

    def __init__(
        self,
        factory: TransportFactory,
        *,
        partner_id: str,
        attempts: int = config.DEFAULT_ATTEMPTS,
        base: float = BACKOFF_BASE,
        cap: float = BACKOFF_CAP,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._factory = factory
        self._partner = partner_id
        self._attempts = attempts
        self._base, self._cap = base, cap
        self._sleep = sleep
        self._rng = rng
        self._inner: Transport | None = None
        self._connecting = asyncio.Lock()
        self._last_session = SessionInfo(transport="", kex="", cipher="")

    def __repr__(self) -> str:
        return f"RetryingTransport(partner={self._partner!r}, attempts={self._attempts}, inner={self._inner!r})"

    @property
    def session(self) -> SessionInfo:
        """What the current (or last) connection negotiated."""
        return self._inner.session if self._inner is not None else self._last_session

    @session.setter
    def session(self, value: SessionInfo) -> None:
        self._last_session = value

    async def _transport(self) -> Transport:
        async with self._connecting:  # concurrent callers share one connection
            if self._inner is None:
                self._inner = await self._factory()
                self._last_session = self._inner.session
            return self._inner

    async def _drop(self, broken: Transport) -> None:
        async with self._connecting:
            if self._inner is broken:
                self._inner = None
        try:
            await broken.close()
        except errors.TransportError as exc:
            log.debug("partner %s: closing a broken connection failed: %s", self._partner, exc)

    async def _run(self, what: str, op: Callable[[Transport], Awaitable[T]]) -> T:
        used: list[Transport] = []

        async def once() -> T:
            transport = await self._transport()
            used.append(transport)
            return await op(transport)

        async def reconnect(_exc: errors.TransientTransportError) -> None:
            if used:
                await self._drop(used[-1])

        return await retry_call(
            once,
            attempts=self._attempts,
            partner_id=self._partner,
            what=what,
            base=self._base,
            cap=self._cap,
            sleep=self._sleep,
            rng=self._rng,
            on_retry=reconnect,
        )

    async def put_atomic(self, local: Path, directory: str, name: str, progress: Progress | None = None) -> PutResult:
        return await self._run(
            f"upload of {directory}/{name}", lambda t: t.put_atomic(local, directory, name, progress)
        )

    async def list(self, directory: str) -> list[RemoteEntry]:
        return await self._run(f"listing of {directory}", lambda t: t.list(directory))

    async def get(
        self, directory: str, name: str, local: Path, progress: Progress | None = None, *, tee: Tee | None = None
    ) -> int:
        return await self._run(
            f"download of {directory}/{name}", lambda t: t.get(directory, name, local, progress, tee=tee)
        )

    async def remove(self, directory: str, name: str) -> None:
        await self._run(f"removal of {directory}/{name}", lambda t: t.remove(directory, name))

    async def rename(self, directory: str, old: str, new: str) -> None:
        await self._run(f"rename of {directory}/{old}", lambda t: t.rename(directory, old, new))

    async def close(self) -> None:
        async with self._connecting:
            inner, self._inner = self._inner, None
        if inner is not None:
            await inner.close()
