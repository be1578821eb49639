"""Soak: many random SIGKILLs of the send, collect and receipts processes during a two-party run with receipts.

Every round starts the utility's ``collect`` and one of the aggregator's ``send`` / ``receipts`` (the real
CLI, as separate processes), waits a random time and SIGKILLs what is still running. When enough kills
have landed, clean rounds run until everything settles, and then: each document delivered exactly once,
each receipt issued and settled once, both ledgers pass ``PRAGMA integrity_check``, nothing temporary is
left, and the reconciliation counts every document delivered.

The short form (``SFTP_PIPELINE_SOAK_DOCS`` / ``_KILLS`` defaults) runs in CI; the full form is marked slow:
``SFTP_PIPELINE_SOAK_DOCS=1000 SFTP_PIPELINE_SOAK_KILLS=200 pytest -m soak tests/integration/test_soak.py``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.crashcheck import assert_exactly_once
from tests.integration.test_exchange import pair_over_sshd
from tests.peers.parties import CLI_TIMEOUT, Party
from tests.peers.sshd import Sshd

# Why these: the short form must stay within about a minute of CI time on two shared cores.
SHORT_DOCS, SHORT_KILLS = 40, 12
# The full form.
FULL_DOCS, FULL_KILLS = 1000, 200
# Why 0.3–3.0 s: a CLI run spends ~1 s starting up, then works; kills land in start-up, mid-step and idle.
KILL_DELAY = (0.3, 3.0)
# Why 20: clean rounds needed after the kills are few (each finishes what the last one left); more means stuck.
MAX_CLEAN_ROUNDS = 20


@dataclass
class Tally:
    kills: int = 0
    rounds: int = 0
    by_step: dict[str, int] | None = None


def sizes(default_docs: int, default_kills: int) -> tuple[int, int, int]:
    return (
        int(os.environ.get("SFTP_PIPELINE_SOAK_DOCS", default_docs)),
        int(os.environ.get("SFTP_PIPELINE_SOAK_KILLS", default_kills)),
        int(os.environ.get("SFTP_PIPELINE_SOAK_SEED", "20261127")),
    )


def start(party: Party, step: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sftp_pipeline.cli", "-c", str(party.config_path), step],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )


def documents(count: int) -> dict[str, bytes]:
    return {
        f"INV-{n:05d}.xml": f"<Invoice id='INV-{n:05d}'><Total currency='USD'>{n}.00</Total></Invoice>\n".encode()
        for n in range(count)
    }


def soak(tmp_path: Path, sshd: Sshd, docs: int, kills: int, seed: int) -> Tally:
    rng = random.Random(seed)
    aggregator, utility = pair_over_sshd(tmp_path, sshd)
    dropped = documents(docs)
    pending = list(dropped.items())
    batch = max(1, docs // max(1, kills // 2))  # documents keep arriving during the first half of the kills
    tally = Tally(by_step={})
    assert tally.by_step is not None
    while tally.kills < kills:
        for name, data in pending[:batch]:
            aggregator.drop("invoice", name, data)
        del pending[:batch]
        tally.rounds += 1
        procs = {"collect": start(utility, "collect")}
        step = rng.choice(["send", "send", "receipts"])
        procs[step] = start(aggregator, step)
        time.sleep(rng.uniform(*KILL_DELAY))
        for name, proc in procs.items():
            if proc.poll() is None and rng.random() < 0.8:
                proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=CLI_TIMEOUT)
            if proc.returncode == -signal.SIGKILL:
                tally.kills += 1
                tally.by_step[name] = tally.by_step.get(name, 0) + 1
            else:
                assert proc.returncode in (0, 1), f"{name} exited {proc.returncode}: {err.decode()[-2000:]}"
    for name, data in pending:
        aggregator.drop("invoice", name, data)
    print(f"soak: {docs} documents, {tally.kills} kills {tally.by_step} in {tally.rounds} rounds, seed {seed}")
    for _ in range(MAX_CLEAN_ROUNDS):
        for party, step in ((aggregator, "send"), (utility, "collect"), (aggregator, "receipts")):
            done = party.cli(step)
            assert done.returncode in (0, 1), done.stdout + done.stderr
        if all(t.state == "receipted" for t in aggregator.transfers()) and len(aggregator.transfers()) >= docs:
            break
    assert_exactly_once(aggregator, utility, sshd.root, dropped)
    rec = aggregator.reconcile(now=datetime.now(UTC) + timedelta(seconds=1))
    assert rec.counts()["utility"].get("sent:delivered") == docs, rec.counts()
    received = utility.reconcile(now=datetime.now(UTC) + timedelta(seconds=1))
    assert received.counts()["aggregator"].get("received:accepted") == docs, received.counts()
    return tally


def run_soak(tmp_path: Path, sshd: Sshd, default_docs: int, default_kills: int) -> None:
    docs, kills, seed = sizes(default_docs, default_kills)
    began = time.monotonic()
    tally = soak(tmp_path, sshd, docs, kills, seed)
    assert tally.kills >= kills
    print(
        f"soak: {docs} documents, {tally.kills} kills {tally.by_step} in {tally.rounds} rounds, "
        f"seed {seed}, {time.monotonic() - began:.0f} s"
    )


def test_soak_short(tmp_path: Path, sshd: Sshd) -> None:
    run_soak(tmp_path, sshd, SHORT_DOCS, SHORT_KILLS)


@pytest.mark.soak
def test_soak_full(tmp_path: Path, sshd: Sshd) -> None:
    run_soak(tmp_path, sshd, FULL_DOCS, FULL_KILLS)
