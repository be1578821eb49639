"""Wiring: the one place that chooses implementations and builds what a command, the daemon, the demo or a test
needs — the ledger store, the transport that reaches each partner, the flows and the embedded server.

Everything below this module sees interfaces only (:class:`~sftp_pipeline.ledger.Ledger`,
:class:`~sftp_pipeline.transport.Transport`, :class:`~sftp_pipeline.flows.service.Context`): a PostgreSQL ledger
or an HTTPS transport is one more choice here, not a change in the flows.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sftp_pipeline.clock import Clock, rfc3339, utc_now
from sftp_pipeline.config import Config, Partner
from sftp_pipeline.flows.collect import Collector, CollectOutcome, collect_on_upload
from sftp_pipeline.flows.receipt_pull import ReceiptPuller
from sftp_pipeline.flows.send import Outbound, ProgressSink
from sftp_pipeline.keys import OurKeys, load_our_keys, read_passphrase
from sftp_pipeline.ledger import Ledger
from sftp_pipeline.ledger.sqlite import SqliteLedger
from sftp_pipeline.proof.audit import sync_audit
from sftp_pipeline.reporting.produce import Produced, produce_report
from sftp_pipeline.server.embedded import EmbeddedServer, UploadHook
from sftp_pipeline.transport import Transport
from sftp_pipeline.transport.local import LocalTransport
from sftp_pipeline.transport.retry import RetryingTransport
from sftp_pipeline.transport.sftp import SftpTransport

LEDGER_NAME = "ledger.sqlite3"


@dataclass
class Runtime:
    """One party's open configuration, keys, ledger and clock: the :class:`~sftp_pipeline.flows.service.Context`
    every flow is built from, and the builders of the flows."""

    config: Config
    keys: OurKeys
    ledger: Ledger
    clock: Clock

    def close(self) -> None:
        """Bring the audit log up to date with everything this run changed, then close the ledger.

        A crash before this point loses nothing: the next sync appends whatever the ledger holds beyond the log.
        """
        try:
            sync_audit(self.config, self.ledger)
        finally:
            self.ledger.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def connect(self, partner: Partner) -> Transport:
        """The transport that reaches ``partner``: their SFTP server, or the root our server serves them."""
        return await connect(self.config, self.keys, partner)

    # -- the flows ----------------------------------------------------------------------------------------------

    def outbound(self, *, progress: ProgressSink | None = None) -> Outbound:
        return Outbound(self, progress=progress)

    def collector(self) -> Collector:
        return Collector(self)

    def receipt_puller(self) -> ReceiptPuller:
        return ReceiptPuller(self)

    def upload_hook(
        self, collector: Collector, *, report: Callable[[CollectOutcome], None] | None = None
    ) -> UploadHook:
        """What the embedded server calls when a partner's upload completes: collect it at once."""
        return collect_on_upload(self.config, collector, report=report)

    def produce_report(self, *, now: datetime, since: datetime | str | None = "last", email: bool) -> Produced:
        return produce_report(self, now=now, since=since, email=email)


def open_runtime(config: Config, *, clock: Clock = utc_now) -> Runtime:
    keys = load_our_keys(config, clock())
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    return Runtime(config, keys, open_ledger(config, clock=clock), clock)


def open_ledger(config: Config, *, clock: Clock = utc_now) -> Ledger:
    """The party's ledger store (SQLite beside the rest of the state, for now the only one)."""
    return SqliteLedger(config.state_dir / LEDGER_NAME, clock=clock)


def embedded_server(config: Config, *, on_upload: UploadHook | None = None) -> EmbeddedServer:
    """The SFTP server partners push to (``[server]``); ``on_upload``: :meth:`Runtime.upload_hook`."""
    return EmbeddedServer(config, on_upload=on_upload)


async def connect(config: Config, keys: OurKeys, partner: Partner) -> Transport:
    """A partner with an SFTP server: an asyncssh session behind bounded retries; one we host: the folder our
    server (or our OpenSSH) serves them."""
    endpoint = partner.sftp
    if endpoint is None:
        return LocalTransport(config.hosted_root(partner.id), partner_id=partner.id)
    passphrase = keys.ssh_passphrase.reveal() if keys.ssh_passphrase else None

    async def factory() -> Transport:
        return await SftpTransport.connect(
            endpoint, client_key=keys.ssh_key_path, passphrase=passphrase, partner_id=partner.id
        )

    return RetryingTransport(factory, partner_id=partner.id, attempts=endpoint.attempts)


async def connect_once(config: Config, partner: Partner) -> Transport:
    """One SFTP session to ``partner``'s server, without the retry wrapper and without loading our OpenPGP key:
    ``check`` must say at once what is wrong, not back off for a minute first."""
    endpoint = partner.sftp
    if endpoint is None:
        raise ValueError(f"partner {partner.id!r} has no SFTP server; we host them")
    secret = config.keys.ssh_passphrase
    passphrase = read_passphrase(secret, what="SSH key").reveal() if secret else None
    return await SftpTransport.connect(
        endpoint, client_key=config.keys.ssh, passphrase=passphrase, partner_id=partner.id
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339 UTC), level, logger, message, and transfer_id when known."""

    def format(self, record: logging.LogRecord) -> str:
        from datetime import UTC

        entry = {
            "time": rfc3339(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        transfer_id = getattr(record, "transfer_id", None)
        if transfer_id:
            entry["transfer_id"] = transfer_id
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "warning", json_lines: bool = False, file: Path | None = None) -> None:
    handler: logging.Handler = logging.FileHandler(file) if file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("asyncssh").setLevel(max(logging.WARNING, root.level))
