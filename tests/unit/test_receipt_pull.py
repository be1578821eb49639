"""The pure core of receipt pulling: which names form receipts, and what a verified receipt means for a transfer."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import UTC, datetime

import pytest

from sftp_pipeline.config import Partner, RemoteDirs, SftpEndpoint
from sftp_pipeline.flows.receipt_pull import classify_listing, judge
from sftp_pipeline.folders import receipts_folder
from sftp_pipeline.ledger import Transfer
from sftp_pipeline.names import sealed_name
from sftp_pipeline.proof.receipts import MAX_RECEIPT_BYTES, Receipt, build_receipt
from sftp_pipeline.transport import RemoteEntry

TID = "01JDQ6Z6M2W4K8T9V0B3C5D7EF"
OTHER = "01JDQ6Z6M2W4K8T9V0B3C5D7EG"
REMOTE = str(sealed_name(TID, "invoice", "INV-1.xml"))
SHA = "ab" * 32
RECEIVED = datetime(2026, 11, 27, 3, 6, 52, 123000, tzinfo=UTC)
VALIDATED = datetime(2026, 11, 27, 3, 6, 53, 456000, tzinfo=UTC)


def entry(name: str, size: int = 100) -> RemoteEntry:
    return RemoteEntry(name=name, size=size, mtime=0.0)


def transfer(state: str = "uploaded", **values: object) -> Transfer:
    base: dict[str, object] = {f.name: None for f in fields(Transfer)}
    base.update(
        id=TID,
        direction="out",
        partner="utility",
        document_type="invoice",
        source_name="INV-1.xml",
        remote_name=REMOTE,
        state=state,
        ciphertext_sha256=SHA,
        ciphertext_size=1234,
        attempts=1,
        created_at="2026-11-27T03:00:00.000Z",
        updated_at="2026-11-27T03:00:00.000Z",
    )
    base.update(values)
    return Transfer(**base)  # type: ignore[arg-type]


def receipt(status: str = "ok", **overrides: object) -> Receipt:
    fields_: dict[str, object] = {
        "remote_name": REMOTE,
        "sender": "aggregator",
        "receiver": "utility",
        "ciphertext_sha256": SHA,
        "ciphertext_size": 1234,
        "received_at": RECEIVED,
        "validated_at": VALIDATED,
        "status": status,
        "plaintext_sha256": "cd" * 32 if status == "ok" else None,
        "sender_key_fingerprint": "ef" * 20 if status == "ok" else None,
    }
    fields_.update(overrides)
    return build_receipt(**fields_)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ listing


def test_listing_pairs_a_json_with_its_sig_and_leaves_the_rest() -> None:
    listing = classify_listing(
        [
            entry(f"{TID}.receipt.json"),
            entry(f"{TID}.receipt.json.sig"),
            entry(f"{OTHER}.receipt.json"),  # no .sig yet
            entry("01JDQ6Z6M2W4K8T9V0B3C5D7EH.receipt.json.sig"),  # orphan .sig
            entry("notes.txt"),
            entry(f"{TID.lower()}.receipt.json"),  # not a ULID (lower case)
            entry(f"{TID}.receipt.json.asc"),
        ]
    )
    assert [p.transfer_id for p in listing.pairs] == [TID]
    assert listing.pairs[0].names == (f"{TID}.receipt.json", f"{TID}.receipt.json.sig")
    assert [e.name for e in listing.waiting] == [f"{OTHER}.receipt.json"]
    assert sorted(e.name for e in listing.strays) == sorted(
        [
            "01JDQ6Z6M2W4K8T9V0B3C5D7EH.receipt.json.sig",
            "notes.txt",
            f"{TID.lower()}.receipt.json",
            f"{TID}.receipt.json.asc",
        ]
    )


@pytest.mark.parametrize(
    ("json_size", "sig_size", "oversize"),
    [
        (100, 100, False),
        (MAX_RECEIPT_BYTES, 5000, False),
        (MAX_RECEIPT_BYTES + 1, 100, True),
        (100, MAX_RECEIPT_BYTES + 1, True),
    ],
)
def test_oversize_is_judged_by_the_listed_size(json_size: int, sig_size: int, oversize: bool) -> None:
    listing = classify_listing([entry(f"{TID}.receipt.json", json_size), entry(f"{TID}.receipt.json.sig", sig_size)])
    assert listing.pairs[0].oversize is oversize


def test_receipts_are_read_from_the_partners_server_or_from_the_root_we_host() -> None:
    hosted = Partner(id="utility", name="U", openpgp_cert="u.asc")  # type: ignore[arg-type]
    assert receipts_folder(hosted) == "receipts-in"
    endpoint = SftpEndpoint(host="h", user="u", host_keys=["SHA256:x"], dirs=RemoteDirs(receipts_out="acks"))
    assert receipts_folder(replace_partner(hosted, endpoint)) == "acks"


def replace_partner(partner: Partner, endpoint: SftpEndpoint) -> Partner:
    return partner.model_copy(update={"sftp": endpoint})


# -------------------------------------------------------------------------------------------- judge


def test_an_accepted_matching_receipt_settles_as_receipted_with_the_partners_times() -> None:
    got = judge(receipt(), transfer())
    assert (got.verdict, got.new_state) == ("receipted", "receipted")
    assert got.values == {
        "receipt_status": "ok",
        "partner_received_at": "2026-11-27T03:06:52.123Z",
        "partner_validated_at": "2026-11-27T03:06:53.456Z",
    }


def test_a_rejected_matching_receipt_carries_the_partners_status() -> None:
    got = judge(receipt("unknown-signer", detail="not your key"), transfer())
    assert (got.verdict, got.new_state, got.values["receipt_status"]) == ("rejected", "rejected", "unknown-signer")
    assert "unknown-signer" in got.detail and "not your key" in got.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ciphertext_sha256", "00" * 32),
        ("ciphertext_size", 1233),
        ("remote_name", str(sealed_name(TID, "invoice", "INV-2.xml"))),
    ],
)
def test_any_difference_from_what_we_sent_is_a_mismatch_naming_both_values(field: str, value: object) -> None:
    got = judge(receipt(**{field: value}), transfer())  # type: ignore[arg-type]
    assert (got.verdict, got.new_state) == ("mismatch", "mismatch")
    assert field in got.detail and repr(value) in got.detail and repr(getattr(transfer(), field)) in got.detail


def test_a_rejected_receipt_that_also_mismatches_is_a_mismatch() -> None:
    assert judge(receipt("tampered", ciphertext_size=1), transfer()).verdict == "mismatch"


def test_a_valid_receipt_settles_a_transfer_marked_invalid_receipt() -> None:
    assert judge(receipt(), transfer("invalid-receipt")).new_state == "receipted"


def test_unknown_and_never_uploaded_transfers() -> None:
    assert judge(receipt(), None).verdict == "unknown-transfer"
    dup = judge(receipt(), transfer("duplicate", duplicate_of=OTHER))
    assert (dup.verdict, dup.new_state) == ("unknown-transfer", None) and OTHER in dup.detail


@pytest.mark.parametrize("state", ["claimed", "sealed", "failed"])
def test_a_receipt_ahead_of_our_ledger_is_premature(state: str) -> None:
    got = judge(receipt(), transfer(state))
    assert (got.verdict, got.new_state) == ("premature", None) and state in got.detail


def test_a_replay_on_a_settled_transfer_is_a_duplicate_and_anything_else_a_conflict() -> None:
    first = judge(receipt(), transfer())
    settled = replace(transfer(), state="receipted", **first.values)
    assert judge(receipt(), settled).verdict == "duplicate"
    assert judge(receipt(detail="re-issued"), settled).verdict == "duplicate"  # same facts, other words
    later = judge(receipt(validated_at=datetime(2026, 11, 27, 4, tzinfo=UTC)), settled)
    assert (later.verdict, later.new_state) == ("conflict", None) and "partner_validated_at" in later.detail
    rejected = judge(receipt("tampered"), settled)
    assert rejected.verdict == "conflict" and "rejected" in rejected.detail


def test_a_mismatch_replayed_is_a_duplicate() -> None:
    bad = receipt(ciphertext_size=1)
    first = judge(bad, transfer())
    settled = replace(transfer(), state="mismatch", **first.values)
    assert judge(bad, settled).verdict == "duplicate"
    assert judge(receipt(), settled).verdict == "conflict"
