"""runlock: one run per partner and direction, across processes and within one."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sftp_pipeline.runlock import partner_lock_path, partner_turn, try_lock

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sftp_pipeline.runlock import try_lock
    held = try_lock(Path(sys.argv[1]))
    assert not isinstance(held, str)
    print("held", flush=True)
    sys.stdin.readline()  # until the test says so
    """
)


def test_a_run_waits_for_another_process_and_starts_when_it_ends(tmp_path: Path, caplog) -> None:
    path = partner_lock_path(tmp_path, "send", "utility")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        order: list[str] = []

        async def scenario() -> None:
            async def ours() -> None:
                async with partner_turn(tmp_path, "send", "utility"):
                    order.append("ours")

            task = asyncio.create_task(ours())
            await asyncio.sleep(0.3)
            assert not task.done()  # still waiting for the other process
            order.append("released")
            holder.stdin.write("\n")
            holder.stdin.flush()
            await asyncio.wait_for(task, 10)

        with caplog.at_level(logging.INFO, logger="sftp_pipeline.runlock"):
            asyncio.run(scenario())
        assert order == ["released", "ours"]
        assert f"another send run (pid {holder.pid})" in caplog.text
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes both pipes


def test_two_runs_in_one_process_take_turns_and_other_partners_do_not_wait(tmp_path: Path) -> None:
    inside: list[str] = []
    overlaps: list[tuple[str, str]] = []

    async def run(label: str, partner: str) -> None:
        async with partner_turn(tmp_path, "send", partner):
            overlaps.extend((label, other) for other in inside if other.endswith(partner))
            inside.append(f"{label}:{partner}")
            await asyncio.sleep(0.1)
            inside.remove(f"{label}:{partner}")

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(run("a", "utility"), run("b", "utility"), run("c", "other"))
        return loop.time() - start

    elapsed = asyncio.run(scenario())
    assert overlaps == []
    assert elapsed >= 0.2  # a and b one after the other; c alongside


def test_a_cancelled_wait_holds_nothing_and_a_finished_run_releases(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with partner_turn(tmp_path, "collect", "utility"):
            waiter = asyncio.create_task(partner_turn(tmp_path, "collect", "utility").__aenter__())
            await asyncio.sleep(0.2)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        async with partner_turn(tmp_path, "collect", "utility"):
            pass

    asyncio.run(scenario())
    held = try_lock(partner_lock_path(tmp_path, "collect", "utility"))
    assert not isinstance(held, str)
    held.close()


def test_a_partner_id_that_cannot_name_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot name a lock file"):
        partner_lock_path(tmp_path, "send", "../etc")
