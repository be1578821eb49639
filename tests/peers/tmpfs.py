"""A real, small file system that fills up: tmpfs mounted with a size limit (Linux, root).

``small_tmpfs(directory, size)`` mounts a tmpfs of ``size`` bytes on ``directory`` and always unmounts it at the
end of the test. Where mounting is not permitted (not root, no mount namespace, not Linux) the test is skipped
with the reason, and fails under ``CI=true`` so a green CI means the full-disk tests ran.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import IN_CI

# Why 10 s: mount and umount of an empty tmpfs take milliseconds; longer means something hangs.
MOUNT_TIMEOUT = 10


@dataclass
class Tmpfs:
    directory: Path
    size: int

    def resize(self, size: int) -> None:
        """Give the file system more (or less) room, keeping its files: the operator freeing space."""
        _mount("-o", f"remount,size={size}", str(self.directory))
        self.size = size


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=MOUNT_TIMEOUT, check=True)


def _cannot_mount(reason: str) -> None:
    message = f"cannot mount a small tmpfs to fill up ({reason}); the full-disk tests need root on Linux"
    if IN_CI:
        pytest.fail(f"CI=true and a full-disk test needs a real full file system: {message}", pytrace=False)
    pytest.skip(message)


MountTmpfs = Callable[[Path, int], Tmpfs]


@pytest.fixture
def small_tmpfs() -> Iterator[MountTmpfs]:
    mounted: list[Tmpfs] = []

    def mount(directory: Path, size: int) -> Tmpfs:
        if shutil.which("mount") is None:
            _cannot_mount("no mount command")
        directory.mkdir(parents=True, exist_ok=True)
        try:
            _mount("-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(directory))
        except subprocess.CalledProcessError as exc:
            _cannot_mount(exc.stderr.strip() or f"mount exited {exc.returncode}")
        fs = Tmpfs(directory, size)
        mounted.append(fs)
        return fs

    yield mount
    for fs in reversed(mounted):
        done = subprocess.run(["umount", str(fs.directory)], capture_output=True, timeout=MOUNT_TIMEOUT)
        if done.returncode != 0:  # still busy (an open file in a failed test): detach it, never leave it mounted
            subprocess.run(["umount", "-l", str(fs.directory)], capture_output=True, timeout=MOUNT_TIMEOUT)
