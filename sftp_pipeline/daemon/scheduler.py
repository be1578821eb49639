"""Cron schedules for the daemon: when a job runs, catching up a missed run, never overlapping itself.

Pure core, thin adapter:

- :class:`CronSchedule` turns a job's 5-field cron expression and IANA time zone into fire instants
  (UTC), with crontab's meaning — not APScheduler 3.x's where the two differ:

  * weekday numbers are crontab's (0 or 7 = Sunday, 1 = Monday); APScheduler 3.x reads 0 as Monday;
  * when both day-of-month and day-of-week are restricted, either matching is enough (crontab's OR;
    APScheduler requires both);
  * daylight saving time, as Vixie cron/cronie do it. A *fixed-time* job (neither minute nor hour field
    starts with ``*``, e.g. ``30 2 * * *``) runs once per matching local day: a wall-clock time that does
    not exist (spring forward) runs at the first instant after the gap, one that happens twice (fall
    back) runs only the first time. A *wildcard* job (``*/15 * * * *``, ``0 * * * *``) follows real
    time: nothing runs for the skipped wall-clock times, and the repeated hour runs again.
    APScheduler 3.11 by itself runs a fall-back 01:30 twice and a spring-forward 02:30 at 03:30.

- :func:`fire_times` and :func:`missed_run` answer "when" and "what was missed" over explicit times.
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
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from sftp_pipeline.clock import Clock, parse_rfc3339, rfc3339, utc_now
from sftp_pipeline.errors import ConfigError

log = logging.getLogger(__name__)

# Why 3 h: larger than any daylight-saving shift in the tz database (Antarctica/Troll shifts 2 h), so a
# wall-clock time more than this after another is certainly a later instant.
MAX_OFFSET_SHIFT = timedelta(hours=3)
# Why 1 minute: the finest cron step; the backwards search for the latest missed run starts there.
_FIRST_LOOKBACK = timedelta(minutes=1)
# Why 8 years: a schedule that fires at all fires within this (29 February needs up to 8 years, 2096 to 2104).
_MUST_FIRE_WITHIN = timedelta(days=8 * 366)
# Why 1 s: APScheduler's smallest misfire grace; used when the configured catch-up grace is zero.
_MIN_MISFIRE_GRACE_SECONDS = 1

_CRONTAB_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_WEEKDAY_TERM = re.compile(r"^(?P<range>\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(?P<step>\d+))?$")


def _weekday_number(token: str, expr: str) -> int:
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token) % 7
    if token in _CRONTAB_WEEKDAYS:
        return _CRONTAB_WEEKDAYS.index(token)
    raise ValueError(f"cron {expr!r}: {token!r} is not a weekday; use 0-7 (0 and 7 = Sunday) or sun…sat")


def crontab_weekdays(dow: str, expr: str = "") -> str:
    """Translate a crontab day-of-week field (0/7 = Sunday) into APScheduler 3.x's (names only)."""
    days: set[int] = set()
    for term in dow.lower().split(","):
        match = _WEEKDAY_TERM.match(term)
        if match is None:
            raise ValueError(f"cron {expr or dow!r}: cannot read the weekday field part {term!r}")
        span, step = match["range"], int(match["step"] or 1)
        if step < 1:
            raise ValueError(f"cron {expr or dow!r}: a step of 0 in {term!r}")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            low, high = span.split("-")
            first, last = _weekday_number(low, expr), _weekday_number(high, expr)
            if high == "7":
                last = 7  # "5-7" = Friday to Sunday
        else:
            first = _weekday_number(span, expr)
            last = 6 if match["step"] else first  # "1/2" = every second day from Monday
        if last < first:
            raise ValueError(f"cron {expr or dow!r}: the weekday range {term!r} runs backwards")
        days.update(day % 7 for day in range(first, last + 1, step))
    if len(days) == len(_CRONTAB_WEEKDAYS):
        return "*"
    return ",".join(_CRONTAB_WEEKDAYS[day] for day in sorted(days))


class CronSchedule:
    """A crontab expression in a time zone; :meth:`next_fire` gives the next fire instant in UTC."""

    def __init__(self, cron: str, tz: str) -> None:
        fields = cron.split()
        if len(fields) != 5:
            raise ValueError(f"cron {cron!r}: expected 5 fields (minute hour day month weekday), got {len(fields)}")
        minute, hour, day, month, dow = fields
        self.cron = cron
        self.tz = tz
        self._zone = ZoneInfo(tz)
        # Cronie's rule: a job whose minute or hour field starts with '*' follows real time across DST.
        self.wildcard = minute.startswith("*") or hour.startswith("*")
        weekdays = crontab_weekdays(dow, cron)
        # Wall-clock calendars: UTC has no DST, so these triggers enumerate local wall-clock times.
        spec = {"minute": minute, "hour": hour, "month": month, "timezone": UTC}
        if day != "*" and dow != "*":  # crontab: either field matching is enough
            self._walls = [CronTrigger(day=day, **spec), CronTrigger(day_of_week=weekdays, **spec)]
        else:
            self._walls = [CronTrigger(day=day, day_of_week=weekdays, **spec)]
        probe = datetime(2000, 1, 1)
        found = self._next_wall(probe, inclusive=True)
        if found is None or found - probe > _MUST_FIRE_WITHIN:
            raise ValueError(f"cron {cron!r} never fires (no such date); check the day and month fields")

    def __repr__(self) -> str:
        return f"CronSchedule({self.cron!r}, {self.tz!r})"

    def _next_wall(self, wall: datetime, *, inclusive: bool) -> datetime | None:
        """The first matching wall-clock time at or after (or strictly after) the naive ``wall``."""
        start = wall.replace(tzinfo=UTC)
        if not inclusive:
            start += timedelta(microseconds=1)
        found = [t.get_next_fire_time(None, start) for t in self._walls]
        times = [f for f in found if f is not None]
        return min(times).replace(tzinfo=None) if times else None

    def _instants(self, wall: datetime) -> list[datetime]:
        """The UTC instants at which the local wall-clock time ``wall`` fires this job."""
        first = wall.replace(tzinfo=self._zone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=self._zone, fold=1).astimezone(UTC)
        if first == second:
            return [first]
        if first < second:  # the time happens twice (fall back): fold 0 is the earlier instant
            return [first, second] if self.wildcard else [first]
        # The time does not exist (spring forward): fold 1 lies before the gap, fold 0 after it.
        return [] if self.wildcard else [self._gap_end(second, first)]

    def _gap_end(self, before: datetime, after: datetime) -> datetime:
        """The instant the clocks jumped forward, between ``before`` (old offset) and ``after`` (new)."""
        old = before.astimezone(self._zone).utcoffset()
        low, high = before, after
        while high - low > timedelta(seconds=1):
            mid = low + (high - low) / 2
            if mid.astimezone(self._zone).utcoffset() == old:
                low = mid
            else:
                high = mid
        return high.replace(microsecond=0)

    def next_fire(self, after: datetime, *, inclusive: bool = False) -> datetime | None:
        """The first fire instant (UTC) after ``after`` (or at it, when ``inclusive``); None if never."""
        if after.tzinfo is None:
            raise ValueError("naive datetime: pass an aware instant")
        after = after.astimezone(UTC)
        offset = after.astimezone(self._zone).utcoffset()
        window_start, window_end = after - MAX_OFFSET_SHIFT, after + MAX_OFFSET_SHIFT
        if (
            window_start.astimezone(self._zone).utcoffset() == offset
            and window_end.astimezone(self._zone).utcoffset() == offset
        ):  # no clock change nearby: local time is UTC plus one offset
            assert offset is not None
            wall = self._next_wall((after + offset).replace(tzinfo=None), inclusive=inclusive)
            if wall is None:
                return None
            candidate = (wall - offset).replace(tzinfo=UTC)
            if candidate <= window_end:
                return candidate
        return self._next_fire_near_change(after, inclusive=inclusive)

    def _next_fire_near_change(self, after: datetime, *, inclusive: bool) -> datetime | None:
        local = after.astimezone(self._zone).replace(tzinfo=None)
        best: datetime | None = None
        best_wall: datetime | None = None
        wall = self._next_wall(local - MAX_OFFSET_SHIFT, inclusive=True)
        while wall is not None and (best_wall is None or wall <= best_wall + MAX_OFFSET_SHIFT):
            for instant in self._instants(wall):
                if (instant > after or (inclusive and instant == after)) and (best is None or instant < best):
                    best = instant
                    best_wall = best_wall or wall
            wall = self._next_wall(wall, inclusive=False)
        return best

    def latest_fire(self, since: datetime, until: datetime) -> datetime | None:
        """The last fire instant in ``(since, until]``, searching backwards from ``until`` in doubling steps."""
        lookback = _FIRST_LOOKBACK
        while True:
            low = max(since, until - lookback)
            found = self.next_fire(low)
            if found is not None and found <= until:
                while (following := self.next_fire(found)) is not None and following <= until:
                    found = following
                return found
            if low == since:
                return None
            lookback *= 2


def fire_times(cron: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    """Every fire instant (UTC) of ``cron`` in ``tz`` after ``start`` up to and including ``end``."""
    schedule = CronSchedule(cron, tz)
    times: list[datetime] = []
    moment = start
    while (found := schedule.next_fire(moment)) is not None and found <= end:
        times.append(found)
        moment = found
    return times


@dataclass(frozen=True)
class Missed:
    """The latest scheduled run that did not happen while the service was down (earlier ones coalesce into it)."""

    scheduled: datetime
    run: bool  # within the grace period: run it now; otherwise report it only


def missed_run(
    cron: str,
    tz: str,
    *,
    last_run: datetime | None,
    now: datetime,
    grace: timedelta,
    first_seen: datetime,
) -> Missed | None:
    """The latest fire time in ``(last_run or first_seen, now]``, to run if it is within ``grace`` of now."""
    since = last_run if last_run is not None else first_seen
    latest = CronSchedule(cron, tz).latest_fire(since, now)
    if latest is None:
        return None
    return Missed(scheduled=latest, run=now - latest <= grace)


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
