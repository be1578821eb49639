"""Retry policy: which errors are retried, how often, and how long the waits are."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from sftp_pipeline import config, errors
from sftp_pipeline.transport.retry import BACKOFF_BASE, BACKOFF_CAP, backoff_delay, retry_call


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not clustered
        assert min(delays) < ceiling * 0.2


def run_with(outcomes: list[BaseException | str], attempts: int = config.DEFAULT_ATTEMPTS) -> tuple[str, list[float]]:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def op() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    result = asyncio.run(retry_call(op, attempts=attempts, partner_id="utility", what="upload of inbox/x", sleep=sleep))
    return result, sleeps


def test_transient_errors_are_retried_until_success(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    result, sleeps = run_with([errors.TransientTransportError("reset"), errors.TransientTransportError("reset"), "ok"])
    assert result == "ok"
    assert len(sleeps) == 2
    assert "utility" in caplog.text and "attempt 1 of 3" in caplog.text and "upload of inbox/x" in caplog.text


def test_three_attempts_is_the_default_and_the_last_error_is_raised() -> None:
    assert config.DEFAULT_ATTEMPTS == 3  # NAESB EDM's rule
    with pytest.raises(errors.TransientTransportError, match="gave up after 3 attempts") as caught:
        run_with([errors.TransientTransportError(f"reset {i}") for i in range(5)])
    assert "reset 2" in str(caught.value)


def test_permanent_errors_are_raised_at_once() -> None:
    outcomes: list[BaseException | str] = [errors.HostKeyError("changed key"), "never reached"]
    with pytest.raises(errors.HostKeyError):
        run_with(outcomes)
    assert outcomes == ["never reached"]


def test_other_exceptions_are_not_swallowed() -> None:
    with pytest.raises(ValueError):
        run_with([ValueError("a bug"), "ok"])


def test_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError):
        run_with(["ok"], attempts=0)
