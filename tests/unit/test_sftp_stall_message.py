"""A server that goes silent is reported as a stall whether our watchdog or asyncssh's keepalive notices first."""

from __future__ import annotations

import asyncssh

from sftp_pipeline.transport.sftp import _keepalive_gave_up


def test_asyncssh_giving_up_on_keepalive_counts_as_a_stall() -> None:
    # The exception asyncssh raises itself (connection.py, _keepalive_timer_callback), not an imitation of it.
    assert _keepalive_gave_up(asyncssh.ConnectionLost("Server not responding to keepalive"))


def test_other_lost_connections_are_not_called_stalls() -> None:
    assert not _keepalive_gave_up(asyncssh.ConnectionLost("Connection lost"))
    assert not _keepalive_gave_up(ConnectionResetError(104, "Connection reset by peer"))
    assert not _keepalive_gave_up(asyncssh.DisconnectError(11, "not responding to keepalive"))  # a server's words
