"""Every kind of bad inbound document, made by GnuPG or by mutating bytes, through the real collect path:
rejected with its status code, not one plaintext byte left, and a signed *rejected* receipt issued."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pysequoia
import pytest

from sftp_pipeline.names import new_transfer_id
from sftp_pipeline.proof.receipts import receipt_file_names, verify_receipt
from tests.peers.gpg import GnuPG
from tests.peers.parties import Party, make_party

PAYLOAD = b"<BillingPayment account='A-17' amount='1200.00'/>\n"


@pytest.fixture
def setup(tmp_path: Path, gpg: GnuPG) -> tuple[Party, GnuPG, str]:
    """The utility runs this software and hosts the aggregator, who uses only GnuPG."""
    utility = make_party(
        tmp_path / "utility",
        "utility",
        partner_id="aggregator",
        partner_cert=b"",
        jobs={"from-aggregator": {"kind": "collect", "deliver_to": "../delivered", "max_document_bytes": 4096}},
    )
    partner = gpg.generate("Aggregator <ops@aggregator.test>")
    (utility.directory / "keys" / "partners" / "aggregator.asc").write_bytes(gpg.export(partner))
    gpg.import_key(utility.keys.openpgp_cert)
    (utility.config().hosted_root("aggregator") / "inbox").mkdir(parents=True)
    return utility, gpg, partner


def _good(gpg: GnuPG, src: Path, dst: Path, to: str, signer: str) -> None:
    gpg.sign_encrypt(src, dst, to, signer_fpr=signer)


def make_unsigned(gpg: GnuPG, src: Path, dst: Path, to: str, signer: str) -> None:
    gpg.run("--yes", "--trust-model", "always", "--output", str(dst), "--recipient", to, "--encrypt", str(src))


def make_other_signer(gpg: GnuPG, src: Path, dst: Path, to: str, signer: str) -> None:
    other = gpg.generate("Someone Else <else@example.test>")
    gpg.sign_encrypt(src, dst, to, signer_fpr=other)


def make_not_to_us(gpg: GnuPG, src: Path, dst: Path, to: str, signer: str) -> None:
    stranger = gpg.generate("Stranger <s@example.test>")
    gpg.sign_encrypt(src, dst, stranger, signer_fpr=signer)


def make_signed_only(gpg: GnuPG, src: Path, dst: Path, to: str, signer: str) -> None:
    gpg.run("--yes", "--output", str(dst), "--local-user", signer, "--sign", str(src))


def make_truncated(gpg: GnuPG, src: Path, dst: Path, to: str, signer: str) -> None:
    _good(gpg, src, dst, to, signer)
    dst.write_bytes(dst.read_bytes()[:-20])


def make_flipped(gpg: GnuPG, src: Path, dst: Path, to: str, signer: str) -> None:
    _good(gpg, src, dst, to, signer)
    data = bytearray(dst.read_bytes())
    data[-30] ^= 0x40
    dst.write_bytes(bytes(data))


def make_trailing(gpg: GnuPG, src: Path, dst: Path, to: str, signer: str) -> None:
    _good(gpg, src, dst, to, signer)
    dst.write_bytes(dst.read_bytes() + b"garbage after the message")


def make_garbage(gpg: GnuPG, src: Path, dst: Path, to: str, signer: str) -> None:
    # Deterministic: random bytes sometimes form a valid packet header and are then (rightly) "not-encrypted".
    dst.write_bytes(b"\x00" + bytes(range(256)) * 3)


def make_empty(gpg: GnuPG, src: Path, dst: Path, to: str, signer: str) -> None:
    dst.write_bytes(b"")


def make_bomb(gpg: GnuPG, src: Path, dst: Path, to: str, signer: str) -> None:
    zeros = src.with_name("zeros.csv")
    zeros.write_bytes(b"\0" * 2_000_000)  # far over 8 × max_document_bytes, compresses to a few KB
    gpg.sign_encrypt(zeros, dst, to, signer_fpr=signer, extra=["--compress-level", "9"])


def make_no_mdc(gpg: GnuPG, src: Path, dst: Path, to: str, signer: str) -> None:
    gpg.sign_encrypt(src, dst, to, signer_fpr=signer, extra=["--rfc2440", "--cipher-algo", "AES256"])


CASES: list[tuple[str, Callable[..., None], set[str]]] = [
    ("unsigned", make_unsigned, {"unsigned"}),
    ("other-signer", make_other_signer, {"unknown-signer"}),
    ("not-to-us", make_not_to_us, {"not-encrypted-to-us"}),
    ("signed-only", make_signed_only, {"not-encrypted"}),
    ("truncated", make_truncated, {"tampered"}),
    ("flipped", make_flipped, {"tampered", "signature-invalid"}),
    ("trailing", make_trailing, {"malformed"}),
    ("garbage", make_garbage, {"malformed"}),
    ("empty", make_empty, {"malformed"}),
    ("bomb", make_bomb, {"oversize"}),
    ("no-integrity", make_no_mdc, {"integrity-missing"}),
]


@pytest.mark.parametrize(("label", "make", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_document_is_rejected_with_its_code_and_a_receipt(
    setup: tuple[Party, GnuPG, str], tmp_path: Path, label: str, make: Callable[..., None], expected: set[str]
) -> None:
    utility, gpg, partner = setup
    source = tmp_path / "bill.xml"
    source.write_bytes(PAYLOAD)
    transfer_id = new_transfer_id(datetime.now(UTC))
    name = f"{transfer_id}.billing_payment.bill.xml.pgp"
    inbox = utility.config().hosted_root("aggregator") / "inbox"
    make(gpg, source, inbox / name, utility.keys.openpgp_fingerprint.upper(), partner)

    report = utility.collect()

    assert [o.result for o in report.outcomes] == ["rejected"], report.outcomes
    (row,) = utility.inbound()
    assert row.state == "rejected" and row.status in expected, (row.status, row.detail)
    assert row.delivered_path is None and row.plaintext_sha256 is None
    delivered = tmp_path / "utility" / "delivered"
    assert not delivered.exists() or not [p for p in delivered.rglob("*") if p.is_file()]  # no plaintext byte
    assert os.listdir(inbox) == []  # taken from the partner's folder (the ciphertext is archived as evidence)
    assert Path(row.archive_path).exists()
    outbox = utility.config().hosted_root("aggregator") / "receipts-out"
    files = {n: (outbox / n).read_bytes() for n in receipt_file_names(transfer_id)}
    receipt = verify_receipt(
        files,
        issuer_cert=pysequoia.Cert.from_file(str(utility.keys.openpgp_cert)),
        now=datetime.now(UTC),
        expected_sender="aggregator",
        expected_receiver="utility",
    )
    assert receipt.disposition == "rejected" and receipt.status == row.status
    assert receipt.ciphertext_sha256 == row.ciphertext_sha256 and receipt.plaintext_sha256 is None


def test_an_expired_partner_key_is_refused_at_receipt_time(tmp_path: Path, gpg: GnuPG) -> None:
    utility = make_party(
        tmp_path / "utility",
        "utility",
        partner_id="aggregator",
        partner_cert=b"",
        jobs={"from-aggregator": {"kind": "collect", "deliver_to": "../delivered"}},
    )
    # A key made "in 2020" that expired a day later signs today's document.
    old = gpg.generate("Old Aggregator <old@aggregator.test>", expire="1d", faked_time="20200101T000000")
    (utility.directory / "keys" / "partners" / "aggregator.asc").write_bytes(gpg.export(old))
    gpg.import_key(utility.keys.openpgp_cert)
    inbox = utility.config().hosted_root("aggregator") / "inbox"
    inbox.mkdir(parents=True)
    source = tmp_path / "bill.xml"
    source.write_bytes(PAYLOAD)
    name = f"{new_transfer_id(datetime.now(UTC))}.billing_payment.bill.xml.pgp"
    gpg.sign_encrypt(
        source,
        inbox / name,
        utility.keys.openpgp_fingerprint.upper(),
        signer_fpr=old,
        extra=["--faked-system-time", "20200101T010000", "--ignore-time-conflict", "--ignore-valid-from"],
    )

    assert [o.result for o in utility.collect().outcomes] == ["rejected"]
    (row,) = utility.inbound()
    assert row.status == "signer-expired" and row.delivered_path is None
