"""What every job service (send, collect, receipts) is built from: the configuration, our keys, the ledger,
a way to reach a partner, and the clock — passed in once, so tests can swap the clock and the transports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sftp_pipeline.clock import Clock, utc_now
from sftp_pipeline.config import Config, Partner
from sftp_pipeline.keys import OurKeys
from sftp_pipeline.ledger import Ledger
from sftp_pipeline.transport import Transport

# Reaches one partner: their SFTP server, or the folder our own server serves them (runtime.connect).
TransportFactory = Callable[[Partner], Awaitable[Transport]]


class Service:
    def __init__(
        self,
        config: Config,
        keys: OurKeys,
        ledger: Ledger,
        transport_factory: TransportFactory,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self.config = config
        self.keys = keys
        self.ledger = ledger
        self.transport_factory = transport_factory
        self.clock = clock
