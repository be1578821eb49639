"""Every reconciliation class, each produced by the real send → collect → receipts path over OpenSSH,
with clocks the test controls for the service levels (nothing written to the ledger by hand)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sftp_pipeline.names import new_transfer_id
from sftp_pipeline.proof.receipts import build_receipt, receipt_file_names, sign_receipt
from sftp_pipeline.wiring import open_runtime
from tests.peers.parties import Party, make_party
from tests.peers.sshd import Sshd

PLACEHOLDER = "ssh-ed25519 AAAAPLACEHOLDER"
LATER = timedelta(days=2)


class Shifted:
    """A clock running ``offset`` ahead of real time."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def two_parties(tmp_path: Path, sshd: Sshd) -> tuple[Party, Party]:
    """The utility hosts the aggregator on OpenSSH (sshd serves the utility's folder for the aggregator)."""
    utility = make_party(
        tmp_path / "utility",
        "utility",
        partner_id="aggregator",
        partner_cert=b"",
        login_keys=[PLACEHOLDER],
        jobs={
            "from-aggregator": {"kind": "collect", "deliver_to": "../delivered"},
            "billing-out": {"document_type": "billing_payment"},
            "receipts-from-aggregator": {"kind": "receipts"},
        },
    )
    text = utility.config_path.read_text().replace(
        'receive = ["transaction_confirmation", "invoice", "billing_payment", "outage_info", "aggregation_data"]',
        'receive = ["transaction_confirmation", "invoice", "aggregation_data"]',
    )
    utility.config_path.write_text(text)
    hosted = utility.config().hosted_root("aggregator")
    hosted.parent.mkdir(parents=True)
    hosted.symlink_to(sshd.root)
    for folder in ("inbox", "outbox", "receipts-in", "receipts-out"):
        (sshd.root / folder).mkdir(exist_ok=True)
    aggregator = make_party(
        tmp_path / "aggregator",
        "aggregator",
        partner_id="utility",
        partner_cert=utility.keys.openpgp_cert.read_bytes(),
        sftp={
            "host": sshd.host,
            "port": sshd.port,
            "user": sshd.user,
            "host_keys": [sshd.host_key_line],
            "attempts": 1,
        },
        jobs={
            "invoices": {"document_type": "invoice"},
            "confirmations": {"document_type": "transaction_confirmation"},
            "aggregation": {"document_type": "aggregation_data"},
            "outages": {"document_type": "outage_info"},
            "from-utility": {"kind": "collect", "deliver_to": "../delivered"},
            "receipts-from-utility": {"kind": "receipts"},
        },
    )
    # Invoices get three days for a receipt; everything else the default day.
    aggregator.config_path.write_text(
        aggregator.config_path.read_text().replace(
            "[partners.utility.sftp]", "sla_hours_by_type = { invoice = 72 }\n\n[partners.utility.sftp]"
        )
    )
    (utility.directory / "keys" / "partners" / "aggregator.asc").write_bytes(aggregator.keys.openpgp_cert.read_bytes())
    utility.config_path.write_text(
        utility.config_path.read_text().replace(PLACEHOLDER, aggregator.keys.ssh_public.read_text().strip())
    )
    sshd.authorize(aggregator.keys.ssh_public.read_text())
    return aggregator, utility


def by_file(lines: tuple, direction: str) -> dict[str, str]:  # type: ignore[type-arg]
    return {
        line.file.split(".", 2)[-1] if direction == "received" else line.file: line.status
        for line in lines
        if line.direction == direction
    }


def test_every_class_from_real_exchanges(tmp_path: Path, sshd: Sshd) -> None:
    aggregator, utility = two_parties(tmp_path, sshd)
    inbox, receipts_out = sshd.root / "inbox", sshd.root / "receipts-out"

    # delivered, rejected (type not allowed), mismatch (damaged in transit), invalid-receipt (forged receipt)
    aggregator.drop("invoice", "INV-1.xml", b"<Invoice n='1'/>")
    aggregator.drop("outage_info", "OUT-1.xml", b"<Outage/>")
    aggregator.drop("aggregation_data", "AGG-1.csv", b"interval,kw\n" * 500)
    aggregator.drop("transaction_confirmation", "TC-2.xml", b"<TC n='2'/>")
    assert aggregator.send().count("uploaded") == 4
    damaged = next(inbox.glob("*.AGG-1.csv.pgp"))
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert sorted(o.result for o in utility.collect("from-aggregator").outcomes) == [
        "accepted",
        "accepted",
        "rejected",
        "rejected",
    ]
    tc2 = next(t for t in aggregator.transfers() if t.source_name == "TC-2.xml")
    forged = receipts_out / receipt_file_names(tc2.id)[0]
    forged.write_bytes(forged.read_bytes().replace(b'"ok"', b'"tampered"'))
    # an unsolicited receipt: validly signed by the utility, for a transfer we never sent
    with open_runtime(utility.config()) as rt:
        stray = build_receipt(
            remote_name=f"{new_transfer_id(datetime.now(UTC))}.invoice.GHOST.xml.pgp",
            sender="aggregator",
            receiver="utility",
            ciphertext_sha256="0" * 64,
            ciphertext_size=1,
            received_at=datetime.now(UTC),
            validated_at=datetime.now(UTC),
            status="malformed",
            detail="",
        )
        for name, blob in sign_receipt(stray, rt.keys.signer).items():
            (receipts_out / name).write_bytes(blob)
    aggregator.pull_receipts()
    # a duplicate: INV-1's receipt delivered again
    inv1 = next(t for t in aggregator.transfers() if t.source_name == "INV-1.xml")
    kept = aggregator.config().state_dir / "receipts" / "utility"
    for name in receipt_file_names(inv1.id):
        (receipts_out / name).write_bytes((kept / name).read_bytes())
    aggregator.pull_receipts()

    # pending (invoice: 72 h SLA) and overdue (confirmation: 24 h) — sent, never collected
    aggregator.drop("invoice", "INV-2.xml", b"<Invoice n='2'/>")
    aggregator.drop("transaction_confirmation", "TC-1.xml", b"<TC n='1'/>")
    assert aggregator.send().count("uploaded") == 2
    # failed: the partner's host key changes; the document is never uploaded
    config = aggregator.config_path.read_text()
    aggregator.config_path.write_text(
        config.replace(
            sshd.host_key_line,
            "[127.0.0.1]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGV4YW1wbGUtbm90LXRoZS1yZWFsLWtleS0wMDAwMDA",
        )
    )
    aggregator.drop("invoice", "INV-3.xml", b"<Invoice n='3'/>")
    assert aggregator.send().count("pending") == 1
    aggregator.config_path.write_text(config)

    # the other way: the utility sends a bill; the aggregator collects it two days later → delivered late
    utility.drop("billing_payment", "BILL-1.xml", b"<Bill/>")
    assert utility.send("billing-out").count("uploaded") == 1
    assert [o.result for o in aggregator.collect(clock=Shifted(LATER)).outcomes] == ["accepted"]
    assert utility.pull_receipts(clock=Shifted(LATER)).count("receipted") == 1

    now = datetime.now(UTC) + LATER + timedelta(hours=1)
    sent = aggregator.reconcile(now=now)
    assert by_file(sent.lines, "sent") == {
        "INV-1.xml": "delivered",
        "OUT-1.xml": "rejected",
        "AGG-1.csv": "mismatch",
        "TC-2.xml": "invalid-receipt",
        "INV-2.xml": "pending",
        "TC-1.xml": "overdue",
        "INV-3.xml": "failed",
    }
    lines = {line.file: line for line in sent.lines if line.direction == "sent"}
    assert lines["OUT-1.xml"].status_code == "unauthorised-document"
    assert "host key" in lines["INV-3.xml"].detail.lower()
    assert lines["INV-1.xml"].partner_received_at and lines["INV-1.xml"].latency is not None
    assert [n.verdict for n in sent.unsolicited] == ["unknown-transfer"]
    assert [n.verdict for n in sent.duplicates] == ["duplicate"]
    assert [line.status for line in sent.exceptions()][:2] == ["overdue", "rejected"]
    assert by_file(sent.lines, "received") == {"BILL-1.xml.pgp": "accepted"}
    assert any("overdue" in a.subject for a in sent.alerts) and not sent.ok

    received = utility.reconcile(now=now)
    assert by_file(received.lines, "sent") == {"BILL-1.xml": "delivered-late"}
    assert sorted(by_file(received.lines, "received").values()) == ["accepted", "accepted", "rejected", "rejected"]
    late = next(line for line in received.lines if line.direction == "sent")
    assert late.latency is not None and late.latency > timedelta(days=1)
    # The same alerts lead `status`, for the operator at the console (real time: rejected and mismatch now).
    shown = aggregator.cli("status")
    assert shown.returncode == 0
    assert "CRITICAL: 1 rejected document(s) for utility" in shown.stdout
    assert "CRITICAL: 1 mismatch document(s) for utility" in shown.stdout
