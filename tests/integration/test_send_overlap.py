"""Send runs beside each other — two jobs for one partner (the daemon's invoice and aggregation jobs), or an
operator's ``send`` while the daemon runs the same job — never both take the same in-flight transfer: each
document sealed once, and the bytes on the partner's server are the bytes whose hash the ledger recorded."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from sftp_pipeline.locks import lock_path, try_lock
from sftp_pipeline.wiring import open_runtime
from tests.integration.test_send import aggregator_for, inbox
from tests.peers.gpg import GnuPG
from tests.peers.sshd import Sshd

DOCUMENTS = 120  # per job: enough that one run is still busy when the other starts


def _check_every_upload(party, sshd: Sshd) -> None:
    transfers = party.transfers()
    assert len(transfers) == 2 * DOCUMENTS
    assert sorted(inbox(sshd)) == sorted(t.remote_name for t in transfers)
    for t in transfers:
        assert t.state == "uploaded" and t.archived_at, (t.id, t.state, t.last_error)
        on_server = (sshd.root / "inbox" / t.remote_name).read_bytes()
        assert hashlib.sha256(on_server).hexdigest() == t.ciphertext_sha256, t.id
        assert Path(t.archive_sealed_path).read_bytes() == on_server


def _drop_both(party) -> None:
    for n in range(DOCUMENTS):
        party.drop("invoice", f"INV-{n:04d}.xml", os.urandom(2048))
        party.drop("billing_payment", f"PAY-{n:04d}.xml", os.urandom(2048))


def test_two_jobs_for_one_partner_run_side_by_side_on_their_own_documents(
    tmp_path: Path, sshd: Sshd, gpg: GnuPG
) -> None:
    party = aggregator_for(tmp_path, sshd, (gpg, gpg.generate("Metro Utility <settlement@utility.test>")))
    _drop_both(party)
    config = party.config()

    async def both():
        with open_runtime(config) as rt:

            def run(job: str):
                outbound = rt.outbound()
                return asyncio.create_task(outbound.run(config.jobs_of("send", [job])))

            first = run("invoice-out")
            while not rt.ledger.unfinished("utility"):  # the second starts while the first has documents in flight
                await asyncio.sleep(0.001)
            second = run("billing_payment-out")
            return await asyncio.gather(first, second)

    reports = asyncio.run(both())

    assert all(r.ok for r in reports), [o for r in reports for o in r.outcomes if o.state != "uploaded"]
    assert sum(r.count("uploaded") for r in reports) == 2 * DOCUMENTS
    _check_every_upload(party, sshd)


def test_a_cli_send_of_a_job_another_process_is_running_waits_its_turn(tmp_path: Path, sshd: Sshd, gpg: GnuPG) -> None:
    party = aggregator_for(tmp_path, sshd, (gpg, gpg.generate("Metro Utility <settlement@utility.test>")))
    _drop_both(party)
    # This test process plays the daemon in the middle of a run of the invoice job.
    held = try_lock(lock_path(party.config().state_dir, "send", "invoice-out"))
    assert not isinstance(held, str)
    cli = subprocess.Popen(
        [sys.executable, "-m", "sftp_pipeline.cli", "-c", str(party.config_path), "send"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        waiting = cli.stderr.readline()
        assert f"send invoice-out: another run (pid {os.getpid()}) is working on it" in waiting, waiting
        time.sleep(0.5)
        assert len(list(party.drop_dir("invoice").iterdir())) == DOCUMENTS  # it took nothing meanwhile
        assert party.transfers() == []
        held.close()
        out, err = cli.communicate(timeout=120)
    finally:
        held.close()
        cli.kill()
        cli.communicate()
    assert cli.returncode == 0, err
    assert f"{2 * DOCUMENTS} uploaded" in out
    _check_every_upload(party, sshd)


def test_a_transfer_whose_job_is_gone_is_finished_by_a_run_for_its_partner(
    tmp_path: Path, sshd: Sshd, gpg: GnuPG
) -> None:
    party = aggregator_for(tmp_path, sshd, (gpg, gpg.generate("Metro Utility <settlement@utility.test>")))
    party.drop("invoice", "INV-1.xml", b"<Invoice/>")
    crashed = party.cli("send", "invoice-out", env={"SFTP_PIPELINE_CRASH_AT": "after-seal"})
    assert crashed.returncode < 0  # killed after sealing, before the upload
    (party.directory / "jobs" / "invoice-out.toml").unlink()  # the operator retired the job meanwhile

    report = party.send("billing_payment-out")

    assert report.ok and report.count("uploaded") == 1
    (transfer,) = party.transfers()
    assert transfer.job == "invoice-out" and transfer.state == "uploaded" and transfer.archived_at
    assert inbox(sshd) == [transfer.remote_name]
