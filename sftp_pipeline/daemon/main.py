"""``sftp-pipeline run``: schedules, watched drop folders and the embedded SFTP server in one process.

Start-up order, so that nothing a crash left behind waits for a schedule:

1. take the instance lock (a second daemon on the same state directory is refused);
2. recovery: run every send, collect and receipts job once — each finishes what a crash left claimed,
   sealed, uploaded, received or unanswered before it takes anything new;
3. start the embedded server (collecting each upload as it completes), the folder watchers, and the
   scheduler (which first runs, once, any scheduled run missed while the daemon was down).

SIGTERM and SIGINT stop it cleanly: no new work is started, running work finishes, the ledger and the audit
log are closed. A job never overlaps itself, whoever triggers it (schedule, watcher, start-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from sftp_pipeline.clock import Clock, utc_now
from sftp_pipeline.config import AnyJob, CollectJob, Config, ReceiptsJob, ReportJob, SendJob
from sftp_pipeline.daemon.scheduler import JobScheduler, LedgerMarks
from sftp_pipeline.daemon.watcher import DropWatcher
from sftp_pipeline.errors import AlreadyRunning, translate
from sftp_pipeline.flows.collect import Collector
from sftp_pipeline.locks import try_lock
from sftp_pipeline.wiring import Runtime, embedded_server, open_runtime

log = logging.getLogger(__name__)

LOCK_NAME = "daemon.lock"
# Why 0.2 s: long enough to gather a burst of dropped files into one run, short enough to feel immediate.
WATCH_SETTLE_SECONDS = 0.2


@contextlib.contextmanager
def instance_lock(state_dir: Path) -> Iterator[None]:
    """Hold ``state_dir/daemon.lock`` (flock) for the life of the daemon; refuse when another process has it."""
    path = state_dir / LOCK_NAME
    held = try_lock(path)
    if isinstance(held, str):
        raise AlreadyRunning(lock=path, pid=held)
    try:
        yield
    finally:
        held.close()  # closing the descriptor releases the lock


class Daemon:
    def __init__(self, config: Config, *, clock: Clock = utc_now) -> None:
        self.config = config
        self.clock = clock
        self.runs: dict[str, int] = {}
        self._collector: Collector | None = None

    def collector(self, rt: Runtime) -> Collector:
        """One collector for the scheduled collect runs and the server's on-upload hook: its per-document locks
        keep the two from opening the same upload at once."""
        if self._collector is None:
            self._collector = rt.collector()
        return self._collector

    async def run_job(self, rt: Runtime, job: AnyJob, reason: str) -> None:
        """Run one job once; errors are logged and reported by the job's own outcome, never raised."""
        self.runs[job.name] = self.runs.get(job.name, 0) + 1
        log.info("job %s: %s", job.name, reason)
        try:
            if isinstance(job, SendJob):
                report = await rt.outbound().run([job])
                ok = report.ok
            elif isinstance(job, CollectJob):
                collected = await self.collector(rt).run([job])
                ok = collected.ok
            elif isinstance(job, ReceiptsJob):
                pulled = await rt.receipt_puller().run([job])
                ok = pulled.ok
            else:
                produced = await asyncio.to_thread(rt.produce_report, now=self.clock(), email=job.email)
                ok = produced.mail is None or produced.mail.ok
        except Exception as exc:  # one job's failure must not stop the daemon: logged, retried at its next run
            error = translate(exc)
            if error is None:
                log.exception("job %s: internal error (a bug in sftp-pipeline; please report it)", job.name)
            else:
                log.error("job %s failed: %s", job.name, error)
            return
        if not ok:
            log.warning("job %s finished with problems (see the log above and `sftp-pipeline status`)", job.name)

    async def run(self, stop: asyncio.Event) -> None:
        with instance_lock(self.config.state_dir), open_runtime(self.config, clock=self.clock) as rt:
            await self._serve(rt, stop)

    async def _serve(self, rt: Runtime, stop: asyncio.Event) -> None:
        config = self.config
        jobs = list(config.jobs.values())

        async def run(job: AnyJob, reason: str) -> None:
            await self.run_job(rt, job, reason)

        scheduler = JobScheduler(
            [j for j in jobs if j.schedule],
            run,
            marks=LedgerMarks(rt.ledger),
            grace=timedelta(hours=config.daemon.catch_up_grace_hours),
            clock=self.clock,
        )
        for job in jobs:  # recovery before anything new arrives
            if not isinstance(job, ReportJob):
                await scheduler.trigger(job, "start-up recovery")
        server = None
        if config.server is not None:
            server = embedded_server(config, on_upload=rt.upload_hook(self.collector(rt)))
            await server.start()
            log.info("serving SFTP on port %d", server.port)
        watched = [j for j in jobs if isinstance(j, SendJob) and j.watch]
        watcher = DropWatcher(
            watched,
            scheduler.trigger,
            loop=asyncio.get_running_loop(),
            rescan_seconds=config.daemon.rescan_seconds,
            settle_seconds=WATCH_SETTLE_SECONDS,
        )
        watcher.start()
        await scheduler.start()
        log.info(
            "running: %d scheduled, %d watched, server %s",
            len([j for j in jobs if j.schedule]),
            len(watched),
            "on" if server else "off",
        )
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            await watcher.stop()
            await scheduler.stop()
            if server is not None:
                await server.close()


def run_daemon(config: Config) -> None:
    """Run until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Daemon(config).run(stop)

    asyncio.run(main())
