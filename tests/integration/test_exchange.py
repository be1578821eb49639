"""Validated delivery between two parties: send → collect (open, deliver, receipt) → receipts → settled.

Both parties run this software, each with its own configuration and keys; the transports are real
(the embedded asyncssh server, and OpenSSH sshd as the utility's server), and GnuPG and pgpy stand in for a
partner without this software.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import pgpy
import pytest

from sftp_pipeline.names import new_transfer_id
from sftp_pipeline.proof.receipts import receipt_file_names
from sftp_pipeline.server.embedded import EmbeddedServer
from sftp_pipeline.transport.local import LocalTransport
from sftp_pipeline.wiring import open_runtime
from tests.peers.gpg import GnuPG
from tests.peers.parties import Party, make_party
from tests.peers.sshd import Sshd, free_port

INVOICE = b'<?xml version="1.0"?>\n<Invoice id="INV-9"><Total currency="USD">1200.00</Total></Invoice>\n'
CONFIRMATION = b"<TransactionConfirmation id='TC-9'/>\n" * 40
PLACEHOLDER = "ssh-ed25519 AAAAPLACEHOLDER"


def utility_party(
    base: Path, *, server_port: int | None = None, jobs: dict[str, dict[str, object]] | None = None
) -> Party:
    """The utility (its partner's cert and login key filled in later); by default one collect job."""
    return make_party(
        base / "utility",
        "utility",
        partner_id="aggregator",
        partner_cert=b"",
        server_port=server_port,
        login_keys=[PLACEHOLDER],
        jobs=jobs or {"from-aggregator": {"kind": "collect", "deliver_to": "../delivered"}},
    )


def aggregator_party(base: Path, utility: Party, sftp: dict[str, object]) -> Party:
    aggregator = make_party(
        base / "aggregator",
        "aggregator",
        partner_id="utility",
        partner_cert=utility.keys.openpgp_cert.read_bytes(),
        sftp=sftp,
        jobs={
            "invoices": {"document_type": "invoice"},
            "confirmations": {"document_type": "transaction_confirmation"},
            "receipts-from-utility": {"kind": "receipts"},
        },
    )
    (utility.directory / "keys" / "partners" / "aggregator.asc").write_bytes(aggregator.keys.openpgp_cert.read_bytes())
    utility.config_path.write_text(
        utility.config_path.read_text().replace(PLACEHOLDER, aggregator.keys.ssh_public.read_text().strip())
    )
    return aggregator


def pair_over_sshd(tmp_path: Path, sshd: Sshd) -> tuple[Party, Party]:
    """(aggregator, utility): the utility hosts the aggregator on OpenSSH — sshd serves the utility's folder."""
    utility = utility_party(tmp_path)
    hosted = utility.config().hosted_root("aggregator")
    hosted.parent.mkdir(parents=True)
    hosted.symlink_to(sshd.root)
    for folder in ("inbox", "outbox", "receipts-in", "receipts-out"):
        (sshd.root / folder).mkdir(exist_ok=True)
    endpoint = {"host": sshd.host, "port": sshd.port, "user": sshd.user, "host_keys": [sshd.host_key_line]}
    aggregator = aggregator_party(tmp_path, utility, endpoint)
    sshd.authorize(aggregator.keys.ssh_public.read_text())
    return aggregator, utility


def assert_settled(aggregator: Party, utility: Party, documents: dict[str, bytes]) -> None:
    sent = {t.source_name: t for t in aggregator.transfers()}
    received = {r.transfer_id: r for r in utility.inbound()}
    for name, data in documents.items():
        t = sent[name]
        assert t.state == "receipted", (t.state, t.last_error)
        assert t.receipt_status == "ok" and t.partner_received_at and t.partner_validated_at
        r = received[t.id]
        assert r.state == "accepted" and r.ciphertext_sha256 == t.ciphertext_sha256
        assert (
            r.plaintext_sha256 == t.plaintext_sha256 and r.sender_key_fingerprint == aggregator.keys.openpgp_fingerprint
        )
        assert Path(r.delivered_path).read_bytes() == data
        assert r.receipt_sent_at and r.source_removed_at


def test_through_the_embedded_server_with_collection_on_upload(tmp_path: Path) -> None:
    port = free_port()
    utility = utility_party(tmp_path, server_port=port)
    host_key = " ".join(utility.keys.host_key_public.read_text().split()[:2])
    aggregator = aggregator_party(
        tmp_path,
        utility,
        {
            "host": "127.0.0.1",
            "port": port,
            "user": "aggregator",
            "host_keys": [f"[127.0.0.1]:{port} {host_key}"],
        },
    )
    # Receipts for what the aggregator sent are in receipts-out on the utility's server (the pickup folder).
    aggregator.drop("invoice", "INV-9.xml", INVOICE)
    aggregator.drop("transaction_confirmation", "TC-9.xml", CONFIRMATION)
    completed: list[datetime] = []

    async def scenario() -> None:
        config = utility.config()
        with open_runtime(config) as rt:
            collector = rt.collector()
            job = config.jobs["from-aggregator"]
            tasks = []

            def on_upload(partner_id: str, path: Path, at: datetime) -> None:
                completed.append(at)
                local = LocalTransport(config.hosted_root(partner_id), partner_id=partner_id)
                tasks.append(
                    asyncio.ensure_future(
                        collector.collect_one(job, config.partner(partner_id), local, path.name, received_at=at)
                    )
                )

            async with EmbeddedServer(config, on_upload=on_upload):
                agg = aggregator.config()
                with open_runtime(agg) as art:
                    report = await art.outbound().run(agg.jobs_of("send"))
                    assert report.ok and report.count("uploaded") == 2
                outcomes = await asyncio.gather(*tasks)
                assert sorted(o.result for o in outcomes) == ["accepted", "accepted"]

    asyncio.run(scenario())
    # The receipts wait in the utility's receipts-out; the aggregator pulls them over SFTP (server up again).

    async def pull() -> None:
        async with EmbeddedServer(utility.config()):
            report = await asyncio.to_thread(aggregator.pull_receipts)
            assert report.count("receipted") == 2, report

    asyncio.run(pull())
    assert_settled(aggregator, utility, {"INV-9.xml": INVOICE, "TC-9.xml": CONFIRMATION})
    received_at = sorted(r.received_at for r in utility.inbound())
    assert received_at == sorted(at.isoformat(timespec="milliseconds").replace("+00:00", "Z") for at in completed)


def test_through_openssh_with_batch_collect(tmp_path: Path, sshd: Sshd) -> None:
    utility = utility_party(tmp_path)
    hosted = utility.config().hosted_root("aggregator")
    hosted.parent.mkdir(parents=True)
    hosted.symlink_to(sshd.root)  # the utility's OpenSSH serves this folder to the aggregator
    for folder in ("inbox", "outbox", "receipts-in", "receipts-out"):
        (sshd.root / folder).mkdir(exist_ok=True)
    aggregator = aggregator_party(
        tmp_path, utility, {"host": sshd.host, "port": sshd.port, "user": sshd.user, "host_keys": [sshd.host_key_line]}
    )
    sshd.authorize(aggregator.keys.ssh_public.read_text())
    aggregator.drop("invoice", "INV-9.xml", INVOICE)

    assert aggregator.send().count("uploaded") == 1
    collected = utility.collect()
    assert [o.result for o in collected.outcomes] == ["accepted"]
    assert os.listdir(sshd.root / "inbox") == []  # taken
    (transfer,) = aggregator.transfers()
    assert sorted(os.listdir(sshd.root / "receipts-out")) == sorted(receipt_file_names(transfer.id))
    pulled = aggregator.pull_receipts()
    assert pulled.count("receipted") == 1
    assert_settled(aggregator, utility, {"INV-9.xml": INVOICE})
    assert os.listdir(sshd.root / "receipts-out") == []

    # Collected twice (a crash before removal): delivered once, answered with the same receipt.
    (inbound,) = utility.inbound()
    again = sshd.root / "inbox" / inbound.remote_name
    again.write_bytes(Path(inbound.archive_path).read_bytes())
    assert [o.result for o in utility.collect().outcomes] == ["duplicate"]
    assert len(list((tmp_path / "utility" / "delivered" / "invoice").iterdir())) == 1
    _, sig_name = receipt_file_names(transfer.id)
    assert (sshd.root / "receipts-out" / sig_name).read_bytes() == inbound.receipt_sig
    # Same transfer id, other bytes: quarantined, the first receipt stands.
    again.write_bytes(b"not the same document")
    assert [o.result for o in utility.collect().outcomes] == ["quarantined"]
    assert utility.inbound()[0].state == "accepted"


def test_rejections_are_answered_and_settle_the_sender(tmp_path: Path, sshd: Sshd) -> None:
    aggregator, utility = pair_over_sshd(tmp_path, sshd)
    aggregator.drop("invoice", "INV-9.xml", INVOICE)
    aggregator.send()
    (sealed,) = (sshd.root / "inbox").iterdir()
    data = bytearray(sealed.read_bytes())
    data[len(data) // 2] ^= 0x01  # damaged in transit
    sealed.write_bytes(bytes(data))

    collected = utility.collect()

    assert [o.result for o in collected.outcomes] == ["rejected"]
    (row,) = utility.inbound()
    assert row.state == "rejected" and row.status in {"tampered", "signature-invalid", "malformed"}
    assert row.delivered_path is None
    delivered = tmp_path / "utility" / "delivered"
    assert not delivered.exists() or not [p for p in delivered.rglob("*") if p.is_file()]  # no plaintext byte
    aggregator.pull_receipts()
    (transfer,) = aggregator.transfers()
    # The receipt reports the hash of what arrived, which is not what we sent: mismatch, never receipted.
    assert transfer.state in {"rejected", "mismatch"} and transfer.state != "receipted"


def test_gnupg_partner_sends_and_we_accept_and_pgpy_checks_our_receipt(tmp_path: Path, gpg: GnuPG) -> None:
    utility = utility_party(tmp_path)
    partner_fpr = gpg.generate("Aggregator Using GnuPG <ops@aggregator.test>")
    (utility.directory / "keys" / "partners" / "aggregator.asc").write_bytes(gpg.export(partner_fpr))
    gpg.import_key(utility.keys.openpgp_cert)
    inbox = utility.config().hosted_root("aggregator") / "inbox"
    inbox.mkdir(parents=True)
    source = tmp_path / "invoice.xml"
    source.write_bytes(INVOICE)
    transfer_id = new_transfer_id(datetime.now(UTC))
    name = f"{transfer_id}.invoice.invoice.xml.pgp"
    # GnuPG's defaults: compressed, signed, encrypted.
    gpg.sign_encrypt(source, inbox / name, utility.keys.openpgp_fingerprint.upper(), signer_fpr=partner_fpr)

    collected = utility.collect()

    assert [o.result for o in collected.outcomes] == ["accepted"], collected.outcomes
    (row,) = utility.inbound()
    assert Path(row.delivered_path).read_bytes() == INVOICE
    assert row.sender_key_fingerprint == partner_fpr.lower()
    receipts_dir = utility.config().hosted_root("aggregator") / "receipts-out"
    json_name, sig_name = receipt_file_names(transfer_id)
    cert, _ = pgpy.PGPKey.from_blob(utility.keys.openpgp_cert.read_text())
    signature = pgpy.PGPSignature.from_blob((receipts_dir / sig_name).read_bytes())
    body = (receipts_dir / json_name).read_bytes()
    assert cert.verify(body, signature)  # an independent OpenPGP implementation accepts our receipt
    assert not cert.verify(body.replace(b"accepted", b"rejected"), signature)


@pytest.mark.parametrize("doc_type", ["billing_payment"])
def test_a_document_type_the_partner_may_not_send_is_rejected(tmp_path: Path, gpg: GnuPG, doc_type: str) -> None:
    utility = utility_party(tmp_path)
    config_text = utility.config_path.read_text().replace(
        'receive = ["transaction_confirmation", "invoice", "billing_payment", "outage_info", "aggregation_data"]',
        'receive = ["invoice"]',
    )
    utility.config_path.write_text(config_text)
    partner_fpr = gpg.generate("Aggregator <ops@aggregator.test>")
    (utility.directory / "keys" / "partners" / "aggregator.asc").write_bytes(gpg.export(partner_fpr))
    gpg.import_key(utility.keys.openpgp_cert)
    inbox = utility.config().hosted_root("aggregator") / "inbox"
    inbox.mkdir(parents=True)
    source = tmp_path / "bill.xml"
    source.write_bytes(b"<Bill/>")
    name = f"{new_transfer_id(datetime.now(UTC))}.{doc_type}.bill.xml.pgp"
    gpg.sign_encrypt(source, inbox / name, utility.keys.openpgp_fingerprint.upper(), signer_fpr=partner_fpr)

    assert [o.result for o in utility.collect().outcomes] == ["rejected"]
    (row,) = utility.inbound()
    assert row.status == "unauthorised-document" and row.receipt_sig and row.delivered_path is None


def test_collect_receipts_and_status_from_the_cli(tmp_path: Path, sshd: Sshd) -> None:
    aggregator, utility = pair_over_sshd(tmp_path, sshd)
    aggregator.drop("invoice", "INV-9.xml", INVOICE)
    assert aggregator.cli("send").returncode == 0
    assert aggregator.cli("receipts").stdout.count("no receipts waiting") == 1  # not collected yet

    collected = utility.cli("collect")
    assert collected.returncode == 0 and "accepted" in collected.stdout, collected.stdout + collected.stderr
    pulled = aggregator.cli("receipts")
    assert pulled.returncode == 0 and "receipted" in pulled.stdout, pulled.stdout + pulled.stderr
    sent = aggregator.cli("status")
    assert "receipted" in sent.stdout and " ok " in sent.stdout
    received = utility.cli("status")
    assert "accepted" in received.stdout and "received" in received.stdout
    assert utility.cli("collect", "no-such-job").returncode == 2
