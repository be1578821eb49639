"""The watcher's pure decisions: which names a watched send job may take."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sftp_pipeline.config import SendJob
from sftp_pipeline.daemon.watcher import DropWatcher, wanted


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("INV-1.xml", "*", True),
        ("INV-1.xml", "*.xml", True),
        ("INV-1.csv", "*.xml", False),
        ("INV-1.xml.part", "*", False),
        ("INV-1.tmp", "*", False),
        (".INV-1.xml", "*", False),
        ("~INV-1.xml", "*", False),
        ("INV-1.xml~", "*", False),
        ("INV-1.xml.filepart", "*", False),
        ("INV-1.XML.PART", "*", False),
    ],
)
def test_wanted_names(name: str, pattern: str, expected: bool) -> None:
    assert wanted(name, pattern) is expected


def test_a_rescan_interval_must_be_positive(tmp_path: Path) -> None:
    job = SendJob(kind="send", name="inv", partner="utility", document_type="invoice", source=tmp_path)

    async def noop(job: SendJob, reason: str) -> None:
        return None

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="rescan_seconds"):
            DropWatcher([job], noop, loop=loop, rescan_seconds=0)
    finally:
        loop.close()
