"""Targets for the transport contract suite: every Transport implementation against a real peer.

To add an implementation, write one fixture returning a :class:`ContractTarget` and add its
name to ``TARGETS`` — every contract test then runs against it too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sftp_pipeline.transport import Transport
from sftp_pipeline.transport.local import LocalTransport
from sftp_pipeline.transport.sftp import SftpTransport
from tests.peers.sshd import ClientKey, Sshd

PARTNER = "aggregator"


@dataclass(frozen=True)
class ContractTarget:
    name: str
    open: Callable[[], Awaitable[Transport]]  # called inside the test's event loop
    root: Path  # where the transport's relative directories land on disk (to inspect from outside)


@pytest.fixture
def target_sftp_openssh(sshd: Sshd, ssh_client_key: ClientKey) -> ContractTarget:
    async def open_() -> Transport:
        return await SftpTransport.connect(sshd.endpoint(), client_key=ssh_client_key.path, partner_id=PARTNER)

    for directory in ("inbox", "outbox"):
        (sshd.root / directory).mkdir()
    return ContractTarget("sftp-openssh", open_, sshd.root)


@pytest.fixture
def target_local(tmp_path: Path) -> ContractTarget:
    root = tmp_path / "hosted" / PARTNER

    async def open_() -> Transport:
        return LocalTransport(root, partner_id=PARTNER)

    root.mkdir(parents=True)
    return ContractTarget("local", open_, root)


TARGETS = ["target_sftp_openssh", "target_local"]


@pytest.fixture(params=TARGETS, ids=lambda name: name.removeprefix("target_"))
def target(request: pytest.FixtureRequest) -> ContractTarget:
    found: ContractTarget = request.getfixturevalue(request.param)
    return found
