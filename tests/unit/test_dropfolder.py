import json
import os
import stat
from pathlib import Path

import pytest

from sftp_pipeline.flows.intake import Seen, classify, look, quarantine_file, scan

REG = stat.S_IFREG | 0o644


def decide(seen: Seen, **kw: object) -> str:
    args = {"pattern": "*", "max_bytes": 100, "authorised": True, "now": 1000.0, "stable_seconds": 2.0}
    args.update(kw)
    d = classify(seen, **args)  # type: ignore[arg-type]
    return f"{d.action}:{d.reason}" if d.reason else d.action


def test_classify_decisions() -> None:
    assert decide(Seen("a.xml", REG, 10, 900.0)) == "take"
    assert decide(Seen("a.xml", REG, 10, 999.5)) == "wait"
    assert decide(Seen("a.xml.part", REG, 10, 900.0)) == "skip"
    assert decide(Seen(".a.xml", REG, 10, 900.0)) == "skip"
    assert decide(Seen("a.csv", REG, 10, 900.0), pattern="*.xml") == "skip"
    assert decide(Seen("a.xml", stat.S_IFLNK | 0o777, 10, 900.0)) == "quarantine:symlink"
    assert decide(Seen("a.xml", stat.S_IFIFO | 0o644, 0, 900.0)) == "quarantine:not-regular"
    assert decide(Seen("a.xml", REG, 0, 900.0)) == "quarantine:empty"
    assert decide(Seen("a.xml", REG, 10, 900.0, readable=False)) == "quarantine:unreadable"
    assert decide(Seen("a.xml", REG, 101, 900.0)) == "quarantine:oversize"
    assert decide(Seen("a.xml", REG, 10, 900.0), authorised=False) == "quarantine:unauthorised-document"


def test_scan_waits_once_for_young_files(tmp_path: Path) -> None:
    (tmp_path / "done.xml").write_text("x")
    os.utime(tmp_path / "done.xml", (0, 0))
    growing = tmp_path / "growing.xml"
    growing.write_text("x")
    steady = tmp_path / "steady.xml"
    steady.write_text("y")
    now = [os.stat(growing).st_mtime + 0.5]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        growing.write_text("xx")  # still being written during the window
        os.utime(growing, (now[0] + 1, now[0] + 1))
        now[0] += seconds

    intake = scan(
        tmp_path, pattern="*.xml", max_bytes=100, authorised=True, stable_seconds=2.0, wall=lambda: now[0], sleep=sleep
    )
    assert sorted(s.name for s in intake.take) == ["done.xml", "steady.xml"]
    assert [s.name for s in intake.waiting] == ["growing.xml"]
    assert len(slept) == 1


def test_quarantine_moves_and_explains(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    link = drop / "link.xml"
    link.symlink_to("/etc/passwd")
    target = quarantine_file(link, tmp_path / "q", "symlink", job="inv")
    assert not link.exists() and not link.is_symlink()
    assert target.is_symlink()  # moved as a link, never followed
    note = json.loads(target.with_name(target.name + ".reason.json").read_text())
    assert note["reason"] == "symlink" and "link.xml" in note["message"] and note["job"] == "inv"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file; the decision itself is tested above")
def test_an_unreadable_file_is_seen_as_such(tmp_path: Path) -> None:
    locked = tmp_path / "locked.xml"
    locked.write_text("x")
    locked.chmod(0)
    assert [s.readable for s in look(tmp_path)] == [False]
