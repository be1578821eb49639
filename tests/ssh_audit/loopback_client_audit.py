"""Run ``ssh-audit -c`` (client audit) listening on 127.0.0.1 only.

ssh-audit 3.9's client audit binds 0.0.0.0 and [::] with no option to choose; tests listen only on loopback. This
shim changes nothing in ssh-audit but the addresses its listener binds: the IPv4 wildcard becomes 127.0.0.1 and
the IPv6 one ::1. Usage: ``python -m tests.ssh_audit.loopback_client_audit <ssh-audit arguments>``.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
_bind = socket.socket.bind


def _loopback_bind(self: socket.socket, address: Any) -> None:
    if isinstance(address, tuple) and address[0] in _WILDCARDS:
        address = (_WILDCARDS[address[0]], *address[1:])
    _bind(self, address)


def main() -> int:
    socket.socket.bind = _loopback_bind  # type: ignore[method-assign]
    from ssh_audit.ssh_audit import main as ssh_audit_main

    sys.argv[0] = "ssh-audit"
    return ssh_audit_main()


if __name__ == "__main__":
    sys.exit(main())
