"""The sending side pulls the partner's signed receipts and settles its ledger (real sshd, real keys, GnuPG).

Transfers are produced by the real send path (drop → seal → upload); receipts are made by the real
``build_receipt`` + ``sign_receipt`` with the partner's key, or by the GnuPG recipe in docs/receipts.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pysequoia
import pytest

from sftp_pipeline.flows.receipt_pull import PullReport
from sftp_pipeline.keys import generate_keys
from sftp_pipeline.ledger import ReceiptRecord, Transfer
from sftp_pipeline.names import new_transfer_id, sealed_name
from sftp_pipeline.openpgp import SigningKey
from sftp_pipeline.proof.receipts import build_receipt, receipt_file_names, sign_receipt
from sftp_pipeline.wiring import open_ledger, open_runtime
from tests.integration.test_receipts_gnupg import _run_recipe
from tests.peers.gpg import GnuPG
from tests.peers.parties import Party, make_party
from tests.peers.sshd import Sshd, start_sshd

INVOICE = b'<?xml version="1.0"?>\n<Invoice id="INV-1"><Total currency="USD">71412.48</Total></Invoice>\n'
JOBS = {"invoices": {"document_type": "invoice"}}


def signer_for(directory: Path, party_id: str) -> tuple[SigningKey, bytes]:
    """A party's OpenPGP key made by our own key generator: (signing handle, public certificate)."""
    keys = generate_keys(directory, party_id=party_id, party_name=f"{party_id.title()} Co.", pq=False, passphrase=None)
    tsk = pysequoia.Tsk.from_bytes(keys.openpgp_key.read_bytes())
    return SigningKey(tsk.extract_certificate(), tsk.signer(None)), keys.openpgp_cert.read_bytes()


@dataclass
class World:
    """Our party (the aggregator) and where the partner (the utility) reads documents and leaves receipts."""

    party: Party
    inbox: Path  # where our sealed documents land at the partner
    receipts: Path  # where the partner leaves receipts for us
    signer: SigningKey | None

    def send(self, *names: str) -> list[Transfer]:
        for name in names:
            self.party.drop("invoice", name, INVOICE.replace(b"INV-1", name.encode()))
        report = self.party.send()
        assert report.ok and report.count("uploaded") == len(names), report.outcomes
        by_name = {t.source_name: t for t in self.party.transfers()}
        return [by_name[n] for n in names]

    def receipt(self, transfer: Transfer, signer: SigningKey | None = None, **overrides: Any) -> dict[str, bytes]:
        """What the partner issues for ``transfer`` after reading the file in its inbox; ``overrides`` lie."""
        received = self.inbox / str(transfer.remote_name)
        data = received.read_bytes()
        now = datetime.now(UTC)
        fields: dict[str, Any] = {
            "remote_name": received.name,
            "sender": "aggregator",
            "receiver": "utility",
            "ciphertext_sha256": hashlib.sha256(data).hexdigest(),
            "ciphertext_size": len(data),
            "received_at": now - timedelta(minutes=1),
            "validated_at": now - timedelta(seconds=30),
            "status": "ok",
            "plaintext_sha256": hashlib.sha256(INVOICE).hexdigest(),
            "sender_key_fingerprint": self.party.keys.openpgp_fingerprint,
        }
        fields.update(overrides)
        if fields["status"] != "ok":
            fields.update(plaintext_sha256=None, sender_key_fingerprint=None)
        signer = signer or self.signer
        assert signer is not None
        return sign_receipt(build_receipt(**fields), signer)

    def place(self, files: dict[str, bytes]) -> None:
        """Upload as the partner would: the .json first, the .sig (commit marker) last."""
        self.receipts.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (self.receipts / name).write_bytes(data)

    def pull(self) -> PullReport:
        return pull(self.party)

    def transfer(self, transfer_id: str) -> Transfer:
        return next(t for t in self.party.transfers() if t.id == transfer_id)

    def left(self) -> list[str]:
        return sorted(os.listdir(self.receipts)) if self.receipts.exists() else []

    def receipt_rows(self, transfer_id: str) -> list[ReceiptRecord]:
        with open_ledger(self.party.config()) as ledger:
            return ledger.receipts_for("utility", transfer_id)

    def quarantine(self) -> Path:
        return self.party.config().state_dir / "quarantine" / "receipts" / "utility"

    def reasons(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.quarantine().glob("*.reason.json"))]


def pull(party: Party) -> PullReport:
    config = party.config()

    async def run() -> PullReport:
        with open_runtime(config) as rt:
            puller = rt.receipt_puller()
            return await puller.run(config.jobs_of("receipts"))

    return asyncio.run(run())


def add_receipts_job(party: Party) -> None:
    (party.directory / "jobs" / "receipts.toml").write_text('kind = "receipts"\npartner = "utility"\n')


def sshd_world(tmp_path: Path, sshd: Sshd, partner_cert: bytes, signer: SigningKey | None) -> World:
    for folder in ("inbox", "receipts-out"):
        (sshd.root / folder).mkdir(exist_ok=True)
    sftp = {
        "host": sshd.host,
        "port": sshd.port,
        "user": sshd.user,
        "host_keys": [sshd.host_key_line],
        "connect_timeout": 10,
        "attempts": 2,
    }
    party = make_party(
        tmp_path / "aggregator", "aggregator", partner_id="utility", partner_cert=partner_cert, sftp=sftp, jobs=JOBS
    )
    sshd.authorize(party.keys.ssh_public.read_text())
    add_receipts_job(party)
    return World(party, sshd.root / "inbox", sshd.root / "receipts-out", signer)


def hosted_world(tmp_path: Path, partner_cert: bytes, signer: SigningKey | None) -> World:
    party = make_party(
        tmp_path / "aggregator", "aggregator", partner_id="utility", partner_cert=partner_cert, jobs=JOBS
    )
    add_receipts_job(party)
    root = party.config().hosted_root("utility")
    return World(party, root / "outbox", root / "receipts-in", signer)


@pytest.fixture(params=["sshd", "hosted"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    signer, cert = signer_for(tmp_path / "utility-keys", "utility")
    if request.param == "hosted":
        yield hosted_world(tmp_path, cert, signer)
        return
    sshd = start_sshd(tmp_path / "sshd")
    try:
        yield sshd_world(tmp_path, sshd, cert, signer)
    finally:
        sshd.stop()


# ------------------------------------------------------------------------------------------------ settle


def test_accepted_rejected_and_mismatching_receipts_settle_the_ledger(world: World) -> None:
    accepted, rejected, altered = world.send("INV-A.xml", "INV-B.xml", "INV-C.xml")
    ok_files = world.receipt(accepted)
    ok_receipt = json.loads(next(iter(ok_files.values())))
    world.place(ok_files)
    world.place(world.receipt(rejected, status="signature-invalid", detail="VALIDSIG missing"))
    world.place(world.receipt(altered, ciphertext_sha256="0" * 64))

    report = world.pull()

    assert report.ok, report.outcomes
    assert (report.count("receipted"), report.count("rejected"), report.count("mismatch")) == (1, 1, 1)
    assert world.left() == []  # all removed from the partner's directory after the ledger commit
    t = world.transfer(accepted.id)
    assert t.state == "receipted" and t.receipt_status == "ok" and t.receipted_at
    assert (t.partner_received_at, t.partner_validated_at) == (ok_receipt["received_at"], ok_receipt["validated_at"])
    r = world.transfer(rejected.id)
    assert r.state == "rejected" and r.receipt_status == "signature-invalid" and r.partner_received_at
    m = world.transfer(altered.id)
    assert m.state == "mismatch" and m.mismatch_at
    detail = next(o.detail for o in report.outcomes if o.transfer_id == altered.id)
    assert "ciphertext_sha256" in detail and "0" * 64 in detail and str(altered.ciphertext_sha256) in detail
    (row,) = world.receipt_rows(accepted.id)
    json_name, sig_name = receipt_file_names(accepted.id)
    assert row.verdict == "receipted" and row.receipt_json == ok_files[json_name]
    assert row.receipt_sig == ok_files[sig_name]
    stored = Path(row.stored_path or "")
    assert stored.read_bytes() == ok_files[json_name]
    assert stored.with_name(sig_name).read_bytes() == ok_files[sig_name]
    assert stored.parent == world.party.config().state_dir / "receipts" / "utility"


def test_a_forged_receipt_is_quarantined_and_a_genuine_one_still_settles(world: World) -> None:
    (transfer,) = world.send("INV-F.xml")
    genuine = world.receipt(transfer)
    json_name, sig_name = receipt_file_names(transfer.id)
    forged = dict(genuine)
    forged[json_name] = genuine[json_name].replace(b'"disposition":"accepted"', b'"disposition":"accepted" ')
    assert forged[json_name] != genuine[json_name]
    world.place(forged)

    report = world.pull()

    assert report.count("invalid") == 1 and report.ok
    assert world.left() == []
    after = world.transfer(transfer.id)
    assert after.state == "invalid-receipt" and after.receipt_status is None
    (note,) = world.reasons()
    assert (note["verdict"], note["reason"], note["file"]) == ("invalid", "bad-signature", json_name)
    kept = {name: (world.quarantine() / name).read_bytes() for name in note["kept_as"]}
    assert sorted(kept.values()) == sorted([forged[json_name], forged[sig_name]])  # evidence kept as received
    (row,) = world.receipt_rows(transfer.id)
    assert (row.verdict, row.reason, row.receipt_json) == ("invalid", "bad-signature", forged[json_name])

    world.place(genuine)
    second = world.pull()
    assert second.count("receipted") == 1
    assert world.transfer(transfer.id).state == "receipted"


def test_a_receipt_signed_by_another_key_is_invalid(world: World, tmp_path: Path) -> None:
    (transfer,) = world.send("INV-W.xml")
    intruder, _ = signer_for(tmp_path / "intruder-keys", "intruder")
    world.place(world.receipt(transfer, signer=intruder))

    report = world.pull()

    (outcome,) = report.outcomes
    assert outcome.verdict == "invalid" and outcome.detail.startswith("wrong-signer")
    assert world.transfer(transfer.id).state == "invalid-receipt"


def test_a_receipt_replayed_under_another_transfers_name_never_confirms_it(world: World) -> None:
    a, b = world.send("INV-A.xml", "INV-B.xml")
    files_a = world.receipt(a)
    (json_a, sig_a), (json_b, sig_b) = receipt_file_names(a.id), receipt_file_names(b.id)
    world.place({json_b: files_a[json_a], sig_b: files_a[sig_a]})

    report = world.pull()

    (outcome,) = report.outcomes
    assert (outcome.verdict, outcome.transfer_id) == ("invalid", b.id) and "malformed" in outcome.detail
    assert world.transfer(b.id).state == "invalid-receipt"
    assert world.transfer(a.id).state == "uploaded"  # nor does it settle A behind our back


def test_unknown_transfer_malformed_json_oversize_and_strays(world: World) -> None:
    (transfer,) = world.send("INV-U.xml")
    # A valid receipt for a document we never sent.
    ghost = sealed_name(new_transfer_id(datetime.now(UTC)), "invoice", "INV-GHOST.xml")
    assert world.signer is not None
    ghost_files = sign_receipt(
        build_receipt(
            remote_name=str(ghost),
            sender="aggregator",
            receiver="utility",
            ciphertext_sha256="a" * 64,
            ciphertext_size=10,
            received_at=datetime.now(UTC),
            validated_at=datetime.now(UTC),
            status="decryption-failed",
        ),
        world.signer,
    )
    world.place(ghost_files)
    # Properly signed, but not JSON.
    json_name, sig_name = receipt_file_names(transfer.id)
    garbage = b"{not json"
    signature = pysequoia.sign(world.signer.handle, garbage, mode=pysequoia.SignatureMode.DETACHED, armor=False)
    world.place({json_name: garbage, sig_name: signature})
    # Far too big to be a receipt: never downloaded.
    big_json, big_sig = receipt_file_names(new_transfer_id(datetime.now(UTC)))
    world.place({big_json: b" " * 70_000, big_sig: b"\x89"})
    # Things that are not receipt pairs: left alone.
    pending_json, _ = receipt_file_names(new_transfer_id(datetime.now(UTC)))
    _, orphan_sig = receipt_file_names(new_transfer_id(datetime.now(UTC)))
    world.place({pending_json: b"{}", orphan_sig: b"x", "README.txt": b"hello"})

    report = world.pull()

    verdicts = {o.name: o.verdict for o in report.outcomes}
    assert verdicts == {
        f"{str(ghost).split('.')[0]}.receipt.json": "unknown-transfer",
        json_name: "invalid",
        big_json: "invalid",
        pending_json: "waiting",
        orphan_sig: "stray",
        "README.txt": "stray",
    }
    assert report.ok
    assert world.left() == sorted([pending_json, orphan_sig, "README.txt"])
    assert world.transfer(transfer.id).state == "invalid-receipt"
    reasons = {n["file"]: (n["verdict"], n["reason"]) for n in world.reasons()}
    assert reasons == {
        next(iter(ghost_files)): ("unknown-transfer", "unknown-transfer"),
        json_name: ("invalid", "malformed"),
        big_json: ("invalid", "malformed"),
    }
    big_note = next(n for n in world.reasons() if n["file"] == big_json)
    assert big_note["kept_as"] == [] and "70000 bytes" in big_note["message"]


def test_the_same_receipt_twice_is_a_harmless_duplicate_and_a_different_one_a_conflict(world: World) -> None:
    (transfer,) = world.send("INV-D.xml")
    files = world.receipt(transfer)
    world.place(files)
    assert world.pull().count("receipted") == 1
    before = world.transfer(transfer.id)

    world.place(files)  # e.g. a crash before removal, or the partner uploading again
    again = world.pull()

    assert [o.verdict for o in again.outcomes] == ["duplicate"] and again.ok
    assert world.transfer(transfer.id) == before
    assert world.left() == []

    world.place(world.receipt(transfer, status="tampered"))
    third = world.pull()
    (outcome,) = third.outcomes
    assert outcome.verdict == "conflict" and "receipt_status" in outcome.detail
    assert world.transfer(transfer.id) == before
    assert [r.verdict for r in world.receipt_rows(transfer.id)] == ["receipted", "duplicate", "conflict"]
    assert [n["verdict"] for n in world.reasons()] == ["conflict"]


def test_a_json_without_its_sig_is_left_until_the_sig_arrives(world: World) -> None:
    (transfer,) = world.send("INV-S.xml")
    files = world.receipt(transfer)
    json_name, sig_name = receipt_file_names(transfer.id)
    world.place({json_name: files[json_name]})

    report = world.pull()

    assert [o.verdict for o in report.outcomes] == ["waiting"]
    assert world.left() == [json_name]
    assert world.transfer(transfer.id).state == "uploaded"
    world.place({sig_name: files[sig_name]})
    assert world.pull().count("receipted") == 1


def test_the_json_a_stopped_removal_left_behind_is_cleared_only_when_it_is_the_recorded_one(world: World) -> None:
    (transfer,) = world.send("INV-L.xml")
    files = world.receipt(transfer)
    json_name, _ = receipt_file_names(transfer.id)
    world.place(files)
    assert world.pull().count("receipted") == 1

    world.place({json_name: files[json_name] + b" "})  # not what we recorded: someone else's, left alone
    assert [o.verdict for o in world.pull().outcomes] == ["waiting"]
    assert world.left() == [json_name]

    world.place({json_name: files[json_name]})  # exactly the recorded bytes: our own half-removed pair
    report = world.pull()

    assert [o.verdict for o in report.outcomes] == ["leftover"] and report.ok
    assert world.left() == []
    assert world.transfer(transfer.id).state == "receipted"


# ------------------------------------------------------------------------------------ peers and faults


def test_a_gnupg_partner_issues_the_receipt_with_the_documented_recipe(tmp_path: Path, gpg: GnuPG) -> None:
    """The utility runs only GnuPG: it decrypts what we sent over sshd and answers with the docs' recipe."""
    fpr = gpg.generate("Metro Utility <settlement@utility.test>")
    sshd = start_sshd(tmp_path / "sshd")
    try:
        world = sshd_world(tmp_path, sshd, gpg.export(fpr), signer=None)
        gpg.import_key(world.party.keys.openpgp_cert)
        (transfer,) = world.send("INV-G.xml")
        received = world.inbox / str(transfer.remote_name)
        plaintext, status = gpg.decrypt(received)
        assert plaintext == INVOICE.replace(b"INV-1", b"INV-G.xml")
        (validsig,) = [line.split() for line in status if line.startswith("VALIDSIG")]
        plain_file = tmp_path / "document.plain"
        plain_file.write_bytes(plaintext)
        workdir = tmp_path / "recipe"
        workdir.mkdir()
        env = {
            "RECEIVED_FILE": str(received),
            "SENDER": "aggregator",
            "RECEIVER": "utility",
            "STATUS": "ok",
            "PLAINTEXT_FILE": str(plain_file),
            "SENDER_FPR": validsig[-1],
            "SIGNER": fpr,
        }
        world.place(_run_recipe(gpg, workdir, env))

        report = world.pull()
    finally:
        sshd.stop()

    assert [o.verdict for o in report.outcomes] == ["receipted"], report.outcomes
    settled = world.transfer(transfer.id)
    assert settled.state == "receipted" and settled.receipt_status == "ok" and settled.partner_validated_at


def test_an_unreachable_partner_leaves_every_receipt_in_place(tmp_path: Path) -> None:
    signer, cert = signer_for(tmp_path / "utility-keys", "utility")
    sshd = start_sshd(tmp_path / "sshd")
    try:
        world = sshd_world(tmp_path, sshd, cert, signer)
        (transfer,) = world.send("INV-X.xml")
        world.place(world.receipt(transfer))
    finally:
        sshd.stop()

    report = world.pull()

    assert not report.ok and [o.verdict for o in report.outcomes] == ["error"]
    assert "utility" in report.outcomes[0].detail
    assert len(world.left()) == 2
    assert world.transfer(transfer.id).state == "uploaded"
    assert world.receipt_rows(transfer.id) == []


def test_an_unusable_partner_certificate_judges_nothing(world: World) -> None:
    (transfer,) = world.send("INV-K.xml")
    world.place(world.receipt(transfer))
    world.party.config().partner("utility").openpgp_cert.write_text("not a certificate")

    report = world.pull()

    assert not report.ok and [o.verdict for o in report.outcomes] == ["error"]
    assert "OpenPGP certificate" in report.outcomes[0].detail
    assert len(world.left()) == 2 and world.transfer(transfer.id).state == "uploaded"


def test_a_receipt_for_an_upload_our_ledger_missed_waits_for_send_to_recover(tmp_path: Path) -> None:
    """send is killed after the upload, before its ledger commit: the receipt arrives for a 'sealed' transfer."""
    signer, cert = signer_for(tmp_path / "utility-keys", "utility")
    world = hosted_world(tmp_path, cert, signer)
    world.party.drop("invoice", "INV-P.xml", INVOICE)
    crashed = world.party.cli("send", env={"SFTP_PIPELINE_CRASH_AT": "after-upload"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (transfer,) = world.party.transfers()
    assert transfer.state == "sealed"
    world.place(world.receipt(transfer))

    report = world.pull()

    assert [o.verdict for o in report.outcomes] == ["premature"] and report.ok
    assert len(world.left()) == 2 and world.receipt_rows(transfer.id) == []
    assert world.party.send().ok  # recovery: the upload is found in place and recorded
    assert world.transfer(transfer.id).state == "uploaded"
    assert world.pull().count("receipted") == 1
    assert world.transfer(transfer.id).state == "receipted" and world.left() == []
