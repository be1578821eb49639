"""End to end: drop folder → seal → upload into a real OpenSSH sshd → GnuPG on the partner's side opens it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.peers.gpg import GnuPG
from tests.peers.parties import Party, make_party
from tests.peers.sshd import Sshd

INVOICE = b'<?xml version="1.0"?>\n<Invoice id="INV-1"><Total currency="USD">71412.48</Total></Invoice>\n'


@pytest.fixture
def partner_gpg(gpg: GnuPG) -> tuple[GnuPG, str]:
    """The utility, running only GnuPG: its own key, made by gpg."""
    return gpg, gpg.generate("Metro Utility <settlement@utility.test>")


def aggregator_for(tmp_path: Path, sshd: Sshd, partner: tuple[GnuPG, str], **kw: object) -> Party:
    gpg, fpr = partner
    (sshd.root / "inbox").mkdir(exist_ok=True)
    sftp = {
        "host": sshd.host,
        "port": sshd.port,
        "user": sshd.user,
        "host_keys": [sshd.host_key_line],
        "connect_timeout": 10,
        "attempts": 2,
    }
    sftp.update(kw.pop("sftp_overrides", {}))  # type: ignore[call-overload]
    party = make_party(
        tmp_path / "aggregator", "aggregator", partner_id="utility", partner_cert=gpg.export(fpr), sftp=sftp, **kw
    )  # type: ignore[arg-type]
    # Our SSH identity is the one sshd authorises.
    sshd.authorize(party.keys.ssh_public.read_text())
    gpg.import_key(party.keys.openpgp_cert)
    return party


def inbox(sshd: Sshd) -> list[str]:
    return sorted(os.listdir(sshd.root / "inbox"))


def test_sealed_documents_reach_openssh_and_gnupg_opens_them(tmp_path: Path, sshd: Sshd, partner_gpg) -> None:
    gpg, _ = partner_gpg
    party = aggregator_for(tmp_path, sshd, partner_gpg)
    big = os.urandom(3 * 1024 * 1024)
    party.drop("invoice", "INV-1.xml", INVOICE)
    party.drop("aggregation_data", "AGG-2026-11-26.csv", big)

    report = party.send()

    assert report.ok and report.count("uploaded") == 2
    transfers = {t.source_name: t for t in party.transfers()}
    assert set(inbox(sshd)) == {t.remote_name for t in transfers.values()}
    our_fpr = party.keys.openpgp_fingerprint.upper()
    for name, original in (("INV-1.xml", INVOICE), ("AGG-2026-11-26.csv", big)):
        t = transfers[name]
        assert t.state == "uploaded" and t.archived_at
        assert t.remote_name.startswith(f"{t.id}.") and t.remote_name.endswith(".pgp")
        plaintext, status = gpg.decrypt(sshd.root / "inbox" / t.remote_name)
        assert plaintext == original
        kinds = [line.split()[0] for line in status]
        assert "DECRYPTION_OKAY" in kinds and "GOODMDC" in kinds
        validsig = [line.split() for line in status if line.startswith("VALIDSIG")]
        assert len(validsig) == 1 and validsig[0][-1] == our_fpr  # primary-key fingerprint of the signer
        assert not {"BADSIG", "ERRSIG", "EXPKEYSIG", "REVKEYSIG"} & set(kinds)
        assert t.ssh_kex and t.ssh_cipher and t.pgp_algorithms and "AES-256" in t.pgp_algorithms
        assert t.ciphertext_size == (sshd.root / "inbox" / t.remote_name).stat().st_size
        assert Path(t.archive_path).read_bytes() == original
        assert Path(t.archive_sealed_path).read_bytes() == (sshd.root / "inbox" / t.remote_name).read_bytes()
    assert not list(party.drop_dir("invoice").iterdir())  # taken out of the drop folder


def test_bad_input_is_quarantined_and_the_rest_still_goes(tmp_path: Path, sshd: Sshd, partner_gpg) -> None:
    jobs = {
        "invoices": {"document_type": "invoice", "max_document_bytes": 1000},
        "outages": {"document_type": "outage_info"},  # the partner may not receive this from us
    }
    party = aggregator_for(tmp_path, sshd, partner_gpg, jobs=jobs, send_types=["invoice"])
    good = party.drop("invoice", "good.xml", INVOICE)
    party.drop("invoice", "empty.xml", b"")
    party.drop("invoice", "huge.xml", b"x" * 1001)
    (party.drop_dir("invoice") / "link.xml").symlink_to(good)
    os.mkfifo(party.drop_dir("invoice") / "pipe.xml")
    (party.drop_dir("invoice") / "subdir").mkdir()
    party.drop("invoice", "still-writing.xml.part", b"partial")
    party.drop("outage_info", "outage.xml", b"<Outage/>")

    report = party.send()

    assert report.count("uploaded") == 1 and report.count("quarantined") == 6
    assert len(inbox(sshd)) == 1
    reasons = {}
    for note in (party.config().state_dir / "quarantine").rglob("*.reason.json"):
        data = json.loads(note.read_text())
        reasons[data["file"]] = data["reason"]
        quarantined = note.with_name(note.name.removesuffix(".reason.json"))
        assert quarantined.exists() or quarantined.is_symlink()  # kept, never deleted
        assert data["message"].startswith(data["file"])
    assert reasons == {
        "empty.xml": "empty",
        "huge.xml": "oversize",
        "link.xml": "symlink",
        "pipe.xml": "not-regular",
        "subdir": "not-regular",
        "outage.xml": "unauthorised-document",
    }
    assert sorted(os.listdir(party.drop_dir("invoice"))) == ["still-writing.xml.part"]  # temporary: untouched


def test_the_same_file_dropped_twice_is_sent_once(tmp_path: Path, sshd: Sshd, partner_gpg) -> None:
    party = aggregator_for(tmp_path, sshd, partner_gpg)
    party.drop("invoice", "INV-1.xml", INVOICE)
    assert party.send().count("uploaded") == 1
    party.drop("invoice", "INV-1.xml", INVOICE)
    second = party.send()
    assert second.count("duplicate") == 1 and second.ok
    assert len(inbox(sshd)) == 1
    states = sorted(t.state for t in party.transfers())
    assert states == ["duplicate", "uploaded"]
    dup = next(t for t in party.transfers() if t.state == "duplicate")
    assert Path(dup.archive_path).read_bytes() == INVOICE  # kept, not deleted
    # Same name, new content: a corrected invoice is a new document.
    party.drop("invoice", "INV-1.xml", INVOICE.replace(b"71412.48", b"71412.49"))
    assert party.send().count("uploaded") == 1 and len(inbox(sshd)) == 2


@pytest.mark.parametrize("point", ["after-claim", "after-seal", "after-upload", "after-ledger-upload"])
def test_a_crash_at_any_step_then_a_rerun_delivers_exactly_once(
    tmp_path: Path, sshd: Sshd, partner_gpg, point: str
) -> None:
    gpg, _ = partner_gpg
    party = aggregator_for(tmp_path, sshd, partner_gpg)
    party.drop("invoice", "INV-1.xml", INVOICE)

    crashed = party.cli("send", env={"SFTP_PIPELINE_CRASH_AT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    rerun = party.cli("send")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    (transfer,) = party.transfers()
    assert transfer.state == "uploaded" and transfer.archived_at
    assert inbox(sshd) == [transfer.remote_name]  # one file at its final name, no temporary left
    plaintext, _ = gpg.decrypt(sshd.root / "inbox" / transfer.remote_name)
    assert plaintext == INVOICE
    if point == "after-upload":
        assert "already present" in " ".join(d or "" for _, _, d in _events(party, transfer.id))
    assert not list((party.config().state_dir / "work").glob("*/*"))


def _events(party: Party, transfer_id: str) -> list[tuple[str, str, str | None]]:
    from sftp_pipeline.wiring import open_ledger

    with open_ledger(party.config()) as ledger:
        return ledger.events(transfer_id)


def test_a_changed_host_key_uploads_nothing_and_loses_nothing(tmp_path: Path, sshd: Sshd, partner_gpg) -> None:
    wrong = "[127.0.0.1]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGV4YW1wbGUtbm90LXRoZS1yZWFsLWtleS0wMDAwMDA"
    party = aggregator_for(tmp_path, sshd, partner_gpg, sftp_overrides={"host_keys": [wrong]})
    party.drop("invoice", "INV-1.xml", INVOICE)

    result = party.cli("send")

    assert result.returncode == 1
    assert "host key" in (result.stdout + result.stderr).lower()
    assert inbox(sshd) == []
    (transfer,) = party.transfers()
    assert transfer.state == "sealed" and "host key" in (transfer.last_error or "").lower()
    # The operator pins the right key: the queued document goes on the next run.
    config = party.config_path.read_text().replace(wrong, sshd.host_key_line)
    party.config_path.write_text(config)
    assert party.cli("send").returncode == 0
    assert len(inbox(sshd)) == 1


def test_cli_status_dry_run_and_exit_codes(tmp_path: Path, sshd: Sshd, partner_gpg) -> None:
    party = aggregator_for(tmp_path, sshd, partner_gpg)
    party.drop("invoice", "INV-1.xml", INVOICE)
    dry = party.cli("send", "--dry-run")
    assert dry.returncode == 0 and "would-send" in dry.stdout and inbox(sshd) == []
    assert party.cli("send").returncode == 0
    status = party.cli("status")
    assert status.returncode == 0 and "INV-1.xml" in status.stdout and "uploaded" in status.stdout
    assert party.cli("send", "no-such-job").returncode == 2
    assert party.cli("frobnicate").returncode == 2
    party.keys.openpgp_key.chmod(0o644)
    refused = party.cli("send")
    assert refused.returncode == 2 and "chmod 600" in refused.stderr
