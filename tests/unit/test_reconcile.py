from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sftp_pipeline.ledger import Transfer
from sftp_pipeline.proof.reconcile import KeyFact, ReceiptNote, classify_sent, key_alerts, reconcile

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SLA = timedelta(hours=24)


def transfer(**kw: object) -> Transfer:
    base = {name: None for name in Transfer.__dataclass_fields__}
    base.update(
        id="01JDQ6Z6M2W4K8T9V0B3C5D7EF",
        direction="out",
        partner="utility",
        job="j",
        document_type="invoice",
        source_name="INV-1.xml",
        state="uploaded",
        attempts=1,
        created_at="2026-11-27T00:00:00.000Z",
        updated_at="2026-11-27T00:00:01.000Z",
        uploaded_at="2026-11-27T00:00:01.000Z",
    )
    base.update(kw)
    return Transfer(**base)  # type: ignore[arg-type]


def test_each_outbound_class() -> None:
    assert classify_sent(transfer(), now=NOW, sla=SLA)[0] == "pending"
    assert classify_sent(transfer(), now=NOW + timedelta(days=2), sla=SLA)[0] == "overdue"
    on_time = transfer(state="receipted", partner_received_at="2026-11-27T00:05:00.000Z")
    assert classify_sent(on_time, now=NOW, sla=SLA)[0] == "delivered"
    late = transfer(state="receipted", partner_received_at="2026-11-28T06:00:00.000Z")
    status, detail = classify_sent(late, now=NOW, sla=SLA)
    assert status == "delivered-late" and "SLA" in detail
    for state in ("rejected", "mismatch", "invalid-receipt", "failed"):
        assert classify_sent(transfer(state=state), now=NOW, sla=SLA)[0] == state
    stuck = transfer(state="sealed", uploaded_at=None, last_error="host key changed")
    assert classify_sent(stuck, now=NOW, sla=SLA) == ("failed", "host key changed")
    assert classify_sent(transfer(state="claimed", uploaded_at=None), now=NOW, sla=SLA)[0] == "pending"


def test_period_carries_open_items_forward_and_drops_old_settled_ones() -> None:
    old_open = transfer(
        id="01A",
        created_at="2026-11-01T00:00:00.000Z",
        updated_at="2026-11-01T00:00:00.000Z",
        uploaded_at="2026-11-01T00:00:00.000Z",
    )
    old_done = replace(old_open, id="01B", state="receipted", partner_received_at="2026-11-01T00:01:00.000Z")
    new_done = transfer(id="01C", state="receipted", partner_received_at="2026-11-27T00:01:00.000Z")
    dup = transfer(id="01D", state="duplicate")
    rec = reconcile(
        [old_open, old_done, new_done, dup],
        [],
        [],
        party_id="aggregator",
        party_name="A",
        now=NOW,
        since=NOW - timedelta(days=1),
        sla=lambda p, t: SLA,
    )
    assert {x.transfer_id: x.status for x in rec.lines} == {"01A": "overdue", "01C": "delivered"}
    assert [x.transfer_id for x in rec.exceptions()] == ["01A"]
    assert rec.counts() == {"utility": {"sent:overdue": 1, "sent:delivered": 1}}
    assert rec.alerts[0].severity == "critical" and "overdue" in rec.alerts[0].subject
    assert not rec.ok


def test_unsolicited_and_duplicate_receipts_are_listed() -> None:
    notes = [
        ReceiptNote("utility", "X.receipt.json", "01X", "unknown-transfer", None, NOW),
        ReceiptNote("utility", "Y.receipt.json", "01Y", "duplicate", None, NOW),
        ReceiptNote("utility", "Z.receipt.json", "01Z", "receipted", None, NOW),
    ]
    rec = reconcile(
        [], [], notes, party_id="a", party_name="A", now=NOW + timedelta(seconds=1), since=None, sla=lambda p, t: SLA
    )
    assert [n.name for n in rec.unsolicited] == ["X.receipt.json"]
    assert [n.name for n in rec.duplicates] == ["Y.receipt.json"]


def test_key_expiry_alerts() -> None:
    keys = [
        KeyFact("us", "OpenPGP key", "AA", NOW + timedelta(days=10)),
        KeyFact("utility", "OpenPGP certificate", "BB", NOW - timedelta(days=1)),
        KeyFact("utility", "SSH host key", "CC", None),
    ]
    alerts = key_alerts(keys, now=NOW, window=timedelta(days=30))
    assert [(a.severity, a.subject) for a in alerts] == [
        ("warning", "our OpenPGP key expires in 10 days"),
        ("critical", "partner utility's OpenPGP certificate has expired"),
    ]
