"""Cron schedules for the daemon: when a job runs, catching up a missed run, never overlapping itself.

Pure core, thin adapter:

- :class:`~sftp_pipeline.cron.CronSchedule` (pure, :mod:`sftp_pipeline.cron`) turns a job's cron expression
  and time zone into fire instants with crontab's meaning; :func:`~sftp_pipeline.cron.missed_run` says what
  was missed.
- :class:`JobScheduler` runs the jobs on an :class:`AsyncIOScheduler` (in-memory job store, one per
  process: a job store must never be shared by several scheduler processes) with
  :class:`LocalCronTrigger`, catches up at start-up, and serialises every run of a job — scheduled or
  triggered by the folder watcher — through one lane per job.

Last-run marks live in the ledger's ``meta`` table (``last_run:<job>``, ``first_seen:<job>``). A mark is
written when a scheduled run *starts*, not when it ends: a run cut short by a crash is not run again as a
catch-up at the next start — the pipeline's own recovery pass finishes interrupted work, and a run is
never doubled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger

from sftp_pipeline.clock import Clock, parse_rfc3339, rfc3339, utc_now
from sftp_pipeline.cron import CronSchedule, Missed, missed_run
from sftp_pipeline.errors import ConfigError

log = logging.getLogger(__name__)

# Why 1 s: APScheduler's smallest misfire grace; used when the configured catch-up grace is zero.
_MIN_MISFIRE_GRACE_SECONDS = 1


class LocalCronTrigger(BaseTrigger):  # type: ignore[misc]
    """An APScheduler 3.x trigger over :class:`CronSchedule` (crontab weekdays, OR of days, cron's DST rules)."""

    def __init__(self, cron: str, tz: str) -> None:
        self.schedule = CronSchedule(cron, tz)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        if previous_fire_time is not None:
            return self.schedule.next_fire(previous_fire_time)
        return self.schedule.next_fire(now, inclusive=True)

    def __str__(self) -> str:
        return f"cron[{self.schedule.cron} {self.schedule.tz}]"

    def __repr__(self) -> str:
        return f"<LocalCronTrigger {self.schedule.cron!r} {self.schedule.tz!r}>"


class MarkStore(Protocol):
    """Where last-run marks persist; :class:`~sftp_pipeline.ledger.Ledger` is one."""

    def meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...


class ScheduledJob(Protocol):
    """What the scheduler reads from a job (``config._Scheduled``)."""

    @property
    def name(self) -> str: ...

    @property
    def schedule(self) -> str | None: ...

    @property
    def timezone(self) -> str: ...


J = TypeVar("J", bound=ScheduledJob)


class LedgerMarks:
    """The ledger's ``meta`` table as a :class:`MarkStore` (a ``Ledger`` also fits the protocol as it is)."""

    def __init__(self, ledger: MarkStore) -> None:
        self._ledger = ledger

    def meta(self, key: str) -> str | None:
        return self._ledger.meta(key)

    def set_meta(self, key: str, value: str) -> None:
        self._ledger.set_meta(key, value)


def last_run_key(job: str) -> str:
    return f"last_run:{job}"


def first_seen_key(job: str) -> str:
    return f"first_seen:{job}"


@dataclass
class _Pending:
    """A run waiting for its job's lane; later requests join it instead of queueing another."""

    reasons: list[str]
    mark: bool
    task: asyncio.Task[bool] | None = None


@dataclass
class _Lane:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: _Pending | None = None


class JobScheduler(Generic[J]):
    """Runs jobs on their cron schedules; a job never overlaps itself; a missed run is caught up once.

    ``run(job, reason)`` does the work. Jobs without a schedule are not scheduled but may still be
    :meth:`trigger`-ed (a watched send job).
    """

    def __init__(
        self,
        jobs: Sequence[J],
        run: Callable[[J, str], Awaitable[None]],
        *,
        marks: MarkStore,
        grace: timedelta,
        clock: Clock = utc_now,
    ) -> None:
        self._scheduled = {job.name: job for job in jobs if job.schedule}
        for job in self._scheduled.values():
            assert job.schedule is not None
            try:
                CronSchedule(job.schedule, job.timezone)
            except ValueError as exc:
                raise ConfigError(f"job {job.name}: schedule {job.schedule!r} cannot be used: {exc}") from None
        self._run = run
        self._marks = marks
        self._grace = grace
        self._clock = clock
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[bool]] = set()
        self._aps: Any = None

    @property
    def apscheduler(self) -> Any:
        """The underlying ``AsyncIOScheduler`` once started (for inspection: ``get_jobs()``)."""
        return self._aps

    def _mark(self, key: str) -> datetime | None:
        value = self._marks.meta(key)
        return parse_rfc3339(value) if value else None

    def pending_catch_up(self, job: J, now: datetime) -> Missed | None:
        """What ``job`` missed while the service was down; records when the job was first seen."""
        assert job.schedule is not None
        first_seen = self._mark(first_seen_key(job.name))
        if first_seen is None:
            first_seen = now
            self._marks.set_meta(first_seen_key(job.name), rfc3339(now))
        return missed_run(
            job.schedule,
            job.timezone,
            last_run=self._mark(last_run_key(job.name)),
            now=now,
            grace=self._grace,
            first_seen=first_seen,
        )

    async def start(self) -> dict[str, Missed]:
        """Catch up missed runs (each at most once), then start the cron schedules. Returns what was missed."""
        now = self._clock()
        missed: dict[str, Missed] = {}
        for job in self._scheduled.values():
            found = self.pending_catch_up(job, now)
            if found is None:
                continue
            missed[job.name] = found
            when = rfc3339(found.scheduled)
            if found.run:
                log.info("job %s: running the run scheduled at %s, missed while the service was down", job.name, when)
                self._submit(job, f"catch-up for {when}", mark=True)
            else:
                log.warning(
                    "job %s: skipped run at %s: older than the grace period (%s, [daemon] catch_up_grace_hours); "
                    "run it by hand if it is still needed",
                    job.name,
                    when,
                    self._grace,
                )
        misfire = int(self._grace.total_seconds()) or _MIN_MISFIRE_GRACE_SECONDS
        aps = AsyncIOScheduler(timezone=UTC)  # default in-memory job store: never shared between processes
        for job in self._scheduled.values():
            assert job.schedule is not None
            aps.add_job(
                self._fire,
                trigger=LocalCronTrigger(job.schedule, job.timezone),
                args=[job.name],
                id=job.name,
                name=job.name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=misfire,
            )
        aps.add_listener(self._on_not_run, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        aps.start()
        self._aps = aps
        return missed

    async def stop(self) -> None:
        """Stop scheduling and wait for running (and queued) runs to finish."""
        aps, self._aps = self._aps, None
        if aps is not None:
            aps.pause()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if aps is not None:
            await asyncio.sleep(0)  # let APScheduler's job coroutines see their runs finish
            aps.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the next loop iteration

    async def trigger(self, job: J, reason: str) -> None:
        """Run ``job`` now, or after its run in progress (joining a run already queued); returns when done.

        A failing run is logged here and does not raise (``run`` reports its own errors).
        """
        await asyncio.shield(self._submit(job, reason, mark=False))

    async def _fire(self, name: str) -> None:
        job = self._scheduled[name]
        await asyncio.shield(self._submit(job, f"schedule {job.schedule} ({job.timezone})", mark=True))

    def _on_not_run(self, event: JobEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            log.error(
                "job %s: the run scheduled at %s started too late (more than the grace period %s) and was "
                "skipped; it runs at its next scheduled time",
                event.job_id,
                rfc3339(event.scheduled_run_time),
                self._grace,
            )
        else:
            log.warning("job %s: still running at its next scheduled time; that run is skipped", event.job_id)

    def _submit(self, job: J, reason: str, *, mark: bool) -> asyncio.Task[bool]:
        lane = self._lanes.setdefault(job.name, _Lane())
        pending = lane.pending
        if pending is not None and pending.task is not None:
            pending.reasons.append(reason)
            pending.mark = pending.mark or mark
            return pending.task
        pending = _Pending([reason], mark)
        task = asyncio.get_running_loop().create_task(self._run_in_lane(lane, job, pending))
        pending.task = task
        lane.pending = pending
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run_in_lane(self, lane: _Lane, job: J, pending: _Pending) -> bool:
        async with lane.lock:
            if lane.pending is pending:
                lane.pending = None  # running now: the next request queues a new run
            reason = "; ".join(pending.reasons)
            try:
                if pending.mark:
                    self._marks.set_meta(last_run_key(job.name), rfc3339(self._clock()))
                log.info("job %s: starting (%s)", job.name, reason)
                await self._run(job, reason)
            except Exception:
                log.exception("job %s: the run (%s) failed", job.name, reason)
                return False
            return True
