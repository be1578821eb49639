"""Wiring: from a loaded Config to the services a command needs (keys, ledger, transports).

The CLI, the demo and the tests build their services here, so there is one
place that decides which transport serves which partner.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from sftp_pipeline.clock import Clock, rfc3339, utc_now
from sftp_pipeline.config import Config, Partner
from sftp_pipeline.keys import OurKeys, load_our_keys
from sftp_pipeline.ledger import Ledger
from sftp_pipeline.ledger.sqlite import SqliteLedger
from sftp_pipeline.transport import Transport
from sftp_pipeline.transport.local import LocalTransport
from sftp_pipeline.transport.retry import RetryingTransport
from sftp_pipeline.transport.sftp import SftpTransport

LEDGER_NAME = "ledger.sqlite3"


@dataclass
class Runtime:
    config: Config
    keys: OurKeys
    ledger: Ledger
    clock: Clock

    def close(self) -> None:
        """Bring the audit log up to date with everything this run changed, then close the ledger.

        A crash before this point loses nothing: the next sync appends whatever the ledger holds beyond the log.
        """
        from sftp_pipeline.proof.audit import sync_audit

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


def open_runtime(config: Config, *, clock: Clock = utc_now) -> Runtime:
    keys = load_our_keys(config, clock())
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    return Runtime(config, keys, SqliteLedger(config.state_dir / LEDGER_NAME, clock=clock), clock)


def open_ledger(config: Config, *, clock: Clock = utc_now) -> Ledger:
    return SqliteLedger(config.state_dir / LEDGER_NAME, clock=clock)


async def connect(config: Config, keys: OurKeys, partner: Partner) -> Transport:
    endpoint = partner.sftp
    if endpoint is None:
        return LocalTransport(config.hosted_root(partner.id), partner_id=partner.id)
    passphrase = keys.ssh_passphrase.reveal() if keys.ssh_passphrase else None

    async def factory() -> Transport:
        return await SftpTransport.connect(
            endpoint, client_key=keys.ssh_key_path, passphrase=passphrase, partner_id=partner.id
        )

    return RetryingTransport(factory, partner_id=partner.id, attempts=endpoint.attempts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339 UTC), level, logger, message, and transfer_id when known."""

    def format(self, record: logging.LogRecord) -> str:
        from datetime import UTC, datetime

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
