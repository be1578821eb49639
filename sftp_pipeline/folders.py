"""Where documents and receipts go, for each partner: on the partner's SFTP server, or in the root our own server
(or our OpenSSH) hosts for a partner who pushes to us.

One place, read by the flows (send, collect, receipt pull), the embedded server (which folders a partner may
write to or remove from) and ``check`` (which folders must exist). Names are seen from the server's side:

==============  ======================================  ============================================
folder          on the partner's server (``sftp``)      in the root we host for them
==============  ======================================  ============================================
inbox           we upload our documents                 they upload their documents
outbox          they leave documents for us             we leave our documents for them
receipts-in     we upload receipts for their documents  they upload receipts for our documents
receipts-out    they leave receipts for our documents   we leave receipts for their documents
==============  ======================================  ============================================

A partner's ``sftp.dirs`` may rename the folders on their server; the hosted root always uses these names.
"""

from __future__ import annotations

from dataclasses import dataclass

from sftp_pipeline.config import Partner, RemoteDirs

HOSTED = RemoteDirs()
# The four folders of a root we host, in this order (``install -d`` lines, the server's start-up).
HOSTED_DIRS: tuple[str, ...] = (HOSTED.inbox, HOSTED.outbox, HOSTED.receipts_in, HOSTED.receipts_out)
# In a root we host, the folders a partner picks files up from (and so may remove files from).
PICKUP_DIRS: frozenset[str] = frozenset({HOSTED.outbox, HOSTED.receipts_out})


@dataclass(frozen=True, slots=True)
class Inbound:
    """Where one partner's documents arrive and where our receipts for them go."""

    documents: str
    receipts: str
    hosted: bool


def outbound_folder(partner: Partner) -> str:
    """Where our documents go: the partner's inbox on their server, or their outbox in the root we host."""
    return partner.sftp.dirs.inbox if partner.sftp else HOSTED.outbox


def inbound_folders(partner: Partner) -> Inbound:
    """Where the partner's documents arrive, and where our receipts for them go."""
    if partner.sftp is not None:
        return Inbound(partner.sftp.dirs.outbox, partner.sftp.dirs.receipts_in, hosted=False)
    return Inbound(HOSTED.inbox, HOSTED.receipts_out, hosted=True)


def receipts_folder(partner: Partner) -> str:
    """Where the partner leaves receipts for what we sent: on their server, or in the root we host for them."""
    return partner.sftp.dirs.receipts_out if partner.sftp else HOSTED.receipts_in
