"""JobScheduler under a clock the test controls, with a real ledger for its marks and a real AsyncIOScheduler."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sftp_pipeline.config import ReportJob, SendJob
from sftp_pipeline.cron import Missed
from sftp_pipeline.daemon.scheduler import JobScheduler, LedgerMarks, LocalCronTrigger
from sftp_pipeline.errors import ConfigError
from sftp_pipeline.ledger import Ledger
from sftp_pipeline.ledger.sqlite import SqliteLedger

CHICAGO = "America/Chicago"
GRACE = timedelta(hours=6)
NIGHTLY = ReportJob(name="nightly", kind="report", schedule="30 2 * * *", timezone=CHICAGO)
WATCHED = SendJob(
    name="invoices",
    kind="send",
    partner="utility",
    document_type="invoice",
    source=Path("/nonexistent"),
    watch=True,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc, arg-type]


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Recorder:
    """The ``run`` callback: records (job, reason) and how many runs of a job were ever concurrent."""

    def __init__(self, seconds: float = 0.0, fail: bool = False) -> None:
        self.seconds = seconds
        self.fail = fail
        self.runs: list[tuple[str, str]] = []
        self.active = 0
        self.max_active = 0
        self.finished = 0

    async def __call__(self, job: object, reason: str) -> None:
        self.runs.append((job.name, reason))  # type: ignore[attr-defined]
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.seconds)
            if self.fail:
                raise RuntimeError("the job broke")
        finally:
            self.active -= 1
        self.finished += 1


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return SqliteLedger(tmp_path / "state" / "ledger.sqlite3")


def run(coro: Callable[[], Awaitable[object]]) -> object:
    return asyncio.run(coro())  # type: ignore[arg-type]


async def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def make(ledger: Ledger, recorder: Recorder, clock: FakeClock, grace: timedelta = GRACE) -> JobScheduler[ReportJob]:
    return JobScheduler([NIGHTLY], recorder, marks=LedgerMarks(ledger), grace=grace, clock=clock)


def test_a_run_missed_while_down_is_caught_up_once_and_not_again(ledger: Ledger) -> None:
    ledger.set_meta("first_seen:nightly", "2026-01-01T00:00:00.000Z")
    ledger.set_meta("last_run:nightly", "2026-01-09T08:30:00.012Z")
    clock = FakeClock(utc(2026, 1, 10, 10))  # down from before 02:30 CST until 04:00 CST
    recorder = Recorder()

    async def first_start() -> dict[str, Missed]:
        scheduler = make(ledger, recorder, clock)
        missed = await scheduler.start()
        await scheduler.stop()
        return missed

    assert run(first_start) == {"nightly": Missed(scheduled=utc(2026, 1, 10, 8, 30), run=True)}
    assert recorder.runs == [("nightly", "catch-up for 2026-01-10T08:30:00.000Z")]
    assert ledger.meta("last_run:nightly") == "2026-01-10T10:00:00.000Z"

    clock.now += timedelta(minutes=10)  # restarted again: the catch-up is not repeated
    assert run(first_start) == {}
    assert len(recorder.runs) == 1


def test_several_missed_nights_coalesce_into_one_run(ledger: Ledger) -> None:
    ledger.set_meta("first_seen:nightly", "2026-01-01T00:00:00.000Z")
    ledger.set_meta("last_run:nightly", "2026-01-05T08:30:00.000Z")
    recorder = Recorder()

    async def scenario() -> None:
        scheduler = make(ledger, recorder, FakeClock(utc(2026, 1, 10, 9)))
        await scheduler.start()
        await scheduler.stop()

    run(scenario)
    assert recorder.runs == [("nightly", "catch-up for 2026-01-10T08:30:00.000Z")]


def test_a_miss_older_than_the_grace_is_reported_not_run(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    ledger.set_meta("first_seen:nightly", "2026-01-01T00:00:00.000Z")
    ledger.set_meta("last_run:nightly", "2026-01-09T08:30:00.000Z")
    recorder = Recorder()

    async def scenario() -> dict[str, Missed]:
        scheduler = make(ledger, recorder, FakeClock(utc(2026, 1, 10, 15)))  # 6 h 30 min late
        missed = await scheduler.start()
        await scheduler.stop()
        return missed

    with caplog.at_level(logging.WARNING, logger="sftp_pipeline.daemon.scheduler"):
        assert run(scenario) == {"nightly": Missed(scheduled=utc(2026, 1, 10, 8, 30), run=False)}
    assert recorder.runs == []
    assert "skipped run at 2026-01-10T08:30:00.000Z: older than the grace period" in caplog.text
    assert ledger.meta("last_run:nightly") == "2026-01-09T08:30:00.000Z"


def test_first_start_records_first_seen_and_runs_nothing(ledger: Ledger) -> None:
    recorder = Recorder()

    async def scenario() -> dict[str, Missed]:
        scheduler = make(ledger, recorder, FakeClock(utc(2026, 1, 10, 10)))
        missed = await scheduler.start()
        await scheduler.stop()
        return missed

    assert run(scenario) == {}
    assert recorder.runs == []
    assert ledger.meta("first_seen:nightly") == "2026-01-10T10:00:00.000Z"


def watched_scheduler(ledger: Ledger, recorder: Recorder) -> JobScheduler[SendJob]:
    return JobScheduler([WATCHED], recorder, marks=ledger, grace=GRACE, clock=FakeClock(utc(2026, 1, 10)))


def test_a_job_never_overlaps_itself_and_queues_at_most_one_more_run(ledger: Ledger) -> None:
    recorder = Recorder(seconds=0.2)

    async def scenario() -> None:
        scheduler = watched_scheduler(ledger, recorder)
        first = asyncio.ensure_future(scheduler.trigger(WATCHED, "file dropped 1"))
        await wait_for(lambda: recorder.active == 1)  # running: the next two requests share one queued run
        await asyncio.gather(first, *(scheduler.trigger(WATCHED, f"file dropped {n}") for n in (2, 3)))
        await scheduler.stop()

    run(scenario)
    assert recorder.max_active == 1
    assert recorder.runs == [("invoices", "file dropped 1"), ("invoices", "file dropped 2; file dropped 3")]
    assert ledger.meta("last_run:invoices") is None  # only scheduled runs leave a mark


def test_requests_before_a_run_starts_share_that_run(ledger: Ledger) -> None:
    recorder = Recorder(seconds=0.05)

    async def scenario() -> None:
        scheduler = watched_scheduler(ledger, recorder)
        await asyncio.gather(*(scheduler.trigger(WATCHED, f"file dropped {n}") for n in (1, 2, 3)))
        await scheduler.stop()

    run(scenario)
    assert recorder.runs == [("invoices", "file dropped 1; file dropped 2; file dropped 3")]


def test_start_registers_each_job_safely(ledger: Ledger) -> None:
    async def scenario() -> None:
        scheduler: JobScheduler[ReportJob | SendJob] = JobScheduler(
            [NIGHTLY, WATCHED], Recorder(), marks=ledger, grace=GRACE, clock=FakeClock(utc(2026, 1, 10))
        )
        await scheduler.start()
        aps = scheduler.apscheduler
        try:
            jobs = aps.get_jobs()
            assert [j.id for j in jobs] == ["nightly"]  # the watched job has no schedule
            (job,) = jobs
            assert job.max_instances == 1
            assert job.coalesce is True
            assert job.misfire_grace_time == 6 * 3600
            assert isinstance(job.trigger, LocalCronTrigger)
            now = datetime.now(UTC)
            assert job.next_run_time == job.trigger.get_next_fire_time(None, now)
            assert len(aps._jobstores) == 1 and type(aps._jobstores["default"]).__name__ == "MemoryJobStore"
        finally:
            await scheduler.stop()
        assert not aps.running

    run(scenario)


def test_a_scheduled_run_goes_through_apscheduler_and_leaves_a_mark(ledger: Ledger) -> None:
    recorder = Recorder()
    clock = FakeClock(utc(2026, 1, 10, 8, 30))

    async def scenario() -> None:
        scheduler = make(ledger, recorder, clock)
        await scheduler.start()
        scheduler.apscheduler.get_job("nightly").modify(next_run_time=datetime.now(UTC))
        await wait_for(lambda: recorder.finished == 1)
        await scheduler.stop()

    run(scenario)
    assert recorder.runs == [("nightly", "schedule 30 2 * * * (America/Chicago)")]
    assert ledger.meta("last_run:nightly") == "2026-01-10T08:30:00.000Z"


def test_a_live_run_later_than_the_grace_is_logged_as_an_error(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        scheduler = make(ledger, recorder, FakeClock(utc(2026, 1, 10)), grace=timedelta(seconds=1))
        await scheduler.start()
        scheduler.apscheduler.get_job("nightly").modify(next_run_time=datetime.now(UTC) - timedelta(minutes=5))
        await wait_for(lambda: "started too late" in caplog.text)
        await scheduler.stop()

    with caplog.at_level(logging.WARNING):
        run(scenario)
    assert recorder.runs == []
    assert any(r.levelno == logging.ERROR and "job nightly" in r.getMessage() for r in caplog.records)


def test_stop_waits_for_a_running_job(ledger: Ledger) -> None:
    recorder = Recorder(seconds=0.2)

    async def scenario() -> None:
        scheduler = make(ledger, recorder, FakeClock(utc(2026, 1, 10)))
        await scheduler.start()
        task = asyncio.ensure_future(scheduler.trigger(NIGHTLY, "operator asked"))
        await wait_for(lambda: recorder.active == 1)
        await scheduler.stop()
        assert recorder.finished == 1
        assert task.done()

    run(scenario)


def test_a_failing_run_is_logged_and_the_next_one_still_runs(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder(fail=True)

    async def scenario() -> None:
        scheduler = make(ledger, recorder, FakeClock(utc(2026, 1, 10)))
        await scheduler.trigger(NIGHTLY, "first")
        recorder.fail = False
        await scheduler.trigger(NIGHTLY, "second")

    with caplog.at_level(logging.ERROR, logger="sftp_pipeline.daemon.scheduler"):
        run(scenario)
    assert [reason for _, reason in recorder.runs] == ["first", "second"]
    assert recorder.finished == 1
    assert "job nightly: the run (first) failed" in caplog.text
    assert "RuntimeError: the job broke" in caplog.text


def test_a_schedule_that_never_fires_is_a_config_error(ledger: Ledger) -> None:
    # The configuration already refuses it at load; the scheduler checks again for jobs built in code.
    never = ReportJob.model_construct(name="feb30", kind="report", schedule="0 0 30 2 *", timezone="UTC", email=True)
    with pytest.raises(ConfigError, match=r"job feb30: schedule '0 0 30 2 \*' .* never fires"):
        JobScheduler([never], Recorder(), marks=ledger, grace=GRACE)
