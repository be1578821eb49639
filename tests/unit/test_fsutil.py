"""fsutil: the temporary files a killed writer leaves behind are removed once they are old enough."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sftp_pipeline.fsutil import STALE_TEMP_SECONDS, remove_stale_temps


def test_only_old_hidden_temporary_files_are_removed(tmp_path: Path) -> None:
    old = tmp_path / ".report.html.k3j2.tmp"
    fresh = tmp_path / ".20261127-a1b2.eml.c3d4.tmp"
    kept = [tmp_path / "report.html", tmp_path / "visible.tmp", fresh]
    for path in (old, *kept):
        path.write_bytes(b"x")
    (tmp_path / ".dir.tmp").mkdir()  # a directory is never a writer's temporary file
    long_ago = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(old, (long_ago, long_ago))
    os.utime(tmp_path / "visible.tmp", (long_ago, long_ago))

    assert remove_stale_temps(tmp_path) == [old]
    assert not old.exists()
    assert all(p.exists() for p in kept) and (tmp_path / ".dir.tmp").is_dir()


def test_a_missing_directory_has_nothing_to_remove(tmp_path: Path) -> None:
    assert remove_stale_temps(tmp_path / "absent") == []
