"""The scheduler's pure core: fire times across DST, crontab weekdays, the missed-run decision."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftp_pipeline.cron import CronSchedule, Missed, crontab_weekdays, fire_times, missed_run
from sftp_pipeline.daemon.scheduler import LocalCronTrigger

CHICAGO = "America/Chicago"
CHI = ZoneInfo(CHICAGO)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc, arg-type]


def local_dates(times: list[datetime], zone: ZoneInfo) -> list[date]:
    return [t.astimezone(zone).date() for t in times]


def two_weeks_around(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=CHI) - timedelta(days=7)
    return start, start + timedelta(days=14)


def assert_one_run_per_local_day(times: list[datetime], start: datetime) -> None:
    dates = local_dates(times, CHI)
    assert len(times) == 14
    assert dates == [start.date() + timedelta(days=n) for n in range(14)]
    assert all(t.tzinfo is UTC for t in times)


def test_spring_forward_nightly_job_runs_once_just_after_the_gap() -> None:
    # 2027-03-14 in Chicago: 02:00 CST jumps to 03:00 CDT, so 02:30 does not exist that day.
    start, end = two_weeks_around(date(2027, 3, 14))
    times = fire_times("30 2 * * *", CHICAGO, start, end)
    assert_one_run_per_local_day(times, start)
    by_date = dict(zip(local_dates(times, CHI), times, strict=True))
    assert by_date[date(2027, 3, 14)] == utc(2027, 3, 14, 8, 0)  # 03:00 CDT, the first instant after the gap
    assert by_date[date(2027, 3, 13)].astimezone(CHI).strftime("%H:%M") == "02:30"
    assert by_date[date(2027, 3, 15)].astimezone(CHI).strftime("%H:%M") == "02:30"


def test_fall_back_nightly_job_runs_only_the_first_0130() -> None:
    # 2026-11-01 in Chicago: 02:00 CDT falls back to 01:00 CST, so 01:30 happens twice.
    start, end = two_weeks_around(date(2026, 11, 1))
    times = fire_times("30 1 * * *", CHICAGO, start, end)
    assert_one_run_per_local_day(times, start)
    assert utc(2026, 11, 1, 6, 30) in times  # 01:30 CDT
    assert utc(2026, 11, 1, 7, 30) not in times  # 01:30 CST, the repeat


def test_fall_back_nightly_job_after_the_repeated_hour_is_unchanged() -> None:
    start, end = two_weeks_around(date(2026, 11, 1))
    times = fire_times("30 2 * * *", CHICAGO, start, end)
    assert_one_run_per_local_day(times, start)
    assert all(t.astimezone(CHI).strftime("%H:%M") == "02:30" for t in times)


def test_hourly_wildcard_job_follows_real_time_across_both_changes() -> None:
    spring = fire_times("0 * * * *", CHICAGO, utc(2027, 3, 14, 6), utc(2027, 3, 15, 5))
    fall = fire_times("0 * * * *", CHICAGO, utc(2026, 11, 1, 5), utc(2026, 11, 2, 6))
    # A 23-hour and a 25-hour local day: one run per real hour, none doubled.
    assert len(spring) == len(set(spring)) == 23
    assert len(fall) == len(set(fall)) == 25
    assert [t.astimezone(CHI).hour for t in fall].count(1) == 2  # the repeated hour runs again


def test_every_fifteen_minutes_has_no_duplicate_or_gap_in_real_time() -> None:
    times = fire_times("*/15 * * * *", CHICAGO, utc(2026, 10, 31), utc(2026, 11, 3))
    assert all(b - a == timedelta(minutes=15) for a, b in itertools.pairwise(times))
    times = fire_times("*/15 * * * *", CHICAGO, utc(2027, 3, 13), utc(2027, 3, 16))
    assert all(b - a == timedelta(minutes=15) for a, b in itertools.pairwise(times))


def test_two_fixed_times_inside_the_gap_coalesce_into_one_run() -> None:
    times = fire_times("0,30 2 * * *", CHICAGO, utc(2027, 3, 14), utc(2027, 3, 15))
    assert times == [utc(2027, 3, 14, 8, 0)]


@settings(max_examples=25, deadline=None)
@given(
    zone=st.sampled_from(
        [
            "America/Chicago",
            "Europe/Berlin",
            "Australia/Lord_Howe",
            "America/Havana",
            "America/Santiago",
            "Europe/London",
            "Asia/Tehran",
            "Pacific/Chatham",
            "Antarctica/Troll",
            "UTC",
        ]
    ),
    hour=st.integers(0, 23),
    minute=st.sampled_from([0, 15, 30, 59]),
)
def test_a_daily_job_runs_exactly_once_every_local_day_of_a_year(zone: str, hour: int, minute: int) -> None:
    tz = ZoneInfo(zone)
    start = datetime(2026, 1, 1, tzinfo=tz) - timedelta(microseconds=1)  # the start is exclusive
    end = datetime(2027, 1, 1, tzinfo=tz) - timedelta(microseconds=1)
    times = fire_times(f"{minute} {hour} * * *", zone, start, end)
    counts = Counter(local_dates(times, tz))
    assert len(counts) == 365
    assert set(counts.values()) == {1}
    assert times == sorted(times)


def test_crontab_weekday_numbers_mean_what_crontab_means() -> None:
    assert crontab_weekdays("1-5") == "mon,tue,wed,thu,fri"
    assert crontab_weekdays("0") == crontab_weekdays("7") == "sun"
    assert crontab_weekdays("5-7") == "sun,fri,sat"
    assert crontab_weekdays("0-6") == crontab_weekdays("*") == "*"
    assert crontab_weekdays("MON-FRI") == "mon,tue,wed,thu,fri"
    assert crontab_weekdays("*/2") == "sun,tue,thu,sat"
    with pytest.raises(ValueError, match="'8' is not a weekday"):
        crontab_weekdays("8", "0 9 * * 8")
    with pytest.raises(ValueError, match="runs backwards"):
        crontab_weekdays("5-1")


def test_weekday_job_runs_monday_to_friday() -> None:
    times = fire_times("0 9 * * 1-5", CHICAGO, utc(2026, 6, 1), utc(2026, 6, 15))  # 2026-06-01 is a Monday
    assert [t.astimezone(CHI).strftime("%a") for t in times] == ["Mon", "Tue", "Wed", "Thu", "Fri"] * 2


def test_day_of_month_or_weekday_as_in_crontab() -> None:
    times = fire_times("0 0 1 * 0", "UTC", utc(2026, 6, 1), utc(2026, 7, 2))
    # Every Sunday of June 2026 (7, 14, 21, 28) and the 1st of each month (June 1 is excluded: start is exclusive).
    assert [t.day for t in times] == [7, 14, 21, 28, 1]


def test_a_schedule_that_never_fires_is_refused() -> None:
    with pytest.raises(ValueError, match="never fires"):
        CronSchedule("0 0 31 2 *", "UTC")
    leap_days = fire_times("0 0 29 2 *", "UTC", utc(2096, 1, 1), utc(2105, 1, 1))
    assert [t.year for t in leap_days] == [2096, 2104]


def test_trigger_iterates_like_apscheduler_would() -> None:
    trigger = LocalCronTrigger("30 1 * * *", CHICAGO)
    now = utc(2026, 10, 30)
    first = trigger.get_next_fire_time(None, now)
    runs = [first]
    while len(runs) < 5:
        runs.append(trigger.get_next_fire_time(runs[-1], now))
    assert runs == fire_times("30 1 * * *", CHICAGO, now, runs[-1])  # type: ignore[arg-type]
    assert trigger.get_next_fire_time(None, utc(2026, 11, 1, 6, 30)) == utc(2026, 11, 1, 6, 30)  # inclusive
    assert "30 1 * * *" in str(trigger)


NIGHTLY = "30 2 * * *"  # 08:30 UTC in winter, 07:30 in summer, in Chicago
GRACE = timedelta(hours=6)
LONG_AGO = utc(2025, 1, 1)


def missed(
    *, last_run: datetime | None, now: datetime, cron: str = NIGHTLY, first_seen: datetime = LONG_AGO
) -> Missed | None:
    return missed_run(cron, CHICAGO, last_run=last_run, now=now, grace=GRACE, first_seen=first_seen)


def test_missed_run_within_grace_is_caught_up() -> None:
    found = missed(last_run=utc(2026, 1, 9, 8, 30), now=utc(2026, 1, 10, 10))
    assert found == Missed(scheduled=utc(2026, 1, 10, 8, 30), run=True)


def test_several_missed_runs_coalesce_into_the_latest() -> None:
    found = missed(cron="0 * * * *", last_run=utc(2026, 1, 9, 8), now=utc(2026, 1, 10, 10, 20))
    assert found == Missed(scheduled=utc(2026, 1, 10, 10), run=True)


def test_missed_run_older_than_grace_is_reported_not_run() -> None:
    found = missed(last_run=utc(2026, 1, 9, 8, 30), now=utc(2026, 1, 10, 15))
    assert found == Missed(scheduled=utc(2026, 1, 10, 8, 30), run=False)


def test_nothing_missed_when_the_last_run_is_the_latest_fire_time() -> None:
    assert missed(last_run=utc(2026, 1, 10, 8, 30, 0, 5000), now=utc(2026, 1, 10, 10)) is None


def test_without_a_last_run_first_seen_bounds_the_search() -> None:
    assert missed(last_run=None, now=utc(2026, 1, 10, 10), first_seen=utc(2026, 1, 10, 9)) is None
    found = missed(last_run=None, now=utc(2026, 1, 10, 10), first_seen=utc(2026, 1, 10, 8))
    assert found == Missed(scheduled=utc(2026, 1, 10, 8, 30), run=True)


def test_latest_fire_finds_a_sparse_schedule_years_back() -> None:
    schedule = CronSchedule("0 0 1 1 *", "UTC")
    assert schedule.latest_fire(utc(2020, 6, 1), utc(2026, 6, 1)) == utc(2026, 1, 1)
