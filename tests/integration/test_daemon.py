"""`sftp-pipeline run` as a service: one instance only, SIGTERM stops it cleanly, and kill -9 in the middle of a
batch followed by a restart delivers every document exactly once with no partial file at a final name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sftp_pipeline.wiring import open_ledger
from tests.peers.gpg import GnuPG
from tests.peers.parties import Party, make_party
from tests.peers.sshd import Sshd

# Why 60 s: the batch below moves ~40 MB over loopback; a minute without finishing means it hung.
DEADLINE = 60.0
STOP_TIMEOUT = 30.0


def start(party: Party, *extra: str) -> subprocess.Popen[str]:
    """The daemon, logging JSON lines to a file (a pipe nobody reads would fill and block it)."""
    log = party.directory / f"daemon-{time.monotonic_ns()}.log"
    args = ["-c", str(party.config_path), "--log-level", "info", "--log-json", *extra, "run"]
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sftp_pipeline.cli", *args],
            stdout=sink,
            stderr=sink,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen[str]) -> str:
    return proc.log.read_text()  # type: ignore[attr-defined,no-any-return]


def wait_for(predicate, what: str, timeout: float = DEADLINE) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=STOP_TIMEOUT)
    return proc.returncode, output(proc)


@pytest.fixture
def aggregator(tmp_path: Path, sshd: Sshd, gpg: GnuPG) -> Party:
    fpr = gpg.generate("Metro Utility <settlement@utility.test>")
    (sshd.root / "inbox").mkdir()
    party = make_party(
        tmp_path / "aggregator",
        "aggregator",
        partner_id="utility",
        partner_cert=gpg.export(fpr),
        sftp={
            "host": sshd.host,
            "port": sshd.port,
            "user": sshd.user,
            "host_keys": [sshd.host_key_line],
            "files_in_flight": 2,
        },
        jobs={
            "aggregation": {"document_type": "aggregation_data", "watch": True},
            "invoices": {"document_type": "invoice", "watch": True},
        },
    )
    sshd.authorize(party.keys.ssh_public.read_text())
    return party


def uploaded(party: Party) -> int:
    with open_ledger(party.config()) as ledger:
        return sum(n for (_, state), n in ledger.counts().items() if state == "uploaded")


def test_a_second_instance_is_refused_and_sigterm_stops_cleanly(aggregator: Party) -> None:
    first = start(aggregator)
    lock = aggregator.config().state_dir / "daemon.lock"
    wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), "the first daemon's lock")
    second = start(aggregator)
    second.wait(timeout=STOP_TIMEOUT)
    # Exit 1, not the usage code 2: nothing was wrong with the command, the work is done elsewhere.
    assert second.returncode == 1 and f"pid {first.pid}" in output(second), output(second)
    code, err = stop(first)
    assert code == 0, err
    third = start(aggregator)  # the lock was released
    wait_for(lambda: lock.read_text().strip() == str(third.pid), "the third daemon's lock")
    assert stop(third)[0] == 0


def test_watched_folder_sends_a_dropped_file_within_seconds(aggregator: Party, sshd: Sshd) -> None:
    proc = start(aggregator)
    try:
        wait_for(lambda: (aggregator.config().state_dir / "daemon.lock").exists(), "the daemon")
        time.sleep(1.0)  # let the watchers start
        folder = aggregator.drop_dir("invoice")
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".INV-7.xml.tmp"
        tmp.write_bytes(b"<Invoice n='7'/>")
        os.replace(tmp, folder / "INV-7.xml")  # moved in complete, as an export tool would
        wait_for(
            lambda: any(n.endswith(".INV-7.xml.pgp") for n in os.listdir(sshd.root / "inbox")),
            "the dropped invoice at the partner",
            timeout=15,
        )
    finally:
        assert stop(proc)[0] == 0


def test_kill_9_mid_batch_then_restart_delivers_each_document_once(aggregator: Party, sshd: Sshd) -> None:
    names = []
    for i in range(8):
        names.append(aggregator.drop("aggregation_data", f"AGG-{i}.csv", os.urandom(5 * 1024 * 1024)).name)
    for i in range(20):
        names.append(aggregator.drop("invoice", f"INV-{i}.xml", f"<Invoice n='{i}'/>".encode()).name)
    inbox = sshd.root / "inbox"

    first = start(aggregator)
    wait_for(lambda: len([n for n in os.listdir(inbox) if not n.startswith(".")]) >= 3, "the first uploads")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=STOP_TIMEOUT)
    assert uploaded(aggregator) < len(names)  # killed mid-batch

    second = start(aggregator)
    try:
        wait_for(lambda: uploaded(aggregator) == len(names), "every document uploaded after the restart")
    finally:
        assert stop(second)[0] == 0
    finals = sorted(n for n in os.listdir(inbox) if not n.startswith("."))
    assert len(finals) == len(names)  # each exactly once
    assert not [n for n in os.listdir(inbox) if n.endswith(".part")]  # no partial file left behind
    transfers = aggregator.transfers()
    assert sorted(t.source_name for t in transfers) == sorted(names)
    for t in transfers:
        assert (inbox / t.remote_name).stat().st_size == t.ciphertext_size  # complete at its final name
    with open_ledger(aggregator.config()) as ledger:
        assert ledger.integrity_ok()
