"""Time: one injectable clock, and the one timestamp format we write (RFC 3339, UTC, milliseconds)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real clock: an aware UTC datetime."""
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """``2026-11-27T03:06:52.123Z`` — UTC, millisecond precision."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: every timestamp must carry a time zone")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    """Inverse of :func:`rfc3339` (accepts any RFC 3339 offset)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    return moment.astimezone(UTC)


def monotonic() -> float:
    return time.monotonic()
