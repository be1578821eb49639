"""Named crash points, so tests can kill the process for real at an exact step.

Setting ``SFTP_PIPELINE_CRASH_AT=<point>`` makes the process SIGKILL itself
when it reaches that point: no cleanup, no ``finally``, exactly like a power
cut. The code under test is not patched; it is stopped.
"""

from __future__ import annotations

import os
import signal

ENV = "SFTP_PIPELINE_CRASH_AT"

POINTS = frozenset(
    {
        "after-claim",  # ledger row written, file moved to work
        "after-seal",  # sealed file written and recorded
        "after-upload",  # renamed to the final remote name, ledger not yet updated
        "after-ledger-upload",  # ledger says uploaded, originals not yet archived
    }
)


def crash_point(name: str) -> None:
    """SIGKILL this process if the environment asks for a crash at ``name``."""
    assert name in POINTS, name
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
