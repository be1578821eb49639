"""`sftp-pipeline serve` as an operator runs it: starts, accepts a partner's upload, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import paramiko
import pysequoia

from sftp_pipeline.names import new_transfer_id
from sftp_pipeline.proof.receipts import receipt_file_names, verify_receipt
from tests.peers.parties import make_party

INVOICE = b"<Invoice id='INV-1'/>\n"
# Why 15 s: collection on upload takes well under a second; the receipt not appearing by then is a failure.
RECEIPT_WAIT = 15.0
STARTUP_TIMEOUT = 30.0  # Why 30 s: key checks and binding take well under a second; more means it hung


def test_serve_accepts_a_partner_upload_and_stops_on_sigterm(tmp_path: Path) -> None:
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(client_dir / "id"))
    (client_dir / "id").chmod(0o600)
    partner_cert = bytes(pysequoia.Tsk.generate("Partner <p@x>").extract_certificate())
    party = make_party(
        tmp_path / "utility",
        "utility",
        partner_id="aggregator",
        partner_cert=partner_cert,
        server_port=0,
        login_keys=[key.export_public_key().decode().strip()],
        jobs={},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sftp_pipeline.cli", "-c", str(party.config_path), "serve"],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        match = re.search(r"port (\d+)", line)
        assert match, line
        port = int(match.group(1))
        transport = paramiko.Transport(("127.0.0.1", port))
        host_pub = party.keys.host_key_public.read_text().split()
        transport.connect(username="aggregator", pkey=paramiko.Ed25519Key.from_private_key_file(str(client_dir / "id")))
        assert transport.get_remote_server_key().get_base64() == host_pub[1]
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        with sftp.open("inbox/hello.pgp", "wb") as fh:
            fh.write(b"sealed bytes")
        transport.close()
        delivered = party.config().hosted_root("aggregator") / "inbox" / "hello.pgp"
        assert delivered.read_bytes() == b"sealed bytes"
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=STARTUP_TIMEOUT)
    assert proc.returncode == 0, err


def test_serve_collects_on_upload_and_the_receipt_carries_the_upload_time(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(tmp_path / "id"))
    (tmp_path / "id").chmod(0o600)
    partner = pysequoia.Tsk.generate("Aggregator <ops@aggregator.test>")
    party = make_party(
        tmp_path / "utility",
        "utility",
        partner_id="aggregator",
        partner_cert=bytes(partner.extract_certificate()),
        server_port=0,
        login_keys=[key.export_public_key().decode().strip()],
        jobs={"from-aggregator": {"kind": "collect", "deliver_to": "../delivered"}},
    )
    utility_cert = pysequoia.Cert.from_file(str(party.keys.openpgp_cert))
    sealed = pysequoia.encrypt(INVOICE, [utility_cert], signer=partner.signer(), armor=False)
    transfer_id = new_transfer_id(datetime.now(UTC))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sftp_pipeline.cli", "-c", str(party.config_path), "serve"],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        match = re.search(r"port (\d+)", proc.stderr.readline())  # type: ignore[union-attr]
        assert match
        transport = paramiko.Transport(("127.0.0.1", int(match.group(1))))
        transport.connect(username="aggregator", pkey=paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "id")))
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        before = datetime.now(UTC)
        with sftp.open(f"inbox/{transfer_id}.invoice.INV-1.xml.pgp", "wb") as fh:
            fh.write(sealed)
        after = datetime.now(UTC)
        json_name, sig_name = receipt_file_names(transfer_id)
        deadline = time.monotonic() + RECEIPT_WAIT
        while sig_name not in sftp.listdir("receipts-out") and time.monotonic() < deadline:
            time.sleep(0.05)
        files = {}
        for name in (json_name, sig_name):
            with sftp.open(f"receipts-out/{name}", "rb") as fh:
                files[name] = fh.read()
        transport.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=STARTUP_TIMEOUT)
    receipt = verify_receipt(
        files,
        issuer_cert=utility_cert,
        now=datetime.now(UTC),
        expected_sender="aggregator",
        expected_receiver="utility",
    )
    assert receipt.disposition == "accepted" and receipt.remote_name.startswith(transfer_id)
    assert before - timedelta(milliseconds=1) <= receipt.received_at <= after + timedelta(milliseconds=1)
    assert (tmp_path / "utility" / "delivered" / "invoice" / f"{transfer_id}.INV-1.xml").read_bytes() == INVOICE
