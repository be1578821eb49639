"""The benchmark scenarios of issue 6: each one measures our pipeline and, where there is one, the shell baseline.

Our side is always the real CLI in a subprocess (what an operator runs); the baseline is the ``gpg`` + ``sftp``
shell pipeline an operator would write instead. Runs alternate (ours first on even repeats, the baseline first
on odd ones) so that warm caches and CPU frequency favour neither, and the medians are reported.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.lab import Lab, Sample, add_sequoia_pair, measure, process_tree_cpu
from tests.peers.parties import make_party

MIB = 1024 * 1024
MB = 1_000_000  # throughput is reported in MB/s (10^6 bytes), as the issue asks
# Why 16 MiB: writing the random payload in big chunks keeps its preparation a few seconds at 1 GiB.
WRITE_CHUNK = 16 * MIB
SMALL_COUNT = 1000
# Why 128 MiB: the memory bound for sending 1 GiB; receiving should be held to the same.
V2_RSS_LIMIT_MIB = 128
SMALL_SIZE = 4096
RECONCILE_COUNT = 100_000
WATCH_COUNT = 50
# Why 5 ms: tight enough for a sub-second latency, loose enough not to steal a core from the daemon.
WATCH_POLL = 0.005
# Why 60 s: one small file through the daemon takes well under a second; a minute means it is stuck.
WATCH_DEADLINE = 60.0
# Why 0.2 s: a pause between drops, so each latency is measured on an idle daemon, one file at a time.
WATCH_GAP = 0.2
# Why 30 s: SIGTERM lets the daemon finish its current file; longer than this it is killed.
DAEMON_STOP_TIMEOUT = 30.0


@dataclass
class Result:
    scenario: str
    metric: str
    ours: float | None
    baseline: float | None
    higher_is_better: bool
    target: str
    met: bool | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """How many times better ours is (>1 = ours wins), whichever way the metric points."""
        if self.ours is None or self.baseline is None or not self.ours or not self.baseline:
            return None
        return self.ours / self.baseline if self.higher_is_better else self.baseline / self.ours


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _alternate(
    repeat: int, ours: Callable[[int], Sample], baseline: Callable[[int], Sample]
) -> tuple[list[Sample], list[Sample]]:
    mine: list[Sample] = []
    theirs: list[Sample] = []
    for run in range(repeat):
        if run % 2 == 0:
            mine.append(ours(run))
            theirs.append(baseline(run))
        else:
            theirs.append(baseline(run))
            mine.append(ours(run))
    return mine, theirs


def write_random(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(WRITE_CHUNK, left))
            fh.write(chunk)
            left -= len(chunk)
    return path


def _variant(payload: Path, dst: Path, run: int) -> Path:
    """A copy of ``payload`` whose first bytes say which run it is: new content, so never a duplicate."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with payload.open("rb") as src, dst.open("wb") as out:
        os.sendfile(out.fileno(), src.fileno(), 0, payload.stat().st_size)
    with dst.open("r+b") as fh:
        fh.write(f"run {run} {time.time_ns()}\n".encode())
    os.utime(dst, (0, 1_000_000_000))  # dropped long ago: past any stability window
    return dst


def _summary(samples: list[Sample], size: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seconds": [round(s.seconds, 3) for s in samples],
        "median_seconds": round(_median([s.seconds for s in samples]), 3),
        "peak_rss_mib": [round(s.peak_rss_kib / 1024, 1) for s in samples],
        "max_peak_rss_mib": round(max(s.peak_rss_kib for s in samples) / 1024, 1),
        "median_cpu_seconds": round(_median([s.cpu_seconds for s in samples]), 3),
    }
    if size is not None:
        out["median_mb_per_s"] = round(size / MB / out["median_seconds"], 1)
    return out


# ------------------------------------------------------------------------------------------------ large


def large(lab: Lab, size_mib: int, repeat: int) -> Result:
    size = size_mib * MIB
    payload = write_random(lab.base / "payload.bin", size)
    inbox = lab.sshd.root / "inbox"
    scratch = lab.base / "baseline-large"

    def ours(run: int) -> Sample:
        _variant(payload, lab.party.drop_dir("aggregation_data") / f"AGG-{run}.csv", run)
        sample = measure(lab.cli(lab.party, "send", "large"), env=lab.env(), log=lab.log)
        (uploaded,) = os.listdir(inbox)
        assert (inbox / uploaded).stat().st_size > size, f"{uploaded} is smaller than its plaintext"
        lab.clear_remote()
        lab.clear_state(lab.party)
        return sample

    def baseline(run: int) -> Sample:
        src = _variant(payload, scratch / f"AGG-{run}.csv", run)
        sealed = scratch / f"AGG-{run}.csv.gpg"
        sample = measure(lab.gpg_seal(src, sealed), log=lab.log)
        sample += measure(lab.sftp_batch([f"put {sealed} inbox/{sealed.name}"], "large"), log=lab.log)
        assert (inbox / sealed.name).stat().st_size == sealed.stat().st_size
        for path in (src, sealed):
            path.unlink()
        lab.clear_remote()
        return sample

    mine, theirs = _alternate(repeat, ours, baseline)
    ours_mbps = size / MB / _median([s.seconds for s in mine])
    base_mbps = size / MB / _median([s.seconds for s in theirs])
    rss = max(s.peak_rss_kib for s in mine) / 1024
    ratio = ours_mbps / base_mbps
    return Result(
        "large: seal + upload",
        "MB/s",
        round(ours_mbps, 1),
        round(base_mbps, 1),
        True,
        "≥ 1.5× and peak RSS ≤ 128 MiB",
        ratio >= 1.5 and rss <= 128,
        {"size_mib": size_mib, "ours": _summary(mine, size), "baseline": _summary(theirs, size)},
    )


# ---------------------------------------------------------------------------------------------- receive


def _gpg_partner_seal(lab: Lab, src: Path, dst: Path) -> None:
    """The partner's message to us, with GnuPG's defaults (compression on): what a GnuPG partner sends."""
    gpg = lab.partner_gpg
    cmd = [
        gpg.executable, "--homedir", str(gpg.home), "--batch", "--yes", "--trust-model", "always",
        "-r", lab.our_fpr, "-u", lab.partner_fpr, "--sign", "--encrypt", "-o", str(dst), str(src),
    ]  # fmt: skip
    measure(cmd, log=lab.log)


def receive(lab: Lab, size_mib: int, repeat: int) -> Result:
    size = size_mib * MIB
    payload = lab.base / "payload.bin"
    if not payload.exists() or payload.stat().st_size != size:
        write_random(payload, size)
    sealed = lab.base / "to-us.gpg"
    _gpg_partner_seal(lab, payload, sealed)
    scratch = lab.base / "baseline-receive"
    scratch.mkdir(exist_ok=True)
    delivered = lab.party.directory / "received" / "aggregation_data"

    def ours(run: int) -> Sample:
        lab.place_for_collect(sealed)
        sample = measure(lab.cli(lab.party, "collect", "collect"), env=lab.env(), log=lab.log)
        (out,) = os.listdir(delivered)
        assert (delivered / out).stat().st_size == size, f"{out} was delivered with the wrong size"
        lab.clear_remote()
        lab.clear_state(lab.party)
        return sample

    def baseline(run: int) -> Sample:
        name = lab.place_for_collect(sealed)
        local, plain = scratch / name, scratch / f"{name}.out"
        sample = measure(lab.sftp_batch([f"get outbox/{name} {local}"], "receive"), log=lab.log)
        sample += measure(lab.gpg_open(local, plain), log=lab.log)
        assert plain.stat().st_size == size
        for path in (local, plain):
            path.unlink()
        lab.clear_remote()
        return sample

    mine, theirs = _alternate(repeat, ours, baseline)
    ours_mbps = size / MB / _median([s.seconds for s in mine])
    base_mbps = size / MB / _median([s.seconds for s in theirs])
    return Result(
        "receive: download + decrypt + verify",
        "MB/s",
        round(ours_mbps, 1),
        round(base_mbps, 1),
        True,
        "≥ 1.0×",
        ours_mbps / base_mbps >= 1.0,
        {
            "size_mib": size_mib,
            "message": "GnuPG 2.2 default (SEIPDv1, compressed), partner → us",
            "ours": _summary(mine, size),
            "baseline": _summary(theirs, size),
        },
    )


def receive_v2_memory(lab: Lab, size_mib: int) -> Result:
    """Peak RSS of our collect for a SEIPDv2 message sealed by a second party of ours (Sequoia to Sequoia)."""
    size = size_mib * MIB
    sender, receiver = add_sequoia_pair(lab)
    dropped = write_random(sender.drop_dir("aggregation_data") / "AGG-v2.csv", size)
    os.utime(dropped, (0, 1_000_000_000))  # dropped long ago: past any stability window
    sent = measure(lab.cli(sender, "send", "large"), env=lab.env(), log=lab.log)
    got = measure(lab.cli(receiver, "collect", "collect"), env=lab.env(), log=lab.log)
    delivered = receiver.directory / "received" / "aggregation_data"
    (out,) = os.listdir(delivered)
    assert (delivered / out).stat().st_size == size
    rows = _inbound_engine(receiver)
    lab.clear_remote()
    rss_mib = got.peak_rss_kib / 1024
    return Result(
        "receive SEIPDv2 (Sequoia→Sequoia): peak RSS",
        "MiB",
        round(rss_mib, 1),
        None,
        False,
        "≤ 128 MiB (flat, like send)",
        rss_mib <= V2_RSS_LIMIT_MIB,
        {
            "size_mib": size_mib,
            "collect_seconds": round(got.seconds, 3),
            "collect_peak_rss_mib": round(rss_mib, 1),
            "rss_over_file_size": round(rss_mib / size_mib, 3),
            "sender_send_seconds": round(sent.seconds, 3),
            "sender_send_peak_rss_mib": round(sent.peak_rss_kib / 1024, 1),
            "engine": rows,
        },
    )


def _inbound_engine(party: Any) -> list[str]:
    from sftp_pipeline.wiring import open_ledger

    with open_ledger(party.config()) as ledger:
        return [f"{r.state} {r.engine}" for r in ledger.inbound_recent()]


# ------------------------------------------------------------------------------------------------ small


def small(lab: Lab, repeat: int, count: int = SMALL_COUNT) -> Result:
    inbox = lab.sshd.root / "inbox"

    def docs(folder: Path, run: int) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for n in range(count):
            path = folder / f"INV-{run}-{n:04d}.xml"
            path.write_bytes(os.urandom(SMALL_SIZE))
            os.utime(path, (0, 1_000_000_000))
            paths.append(path)
        return paths

    server_cpu: list[float] = []

    def ours(run: int) -> Sample:
        docs(lab.party.drop_dir("invoice"), run)
        before = process_tree_cpu(lab.sshd_pid)
        sample = measure(lab.cli(lab.party, "send", "small"), env=lab.env(), log=lab.log)
        server_cpu.append(process_tree_cpu(lab.sshd_pid) - before)
        assert len(os.listdir(inbox)) == count, f"{len(os.listdir(inbox))} of {count} documents arrived"
        lab.clear_remote()
        lab.clear_state(lab.party)
        return sample

    def baseline(run: int) -> Sample:
        folder = lab.base / "baseline-small" / str(run)
        sealed = lab.base / "baseline-small" / f"{run}-sealed"
        sealed.mkdir(parents=True, exist_ok=True)
        docs(folder, run)
        gpg = shlex.join(lab.gpg_seal("SRC", "DST")).replace("DST", '"$out"').replace("SRC", '"$f"')
        out = f'{shlex.quote(str(sealed))}/"${{f##*/}}.gpg"'
        loop = f"for f in {shlex.quote(str(folder))}/*; do out={out}; {gpg} || exit 1; done"
        sample = measure(["sh", "-c", loop], log=lab.log)
        sample += measure(lab.sftp_batch([f"put {sealed}/* inbox/"], "small"), log=lab.log)
        assert len(os.listdir(inbox)) == count
        lab.clear_remote()
        return sample

    mine, theirs = _alternate(repeat, ours, baseline)
    ours_rate = count / _median([s.seconds for s in mine])
    base_rate = count / _median([s.seconds for s in theirs])
    floor = small_floor(lab, repeat, count)
    floor["budget_seconds"] = round(_median([s.seconds for s in theirs]) / 4, 3)
    # All the CPU one of our runs needs, ours and the server's: on 2 cores no schedule finishes it faster than
    # half of it, however the work is split.
    floor["cpu_ours_plus_sshd_seconds"] = round(_median([s.cpu_seconds for s in mine]) + _median(server_cpu), 3)
    return Result(
        f"small: {count} × 4 KiB end to end",
        "docs/s",
        round(ours_rate, 1),
        round(base_rate, 1),
        True,
        "≥ 4×",
        ours_rate / base_rate >= 4,
        {"count": count, "ours": _summary(mine), "baseline": _summary(theirs), "floor": floor},
    )


def small_floor(lab: Lab, repeat: int, count: int = SMALL_COUNT) -> dict[str, float]:
    """What our stack pays for ``count`` small documents before any pipeline work of its own: start-up (a
    ``send`` with nothing to send: the interpreter, the imports, the keys), one signed and encrypted in-memory
    seal per document (Sequoia), and one four-request SFTP upload per document (asyncssh, 32 in flight, as in
    ``send``). Claiming, the ledger, fsyncs and archiving come on top; the 4× target leaves them what is left.
    """
    from sftp_pipeline.keys import load_partner_cert
    from sftp_pipeline.openpgp import check_seal_keys, seal
    from sftp_pipeline.wiring import open_runtime

    startup = _median([measure(lab.cli(lab.party, "send", "small"), env=lab.env(), log=lab.log).seconds
                       for _ in range(repeat)])  # fmt: skip
    folder = lab.base / "floor"
    folder.mkdir(exist_ok=True)
    documents = [(folder / f"INV-{n:04d}.xml", os.urandom(SMALL_SIZE)) for n in range(count)]
    config = lab.party.config()
    partner = config.partner("utility")
    with open_runtime(config) as rt:
        recipients = [load_partner_cert(partner), rt.keys.cert]
        now = rt.clock()
        checked = check_seal_keys(rt.keys.signer, recipients, now=now)
        seal_cpu = time.process_time()
        for path, data in documents:
            seal(path, path.with_suffix(".pgp"), signer=rt.keys.signer, recipients=recipients, now=now,
                 checked=checked, fsync=False, plaintext=data)  # fmt: skip
        seal_cpu = time.process_time() - seal_cpu

        async def upload() -> float:
            transport = await rt.connect(partner)
            slots = asyncio.Semaphore(32)

            async def one(path: Path) -> None:
                async with slots:
                    await transport.put_atomic(path.with_suffix(".pgp"), "inbox", f"floor-{path.stem}.pgp")

            try:
                started = time.process_time()
                await asyncio.gather(*(one(path) for path, _ in documents))
                return time.process_time() - started
            finally:
                await transport.close()

        sftp_cpu = asyncio.run(upload())
    assert len(os.listdir(lab.sshd.root / "inbox")) == count
    lab.clear_remote()
    shutil.rmtree(folder)
    return {
        "startup_seconds": round(startup, 3),
        "seal_ms_per_document": round(seal_cpu / count * 1000, 3),
        "sftp_ms_per_document": round(sftp_cpu / count * 1000, 3),
        "total_seconds": round(startup + seal_cpu + sftp_cpu, 3),
    }


# -------------------------------------------------------------------------------------------- reconcile


def _fill_ledger(path: Path, count: int, now: datetime) -> None:
    """``count`` outbound transfers shaped like real ones (most receipted, some pending, some rejected),
    each with its receipt record, in one transaction. A benchmark shortcut: the ledger API would take minutes."""
    from sftp_pipeline.clock import rfc3339 as timestamp

    types = ["invoice", "transaction_confirmation", "aggregation_data", "billing_payment", "outage_info"]
    transfers, receipts = [], []
    start = now - timedelta(days=30)
    for n in range(count):
        at = start + timedelta(seconds=n * 20)
        tid = f"01J{n:023d}"[:26]
        doc_type = types[n % len(types)]
        sha = hashlib.sha256(str(n).encode()).hexdigest()
        state = "uploaded" if n % 50 == 0 else "rejected" if n % 97 == 0 else "receipted"
        received = timestamp(at + timedelta(seconds=3)) if state != "uploaded" else None
        settled = timestamp(at + timedelta(minutes=5)) if state != "uploaded" else None
        transfers.append((
            tid, "utility", f"{doc_type}-out", doc_type, f"DOC-{n:06d}.xml", f"/drop/DOC-{n:06d}.xml",
            f"/work/{tid}", f"/work/{tid}.pgp", f"{tid}.{doc_type}.DOC-{n:06d}.xml.pgp", state, sha, 4096,
            hashlib.sha256(sha.encode()).hexdigest(), 4700, 1, "curve25519-sha256", "chacha20-poly1305@openssh.com",
            0, "AES-256, SHA-512, Ed25519", 0, f"/archive/{tid}", f"/archive/{tid}.pgp",
            timestamp(at), timestamp(at), timestamp(at), timestamp(at + timedelta(seconds=1)), timestamp(at),
            "accepted" if state == "receipted" else "decryption-failed" if state == "rejected" else None,
            received, received, settled if state == "receipted" else None, settled if state == "rejected" else None,
            settled or timestamp(at),
        ))  # fmt: skip
        if state != "uploaded":
            receipts.append(("utility", f"{tid}.receipt.json", tid, state, None, "accepted", received, received,
                             f"/receipts/{tid}.json", settled))  # fmt: skip
    with sqlite3.connect(path) as db:
        db.executemany(
            """INSERT INTO transfers (id, direction, partner, job, document_type, source_name, source_path,
                   work_path, sealed_path, remote_name, state, plaintext_sha256, plaintext_size, ciphertext_sha256,
                   ciphertext_size, attempts, ssh_kex, ssh_cipher, transport_pq, pgp_algorithms, content_pq,
                   archive_path, archive_sealed_path, created_at, claimed_at, sealed_at, uploaded_at, archived_at,
                   receipt_status,
                   partner_received_at, partner_validated_at, receipted_at, rejected_at, updated_at)
               VALUES (?, 'out', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                   ?, ?, ?)""",
            transfers,
        )
        db.executemany(
            """INSERT INTO receipts (partner, name, transfer_id, verdict, reason, status, received_at, validated_at,
                   stored_path, fetched_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            receipts,
        )


def reconcile(lab: Lab, repeat: int, count: int = RECONCILE_COUNT) -> Result:
    from zoneinfo import ZoneInfo

    from sftp_pipeline.proof.reconcile import from_ledger
    from sftp_pipeline.reporting.render import render_csv, render_html
    from sftp_pipeline.wiring import open_ledger

    # A party of its own, so that the other scenarios' transfers do not join the count.
    party = make_party(
        lab.base / "reconcile",
        "aggregator",
        partner_id="utility",
        partner_cert=lab.partner_gpg.export(lab.partner_fpr),
        jobs={},
    )
    config = party.config()
    now = datetime.now(UTC)
    with open_ledger(config) as ledger:
        path = ledger.path
    _fill_ledger(path, count, now)
    tz = ZoneInfo(config.report.timezone)
    timings: dict[str, list[float]] = {"from_ledger": [], "render_html": [], "render_csv": []}
    # CPU seconds of this process per phase: on a machine shared with other work, wall time also counts the
    # time others held the cores; CPU time says what the code itself cost.
    cpu: dict[str, list[float]] = {k: [] for k in timings}
    sizes: dict[str, int] = {}
    for _ in range(repeat):
        with open_ledger(config) as ledger:
            t0, c0 = time.perf_counter(), time.process_time()
            rec = from_ledger(config, ledger, now=now, since=None)
            t1, c1 = time.perf_counter(), time.process_time()
            html = render_html(rec, tz=tz)
            t2, c2 = time.perf_counter(), time.process_time()
            csv = render_csv(rec, tz=tz)
            t3, c3 = time.perf_counter(), time.process_time()
        for name, wall, used in (("from_ledger", t1 - t0, c1 - c0), ("render_html", t2 - t1, c2 - c1),
                                 ("render_csv", t3 - t2, c3 - c2)):  # fmt: skip
            timings[name].append(wall)
            cpu[name].append(used)
        sizes = {"lines": len(rec.lines), "html_bytes": len(html.encode()), "csv_bytes": len(csv)}
    medians = {k: round(_median(v), 3) for k, v in timings.items()}
    total = sum(medians.values())
    return Result(
        f"reconcile: {count:,} transfers with receipts",
        "s",
        round(total, 3),
        None,
        False,
        "< 5 s",
        total < 5,
        {
            "median_seconds": medians,
            "runs": {k: [round(x, 3) for x in v] for k, v in timings.items()},
            "median_cpu_seconds": {k: round(_median(v), 3) for k, v in cpu.items()},
            **sizes,
        },
    )


# ------------------------------------------------------------------------------------------------ watch


def watch(lab: Lab, stable_seconds: float, count: int = WATCH_COUNT) -> Result:
    inbox = lab.sshd.root / "inbox"
    drop = lab.party.drop_dir("transaction_confirmation")
    drop.mkdir(parents=True, exist_ok=True)
    log = lab.base / "daemon.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            lab.cli(lab.party, "--log-level", "info", "run"), stdout=sink, stderr=sink, env=lab.env()
        )
    latencies: list[float] = []
    try:
        for n in range(-1, count):  # n = -1 is the warm-up: the daemon starts and connects, not measured
            name = f"TC-{n + 1:03d}.xml"
            (drop / name).write_bytes(os.urandom(SMALL_SIZE))
            t0 = time.perf_counter()
            suffix = f".{name}.pgp"
            deadline = t0 + WATCH_DEADLINE
            while not any(e.endswith(suffix) and not e.startswith(".") for e in os.listdir(inbox)):
                if time.perf_counter() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{name} did not arrive within {WATCH_DEADLINE}s; see {log}")
                time.sleep(WATCH_POLL)
            if n >= 0:
                latencies.append(time.perf_counter() - t0)
            time.sleep(WATCH_GAP)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=DAEMON_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        lab.clear_remote()
    ordered = sorted(latencies)
    p50 = _median(ordered)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    beyond = p95 - stable_seconds
    return Result(
        "watch: drop → uploaded, p95 beyond stability window",
        "s",
        round(beyond, 3),
        None,
        False,
        "p95 < 1 s beyond the window",
        beyond < 1.0,
        {
            "count": count,
            "stable_seconds": stable_seconds,
            "p50_seconds": round(p50, 3),
            "p95_seconds": round(p95, 3),
            "p50_beyond_window": round(p50 - stable_seconds, 3),
            "p95_beyond_window": round(beyond, 3),
            "max_seconds": round(ordered[-1], 3),
            "latencies": [round(x, 3) for x in latencies],
        },
    )
