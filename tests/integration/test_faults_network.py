"""Network faults between our client and real SFTP servers: cuts, resets, black holes, throttling, restarts.

A :class:`~tests.peers.tcpproxy.TcpProxy` sits between the sender and OpenSSH ``sshd`` or the embedded
server and misbehaves for real; the code under test is not patched. After every fault, ``send`` is simply
run again (what the nightly schedule does) until the ledger says every document is uploaded, and then:

* every document sits exactly once at its final remote name, with the sealed bytes the ledger recorded
  (SHA-256 and size) for the plaintext we dropped;
* no final name was ever seen holding fewer bytes than its complete file (a watcher polls the inbox
  throughout), and no temporary ``.name.part`` is left behind;
* the ledger passes ``PRAGMA integrity_check``.

The random offsets come from a seeded RNG; the seed is in every assertion message (set ``FAULT_SEED`` to
replay one). ``-m soak`` runs the long version (200 cuts per server).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sftp_pipeline import errors
from sftp_pipeline.names import is_temporary
from sftp_pipeline.proof.receipts import receipt_file_names
from sftp_pipeline.server.embedded import EmbeddedServer
from sftp_pipeline.transport.sftp import SftpTransport
from sftp_pipeline.wiring import LEDGER_NAME
from tests.integration.test_exchange import PLACEHOLDER, utility_party
from tests.peers.parties import Party, make_party
from tests.peers.sshd import ClientKey, Sshd, free_port
from tests.peers.tcpproxy import PASS, RandomCuts, TcpProxy, stall, throttle

SEED = int(os.environ.get("FAULT_SEED", str(random.SystemRandom().randrange(1 << 32))))
MiB = 1024 * 1024
# Why 27 per server: with the collect test this injects well over the 50 cuts the issue asks for in a
# default (CI) run, at ~15-25 s per server on a loaded 2-core machine.
CI_CUTS = 27
# Why 200: the long hand-run version (`-m soak`); a few minutes per server.
SLOW_CUTS = 200
# Why 2 s: short enough to keep the test quick, long enough that loopback never idles that long by accident.
STALL_TIMEOUT = 2.0
# Why 10 %: the tolerance on detecting a stall; the lower side is generous (half the timeout), as
# the watchdog counts from the last block that moved, which may be a little before the black hole began.
STALL_TOLERANCE = 0.10
# Why 3: a run either uploads something or injects a fault; far more runs than faults means a livelock.
RUNS_PER_CUT = 3
# Why 6: a batch of 12 documents (~3.6 MB down) spends a 1 MiB-offset fault with odds well over a half; six
# batches leave a plan of 8 unspent only for a broken proxy or a livelock.
MAX_COLLECT_BATCHES = 6
# Why 4: enough documents in flight at once that a cut hits several uploads on one connection.
FILES_IN_FLIGHT = 4
# Why 5 s: connecting over loopback takes milliseconds; a cut during the handshake must not wait long.
CONNECT_TIMEOUT = 5.0
# Why 3 MiB/s: a restart batch (3 documents of 1-4 MiB) then takes seconds, so both restarts land mid-upload.
RESTART_RATE = 3 * MiB
# Why 10 s: a server restart takes well under a second; longer means it did not come back.
SERVER_START_TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def _show_seed() -> None:
    print(f"random offsets from FAULT_SEED={SEED}")  # captured output is shown with any failure


def seeded(test: str) -> random.Random:
    return random.Random(f"{SEED}-{test}")


def why(test: str) -> str:
    return f"(seed {SEED}: rerun with FAULT_SEED={SEED} pytest -k {test})"


# -- the parties -------------------------------------------------------------------------------------------


def sender(
    base: Path, partner_cert: bytes, *, port: int, user: str, host_key: str, attempts: int = 1, **sftp: object
) -> Party:
    """The aggregator, sending invoices (small) and aggregation data (large) to ``127.0.0.1:port``."""
    fields = host_key.split()
    start = next(i for i, f in enumerate(fields) if f.startswith("ssh-"))
    bare_key = " ".join(fields[start : start + 2])  # pinned by key alone: the proxy's port is not the server's
    return make_party(
        base / "aggregator",
        "aggregator",
        partner_id="utility",
        partner_cert=partner_cert,
        sftp={
            "host": "127.0.0.1",
            "port": port,
            "user": user,
            "host_keys": [bare_key],
            "connect_timeout": CONNECT_TIMEOUT,
            "stall_timeout": STALL_TIMEOUT,
            "attempts": attempts,
            "files_in_flight": FILES_IN_FLIGHT,
            **sftp,
        },
        jobs={
            "invoices": {"document_type": "invoice"},
            "aggregation": {"document_type": "aggregation_data"},
            "from-utility": {"kind": "collect", "deliver_to": "../delivered"},
        },
    )


def utility(base: Path, *, server_port: int | None = None) -> Party:
    return utility_party(base, server_port=server_port, jobs={"to-aggregator": {"document_type": "invoice"}})


def introduce(aggregator: Party, util: Party) -> None:
    (util.directory / "keys" / "partners" / "aggregator.asc").write_bytes(aggregator.keys.openpgp_cert.read_bytes())
    util.config_path.write_text(
        util.config_path.read_text().replace(PLACEHOLDER, aggregator.keys.ssh_public.read_text().strip())
    )


@dataclass
class Setup:
    aggregator: Party
    utility: Party
    root: Path  # the aggregator's folder on the utility's server (inbox, outbox, receipts-*)
    server_port: int
    host_key: str


def over_sshd(tmp_path: Path, sshd: Sshd, port: int, **sftp: object) -> Setup:
    util = utility(tmp_path)
    hosted = util.config().hosted_root("aggregator")
    hosted.parent.mkdir(parents=True)
    hosted.symlink_to(sshd.root)  # the utility's OpenSSH serves this folder to the aggregator
    for folder in ("inbox", "outbox", "receipts-in", "receipts-out"):
        (sshd.root / folder).mkdir(exist_ok=True)
    aggregator = sender(
        tmp_path, util.keys.openpgp_cert.read_bytes(), port=port, user=sshd.user, host_key=sshd.host_key_line, **sftp
    )
    introduce(aggregator, util)
    sshd.authorize(aggregator.keys.ssh_public.read_text())
    return Setup(aggregator, util, sshd.root, sshd.port, sshd.host_key_line)


def over_embedded(tmp_path: Path, port: Callable[[int], int], **sftp: object) -> Setup:
    """The utility runs the embedded server on a fixed port; ``port(server_port)`` is where we connect."""
    server_port = free_port()
    util = utility(tmp_path, server_port=server_port)
    host_key = util.keys.host_key_public.read_text()
    aggregator = sender(
        tmp_path,
        util.keys.openpgp_cert.read_bytes(),
        port=port(server_port),
        user="aggregator",
        host_key=host_key,
        **sftp,
    )
    introduce(aggregator, util)
    return Setup(aggregator, util, util.config().hosted_root("aggregator"), server_port, host_key)


class EmbeddedThread:
    """The utility's EmbeddedServer on its own loop in a thread (so the test can drive the client)."""

    def __init__(self, party: Party) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="embedded", daemon=True)
        self.thread.start()
        self.server = EmbeddedServer(party.config())
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(SERVER_START_TIMEOUT)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(SERVER_START_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(SERVER_START_TIMEOUT)
        self.loop.close()


@pytest.fixture
def embedded_thread() -> Iterator[Callable[[Party], EmbeddedThread]]:
    started: list[EmbeddedThread] = []

    def start(party: Party) -> EmbeddedThread:
        started.append(EmbeddedThread(party))
        return started[-1]

    yield start
    for server in started:
        server.stop()


# -- documents and checks ----------------------------------------------------------------------------------


@dataclass
class Batch:
    documents: dict[str, bytes] = field(default_factory=dict)  # source name → plaintext

    def drop(self, party: Party, rng: random.Random, *, large: int, small: int, max_large: int) -> None:
        for _ in range(large):
            name = f"AGG-{len(self.documents):04d}.csv"
            self.documents[name] = rng.randbytes(rng.randint(max_large // 4, max_large))
            party.drop("aggregation_data", name, self.documents[name])
        for _ in range(small):
            name = f"INV-{len(self.documents):04d}.xml"
            self.documents[name] = rng.randbytes(rng.randint(200, 40_000))
            party.drop("invoice", name, self.documents[name])


class FinalNameWatcher:
    """Polls a folder and records every size each final (non-temporary) name was seen with."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: dict[str, set[int]] = {}
        self.partials_seen = 0  # temporary names observed at some point (proof the faults hit mid-upload)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FinalNameWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            for entry in os.scandir(self.folder):
                try:
                    size = entry.stat().st_size
                except FileNotFoundError:
                    continue  # renamed or removed meanwhile
                if is_temporary(entry.name):
                    self.partials_seen += 1
                else:
                    self.seen.setdefault(entry.name, set()).add(size)


def send_until_uploaded(party: Party, expected: int, proxy: TcpProxy | None, test: str, max_runs: int) -> int:
    """Run ``send`` again and again until the ledger has ``expected`` uploaded transfers; return the runs."""
    for run in range(1, max_runs + 1):
        party.send()
        states = [t.state for t in party.transfers()]
        if len(states) == expected and all(s == "uploaded" for s in states):
            return run
    faults = proxy.injected() if proxy else 0
    last = [(t.source_name, t.state, t.last_error) for t in party.transfers() if t.state != "uploaded"]
    pytest.fail(f"not all uploaded after {max_runs} runs and {faults} faults: {last[:3]} {why(test)}")


def assert_delivered_once(setup: Setup, batch: Batch, watcher: FinalNameWatcher, test: str) -> None:
    inbox = setup.root / "inbox"
    transfers = {t.source_name: t for t in setup.aggregator.transfers()}
    assert set(transfers) == set(batch.documents), why(test)
    present = sorted(os.listdir(inbox))
    assert present == sorted(t.remote_name for t in transfers.values()), f"extra or missing files {why(test)}"
    for name, plaintext in batch.documents.items():
        t = transfers[name]
        assert t.state == "uploaded" and t.archived_at, (name, t.state, why(test))
        assert t.plaintext_sha256 == hashlib.sha256(plaintext).hexdigest(), why(test)
        remote = (inbox / t.remote_name).read_bytes()
        assert len(remote) == t.ciphertext_size and hashlib.sha256(remote).hexdigest() == t.ciphertext_sha256, (
            f"{t.remote_name}: the bytes at the final name are not the sealed document {why(test)}"
        )
        assert remote == Path(t.archive_sealed_path).read_bytes(), why(test)
    for final, sizes in watcher.seen.items():
        complete = (inbox / final).stat().st_size if (inbox / final).exists() else None
        assert sizes == {complete}, f"{final} was seen with sizes {sorted(sizes)}, complete is {complete} {why(test)}"
    assert_ledger_intact(setup.aggregator)


def assert_ledger_intact(party: Party) -> None:
    db = sqlite3.connect(party.config().state_dir / LEDGER_NAME)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()


def cut_batches(setup: Setup, proxy: TcpProxy, plan: RandomCuts, rng: random.Random, test: str) -> Batch:
    """Drop batches of mixed documents and send each until uploaded, until the plan's cuts are all spent."""
    batch = Batch()
    runs = 0
    while proxy.injected("cut", "reset") < plan.budget:
        before = len(batch.documents)
        batch.drop(setup.aggregator, rng, large=2, small=5, max_large=plan.max_up)
        runs += send_until_uploaded(
            setup.aggregator, len(batch.documents), proxy, test, max_runs=RUNS_PER_CUT * plan.budget + 5
        )
        assert len(batch.documents) > before
    print(
        f"{test}: {proxy.injected('cut')} cuts + {proxy.injected('reset')} resets over {proxy.connections} "
        f"connections, {len(batch.documents)} documents, {runs} send runs {why(test)}"
    )
    return batch


# -- cuts and resets at random offsets ---------------------------------------------------------------------


def max_large_for(cuts: int) -> int:
    return 4 * MiB if cuts <= CI_CUTS else 8 * MiB


@pytest.mark.parametrize("cuts", [CI_CUTS, pytest.param(SLOW_CUTS, marks=pytest.mark.soak)])
def test_random_cuts_against_openssh_deliver_each_document_once(tmp_path: Path, sshd: Sshd, cuts: int) -> None:
    test = "random_cuts_against_openssh"
    rng = seeded(f"{test}-{cuts}")
    plan = RandomCuts(random.Random(rng.random()), budget=cuts, max_up=max_large_for(cuts))
    with TcpProxy(sshd.port, plan=plan) as proxy:
        setup = over_sshd(tmp_path, sshd, proxy.port)
        with FinalNameWatcher(sshd.root / "inbox") as watcher:
            batch = cut_batches(setup, proxy, plan, rng, test)
    assert proxy.injected("cut", "reset") >= cuts, why(test)
    assert_delivered_once(setup, batch, watcher, test)


@pytest.mark.parametrize("cuts", [CI_CUTS, pytest.param(SLOW_CUTS, marks=pytest.mark.soak)])
def test_random_cuts_against_the_embedded_server_deliver_each_document_once(
    tmp_path: Path, embedded_thread: Callable[[Party], EmbeddedThread], cuts: int
) -> None:
    test = "random_cuts_against_the_embedded_server"
    rng = seeded(f"{test}-{cuts}")
    plan = RandomCuts(random.Random(rng.random()), budget=cuts, max_up=max_large_for(cuts))
    proxies: list[TcpProxy] = []

    def through_proxy(server_port: int) -> int:
        proxies.append(TcpProxy(server_port, plan=plan).start())
        return proxies[-1].port

    setup = over_embedded(tmp_path, through_proxy)
    (proxy,) = proxies
    try:
        embedded_thread(setup.utility)
        with FinalNameWatcher(setup.root / "inbox") as watcher:
            batch = cut_batches(setup, proxy, plan, rng, test)
    finally:
        proxy.stop()
    assert proxy.injected("cut", "reset") >= cuts, why(test)
    assert_delivered_once(setup, batch, watcher, test)


def test_collect_through_a_cutting_proxy_receives_each_document_once_with_one_receipt(
    tmp_path: Path, sshd: Sshd
) -> None:
    """The receive direction: the utility leaves documents in the outbox; we collect them through cuts."""
    test = "collect_through_a_cutting_proxy"
    rng = seeded(test)
    plan = RandomCuts(random.Random(rng.random()), budget=8, max_up=8 * 1024, max_down=MiB, down_share=0.7)
    documents: dict[str, bytes] = {}
    with TcpProxy(sshd.port, plan=plan) as proxy:
        setup = over_sshd(tmp_path, sshd, proxy.port)
        # Batches until the plan's faults are spent: a fault whose offset lies beyond what its connection moved
        # never fires, and with one batch some seeds left most of the plan unused (seed 804152166: 3 of 8).
        for _ in range(MAX_COLLECT_BATCHES):
            batch = {f"INV-{len(documents) + i}.xml": rng.randbytes(rng.randint(1000, 600_000)) for i in range(12)}
            for name, data in batch.items():
                setup.utility.drop("invoice", name, data)
            assert setup.utility.send().count("uploaded") == len(batch)  # into its own outbox, locally
            documents.update(batch)
            for _ in range(RUNS_PER_CUT * plan.budget + 5):
                setup.aggregator.collect()
                if not os.listdir(sshd.root / "outbox"):
                    break
            if proxy.injected("cut", "reset") >= plan.budget:
                break
    sent = {t.id: t for t in setup.utility.transfers()}
    received = setup.aggregator.inbound()
    assert sorted(r.transfer_id for r in received) == sorted(sent), why(test)
    assert all(r.state == "accepted" for r in received), why(test)
    delivered = sorted(p.read_bytes() for p in (tmp_path / "aggregator" / "delivered").rglob("*") if p.is_file())
    assert delivered == sorted(documents.values()), f"each document delivered exactly once {why(test)}"
    receipts = sorted(os.listdir(sshd.root / "receipts-in"))
    assert receipts == sorted(n for tid in sent for n in receipt_file_names(tid)), why(test)
    assert proxy.injected("cut", "reset") >= plan.budget, why(test)
    print(f"{test}: {proxy.injected('cut', 'reset')} cuts/resets, {len(documents)} documents {why(test)}")
    assert_ledger_intact(setup.aggregator)


def test_a_receipt_that_cannot_be_sent_again_stays_pending_and_the_run_goes_on(tmp_path: Path, sshd: Sshd) -> None:
    """An interrupted run's receipt is re-sent first thing; when that fails too, it waits for the next run (it
    used to end the whole collect with an exception, so nothing else was collected)."""
    setup = over_sshd(tmp_path, sshd, sshd.port)
    setup.utility.drop("invoice", "INV-1.xml", b"<invoice id='1'/>")
    assert setup.utility.send().count("uploaded") == 1
    shutil.rmtree(sshd.root / "receipts-in")  # where our receipts go: gone on the partner's server

    first = setup.aggregator.collect()  # delivered; its receipt cannot be placed
    (row,) = setup.aggregator.inbound()
    assert row.state == "accepted" and row.receipt_sent_at is None, first.outcomes
    setup.utility.drop("invoice", "INV-2.xml", b"<invoice id='2'/>")
    assert setup.utility.send().count("uploaded") == 1

    second = setup.aggregator.collect()  # the re-send fails again; INV-2 is still collected
    assert [(o.name, o.result) for o in second.outcomes if o.transfer_id == row.transfer_id] == [
        (row.remote_name, "pending")
    ]
    assert len(setup.aggregator.inbound()) == 2

    (sshd.root / "receipts-in").mkdir()  # the partner fixed it
    setup.aggregator.collect()
    assert all(r.receipt_sent_at for r in setup.aggregator.inbound())
    assert_ledger_intact(setup.aggregator)


# -- a black hole, a slow link -----------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["openssh", "embedded"])
def test_a_black_hole_is_detected_within_the_stall_timeout(
    tmp_path: Path,
    sshd: Sshd,
    embedded_thread: Callable[[Party], EmbeddedThread],
    caplog: pytest.LogCaptureFixture,
    server: str,
) -> None:
    proxies: list[TcpProxy] = []

    def through_proxy(server_port: int) -> int:
        proxies.append(TcpProxy(server_port, plan=stall(1 * MiB)).start())  # silence after 1 MiB, mid-upload
        return proxies[-1].port

    if server == "openssh":
        setup = over_sshd(tmp_path, sshd, through_proxy(sshd.port))
    else:
        setup = over_embedded(tmp_path, through_proxy)
        embedded_thread(setup.utility)
    (proxy,) = proxies
    try:
        setup.aggregator.drop("aggregation_data", "AGG-1.csv", os.urandom(4 * MiB))
        with caplog.at_level(logging.WARNING, logger="sftp_pipeline.transport.sftp"):
            report = setup.aggregator.send()
        black_hole = proxy.first("stall")
        proxy.set_plan(PASS)  # the link is back
        setup.aggregator.send()
    finally:
        proxy.stop()
    assert black_hole is not None, "the upload never reached 1 MiB"
    (outcome,) = report.outcomes
    assert outcome.state == "pending" and "stalled" in outcome.detail, outcome
    (noticed,) = [r for r in caplog.records if "stopped answering" in r.getMessage()]
    detected = noticed.created - black_hole.wall
    print(f"black hole ({server}): noticed {detected:.2f}s after it began (stall timeout {STALL_TIMEOUT}s)")
    assert STALL_TIMEOUT * 0.5 <= detected <= STALL_TIMEOUT * (1 + STALL_TOLERANCE), (
        f"a black hole was noticed {detected:.2f}s after it began; the stall timeout is {STALL_TIMEOUT}s"
    )
    # The next run, over the link that is back, delivered it once.
    (transfer,) = setup.aggregator.transfers()
    assert transfer.state == "uploaded" and os.listdir(setup.root / "inbox") == [transfer.remote_name]


def test_an_idle_connection_into_a_black_hole_is_dropped_within_the_stall_timeout(
    sshd: Sshd, ssh_client_key: ClientKey
) -> None:
    """Between transfers no watchdog runs; the SSH keepalive must drop a silent server just as fast."""

    async def main(proxy: TcpProxy) -> str:
        endpoint = sshd.endpoint(port=proxy.port, host_keys=[sshd.host_key_fingerprint], stall_timeout=STALL_TIMEOUT)
        transport = await SftpTransport.connect(endpoint, client_key=ssh_client_key.path, partner_id="utility")
        async with transport:
            proxy.stall_now()
            await asyncio.sleep(STALL_TIMEOUT * (1 + STALL_TOLERANCE))
            started = time.monotonic()
            with pytest.raises(errors.TransientTransportError) as failed:
                await transport.list("inbox")
            took = time.monotonic() - started
            assert took < STALL_TIMEOUT * STALL_TOLERANCE, f"the dead connection was still open ({took:.2f}s)"
            return str(failed.value)

    with TcpProxy(sshd.port) as proxy:
        message = asyncio.run(main(proxy))
    assert "connection lost" in message and "stalled" not in message, message


def test_a_throttled_link_still_completes(tmp_path: Path, sshd: Sshd) -> None:
    rate = 3 * MiB  # bytes/s: the 2 MiB document takes ~0.7 s, blocks keep moving well within the stall timeout
    with TcpProxy(sshd.port, plan=throttle(rate)) as proxy:
        setup = over_sshd(tmp_path, sshd, proxy.port)
        batch = Batch()
        batch.documents["AGG-1.csv"] = os.urandom(2 * MiB)
        setup.aggregator.drop("aggregation_data", "AGG-1.csv", batch.documents["AGG-1.csv"])
        batch.drop(setup.aggregator, random.Random(SEED), large=0, small=3, max_large=0)
        started = time.monotonic()
        with FinalNameWatcher(sshd.root / "inbox") as watcher:
            report = setup.aggregator.send()
        took = time.monotonic() - started
    assert report.ok and report.count("uploaded") == 4, report
    assert took >= 2 * MiB / rate * 0.9  # it really went through the slow link
    assert_delivered_once(setup, batch, watcher, "throttled")


# -- server restarts ---------------------------------------------------------------------------------------


def wait_for_port(port: int, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc is None or proc.poll() is None, "the server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listens on 127.0.0.1:{port} after {SERVER_START_TIMEOUT}s")


def restart_mid_batch(setup: Setup, restart: Callable[[], None], test: str, restarts: int = 2) -> Batch:
    """Send a batch over a throttled link; restart the server ``restarts`` times while uploads are open."""
    batch = Batch()
    batch.drop(setup.aggregator, seeded(test), large=3, small=6, max_large=4 * MiB)
    done: list[int] = []
    runner = threading.Thread(
        target=lambda: done.append(send_until_uploaded(setup.aggregator, len(batch.documents), None, test, 10))
    )
    inbox = setup.root / "inbox"
    with FinalNameWatcher(inbox) as watcher:
        runner.start()
        for _ in range(restarts):
            deadline = time.monotonic() + SERVER_START_TIMEOUT
            while not any(is_temporary(n) for n in os.listdir(inbox)):  # an upload is open right now
                assert time.monotonic() < deadline and runner.is_alive(), f"no upload in progress {why(test)}"
                time.sleep(0.01)
            restart()
        runner.join(120)
    assert done, f"send did not complete after the restarts {why(test)}"
    print(f"{test}: {restarts} restarts mid-upload, {len(batch.documents)} documents, {done[0]} send run(s)")
    assert_delivered_once(setup, batch, watcher, test)
    return batch


def test_openssh_restarted_mid_batch_then_the_batch_completes(tmp_path: Path, sshd: Sshd) -> None:
    with TcpProxy(sshd.port, plan=throttle(RESTART_RATE)) as proxy:  # slow enough to restart mid-upload
        setup = over_sshd(tmp_path, sshd, proxy.port, attempts=3)

        def restart() -> None:
            sshd.kill()
            sshd.start_again()

        restart_mid_batch(setup, restart, "openssh_restarted_mid_batch")


def test_the_embedded_server_killed_and_restarted_mid_batch_then_the_batch_completes(tmp_path: Path) -> None:
    proxies: list[TcpProxy] = []

    def through_proxy(server_port: int) -> int:
        proxies.append(TcpProxy(server_port, plan=throttle(RESTART_RATE)).start())
        return proxies[-1].port

    setup = over_embedded(tmp_path, through_proxy, attempts=3)
    servers: list[subprocess.Popen[str]] = []

    def serve() -> None:
        servers.append(
            subprocess.Popen(
                [sys.executable, "-m", "sftp_pipeline.cli", "-c", str(setup.utility.config_path), "serve"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for_port(setup.server_port, servers[-1])

    def restart() -> None:
        servers[-1].send_signal(signal.SIGKILL)  # no clean shutdown: open uploads are left as they are
        servers[-1].wait()
        serve()  # same configuration: same port, same host key

    try:
        serve()
        restart_mid_batch(setup, restart, "embedded_restarted_mid_batch")
    finally:
        for proc in servers:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(SERVER_START_TIMEOUT)
        for proxy in proxies:
            proxy.stop()
