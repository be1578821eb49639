"""locks: one run per job (send) or partner (collect, receipts), across processes and within one."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sftp_pipeline.locks import lock_path, try_hold, try_lock, turn, turns

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sftp_pipeline.locks import try_lock
    held = try_lock(Path(sys.argv[1]))
    assert not isinstance(held, str)
    print("held", flush=True)
    sys.stdin.readline()  # until the test says so
    """
)


def test_a_run_waits_for_another_process_and_starts_when_it_ends(tmp_path: Path, caplog) -> None:
    path = lock_path(tmp_path, "send", "utility")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        order: list[str] = []

        async def scenario() -> None:
            async def ours() -> None:
                async with turn(tmp_path, "send", "utility"):
                    order.append("ours")

            task = asyncio.create_task(ours())
            await asyncio.sleep(0.3)
            assert not task.done()  # still waiting for the other process
            order.append("released")
            holder.stdin.write("\n")
            holder.stdin.flush()
            await asyncio.wait_for(task, 10)

        with caplog.at_level(logging.INFO, logger="sftp_pipeline.locks"):
            asyncio.run(scenario())
        assert order == ["released", "ours"]
        assert f"send utility: another run (pid {holder.pid}) is working on it" in caplog.text
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes both pipes


def test_two_runs_of_one_key_in_one_process_take_turns_and_other_keys_do_not_wait(tmp_path: Path) -> None:
    inside: list[str] = []
    overlaps: list[tuple[str, str]] = []
    together: set[str] = set()

    async def run(label: str, key: str) -> None:
        async with turn(tmp_path, "send", key):
            overlaps.extend((label, other) for other in inside if other.endswith(key))
            together.update(f"{label}+{other}" for other in inside)
            inside.append(f"{label}:{key}")
            await asyncio.sleep(0.1)
            inside.remove(f"{label}:{key}")

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(run("a", "utility"), run("b", "utility"), run("c", "other"))
        return loop.time() - start

    elapsed = asyncio.run(scenario())
    assert overlaps == []
    assert elapsed >= 0.2  # a and b one after the other
    assert together & {"c+a:utility", "c+b:utility", "a+c:other", "b+c:other"}  # c alongside one of them


def test_a_cancelled_wait_holds_nothing_and_a_finished_run_releases(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with turn(tmp_path, "collect", "utility"):
            waiter = asyncio.create_task(turn(tmp_path, "collect", "utility").__aenter__())
            await asyncio.sleep(0.2)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        async with turn(tmp_path, "collect", "utility"):
            pass

    asyncio.run(scenario())
    held = try_lock(lock_path(tmp_path, "collect", "utility"))
    assert not isinstance(held, str)
    held.close()


def test_a_key_that_is_no_safe_file_name_is_hashed_inside_the_lock_folder(tmp_path: Path) -> None:
    path = lock_path(tmp_path, "send", "../invoices to utility")
    assert path.parent == tmp_path / "locks" and path.name.startswith("send-") and ".." not in path.name
    assert path != lock_path(tmp_path, "send", "../invoices to utility 2")


def test_runs_wanting_overlapping_jobs_take_them_in_one_order_and_finish(tmp_path: Path) -> None:
    async def run(keys: list[str]) -> None:
        async with turns(tmp_path, "send", keys):
            await asyncio.sleep(0.05)

    async def scenario() -> None:
        await asyncio.wait_for(asyncio.gather(run(["b", "a"]), run(["a", "b"]), run(["b"])), 10)

    asyncio.run(scenario())  # no deadlock: both ask for "a" first


def test_shared_holders_go_together_and_exclude_a_run(tmp_path: Path) -> None:
    path = lock_path(tmp_path, "collect", "utility")
    first, second = try_lock(path, shared=True), try_lock(path, shared=True)
    assert not isinstance(first, str) and not isinstance(second, str)  # two uploads collected at once
    assert isinstance(try_lock(path), str)  # a run waits for both
    first.close()
    assert isinstance(try_lock(path), str)
    second.close()
    run = try_lock(path)
    assert not isinstance(run, str)
    assert try_lock(path, shared=True) == str(os.getpid())  # an upload waits for the run, named by its pid
    run.close()


def test_try_hold_takes_a_free_lock_and_goes_on_without_a_busy_one(tmp_path: Path) -> None:
    path = lock_path(tmp_path, "orphans", "utility")
    with try_hold(path) as first, try_hold(path) as second:
        assert first and not second
    with try_hold(path) as again:
        assert again  # released on leaving
