"""A burst of 20,000 files dropped at once into a watched folder: each picked up (claimed) exactly once.

The real DropWatcher (inotify via watchdog, plus its rescan) triggers the real Outbound intake: the drop folder
scan, the stability check, the ledger claim and the durable move into the work area — everything up to
"claimed", where the remote name is fixed. Sealing and uploading 20,000 documents is per-document work the
2,000-file test in test_watcher.py already covers end to end (~25 ms a document here, so 20,000 would take
minutes); this test is about pickup at scale. Pickup latency (drop → claimed_at in the ledger) is printed, and
written as JSON to ``$BURST_RESULTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from sftp_pipeline.config import SendJob
from sftp_pipeline.daemon.watcher import DropWatcher
from sftp_pipeline.flows.send import SendReport
from sftp_pipeline.names import parse_sealed_name
from sftp_pipeline.wiring import open_runtime
from tests.peers.parties import make_party

BURST = 20_000
# Why 2,000: the short form for the default run; the full 20,000 is marked slow (still well under 3 minutes).
SHORT_BURST = 2_000
# Why 0.5 s: the rescan interval; short so a file the events missed is found quickly.
RESCAN = 0.5
# Why 0.5 s: as in production, a stability window, so an exporter's half-written file is not taken.
STABLE = 0.5
# Why 150 s: 20,000 claims take ~30-60 s on 2 busy CPUs; far longer means pickup is stuck.
DEADLINE = 150.0


# Another program (its own process, as in production) writing all the files at once while the watcher reacts; it
# reports when each file was complete.
EXPORTER = """
import json, sys, time
folder, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
done = {}
for i in range(count):
    name = f"INV-{i:05d}.xml"
    with open(f"{folder}/{name}", "wb") as fh:
        fh.write(f"<Invoice id='{i}'/>\\n".encode())
    done[name] = time.time()
with open(out, "w") as fh:
    json.dump(done, fh)
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@pytest.mark.parametrize("count", [SHORT_BURST, pytest.param(BURST, marks=pytest.mark.slow)])
def test_a_burst_is_picked_up_exactly_once_each(tmp_path: Path, partner_cert: bytes, count: int) -> None:
    party = make_party(
        tmp_path / "utility",
        "utility",
        partner_id="aggregator",
        partner_cert=partner_cert,
        jobs={"invoices": {"document_type": "invoice", "watch": True, "stable_seconds": STABLE}},
    )
    config = party.config()
    job: SendJob = config.jobs_of("send", ["invoices"])[0]
    partner = config.partner(job.partner)
    names = [f"INV-{i:05d}.xml" for i in range(count)]
    dropped_at: dict[str, float] = {}
    reasons: list[str] = []
    claimed: list[int] = [0]
    took: dict[str, float] = {}
    times = tmp_path / "dropped-at.json"

    async def main() -> tuple[list[tuple[str, str, str]], list[str]]:
        with open_runtime(config) as rt:
            outbound = rt.outbound()

            async def pick_up(j: SendJob, reason: str) -> None:
                reasons.append(reason)
                report = SendReport()
                async for batch in outbound._intake(j, partner, report):
                    claimed[0] += len(batch)
                assert not [o for o in report.outcomes if o.state not in {"waiting"}], report.outcomes

            job.source.mkdir(parents=True, exist_ok=True)
            watcher = DropWatcher([job], pick_up, loop=asyncio.get_running_loop(), rescan_seconds=RESCAN)
            watcher.start()
            try:
                started = time.monotonic()
                exporter = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    EXPORTER,
                    str(job.source),
                    str(count),
                    str(times),
                )
                if await exporter.wait() != 0:
                    pytest.fail(f"the exporter failed with exit code {exporter.returncode}")
                took["drop"] = time.monotonic() - started
                dropped_at.update(json.loads(times.read_text()))
                while claimed[0] < count:
                    if time.monotonic() - started > DEADLINE:
                        pytest.fail(f"{claimed[0]} of {count} files claimed within {DEADLINE} s; runs: {reasons}")
                    await asyncio.sleep(0.05)
                took["all"] = time.monotonic() - started
                await asyncio.sleep(RESCAN * 2)  # later events and rescans must not claim anything again
            finally:
                await watcher.stop()
            rows = rt.ledger.recent(count * 2)
            return [(r.source_name, r.state, r.remote_name or "") for r in rows], [r.claimed_at or "" for r in rows]

    rows, claimed_at = asyncio.run(main())
    by_name = Counter(name for name, _, _ in rows)
    assert sorted(by_name) == names and set(by_name.values()) == {1}  # 20,000 rows, one per document
    assert {state for _, state, _ in rows} == {"claimed"}
    remote = Counter(remote for _, _, remote in rows)
    assert len(remote) == count and set(remote.values()) == {1}  # each fixed to its own final remote name once
    assert all(parse_sealed_name(r).original == name for name, _, r in rows)
    assert visible(job.source) == []  # nothing left behind, nothing quarantined
    assert not (config.state_dir / "quarantine").exists()
    work = config.state_dir / "work"
    assert len(os.listdir(work)) == count

    latency = [
        datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() - dropped_at[name]
        for (name, _, _), at in zip(rows, claimed_at, strict=True)
    ]
    result = {
        "files": count,
        "drop_seconds": round(took["drop"], 2),
        "all_claimed_seconds": round(took["all"], 2),
        "runs": len(reasons),
        "stable_seconds": STABLE,
        "pickup_latency_seconds": {
            "p50": round(statistics.median(latency), 3),
            "p95": round(percentile(latency, 0.95), 3),
            "max": round(max(latency), 3),
        },
    }
    target = Path(os.environ.get("BURST_RESULTS", tmp_path / "burst.json"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nburst pickup: {json.dumps(result)}")  # shown with -s / -rP
    assert min(latency) >= STABLE - 0.1  # nothing was taken inside its stability window


def visible(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))
