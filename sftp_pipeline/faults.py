"""Named crash points, so tests can kill the process for real at an exact step.

Setting ``SFTP_PIPELINE_CRASH_AT=<point>`` makes the process SIGKILL itself
when it reaches that point: no cleanup, no ``finally``, exactly like a power
cut. ``SFTP_PIPELINE_CRASH_AFTER=<n>`` (default 1) kills it at the n-th time
the point is reached instead, e.g. on the third document of a run. The code
under test is not patched; it is stopped.
"""

from __future__ import annotations

import os
import signal

ENV = "SFTP_PIPELINE_CRASH_AT"
AFTER_ENV = "SFTP_PIPELINE_CRASH_AFTER"

POINTS = frozenset(
    {
        # send (flows/send.py, transport/)
        "after-claim",  # ledger row written, file moved to work
        "after-seal",  # sealed file written and recorded
        "mid-upload",  # the first block of the remote temporary file is written, not yet renamed
        "after-upload",  # renamed to the final remote name, ledger not yet updated
        "after-ledger-upload",  # ledger says uploaded, originals not yet archived
        # collect (flows/collect.py, transport/)
        "mid-download",  # the first block of a download is in the local temporary file
        "after-deliver",  # plaintext released into the delivery folder, the receipt not yet recorded
        "after-receipt-recorded",  # accepted/rejected and the signed receipt are in the ledger, not yet sent
        "after-receipt-sent",  # receipt files are on the partner's side, the document not yet removed there
        # receipts (flows/receipt_pull.py)
        "after-receipt-download",  # a receipt pair is in staging, not yet verified or settled
        "mid-settle",  # the transfer is settled in the ledger, its receipt not yet stored or recorded
        "after-settle",  # the transfer is settled and the receipt stored, the remote pair not yet removed
        "mid-receipt-remove",  # the pair's .sig removed from the partner's folder, its .json not yet
        # report (reporting/produce.py, reporting/mail.py)
        "after-report-written",  # the signed report is on disk, its mail not yet queued
        "after-report-queued",  # the report mail is in the outbox, the period not yet marked reported
        "mid-email",  # the SMTP session is open (TLS, login done), the message not yet accepted
    }
)

_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL this process if the environment asks for a crash at ``name`` (at its n-th hit)."""
    assert name in POINTS, name
    if os.environ.get(ENV) != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(os.environ.get(AFTER_ENV) or "1"):
        os.kill(os.getpid(), signal.SIGKILL)
