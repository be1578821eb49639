"""Evidence bundles from a real two-party exchange (OpenSSH sshd): build → verify, and every tamper caught."""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sftp_pipeline.proof.audit import verify_log
from sftp_pipeline.proof.evidence import build_evidence, verify_evidence
from sftp_pipeline.proof.receipts import receipt_file_names
from sftp_pipeline.wiring import open_ledger
from tests.integration.test_exchange import INVOICE, pair_over_sshd
from tests.peers.parties import Party
from tests.peers.sshd import Sshd


@pytest.fixture
def exchanged(tmp_path: Path, sshd: Sshd) -> tuple[Party, Party, str]:
    aggregator, utility = pair_over_sshd(tmp_path, sshd)
    aggregator.drop("invoice", "INV-9.xml", INVOICE)
    assert aggregator.send().count("uploaded") == 1
    assert [o.result for o in utility.collect().outcomes] == ["accepted"]
    assert aggregator.pull_receipts().count("receipted") == 1
    (transfer,) = aggregator.transfers()
    return aggregator, utility, transfer.id


def bundle(party: Party, transfer_id: str, out: Path) -> Path:
    config = party.config()
    with open_ledger(config) as ledger:
        return build_evidence(config, ledger, transfer_id, out)


def rewrite(src: Path, dst: Path, name: str, change: bytes, to: bytes) -> Path:
    """A copy of the bundle with one member's bytes changed (the manifest left as it was)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == name:
                assert change in data, (name, change)
                data = data.replace(change, to, 1)
            zout.writestr(info, data)
    return dst


def failed(path: Path) -> dict[str, str]:
    report = verify_evidence(path, now=datetime.now(UTC))
    assert not report.ok and report.summary.startswith("FAILED")
    return {f.check: f.detail for f in report.findings if not f.ok}


def test_outbound_bundle_verifies_and_says_what_it_proves(exchanged: tuple[Party, Party, str], tmp_path: Path) -> None:
    aggregator, _, tid = exchanged
    out = bundle(aggregator, tid, tmp_path / "ev.zip")
    names = zipfile.ZipFile(out).namelist()
    json_name, sig_name = receipt_file_names(tid)
    assert names[:3] == ["README.txt", "manifest.json", "transfer.json"]
    assert {f"receipt/{json_name}", f"receipt/{sig_name}", "certs/utility.asc", "certs/aggregator.asc"} <= set(names)
    assert any(n.startswith("sealed/") for n in names) and names[-2:] == ["audit/audit.jsonl", "audit/head.json"]
    assert b"PRIVATE" not in zipfile.ZipFile(out).read("certs/aggregator.asc")
    report = verify_evidence(out, now=datetime.now(UTC))
    assert report.ok, report.findings
    assert {f.check for f in report.findings} == {"manifest", "receipt", "match", "sealed", "audit"}
    fpr = aggregator.config().partners["utility"].openpgp_cert.read_bytes()
    assert fpr and "Partner utility (key " in report.summary and f"transfer {tid}" in report.summary
    assert "invoice INV-9.xml" in report.summary and "accepted it" in report.summary
    assert "does not prove" in report.summary
    audit = next(f.detail for f in report.findings if f.check == "audit" and "→" in f.detail)
    assert "claimed → sealed → uploaded" in audit and audit.endswith("receipted")
    # Deterministic: the same inputs give the same bytes.
    assert bundle(aggregator, tid, tmp_path / "again.zip").read_bytes() == out.read_bytes()
    with open_ledger(aggregator.config()) as ledger:
        assert verify_log(aggregator.config(), ledger).ok


def test_inbound_bundle_carries_our_receipt(exchanged: tuple[Party, Party, str], tmp_path: Path) -> None:
    _, utility, tid = exchanged
    out = bundle(utility, tid, tmp_path / "in.zip")
    report = verify_evidence(out, now=datetime.now(UTC))
    assert report.ok, report.findings
    assert report.summary.startswith("We, utility (key ") and "from aggregator" in report.summary


def test_a_receipt_checked_years_later_is_judged_at_its_own_time(
    exchanged: tuple[Party, Party, str], tmp_path: Path
) -> None:
    aggregator, _, tid = exchanged
    out = bundle(aggregator, tid, tmp_path / "ev.zip")
    later = verify_evidence(out, now=datetime.now(UTC) + timedelta(days=3650))  # the keys expired long ago
    assert later.ok, later.findings
    assert "valid at the receipt's validated_at" in next(f.detail for f in later.findings if f.check == "receipt")


def test_every_changed_byte_is_named(exchanged: tuple[Party, Party, str], tmp_path: Path) -> None:
    aggregator, _, tid = exchanged
    out = bundle(aggregator, tid, tmp_path / "ev.zip")
    json_name, _ = receipt_file_names(tid)
    receipt = zipfile.ZipFile(out).read(f"receipt/{json_name}")
    size = str(json.loads(receipt)["ciphertext_size"]).encode()

    bad = failed(
        rewrite(
            out, tmp_path / "r.zip", f"receipt/{json_name}", b'"ciphertext_size":' + size, b'"ciphertext_size":1' + size
        )
    )
    assert f"receipt/{json_name}" in bad["manifest"] and "does not verify" in bad["receipt"]

    bad = failed(rewrite(out, tmp_path / "t.zip", "transfer.json", b'"state": "receipted"', b'"state": "rejected"'))
    assert "transfer.json" in bad["manifest"] and "rejected" in bad["audit"]

    bad = failed(rewrite(out, tmp_path / "a.zip", "audit/audit.jsonl", b'"state":"sealed"', b'"state":"failed"'))
    assert "audit/audit.jsonl" in bad["manifest"] and "line 2" in bad["audit"]

    data = bytearray(out.read_bytes())
    start = data.index(b"audit/audit.jsonl") + len("audit/audit.jsonl") + 8  # inside the compressed member
    data[start] ^= 0x01
    damaged = tmp_path / "z.zip"
    damaged.write_bytes(bytes(data))
    bad = failed(damaged)
    assert "audit/audit.jsonl" in bad["archive"]
    damaged.write_bytes(out.read_bytes()[:-40])  # the central directory cut
    assert "not a readable zip" in failed(damaged)["archive"]
