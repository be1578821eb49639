"""Full disks, for real: a small tmpfs under our work area and under the embedded server's upload area.

Each case: the transfer fails cleanly with an error naming the file, the directory and "no space left" with the
fix; nothing half-written sits at a final name; the document is not lost (drop folder or work area, ledger state
retryable); once space is back (the tmpfs is remounted bigger, as an operator would grow or clean the disk) the
next run delivers it exactly once.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sftp_pipeline.flows.send import SendReport
from sftp_pipeline.server.embedded import EmbeddedServer
from sftp_pipeline.wiring import open_runtime
from tests.peers.embedded import EmbeddedPeer, paramiko_sftp
from tests.peers.parties import Party, make_party
from tests.peers.sshd import free_port
from tests.peers.tmpfs import MountTmpfs

KIB = 1024
# Sizes: a document that fits the small file system once (its claimed copy) but not twice (plus its sealed copy).
SMALL_FS = 1024 * KIB
DOCUMENT = 640 * KIB
ROOMY_FS = 8 * 1024 * KIB
PLACEHOLDER = "ssh-ed25519 AAAAPLACEHOLDER"


def visible(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if not n.startswith(".")) if directory.exists() else []


def everything(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def assert_clear(detail: str, name: str, directory: Path) -> None:
    assert name in detail, detail
    assert str(directory) in detail, detail
    assert "no space left" in detail.lower(), detail
    assert "free space" in detail.lower(), detail  # and what to do


# -- (a) our own work area is full ----------------------------------------------------------------------


def hosting_utility(tmp_path: Path, cert: bytes) -> Party:
    """We are the utility; the aggregator is hosted by us, so a send lands in a local outbox (LocalTransport)."""
    return make_party(
        tmp_path / "utility",
        "utility",
        partner_id="aggregator",
        partner_cert=cert,
        jobs={"invoices": {"document_type": "invoice"}},
    )


def test_a_full_work_area_while_sealing_keeps_the_document_and_sends_it_once_later(
    tmp_path: Path, partner_cert: bytes, small_tmpfs: MountTmpfs
) -> None:
    utility = hosting_utility(tmp_path, partner_cert)
    config = utility.config()
    work = config.state_dir / "work"
    fs = small_tmpfs(work, SMALL_FS)
    document = os.urandom(DOCUMENT)  # incompressible: the sealed copy is as big as the document
    utility.drop("invoice", "INV-FULL.xml", document)
    outbox = config.hosted_root("aggregator") / "outbox"

    report = utility.send("invoices")
    [outcome] = report.outcomes
    assert outcome.state == "pending" and not report.ok, outcome
    assert_clear(outcome.detail, "INV-FULL.xml", work)
    [row] = utility.transfers()
    assert row.state == "claimed" and row.last_error and "no space left" in row.last_error
    assert visible(outbox) == [] and everything(outbox.parent) == []  # nothing anywhere on the partner side
    # The claimed document is intact in the work area; no sealed file, whole or partial, beside it.
    assert everything(work) == [f"{row.id}/document"]
    assert (work / row.id / "document").read_bytes() == document

    fs.resize(ROOMY_FS)
    report = utility.send("invoices")
    assert report.ok and [o.state for o in report.outcomes] == ["uploaded"], report.outcomes
    [row] = utility.transfers()
    assert row.state == "uploaded" and row.remote_name
    assert visible(outbox) == [row.remote_name]
    assert Path(row.archive_path).read_bytes() == document

    report = utility.send("invoices")  # nothing left to do: sent once
    assert report.outcomes == [] and visible(outbox) == [row.remote_name]


def test_a_work_area_too_small_for_the_claim_leaves_the_document_in_the_drop_folder(
    tmp_path: Path, partner_cert: bytes, small_tmpfs: MountTmpfs
) -> None:
    utility = hosting_utility(tmp_path, partner_cert)
    config = utility.config()
    work = config.state_dir / "work"
    fs = small_tmpfs(work, SMALL_FS // 4)  # smaller than the document: copying it in (another disk) fails
    document = os.urandom(DOCUMENT)
    dropped = utility.drop("invoice", "INV-BIG.xml", document)

    report = utility.send("invoices")
    [outcome] = report.outcomes
    assert outcome.state == "pending" and outcome.transfer_id is None, outcome
    assert_clear(outcome.detail, "INV-BIG.xml", work)
    assert dropped.read_bytes() == document  # still in the drop folder, untouched
    assert everything(work) == []  # no half copy
    [closed] = utility.transfers()
    assert closed.state == "failed" and "no space left" in (closed.last_error or "")

    fs.resize(ROOMY_FS)
    report = utility.send("invoices")
    assert report.ok and [o.state for o in report.outcomes] == ["uploaded"], report.outcomes
    outbox = config.hosted_root("aggregator") / "outbox"
    sent = [t for t in utility.transfers() if t.state == "uploaded"]
    assert len(sent) == 1 and visible(outbox) == [sent[0].remote_name]
    assert not dropped.exists()


# -- (b) the partner's upload area (our embedded server) is full -----------------------------------------


def test_a_full_upload_area_on_the_embedded_server_fails_cleanly_and_delivers_once_later(
    tmp_path: Path, small_tmpfs: MountTmpfs
) -> None:
    port = free_port()
    utility = make_party(
        tmp_path / "utility",
        "utility",
        partner_id="aggregator",
        partner_cert=b"",
        server_port=port,
        login_keys=[PLACEHOLDER],
        jobs={},
    )
    host_key = " ".join(utility.keys.host_key_public.read_text().split()[:2])
    aggregator = make_party(
        tmp_path / "aggregator",
        "aggregator",
        partner_id="utility",
        partner_cert=utility.keys.openpgp_cert.read_bytes(),
        sftp={
            "host": "127.0.0.1",
            "port": port,
            "user": "aggregator",
            "attempts": 1,
            "host_keys": [f"[127.0.0.1]:{port} {host_key}"],
        },
        jobs={"invoices": {"document_type": "invoice"}},
    )
    (utility.directory / "keys" / "partners" / "aggregator.asc").write_bytes(aggregator.keys.openpgp_cert.read_bytes())
    utility.config_path.write_text(
        utility.config_path.read_text().replace(PLACEHOLDER, aggregator.keys.ssh_public.read_text().strip())
    )
    inbox = utility.config().hosted_root("aggregator") / "inbox"
    fs = small_tmpfs(inbox, SMALL_FS // 4)
    document = os.urandom(DOCUMENT)
    aggregator.drop("invoice", "INV-SRV.xml", document)
    uploads: list[Path] = []

    async def send_once() -> SendReport:
        async with EmbeddedServer(utility.config(), on_upload=lambda p, path, at: uploads.append(path)):
            config = aggregator.config()
            with open_runtime(config) as rt:
                return await rt.outbound().run(config.jobs_of("send"))

    report = asyncio.run(send_once())
    [outcome] = report.outcomes
    assert outcome.state == "pending", outcome
    [row] = aggregator.transfers()
    assert row.state == "sealed" and row.remote_name  # sealed, kept, retried next run
    assert row.remote_name in outcome.detail and "no space left" in outcome.detail.lower(), outcome.detail
    assert "free space" in outcome.detail.lower(), outcome.detail
    assert everything(inbox) == [] and uploads == []  # no final name, and the partial upload was removed
    assert Path(row.sealed_path).exists()

    fs.resize(ROOMY_FS)
    report = asyncio.run(send_once())
    assert report.ok and [o.state for o in report.outcomes] == ["uploaded"], report.outcomes
    [row] = aggregator.transfers()
    assert row.state == "uploaded" and everything(inbox) == [row.remote_name]
    assert [p.name for p in uploads] == [row.remote_name]
    assert (inbox / row.remote_name).stat().st_size == row.ciphertext_size


def test_a_client_writing_the_final_name_itself_gets_a_failure_and_nothing_is_published(
    embedded_server: EmbeddedPeer, small_tmpfs: MountTmpfs
) -> None:
    """An OpenSSH-style client (paramiko) writes straight to the final name: the server's own ``.name.part`` is
    discarded when the disk fills, and its CLOSE publishes nothing."""
    inbox = embedded_server.root() / "inbox"
    fs = small_tmpfs(inbox, SMALL_FS // 4)
    document = os.urandom(DOCUMENT)
    with paramiko_sftp(embedded_server) as sftp:
        with pytest.raises(OSError, match=r"(?i)no space left"), sftp.open("inbox/INV-PARAMIKO.xml.pgp", "wb") as fh:
            fh.set_pipelined(False)
            fh.write(document)
        assert everything(inbox) == [] and embedded_server.uploads == []
        fs.resize(ROOMY_FS)
        with sftp.open("inbox/INV-PARAMIKO.xml.pgp", "wb") as fh:  # the same name again, once there is room
            fh.write(document)
    [upload] = embedded_server.wait_uploads(1)
    assert everything(inbox) == ["INV-PARAMIKO.xml.pgp"] and upload.path.read_bytes() == document
