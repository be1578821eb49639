"""Group fsync: many documents' small file steps in one worker-thread call, each failure its own document's."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from sftp_pipeline.flows.groupcommit import GroupSync


def test_steps_run_together_and_clean_up_after_their_folders_are_synced(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    threads: set[int] = set()
    order: list[str] = []

    def step(n: int) -> tuple[Callable[[], None], Callable[[], None]]:
        def work() -> None:
            threads.add(threading.get_ident())
            (tmp_path / f"{n}.pgp").write_bytes(b"x")
            (tmp_path / f"{n}.pgp").rename(archive / f"{n}.pgp")
            order.append(f"work {n}")

        def then() -> None:
            order.append(f"then {n}")

        return work, then

    async def main() -> None:
        sync = GroupSync()
        steps = [step(n) for n in range(20)]
        await asyncio.gather(*(sync.run(work, sync=[archive], then=then) for work, then in steps))

    asyncio.run(main())
    assert sorted(p.name for p in archive.iterdir()) == sorted(f"{n}.pgp" for n in range(20))
    assert threading.get_ident() not in threads  # never on the event loop's thread
    assert len(threads) == 1  # one hand-over for the whole batch
    assert order.index("then 0") > order.index("work 19")  # every clean-up after every step and the fsync


def test_a_failing_step_or_folder_fails_only_its_own_document(tmp_path: Path) -> None:
    ran: list[str] = []

    def boom() -> None:
        raise PermissionError("work folder not writable")

    async def main() -> list[BaseException | None]:
        sync = GroupSync()
        results = await asyncio.gather(
            sync.run(lambda: ran.append("ok"), sync=[tmp_path], then=lambda: ran.append("clean ok")),
            sync.run(boom, sync=[tmp_path], then=lambda: ran.append("clean boom")),
            sync.run(lambda: ran.append("lost"), sync=[tmp_path / "gone"], then=lambda: ran.append("clean lost")),
            return_exceptions=True,
        )
        return list(results)

    ok, failed, unsynced = asyncio.run(main())
    assert ok is None
    assert isinstance(failed, PermissionError)
    assert isinstance(unsynced, FileNotFoundError)  # its folder could not be fsynced: not durable, not cleaned
    assert ran == ["ok", "lost", "clean ok"]


def test_a_batch_never_swallows_a_cancellation(tmp_path: Path) -> None:
    started = threading.Event()
    release = threading.Event()

    def slow() -> None:
        started.set()
        release.wait(5)

    async def main() -> None:
        sync = GroupSync()
        task = asyncio.create_task(sync.run(slow, sync=[tmp_path]))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
