"""`sftp-pipeline report --email` end to end: a real exchange, a signed report, a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pysequoia

from sftp_pipeline.reporting.render import verify_report_signature
from tests.integration.test_exchange import INVOICE, pair_over_sshd
from tests.peers.smtp import PASSWORD_ENV, RECIPIENTS, SENDER, SMTP_USER, SmtpPeerFactory
from tests.peers.sshd import Sshd


def test_report_is_signed_emailed_and_queued_while_smtp_is_down(
    tmp_path: Path, sshd: Sshd, smtp_peer_factory: SmtpPeerFactory
) -> None:
    aggregator, utility = pair_over_sshd(tmp_path, sshd)
    aggregator.drop("invoice", "INV-9.xml", INVOICE)
    aggregator.send()
    utility.collect()
    aggregator.pull_receipts()
    peer = smtp_peer_factory("starttls")
    recipients = ", ".join(f'"{r}"' for r in RECIPIENTS)
    aggregator.config_path.write_text(
        aggregator.config_path.read_text().replace(
            "[partners.utility]",
            f'[report]\ntimezone = "America/Chicago"\n\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {peer.port}\nsecurity = "starttls"\nusername = "{SMTP_USER}"\n'
            f'password = {{ env = "{PASSWORD_ENV}" }}\nca_file = "{peer.ca.ca_file}"\nsender = "{SENDER}"\n'
            f"recipients = [{recipients}]\ntimeout = 10\n\n[partners.utility]",
        )
    )

    first = aggregator.cli("report", "--email")

    assert first.returncode == 0, first.stdout + first.stderr
    (mail,) = peer.received
    message = mail.message()
    html = next(p for p in message.walk() if p.get_content_type() == "text/html").get_content()
    assert "INV-9.xml" in html and "delivered" in html and "<script" not in html
    attachments = {p.get_filename(): p.get_payload(decode=True) for p in message.walk() if p.get_filename()}
    csv_name = next(n for n in attachments if n.endswith(".csv"))
    rows = list(csv.DictReader(io.StringIO(attachments[csv_name].decode("utf-8"))))
    assert [(r["file"], r["status"]) for r in rows] == [("INV-9.xml", "delivered")]
    # The attached signature verifies against our certificate, as a settlement clerk would check it.
    (tmp_path / csv_name).write_bytes(attachments[csv_name])
    (tmp_path / f"{csv_name}.sig").write_bytes(attachments[f"{csv_name}.sig"])
    cert = pysequoia.Cert.from_file(str(aggregator.keys.openpgp_cert))
    assert verify_report_signature(tmp_path / csv_name, tmp_path / f"{csv_name}.sig", cert)

    peer.stop()  # the relay goes down: the next report waits on disk
    down = aggregator.cli("report", "--email", "--since", "all")
    assert down.returncode == 1 and "queued" in down.stderr
    outbox = aggregator.config().state_dir / "outbox-mail"
    assert len([p for p in outbox.iterdir() if p.suffix == ".eml"]) == 1

    peer.start()  # back on the same port: the queued report goes first, then the new one
    again = aggregator.cli("report", "--email")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(peer.received) == 3
    assert not [p for p in outbox.iterdir() if p.suffix == ".eml"]
