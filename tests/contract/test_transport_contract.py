"""The Transport contract (sftp_pipeline/transport/__init__.py), run against every implementation."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from sftp_pipeline import errors
from sftp_pipeline.transport import Transport

from .conftest import ContractTarget

T = TypeVar("T")
INBOX = "inbox"
NAME = "01JDQ6Z6M2W4K8T9V0B3C5D7EF.invoice.INV-1.xml.pgp"


def run(target: ContractTarget, body: Callable[[Transport], Awaitable[T]]) -> T:
    async def main() -> T:
        async with await target.open() as transport:
            return await body(transport)

    return asyncio.run(main())


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_put_then_get_round_trips_bytes(target: ContractTarget, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several blocks and a ragged tail
    work = tmp_path / "work"
    work.mkdir()
    src = write(work / "src.bin", data)
    back = work / "back.bin"
    moved: list[int] = []

    async def body(t: Transport) -> tuple[int, int]:
        put = await t.put_atomic(src, INBOX, NAME, progress=moved.append)
        assert not put.already_present and put.size == len(data)
        assert put.remote_path.endswith(f"{INBOX}/{NAME}")
        return put.size, await t.get(INBOX, NAME, back)

    put_size, got = run(target, body)
    assert put_size == got == len(data)
    assert back.read_bytes() == data
    assert (target.root / INBOX / NAME).read_bytes() == data
    assert sum(moved) == len(data)
    assert sorted(p.name for p in (target.root / INBOX).iterdir()) == [NAME]  # no temp left
    assert sorted(p.name for p in work.iterdir()) == ["back.bin", "src.bin"]


def test_final_name_never_holds_a_partial_file(target: ContractTarget, tmp_path: Path) -> None:
    src = write(tmp_path / "big.bin", os.urandom(16 * 1024 * 1024))
    final = target.root / INBOX / NAME
    seen_on_disk: list[bool] = []
    listed: list[list[str]] = []

    async def body(t: Transport) -> None:
        done = asyncio.Event()

        async def lister() -> None:
            while not done.is_set():
                listed.append([e.name for e in await t.list(INBOX)])
                await asyncio.sleep(0)

        task = asyncio.create_task(lister())
        try:
            await t.put_atomic(src, INBOX, NAME, progress=lambda _n: seen_on_disk.append(final.exists()))
        finally:
            done.set()
            await task

    run(target, body)
    assert seen_on_disk and not any(seen_on_disk), "the final name appeared before the upload finished"
    assert listed, "the lister never ran during the upload"
    assert all(names in ([], [NAME]) for names in listed)
    assert final.stat().st_size == src.stat().st_size


# One write request (a small document's path) and several (the streaming path).
SIZES = pytest.mark.parametrize("size", [200_000, 600_000], ids=["one-write", "streamed"])


@SIZES
def test_put_is_idempotent_and_replaces_a_stale_temp(target: ContractTarget, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    src = write(tmp_path / "src.bin", data)
    (target.root / INBOX).mkdir(exist_ok=True)
    write(target.root / INBOX / f".{NAME}.part", b"left over by a crashed run")

    async def body(t: Transport) -> tuple[bool, bool]:
        first = await t.put_atomic(src, INBOX, NAME)
        second = await t.put_atomic(src, INBOX, NAME)
        return first.already_present, second.already_present

    assert run(target, body) == (False, True)
    assert (target.root / INBOX / NAME).read_bytes() == data
    assert [p.name for p in (target.root / INBOX).iterdir()] == [NAME]


@SIZES
def test_put_refuses_to_replace_a_different_file(target: ContractTarget, tmp_path: Path, size: int) -> None:
    src = write(tmp_path / "src.bin", os.urandom(size))
    (target.root / INBOX).mkdir(exist_ok=True)
    write(target.root / INBOX / NAME, b"old")

    async def body(t: Transport) -> None:
        await t.put_atomic(src, INBOX, NAME)

    with pytest.raises(errors.PermanentTransportError, match="already exists"):
        run(target, body)
    assert (target.root / INBOX / NAME).read_bytes() == b"old"
    assert [p.name for p in (target.root / INBOX).iterdir()] == [NAME]  # no temporary name left behind


def test_list_returns_complete_regular_files_only(target: ContractTarget, tmp_path: Path) -> None:
    inbox = target.root / INBOX
    inbox.mkdir(exist_ok=True)
    write(inbox / "b.xml.pgp", b"bb")
    write(inbox / "a.xml.pgp", b"a")
    for junk in (f".{NAME}.part", ".hidden", "upload.tmp", "report.filepart", "~lock"):
        write(inbox / junk, b"incomplete")
    (inbox / "subdir").mkdir()
    (inbox / "link.xml.pgp").symlink_to(inbox / "a.xml.pgp")

    entries = run(target, lambda t: t.list(INBOX))
    assert [(e.name, e.size) for e in entries] == [("a.xml.pgp", 1), ("b.xml.pgp", 2)]
    assert all(e.mtime > 0 for e in entries)


def test_remove_and_remove_missing(target: ContractTarget, tmp_path: Path) -> None:
    src = write(tmp_path / "src.bin", b"x" * 10)

    async def body(t: Transport) -> list[str]:
        await t.put_atomic(src, INBOX, NAME)
        await t.remove(INBOX, NAME)
        await t.remove(INBOX, NAME)  # already gone: not an error
        await t.remove(INBOX, "never-existed.pgp")
        return [e.name for e in await t.list(INBOX)]

    assert run(target, body) == []
    assert not (target.root / INBOX / NAME).exists()


def test_rename_never_replaces(target: ContractTarget, tmp_path: Path) -> None:
    a, b = write(tmp_path / "a", b"aaa"), write(tmp_path / "b", b"bbbb")

    async def body(t: Transport) -> None:
        await t.put_atomic(a, INBOX, "a.pgp")
        await t.put_atomic(b, INBOX, "b.pgp")
        with pytest.raises(errors.PermanentTransportError, match="exists"):
            await t.rename(INBOX, "a.pgp", "b.pgp")
        await t.rename(INBOX, "a.pgp", "c.pgp")

    run(target, body)
    inbox = target.root / INBOX
    assert sorted(p.name for p in inbox.iterdir()) == ["b.pgp", "c.pgp"]
    assert (inbox / "b.pgp").read_bytes() == b"bbbb" and (inbox / "c.pgp").read_bytes() == b"aaa"


def test_get_missing_file_is_permanent_and_writes_nothing(target: ContractTarget, tmp_path: Path) -> None:
    (target.root / INBOX).mkdir(exist_ok=True)
    dest = tmp_path / "out" / "x.pgp"
    dest.parent.mkdir()
    with pytest.raises(errors.PermanentTransportError, match=r"x\.pgp"):
        run(target, lambda t: t.get(INBOX, "x.pgp", dest))
    assert list(dest.parent.iterdir()) == []


@pytest.mark.parametrize("bad", ["../escape.pgp", "a/b.pgp", "", "nul\x00.pgp", ".."])
def test_unsafe_names_are_refused(target: ContractTarget, tmp_path: Path, bad: str) -> None:
    src = write(tmp_path / "src.bin", b"x")
    with pytest.raises(errors.PermanentTransportError, match="unsafe"):
        run(target, lambda t: t.put_atomic(src, INBOX, bad))
    assert not (target.root.parent / "escape.pgp").exists()


def test_many_concurrent_puts_over_one_transport(target: ContractTarget, tmp_path: Path) -> None:
    count = 50
    payloads = {f"doc-{i:02d}.pgp": os.urandom(1000 + 37 * i) for i in range(count)}
    for name, data in payloads.items():
        write(tmp_path / name, data)

    async def body(t: Transport) -> list[str]:
        results = await asyncio.gather(*(t.put_atomic(tmp_path / n, INBOX, n) for n in payloads))
        assert not any(r.already_present for r in results)
        return [e.name for e in await t.list(INBOX)]

    assert run(target, body) == sorted(payloads)
    for name, data in payloads.items():
        assert (target.root / INBOX / name).read_bytes() == data
