"""Shared test plumbing.

Real peers (OpenSSH sshd, GnuPG) live in ``tests/peers``. On a newcomer's
machine a missing peer skips with a reason; in CI (``CI=true``) it fails,
so a green CI always means the real-peer tests ran.
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest_plugins = [
    "tests.peers.gpg",
    "tests.peers.sshd",
    "tests.peers.parties",
    "tests.peers.embedded",
    "tests.peers.smtp",
    "tests.peers.tmpfs",
]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str, *candidates: str) -> str:
    """Return the path of the first available executable, or skip (fail in CI) naming what is missing."""
    for candidate in (name, *candidates):
        executable = os.path.isabs(candidate) and os.access(candidate, os.X_OK)
        found = shutil.which(candidate) or (candidate if executable else None)
        if found:
            return found
    message = f"{name} is not installed (apt-get install {'openssh-server' if 'sshd' in name else 'gnupg'})"
    if IN_CI:
        pytest.fail(f"CI=true and a real-peer test needs it: {message}", pytrace=False)
    pytest.skip(message)
    raise AssertionError("unreachable")
