"""What every flow (send, collect, receipts) is built from, passed in once: a :class:`Context`.

:class:`sftp_pipeline.wiring.Runtime` is the context the program builds — it chooses the ledger store and which
transport reaches which partner; a flow sees only the interfaces. Tests build theirs through the same wiring,
with their own clock where they move time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from sftp_pipeline.clock import Clock
from sftp_pipeline.config import Config, Partner
from sftp_pipeline.keys import OurKeys
from sftp_pipeline.ledger import Ledger
from sftp_pipeline.transport import Transport

# Reaches one partner: their SFTP server, or the folder our own server serves them.
TransportFactory = Callable[[Partner], Awaitable[Transport]]


class Context(Protocol):
    """The configuration, our keys, the ledger, the clock, and a way to reach each partner."""

    @property
    def config(self) -> Config: ...

    @property
    def keys(self) -> OurKeys: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def clock(self) -> Clock: ...

    async def connect(self, partner: Partner) -> Transport:
        """A transport to ``partner`` (the caller closes it)."""
        ...


class Service:
    """A flow's shared parts, taken from its :class:`Context`."""

    def __init__(self, context: Context) -> None:
        self.config = context.config
        self.keys = context.keys
        self.ledger = context.ledger
        self.clock = context.clock
        self.transport_factory: TransportFactory = context.connect
