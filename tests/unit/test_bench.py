"""The benchmark harness's pure parts: the ratio points the right way and the table says what was met."""

from __future__ import annotations

import argparse

from bench.run import ALL, markdown
from bench.scenarios import Result

MACHINE = {
    "cpu": "Test CPU", "cores": 2, "ram_gib": 4.0, "kernel": "6.1", "os": "Debian", "openssh": "OpenSSH_9.2",
    "gnupg": "gpg 2.2.40", "python": "3.11", "pysequoia": "0.1.35", "asyncssh": "2.24.1",
}  # fmt: skip


def test_ratio_is_above_one_when_ours_is_better_whichever_way_the_metric_points() -> None:
    faster = Result("large", "MB/s", 300.0, 100.0, True, "≥ 1.5×", True)
    quicker = Result("reconcile", "s", 2.0, 8.0, False, "< 5 s", True)
    assert faster.ratio == 3.0
    assert quicker.ratio == 4.0
    assert Result("watch", "s", 0.3, None, False, "< 1 s", True).ratio is None


def test_markdown_table_has_one_row_per_result_and_the_machine() -> None:
    results = [
        Result("large: seal + upload", "MB/s", 150.0, 100.0, True, "≥ 1.5×", True),
        Result("small", "docs/s", 50.0, 100.0, True, "≥ 4×", False),
        Result("reconcile", "s", 3.0, None, False, "< 5 s", True),
    ]
    args = argparse.Namespace(size_mib=1024, repeat=3, only=",".join(ALL))
    table = markdown(results, MACHINE, args, "2026-01-01T00:00:00Z")
    rows = [line for line in table.splitlines() if line.startswith("| ") and "scenario" not in line]
    assert len(rows) == 3
    assert rows[0].endswith("| 1.50× | ≥ 1.5× | yes |")
    assert rows[1].endswith("| 0.50× | ≥ 4× | no |")
    assert "| — |" in rows[2]
    assert "Test CPU, 2 cores" in table and "gpg 2.2.40" in table
