"""SIGKILL at every named crash point of send, collect, receipts and report, three times, then a clean run.

The real CLI process is killed (``SFTP_PIPELINE_CRASH_AT``, see sftp_pipeline/faults.py): no code is patched.
After the kills, one clean pass of every step must leave each document delivered exactly once, each receipt
issued and settled once, both ledgers passing ``PRAGMA integrity_check``, no temporary or staging file
anywhere, and each report mailed once.
"""

from __future__ import annotations

import signal
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.integration.crashcheck import assert_exactly_once, orphans
from tests.integration.test_exchange import pair_over_sshd
from tests.peers.parties import Party
from tests.peers.smtp import PASSWORD_ENV, RECIPIENTS, SENDER, SMTP_USER, SmtpPeer, SmtpPeerFactory
from tests.peers.sshd import Sshd

KILLS = 3  # each point is hit, and the process killed, this many times before the clean run
# Why more documents than kills: concurrent documents may pass a point together before the kill lands, and
# every one of the three runs must still find a document left to be killed on.

DOCUMENTS = {f"INV-{n}.xml": f"<Invoice id='INV-{n}'><Total>{n}00.00</Total></Invoice>\n".encode() for n in range(1, 6)}

# point → (which party runs the step, the CLI command)
POINTS = [
    ("after-claim", "aggregator", "send"),
    ("after-seal", "aggregator", "send"),
    ("mid-upload", "aggregator", "send"),
    ("after-upload", "aggregator", "send"),
    ("after-ledger-upload", "aggregator", "send"),
    ("mid-download", "utility", "collect"),
    ("after-deliver", "utility", "collect"),
    ("after-receipt-recorded", "utility", "collect"),
    ("after-receipt-sent", "utility", "collect"),
    ("mid-download", "aggregator", "receipts"),
    ("after-receipt-download", "aggregator", "receipts"),
    ("mid-settle", "aggregator", "receipts"),
    ("after-settle", "aggregator", "receipts"),
    ("mid-receipt-remove", "aggregator", "receipts"),
    ("after-report-written", "aggregator", "report"),
    ("after-report-queued", "aggregator", "report"),
    ("mid-email", "aggregator", "report"),
]
STEPS = ["send", "collect", "receipts", "report"]
IN_PROCESS = {
    "send": lambda aggregator, utility: aggregator.send(),
    "collect": lambda aggregator, utility: utility.collect(),
    "receipts": lambda aggregator, utility: aggregator.pull_receipts(),
}


def with_smtp(party: Party, peer: SmtpPeer) -> None:
    recipients = ", ".join(f'"{r}"' for r in RECIPIENTS)
    party.config_path.write_text(
        party.config_path.read_text().replace(
            "[partners.utility]",
            f'[smtp]\nhost = "127.0.0.1"\nport = {peer.port}\nsecurity = "starttls"\nusername = "{SMTP_USER}"\n'
            f'password = {{ env = "{PASSWORD_ENV}" }}\nca_file = "{peer.ca.ca_file}"\nsender = "{SENDER}"\n'
            f"recipients = [{recipients}]\ntimeout = 10\n\n[partners.utility]",
        )
    )


def run_step(step: str, aggregator: Party, utility: Party, env: dict[str, str] | None = None) -> int:
    party, args = {
        "send": (aggregator, ["send"]),
        "collect": (utility, ["collect"]),
        "receipts": (aggregator, ["receipts"]),
        "report": (aggregator, ["report", "--email"]),
    }[step]
    done = party.cli(*args, env=env)
    assert done.returncode in (0, -signal.SIGKILL), f"{step}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.returncode


def csv_of(message: EmailMessage) -> str:
    part = next(p for p in message.walk() if p.get_filename() and str(p.get_filename()).endswith(".csv"))
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


@pytest.mark.parametrize(("point", "who", "step"), POINTS, ids=[f"{s}-{p}" for p, _, s in POINTS])
def test_killed_three_times_at_a_point_then_a_clean_run_delivers_exactly_once(
    tmp_path: Path, sshd: Sshd, smtp_peer_factory: SmtpPeerFactory, point: str, who: str, step: str
) -> None:
    aggregator, utility = pair_over_sshd(tmp_path, sshd)
    peer = smtp_peer_factory("starttls")
    with_smtp(aggregator, peer)
    # Send commits its steps a group at a time (all claims of a batch, the seals that finished together), so
    # after a kill at a send point every dropped document may be past it; to be killed there again, each run
    # gets a newly dropped one.
    late = list(DOCUMENTS.items())[: KILLS - 1] if step == "send" else []
    for name, data in DOCUMENTS.items():
        if (name, data) not in late:
            aggregator.drop("invoice", name, data)

    for current in STEPS[: STEPS.index(step)]:  # the steps before, in-process (quicker than the CLI)
        IN_PROCESS[current](aggregator, utility)
    for kill in range(KILLS):
        if kill > 0 and late:
            aggregator.drop("invoice", *late[kill - 1])
        code = run_step(step, aggregator, utility, env={"SFTP_PIPELINE_CRASH_AT": point})
        assert code == -signal.SIGKILL, f"{point} was not reached by {step}"
    if point == "mid-email":  # the interrupted mail waits in the outbox
        assert list((aggregator.config().state_dir / "outbox-mail").glob("*.eml"))
    assert run_step(step, aggregator, utility) == 0, f"clean {step} after kills at {point}"  # the restart
    for current in STEPS[STEPS.index(step) + 1 : STEPS.index("receipts") + 1]:
        IN_PROCESS[current](aggregator, utility)

    assert_exactly_once(aggregator, utility, sshd.root, DOCUMENTS)
    if step == "report":
        messages = [m.message() for m in peer.received]
        ids = Counter(str(m["Message-ID"]) for m in messages)
        assert all(n == 1 for n in ids.values()), f"a report mail went twice: {ids}"
        with_documents = [m for m in messages if all(name in csv_of(m) for name in DOCUMENTS)]
        assert len(with_documents) == 1, "the report of the delivered documents is mailed exactly once"
        assert not list((aggregator.config().state_dir / "outbox-mail").glob("*.eml"))
    assert not orphans(aggregator.directory, utility.directory, sshd.root)


def test_a_document_sent_again_after_the_partner_took_it_is_answered_and_cleared(tmp_path: Path, sshd: Sshd) -> None:
    """Killed between the rename and the ledger commit while the partner collects: the re-upload goes too."""
    aggregator, utility = pair_over_sshd(tmp_path, sshd)
    aggregator.drop("invoice", "INV-1.xml", DOCUMENTS["INV-1.xml"])
    killed = aggregator.cli("send", env={"SFTP_PIPELINE_CRASH_AT": "after-upload"})
    assert killed.returncode == -signal.SIGKILL
    assert utility.collect().count("accepted") == 1  # the partner takes it before the sender restarts
    aggregator.send()  # not recorded as uploaded, so it goes again
    assert len(list((sshd.root / "inbox").iterdir())) == 1
    assert utility.collect().count("duplicate") == 1  # answered with the same receipt, not delivered again
    aggregator.pull_receipts()
    assert_exactly_once(aggregator, utility, sshd.root, {"INV-1.xml": DOCUMENTS["INV-1.xml"]})
