"""Watched drop folders on the real filesystem (inotify via watchdog), sending with the real Outbound into a
partner we host (LocalTransport folder ``<hosted root>/<partner>/outbox``): complete files only, each once."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sftp_pipeline.config import Config, SendJob
from sftp_pipeline.daemon.watcher import DropWatcher
from sftp_pipeline.errors import ConfigError
from sftp_pipeline.flows.send import SendReport
from sftp_pipeline.ledger import Transfer
from sftp_pipeline.names import parse_sealed_name
from sftp_pipeline.wiring import Runtime, open_runtime
from tests.peers.parties import Party, make_party

# Why 0.5 s: the rescan interval these tests use; short so a missed file shows up quickly.
RESCAN = 0.5
BURST = 2_000
# Why 300: enough files that one run per file would show, small enough for the default (not slow) test run.
SMALL_BURST = 300


def utility(tmp_path: Path, cert: bytes, **job: object) -> Party:
    """We are the utility; the aggregator (no [sftp]) is hosted by us, so sends land in a local outbox."""
    return make_party(
        tmp_path / "utility",
        "utility",
        partner_id="aggregator",
        partner_cert=cert,
        jobs={"invoices": {"document_type": "invoice", "watch": True, **job}},
    )


class Harness:
    """A watcher whose trigger runs the real Outbound, counting runs and checking they never overlap."""

    def __init__(self, config: Config, rt: Runtime) -> None:
        self.config = config
        self.rt = rt
        self.job: SendJob = config.jobs_of("send", ["invoices"])[0]
        self.outbound = rt.outbound()
        self.reasons: list[str] = []
        self.reports: list[SendReport] = []
        self.active = 0
        self.ledger_rows: list[Transfer] = []  # the ledger at the end (read before it is closed)

    async def trigger(self, job: SendJob, reason: str) -> None:
        assert job is self.job
        self.active += 1
        assert self.active == 1, "two runs of one job at once"
        try:
            self.reasons.append(reason)
            self.reports.append(await self.outbound.run([job]))
        finally:
            self.active -= 1

    @property
    def outbox(self) -> Path:
        return self.config.hosted_root("aggregator") / "outbox"

    def sent(self) -> list[str]:
        """Original names of the documents in the partner's outbox (one per sealed file)."""
        if not self.outbox.exists():
            return []
        return [parse_sealed_name(n).original for n in os.listdir(self.outbox) if not n.startswith(".")]

    def rows(self) -> list[Transfer]:
        return self.ledger_rows


async def until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait for ``check()``; return the seconds it took, fail naming ``what`` after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def watched(
    party: Party,
    body: Callable[[Harness, DropWatcher], Awaitable[None]],
    *,
    before_start: Callable[[], None] = lambda: None,
    settle: float = 0.2,
    rescan: float = RESCAN,
) -> Harness:
    config = party.config()

    async def main() -> Harness:
        with open_runtime(config) as rt:
            h = Harness(config, rt)
            h.job.source.mkdir(parents=True, exist_ok=True)
            before_start()
            watcher = DropWatcher(
                [h.job], h.trigger, loop=asyncio.get_running_loop(), rescan_seconds=rescan, settle_seconds=settle
            )
            watcher.start()
            try:
                await body(h, watcher)
            finally:
                await watcher.stop()
            assert h.active == 0
            h.ledger_rows = rt.ledger.recent(100_000)
            return h

    return asyncio.run(main())


def write_slowly(path: Path, chunks: list[bytes], pause: float, *, reopen: bool, sent: Callable[[], list[str]]) -> None:
    """Another program writing ``path`` (in a thread, so the watcher's loop does not pace it): a chunk, a pause."""
    mode = "ab" if reopen else "wb"
    fh = path.open(mode)
    try:
        for chunk in chunks:
            fh.write(chunk)
            fh.flush()
            if reopen:  # close after each chunk: a close-write event every time, the file still unfinished
                fh.close()
            time.sleep(pause)
            assert sent() == [], f"{path.name} was taken while still being written"
            if reopen:
                fh = path.open(mode)
    finally:
        fh.close()


def test_a_slowly_written_file_is_taken_once_and_complete(tmp_path: Path, partner_cert: bytes) -> None:
    party = utility(tmp_path, partner_cert, stable_seconds=1)
    chunks = [os.urandom(64 * 1024) for _ in range(10)]

    async def body(h: Harness, w: DropWatcher) -> None:
        path = h.job.source / "INV-SLOW.xml"
        # Written over ~3 s, kept open, with pauses shorter than the stability window.
        await asyncio.to_thread(write_slowly, path, chunks, 0.3, reopen=False, sent=h.sent)
        await until(lambda: h.sent() == ["INV-SLOW.xml"], 5, "the finished file uploaded")
        await asyncio.sleep(RESCAN * 3)  # later events and rescans must not send it again

    h = watched(party, body)
    assert h.sent() == ["INV-SLOW.xml"]
    [row] = h.rows()
    assert row.state == "uploaded" and row.source_name == "INV-SLOW.xml"
    assert Path(row.archive_path).read_bytes() == b"".join(chunks)
    assert not list(h.job.source.iterdir())


def test_a_file_appended_in_separate_writes_waits_for_the_last_one(tmp_path: Path, partner_cert: bytes) -> None:
    """Each append closes the file (a close-write event on Linux): the stability window still holds it back."""
    party = utility(tmp_path, partner_cert, stable_seconds=1)
    chunks = [f"<line n='{i}'/>\n".encode() * 500 for i in range(6)]

    async def body(h: Harness, w: DropWatcher) -> None:
        path = h.job.source / "INV-APPEND.xml"
        await asyncio.to_thread(write_slowly, path, chunks, 0.5, reopen=True, sent=h.sent)
        await until(lambda: h.sent() == ["INV-APPEND.xml"], 5, "the appended file uploaded")
        await asyncio.sleep(RESCAN * 2)

    h = watched(party, body)
    assert h.sent() == ["INV-APPEND.xml"]
    [row] = h.rows()
    assert Path(row.archive_path).read_bytes() == b"".join(chunks)


@pytest.mark.parametrize(
    "count",
    [
        SMALL_BURST,
        # ~40 s on 2 CPUs, nearly all of it Outbound's per-file seal, fsyncs and ledger commits, not the watcher.
        pytest.param(BURST, marks=pytest.mark.slow),
    ],
)
def test_a_burst_of_files_is_sent_exactly_once_each(tmp_path: Path, partner_cert: bytes, count: int) -> None:
    # A stability window, as in production: with none, a run can look at a file the exporter has created but
    # not yet written, and quarantine it as empty.
    party = utility(tmp_path, partner_cert, stable_seconds=0.5)
    names = [f"INV-{i:05d}.xml" for i in range(count)]
    took: dict[str, float] = {}

    async def body(h: Harness, w: DropWatcher) -> None:
        def export() -> None:  # another program writing them all at once, while the watcher already reacts
            for i, name in enumerate(names):
                (h.job.source / name).write_bytes(f"<Invoice id='{i}'/>\n".encode())

        started = time.monotonic()
        await asyncio.to_thread(export)
        took["drop"] = time.monotonic() - started
        await until(lambda: len(h.sent()) >= count, 90, f"{count} files uploaded")
        took["all"] = time.monotonic() - started
        await asyncio.sleep(RESCAN * 2)

    h = watched(party, body)
    sent = Counter(h.sent())
    assert sorted(sent) == names and set(sent.values()) == {1}
    rows = Counter(r.source_name for r in h.rows())
    assert sorted(rows) == names and set(rows.values()) == {1}
    assert all(r.state == "uploaded" for r in h.rows())
    assert not list(h.job.source.iterdir())
    assert not (h.config.state_dir / "quarantine").exists()
    runs = len(h.reasons)
    assert runs <= 20, h.reasons
    print(  # shown with -s / -rP: the numbers the report quotes
        f"\nburst: {count} files dropped in {took['drop']:.2f} s, all uploaded {took['all']:.2f} s after the first "
        f"drop, in {runs} runs: {h.reasons}"
    )


def test_a_file_moved_in_is_taken_promptly(tmp_path: Path, partner_cert: bytes) -> None:
    party = utility(tmp_path, partner_cert, stable_seconds=1)
    elsewhere = tmp_path / "export"
    elsewhere.mkdir()
    (elsewhere / "INV-MOVED.xml").write_bytes(b"<Invoice id='moved'/>\n")
    old = time.time() - 3600
    os.utime(elsewhere / "INV-MOVED.xml", (old, old))  # written an hour ago, moved in now
    took: list[float] = []

    async def body(h: Harness, w: DropWatcher) -> None:
        await asyncio.sleep(RESCAN * 1.5)  # past the start-up look, so only the move event can find it quickly
        shutil.move(elsewhere / "INV-MOVED.xml", h.job.source / "INV-MOVED.xml")
        took.append(await until(lambda: h.sent() == ["INV-MOVED.xml"], 3, "the moved-in file uploaded"))

    h = watched(party, body)
    assert took[0] < 2.0
    assert h.reasons[0].startswith("watch: 1 files")


def test_a_file_renamed_from_a_temporary_name_is_taken(tmp_path: Path, partner_cert: bytes) -> None:
    party = utility(tmp_path, partner_cert, stable_seconds=0)

    async def body(h: Harness, w: DropWatcher) -> None:
        part = h.job.source / "INV-7.xml.part"
        part.write_bytes(b"<Invoice id='7'/>\n")
        await asyncio.sleep(RESCAN * 2)
        assert h.sent() == [] and part.exists()
        part.rename(h.job.source / "INV-7.xml")
        await until(lambda: h.sent() == ["INV-7.xml"], 2, "the renamed file uploaded")

    watched(party, body)


def test_temporary_names_are_never_taken(tmp_path: Path, partner_cert: bytes) -> None:
    party = utility(tmp_path, partner_cert, stable_seconds=0)
    temporary = ["INV-1.xml.part", "INV-2.tmp", ".INV-3.xml", "~INV-4.xml", "INV-5.xml.filepart"]

    async def body(h: Harness, w: DropWatcher) -> None:
        for name in temporary:
            (h.job.source / name).write_bytes(b"half a document")
        old = time.time() - 3600
        for name in temporary:  # long past any stability window
            os.utime(h.job.source / name, (old, old))
        await asyncio.sleep(RESCAN * 4)  # several rescans

    h = watched(party, body)
    assert h.sent() == [] and h.rows() == [] and h.reasons == []
    assert sorted(os.listdir(h.job.source)) == sorted(temporary)


def test_a_file_without_an_event_is_caught_by_the_rescan(tmp_path: Path, partner_cert: bytes) -> None:
    """Written before the watcher started (no event ever comes), and dropped into a replaced folder (the
    inotify watch still points at the old directory, so it sees nothing): the rescan finds both."""
    party = utility(tmp_path, partner_cert, stable_seconds=0)
    config = party.config()
    source = config.jobs_of("send", ["invoices"])[0].source

    def before_start() -> None:
        (source / "INV-EARLY.xml").write_bytes(b"<Invoice id='early'/>\n")

    async def body(h: Harness, w: DropWatcher) -> None:
        await until(lambda: h.sent() == ["INV-EARLY.xml"], 2, "the file dropped before start uploaded")
        source.rename(source.with_name("invoice.old"))
        source.mkdir()
        (source / "INV-LATE.xml").write_bytes(b"<Invoice id='late'/>\n")
        await until(lambda: sorted(h.sent()) == ["INV-EARLY.xml", "INV-LATE.xml"], RESCAN * 4, "the unseen file")

    h = watched(party, body, before_start=before_start)
    assert [r.split(":")[0] for r in h.reasons] == ["rescan", "rescan"], h.reasons


def test_a_replaced_folder_is_watched_again_after_the_next_rescan(tmp_path: Path, partner_cert: bytes) -> None:
    """After the rescan that notices the new folder, drops into it are seen by their events again."""
    party = utility(tmp_path, partner_cert, stable_seconds=0)
    # Why 2 s: watchdog holds inotify events ~0.5 s (to pair moves); the next rescan must come clearly later.
    rescan = 2.0

    async def body(h: Harness, w: DropWatcher) -> None:
        source = h.job.source
        source.rename(source.with_name("invoice.old"))
        source.mkdir()
        (source / "INV-LATE.xml").write_bytes(b"<Invoice id='late'/>\n")
        await until(lambda: h.sent() == ["INV-LATE.xml"], rescan * 2, "the file in the replaced folder")
        (source / "INV-LATER.xml").write_bytes(b"<Invoice id='later'/>\n")
        await until(lambda: len(h.sent()) == 2, rescan / 2, "the file dropped into the re-watched folder")

    h = watched(party, body, rescan=rescan)
    assert [r.split(":")[0] for r in h.reasons] == ["rescan", "watch"], h.reasons


def test_runs_of_one_job_never_overlap_and_events_during_a_run_cause_one_more(tmp_path: Path) -> None:
    """A trigger that takes a while: events that arrive meanwhile are folded into exactly one further run."""
    source = tmp_path / "drop"
    job = SendJob(
        kind="send", name="slow", partner="aggregator", document_type="invoice", source=source, stable_seconds=0
    )
    reasons: list[str] = []
    active: list[int] = [0]

    async def trigger(j: SendJob, reason: str) -> None:
        active[0] += 1
        assert active[0] == 1
        reasons.append(reason)
        await asyncio.sleep(0.5)
        for entry in list(source.iterdir()):  # "claim" what is there: move it out of the folder
            if not entry.name.startswith("."):
                entry.rename(tmp_path / entry.name)
        active[0] -= 1

    async def main() -> None:
        watcher = DropWatcher([job], trigger, loop=asyncio.get_running_loop(), rescan_seconds=30, settle_seconds=0.1)
        watcher.start()
        try:
            (source / "A.xml").write_bytes(b"a")
            await until(lambda: len(reasons) == 1, 2, "the first run")
            for i in range(20):  # arrive while the first run is busy
                (source / f"B{i}.xml").write_bytes(b"b")
            await asyncio.sleep(2)
            assert watcher.runs == {"slow": len(reasons)}
        finally:
            await watcher.stop()

    asyncio.run(main())
    assert len(reasons) == 2, reasons
    assert reasons[0] == "watch: 1 files" and reasons[1] == "watch: 20 files"
    assert sorted(p.name for p in tmp_path.glob("*.xml")) == ["A.xml", *sorted(f"B{i}.xml" for i in range(20))]


def test_a_drop_folder_that_cannot_be_watched_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_bytes(b"")
    job = SendJob(kind="send", name="inv", partner="utility", document_type="invoice", source=tmp_path / "not-a-folder")

    async def noop(job: SendJob, reason: str) -> None:
        return None

    async def main() -> None:
        watcher = DropWatcher([job], noop, loop=asyncio.get_running_loop(), rescan_seconds=1)
        with pytest.raises(ConfigError, match=r"drop folder .*not-a-folder of send job 'inv'"):
            watcher.start()
        await watcher.stop()

    asyncio.run(main())
