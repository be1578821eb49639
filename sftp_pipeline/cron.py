"""Cron schedules: a job's 5-field cron expression and IANA time zone as fire instants (UTC), with crontab's
meaning — not APScheduler 3.x's where the two differ:

* weekday numbers are crontab's (0 or 7 = Sunday, 1 = Monday); APScheduler 3.x reads 0 as Monday;
* when both day-of-month and day-of-week are restricted, either matching is enough (crontab's OR;
  APScheduler requires both);
* daylight saving time, as Vixie cron/cronie do it. A *fixed-time* job (neither minute nor hour field
  starts with ``*``, e.g. ``30 2 * * *``) runs once per matching local day: a wall-clock time that does
  not exist (spring forward) runs at the first instant after the gap, one that happens twice (fall
  back) runs only the first time. A *wildcard* job (``*/15 * * * *``, ``0 * * * *``) follows real
  time: nothing runs for the skipped wall-clock times, and the repeated hour runs again.
  APScheduler 3.11 by itself runs a fall-back 01:30 twice and a spring-forward 02:30 at 03:30.

Pure: :class:`CronSchedule`, :func:`fire_times` and :func:`missed_run` answer "when" and "what was missed"
over explicit times; the configuration validates schedules with it, and the daemon's scheduler
(:mod:`sftp_pipeline.daemon.scheduler`) runs jobs by it. APScheduler's cron trigger only enumerates wall-clock
calendars here (in UTC, which has no DST).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

# Why 3 h: larger than any daylight-saving shift in the tz database (Antarctica/Troll shifts 2 h), so a
# wall-clock time more than this after another is certainly a later instant.
MAX_OFFSET_SHIFT = timedelta(hours=3)
# Why 1 minute: the finest cron step; the backwards search for the latest missed run starts there.
_FIRST_LOOKBACK = timedelta(minutes=1)
# Why 8 years: a schedule that fires at all fires within this (29 February needs up to 8 years, 2096 to 2104).
_MUST_FIRE_WITHIN = timedelta(days=8 * 366)

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
