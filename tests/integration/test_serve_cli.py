"""`sftp-pipeline serve` as an operator runs it: starts, accepts a partner's upload, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import asyncssh
import paramiko
import pysequoia

from tests.peers.parties import make_party

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
