"""The fault-injecting TCP proxy itself: it forwards, cuts exactly, resets, black-holes and throttles."""

from __future__ import annotations

import contextlib
import random
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.peers.tcpproxy import DOWN, PASS, UP, RandomCuts, TcpProxy, cut, reset, stall, throttle

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
# Why 5 s: everything here moves 1 MiB over loopback; a socket silent for 5 s is the black hole, not load.
SOCKET_TIMEOUT = 5.0


RECEIVED: list[bytearray] = []  # what the echo server got, per connection (tests here run one at a time)
# Why 1 s: long enough that a forwarded byte would have arrived on loopback many times over.
STALL_WAIT = 1.0


FINISHED = threading.Semaphore(0)  # released as each server-side connection ends


class _Echo(socketserver.BaseRequestHandler):
    echo = True

    def handle(self) -> None:
        got = bytearray()
        RECEIVED.append(got)
        with contextlib.suppress(OSError):  # the proxy cut or reset us: that is the point
            while data := self.request.recv(65536):
                got += data
                if self.echo:
                    self.request.sendall(data)
        FINISHED.release()


def wait_finished(count: int) -> None:
    for _ in range(count):
        assert FINISHED.acquire(timeout=SOCKET_TIMEOUT), "the server side never saw its connection end"


class _Sink(_Echo):
    echo = False  # only reads: nothing unread is ever left in a socket, so a cut is a clean FIN


@pytest.fixture
def sink_port() -> Iterator[int]:
    yield from _serve(_Sink)


@pytest.fixture
def echo_port() -> Iterator[int]:
    yield from _serve(_Echo)


def _serve(handler: type[_Echo]) -> Iterator[int]:
    RECEIVED.clear()
    while FINISHED.acquire(blocking=False):
        pass
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def exchange(
    port: int, payload: bytes = PAYLOAD, timeout: float = SOCKET_TIMEOUT
) -> tuple[bytes, BaseException | None]:
    """Send ``payload`` and read the echo until EOF, an error or the timeout; return what came back."""
    got = bytearray()
    error: BaseException | None = None
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as exc:
        return b"", exc
    with sock:
        sender = threading.Thread(target=lambda: _send_all(sock, payload), daemon=True)
        sender.start()
        try:
            while len(got) < len(payload) and (data := sock.recv(65536)):
                got += data
        except OSError as exc:
            error = exc
        sender.join(SOCKET_TIMEOUT)
    return bytes(got), error


def _send_all(sock: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(payload)


def test_pass_forwards_everything(echo_port: int) -> None:
    with TcpProxy(echo_port, plan=PASS) as proxy:
        got, error = exchange(proxy.port)
    assert got == PAYLOAD and error is None and proxy.events == []


@pytest.mark.parametrize("direction", [UP, DOWN])
def test_cut_forwards_exactly_the_offset_then_closes(echo_port: int, direction: str) -> None:
    with TcpProxy(echo_port, plan=cut(300_001, direction)) as proxy:
        got, error = exchange(proxy.port)
    # A close after exactly that many bytes in the counted direction. Closing a socket that still holds
    # unread bytes (the client was still sending) makes the kernel answer with RST instead of FIN.
    # (and a RST makes the receiving kernel drop what the application had not read yet).
    assert error is None or isinstance(error, ConnectionResetError)
    assert len(got) <= 300_001
    (event,) = proxy.events
    assert (event.kind, event.direction, event.offset) == ("cut", direction, 300_001)


def test_an_upstream_cut_delivers_exactly_the_offset(sink_port: int) -> None:
    with TcpProxy(sink_port, plan=cut(300_001)) as proxy:
        exchange(proxy.port, timeout=STALL_WAIT)
        wait_finished(1)
    assert bytes(RECEIVED[0]) == PAYLOAD[:300_001]
    (event,) = proxy.events
    assert (event.kind, event.direction, event.offset) == ("cut", UP, 300_001)


def test_reset_sends_rst(echo_port: int) -> None:
    with TcpProxy(echo_port, plan=reset(200_000)) as proxy:
        got, error = exchange(proxy.port)
    assert isinstance(error, ConnectionResetError) and len(got) <= 200_000
    assert proxy.injected("reset") == 1


def test_cumulative_offsets_count_across_connections(sink_port: int) -> None:
    with TcpProxy(sink_port, plan=cut(1_500_000, cumulative=True)) as proxy:
        exchange(proxy.port, timeout=STALL_WAIT)
        exchange(proxy.port, timeout=STALL_WAIT)
        proxy.drop_all()
        wait_finished(2)
    assert [len(r) for r in RECEIVED] == [len(PAYLOAD), 1_500_000 - len(PAYLOAD)]
    assert [e.connection for e in proxy.events] == [1]


def test_stall_keeps_the_socket_open_and_forwards_nothing(echo_port: int) -> None:
    with TcpProxy(echo_port, plan=stall(100_000)) as proxy:
        started = time.monotonic()
        got, error = exchange(proxy.port, timeout=STALL_WAIT)
        waited = time.monotonic() - started
    assert isinstance(error, TimeoutError)  # no FIN, no RST: silence until our own timeout
    assert len(got) <= 100_000 and waited >= STALL_WAIT * 0.9
    assert proxy.injected("stall") == 1


def test_throttle_limits_the_rate_and_still_delivers(echo_port: int) -> None:
    rate = 1_000_000.0
    with TcpProxy(echo_port, plan=throttle(rate)) as proxy:
        started = time.monotonic()
        got, error = exchange(proxy.port)
        took = time.monotonic() - started
    assert got == PAYLOAD and error is None
    assert took >= len(PAYLOAD) / rate * 0.9  # paced (a lower bound only: the machine may be slower)


def test_random_cuts_stop_after_the_budget(echo_port: int) -> None:
    plan = RandomCuts(random.Random(7), budget=3, max_up=len(PAYLOAD) // 2, down_share=0.0)
    with TcpProxy(echo_port, plan=plan) as proxy:
        results = [exchange(proxy.port)[0] for _ in range(5)]
    assert proxy.injected("cut", "reset") == 3
    assert all(len(r) < len(PAYLOAD) for r in results[:3]) and results[3:] == [PAYLOAD, PAYLOAD]


def test_a_stopped_target_resets_new_connections() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]  # nothing listens here
    with TcpProxy(port) as proxy:
        got, error = exchange(proxy.port, b"x")
    assert got == b"" and (error is None or isinstance(error, ConnectionResetError))
