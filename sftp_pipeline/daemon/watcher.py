"""Watched drop folders: send a dropped file within about a second, and never lose one.

One watchdog observer watches every ``watch = true`` send job's ``source`` (non-recursive). Its events are
only hints — watchdog reports "created"/"modified" mid-write, close-write exists only on Linux, and an
inotify queue overflow drops events without telling — so the watcher never decides that a file is complete
and never claims anything itself. It only decides *when* to call ``trigger(job, reason)`` (in the daemon:
``Outbound.run([job])``, whose stability check, ledger claim and rename out of the folder make each file
go exactly once):

- a close-after-write or a move into the folder asks for a run after ``settle_seconds``, so a burst of
  thousands of files becomes a handful of runs, not thousands;
- a create/modify without close re-arms a timer for when the file's stability window has passed;
- a periodic rescan (every ``rescan_seconds``, and once at start) looks for candidate files the events
  missed (overflow, network shares, files dropped while we were down, a replaced folder);
- runs of one job never overlap: an event during a run marks the job dirty and it runs once more after.

All of the watcher's state lives on the event loop; watchdog's thread only filters an event and hands it
over with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from sftp_pipeline.config import SendJob
from sftp_pipeline.errors import ConfigError
from sftp_pipeline.flows.intake import classify, look
from sftp_pipeline.names import is_temporary

log = logging.getLogger(__name__)

Trigger = Callable[[SendJob, str], Awaitable[None]]

# Why 0.2 s: long enough to gather a burst of drops into one run, short enough to feel immediate.
DEFAULT_SETTLE_SECONDS = 0.2
# Why 0.05 s: mtimes and timers are not exact; re-checking a hair late avoids a wasted "still young" look.
TIMER_SLACK_SECONDS = 0.05
# The events worth waking up for; opened, closed-without-write, deleted and attribute changes are noise here.
WATCHED_EVENTS: list[type[FileSystemEvent]] = [FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent]


@dataclass(frozen=True, slots=True)
class Survey:
    """What a cheap look at a drop folder found: files a run would act on now, and when the young ones settle."""

    ready: int
    young_until: float | None  # wall-clock time the youngest candidate leaves its stability window


def survey(job: SendJob, *, now: float | None = None) -> Survey:
    """Count the entries of ``job.source`` a send run would take or quarantine now, and those still settling.

    Uses the same decision as the run (:func:`sftp_pipeline.flows.intake.classify`), with authorisation and
    size left to the run: anything it would not skip counts.
    """
    now = time.time() if now is None else now
    ready, young_until = 0, None
    for seen in look(job.source):
        decision = classify(
            seen, pattern=job.pattern, max_bytes=2**63, authorised=True, now=now, stable_seconds=job.stable_seconds
        )
        if decision.action == "wait":
            settles = seen.mtime + job.stable_seconds
            young_until = settles if young_until is None else max(young_until, settles)
        elif decision.action != "skip":
            ready += 1
    return Survey(ready, young_until)


def wanted(name: str, pattern: str) -> bool:
    """A name a send job may take: matches its pattern and is not a temporary (in-progress) name."""
    return not is_temporary(name) and fnmatch.fnmatch(name, pattern)


@dataclass(eq=False)
class _JobState:
    job: SendJob
    folder: str  # normalised absolute path of job.source, as watchdog reports it
    names: set[str] = field(default_factory=set)  # files seen by events since the last trigger
    running: bool = False
    dirty: bool = False
    settle: asyncio.TimerHandle | None = None
    recheck: asyncio.TimerHandle | None = None
    recheck_at: float = 0.0  # wall-clock time the armed recheck fires
    task: asyncio.Task[None] | None = None
    why: str = ""  # what asked for the next run when no event named a file (a recheck or the rescan)
    found: int = 0  # how many ready files that look saw
    runs: int = 0
    watch: ObservedWatch | None = None
    inode: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder the watch is on


class _Handler(FileSystemEventHandler):
    """Runs on watchdog's thread: filter one event, hand it to the loop."""

    def __init__(self, watcher: DropWatcher, state: _JobState) -> None:
        self._watcher = watcher
        self._state = state

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            path, complete = os.fsdecode(event.dest_path), True
        elif isinstance(event, FileClosedEvent):
            path, complete = os.fsdecode(event.src_path), True
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            path, complete = os.fsdecode(event.src_path), False
        else:
            return
        folder, name = os.path.split(path)
        if os.path.normpath(folder) != self._state.folder or not wanted(name, self._state.job.pattern):
            return
        settles_at = 0.0
        if not complete:
            # A create/modify hint: the file is done once its mtime is a stability window old. A file moved in
            # from outside the folder also arrives as "created"; its old mtime lets it go at once.
            try:
                settles_at = os.stat(path, follow_symlinks=False).st_mtime + self._state.job.stable_seconds
            except OSError:
                return  # already gone (taken, renamed, deleted): nothing to do
        self._watcher._hand_over(self._state, name, settles_at)


class DropWatcher:
    """Call ``trigger(job, reason)`` when files arrive in a watched job's drop folder; see the module docstring.

    ``reason`` is ``"watch: N files"`` (N names seen by events), ``"recheck: N files"`` (a stability window
    passed) or ``"rescan: N files"`` (the periodic look found them).

    ``start`` and ``stop`` are called on ``loop``'s thread; ``trigger`` runs on ``loop``, never twice at once
    for the same job. An exception from ``trigger`` is logged and the watcher carries on (the next event or
    rescan tries again).
    """

    def __init__(
        self,
        jobs: Sequence[SendJob],
        trigger: Trigger,
        *,
        loop: asyncio.AbstractEventLoop,
        rescan_seconds: float,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    ) -> None:
        if rescan_seconds <= 0:
            raise ValueError(f"rescan_seconds must be > 0, not {rescan_seconds}; set [daemon] rescan_seconds")
        self._jobs = list(jobs)
        self._trigger = trigger
        self._loop = loop
        self._rescan_seconds = rescan_seconds
        self._settle_seconds = settle_seconds
        self._states = [_JobState(job, os.path.normpath(os.path.abspath(job.source))) for job in self._jobs]
        self._observer: BaseObserver | None = None
        self._rescanner: asyncio.Task[None] | None = None
        self._stopping = False

    def __repr__(self) -> str:
        return f"DropWatcher(jobs={[j.name for j in self._jobs]!r}, rescan_seconds={self._rescan_seconds})"

    @property
    def runs(self) -> dict[str, int]:
        """How many times ``trigger`` was called per job name (for status output and tests)."""
        return {s.job.name: s.runs for s in self._states}

    # -- life cycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the drop folders, start one observer for all of them, and the periodic rescan."""
        if self._observer is not None:
            raise RuntimeError("DropWatcher.start() called twice; stop() it first")
        observer = Observer()
        for state in self._states:
            try:
                self._watch(observer, state)
            except OSError as exc:
                observer.stop()
                raise ConfigError(
                    f"cannot watch the drop folder {state.folder} of send job {state.job.name!r}: "
                    f"{exc.strerror or exc}; check that it is a directory the pipeline can read "
                    "(and, on Linux, that fs.inotify.max_user_watches / max_user_instances are not exhausted)"
                ) from exc
        observer.start()
        self._observer = observer
        self._rescanner = self._loop.create_task(self._rescan_forever(), name="drop-folder rescan")
        log.info("watching %d drop folder(s), rescanning every %s s", len(self._states), self._rescan_seconds)

    def _watch(self, observer: BaseObserver, state: _JobState) -> None:
        """(Re)place the watch on ``state.folder``, creating the folder if it is missing."""
        Path(state.folder).mkdir(parents=True, exist_ok=True)
        if state.watch is not None:
            with contextlib.suppress(KeyError):  # watchdog may already have dropped a watch on a vanished folder
                observer.unschedule(state.watch)
            state.watch = None
        st = os.stat(state.folder)
        handler = _Handler(self, state)
        state.watch = observer.schedule(handler, state.folder, recursive=False, event_filter=WATCHED_EVENTS)
        state.inode = (st.st_dev, st.st_ino)

    def _rewatch_if_replaced(self, state: _JobState) -> None:
        """A drop folder renamed away and made anew (or a share remounted) leaves the watch on the old one."""
        if self._observer is None:
            return
        try:
            st = os.stat(state.folder)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != state.inode:
            log.warning("send job %r: drop folder %s was replaced; watching the new one", state.job.name, state.folder)
            try:
                self._watch(self._observer, state)
            except OSError as exc:
                log.error("send job %r: cannot watch drop folder %s again: %s", state.job.name, state.folder, exc)

    async def stop(self) -> None:
        """Stop watching; wait for runs in progress to finish (they are not cut short); start no new ones."""
        self._stopping = True
        if self._rescanner is not None:
            self._rescanner.cancel()
            await asyncio.gather(self._rescanner, return_exceptions=True)
        for state in self._states:
            for handle in (state.settle, state.recheck):
                if handle is not None:
                    handle.cancel()
            state.settle = state.recheck = None
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            await asyncio.to_thread(observer.join)
        running = [s.task for s in self._states if s.task is not None]
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    # -- events (loop side) ----------------------------------------------------------------------------

    def _hand_over(self, state: _JobState, name: str, settles_at: float) -> None:
        """Called on watchdog's thread."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
            self._loop.call_soon_threadsafe(self._on_event, state, name, settles_at)

    def _on_event(self, state: _JobState, name: str, settles_at: float) -> None:
        if self._stopping:
            return
        state.names.add(name)
        if settles_at > time.time():
            self._arm_recheck(state, settles_at)
        else:
            self._request(state)

    def _request(self, state: _JobState, why: str = "", found: int = 0) -> None:
        """Ask for a run of ``state.job``: after the settle delay, or once more after the run in progress."""
        if self._stopping:
            return
        if why and not state.why:
            state.why, state.found = why, found
        if state.running:
            state.dirty = True
        elif state.settle is None:
            state.settle = self._loop.call_later(self._settle_seconds, self._begin_run, state)

    def _arm_recheck(self, state: _JobState, at: float) -> None:
        """Look again when the youngest file we know of has had its stability window (only the latest counts)."""
        if self._stopping or (state.recheck is not None and at <= state.recheck_at):
            return
        if state.recheck is not None:
            state.recheck.cancel()
        state.recheck_at = at
        delay = max(0.0, at - time.time()) + TIMER_SLACK_SECONDS
        state.recheck = self._loop.call_later(delay, self._spawn_look, state, "recheck")

    def _spawn_look(self, state: _JobState, why: str) -> None:
        state.recheck = None
        self._loop.create_task(self._look(state, why))

    async def _look(self, state: _JobState, why: str) -> None:
        """Survey the folder; ask for a run if something is ready, look again later if something is settling."""
        try:
            found = await asyncio.to_thread(survey, state.job)
        except OSError as exc:
            log.error("send job %r: cannot look at drop folder %s: %s", state.job.name, state.folder, exc)
            return
        if found.ready and why != "after run":
            # After a run, a file still there and ready was not taken for a reason a re-run will not fix (the
            # run failed): leave it to the rescan rather than spin.
            if why == "rescan" and not state.running and state.settle is None:
                log.info("send job %r: rescan found %d file(s) the events missed", state.job.name, found.ready)
            self._request(state, why, found.ready)
        if found.young_until is not None:
            self._arm_recheck(state, found.young_until)

    async def _rescan_forever(self) -> None:
        while not self._stopping:
            for state in self._states:
                await asyncio.to_thread(self._rewatch_if_replaced, state)
                if not state.running:  # a running job re-looks at its folder when it finishes
                    await self._look(state, "rescan")
            await asyncio.sleep(self._rescan_seconds)

    # -- runs ------------------------------------------------------------------------------------------

    def _begin_run(self, state: _JobState) -> None:
        state.settle = None
        if self._stopping or state.running:
            return
        state.running = True
        state.task = self._loop.create_task(self._run(state), name=f"watch {state.job.name}")

    async def _run(self, state: _JobState) -> None:
        try:
            while not self._stopping:
                state.dirty = False
                if state.names:
                    reason = f"watch: {len(state.names)} files"
                else:
                    reason = f"{state.why or 'rescan'}: {state.found} files"
                state.names.clear()
                state.why, state.found = "", 0
                state.runs += 1
                try:
                    await self._trigger(state.job, reason)
                except Exception:  # the daemon must outlive one bad run; the next event or rescan retries
                    log.exception("send job %r: watched run failed (%s)", state.job.name, reason)
                if not state.dirty:
                    break
                await asyncio.sleep(self._settle_seconds)  # gather the rest of a burst that arrived meanwhile
        finally:
            state.running = False
            state.task = None
        if not self._stopping:
            # Files the run left "waiting" (still inside their stability window) need a later look.
            await self._look(state, "after run")
