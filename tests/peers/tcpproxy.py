"""A TCP proxy on 127.0.0.1 that misbehaves on purpose: it cuts, resets, stalls or throttles a stream.

Put it between our client and a real SFTP server (OpenSSH sshd or the embedded server) to inject network
faults without touching the code under test::

    with TcpProxy(server_port, plan=cut(1_000_000)) as proxy:
        endpoint = {..., "port": proxy.port}
        ...
    assert proxy.injected("cut") == 1

A :class:`Fault` says what happens to one connection once a byte count is reached in one direction
(``UP`` is client → server, ``DOWN`` is server → client), counted in that connection or, with
``cumulative=True``, over every connection of the proxy:

* ``pass`` — forward everything;
* ``cut`` — forward exactly ``at`` bytes, then close both sides (FIN);
* ``reset`` — forward ``at`` bytes, then reset both sides (RST, via ``SO_LINGER`` 0);
* ``stall`` — forward ``at`` bytes, then forward nothing more either way while keeping both sockets open
  and reading (a black hole: no FIN, no RST, just silence);
* ``throttle`` — forward everything, at most ``rate`` bytes/s per direction.

The *plan* gives each new connection its fault: a fixed :class:`Fault`, or a callable of the connection
index (0, 1, …) — :class:`RandomCuts` is one that cuts a budget of connections at seeded random offsets.
Every injected fault is recorded as an :class:`Event` with its ``time.monotonic()`` timestamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
UP = "up"  # client → server
DOWN = "down"  # server → client
LOOPBACK = "127.0.0.1"
# Why 64 KiB: large enough that the proxy costs little on loopback, small enough that cut offsets are exact
# (a read is split at the offset anyway) and throttling stays smooth.
CHUNK = 64 * 1024
# Why 16 KiB: a throttled stream is paced per read; smaller reads make the rate even at low speeds.
THROTTLE_CHUNK = 16 * 1024
# Why 10 s: starting and stopping the proxy's loop takes milliseconds; longer means a hang.
THREAD_TIMEOUT = 10.0

KINDS = frozenset({"pass", "cut", "reset", "stall", "throttle"})


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str = "pass"
    at: int = 0  # cut/reset/stall: bytes forwarded in ``direction`` before the fault
    direction: str = UP
    cumulative: bool = False  # count ``at`` over all connections of the proxy, not per connection
    rate: float = 0.0  # throttle: bytes per second, per direction

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
        assert self.direction in (UP, DOWN), self.direction
        assert self.at >= 0 and (self.kind != "throttle" or self.rate > 0), self


PASS = Fault()


def cut(at: int, direction: str = UP, *, cumulative: bool = False) -> Fault:
    return Fault("cut", at, direction, cumulative)


def reset(at: int, direction: str = UP, *, cumulative: bool = False) -> Fault:
    return Fault("reset", at, direction, cumulative)


def stall(at: int = 0, direction: str = UP, *, cumulative: bool = False) -> Fault:
    return Fault("stall", at, direction, cumulative)


def throttle(rate: float) -> Fault:
    return Fault("throttle", rate=rate)


Plan = Callable[[int], Fault]  # connection index → the fault for that connection


@dataclass
class RandomCuts:
    """A plan: the first connections each get a cut or reset at a seeded random offset, until ``budget``
    faults were actually *injected* (a connection that ends before its offset does not count); after
    that, every connection passes. Offsets are uniform in ``[0, max_up]`` (client → server) or
    ``[0, max_down]`` (server → client); ``down_share`` of the faults count the server's bytes."""

    rng: random.Random
    budget: int
    max_up: int
    max_down: int = 16 * 1024
    down_share: float = 0.2
    reset_share: float = 0.3
    proxy: TcpProxy | None = None  # set by TcpProxy: to know how many were injected

    def __call__(self, _index: int) -> Fault:
        injected = self.proxy.injected("cut", "reset") if self.proxy else 0
        if injected >= self.budget:
            return PASS
        kind = "reset" if self.rng.random() < self.reset_share else "cut"
        if self.rng.random() < self.down_share:
            return Fault(kind, self.rng.randint(0, self.max_down), DOWN)
        return Fault(kind, self.rng.randint(0, self.max_up), UP)


@dataclass(frozen=True, slots=True)
class Event:
    time: float  # time.monotonic() when the fault was injected
    wall: float  # time.time() then (to compare with log records' ``created``)
    kind: str
    connection: int
    direction: str
    offset: int  # bytes forwarded in that direction (per connection) when it happened


@dataclass(eq=False)
class _Connection:
    index: int
    fault: Fault
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    moved: dict[str, int] = field(default_factory=lambda: {UP: 0, DOWN: 0})
    stalled: bool = False
    done: bool = False


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host:target_port`` with faults; a context manager."""

    def __init__(self, target_port: int, target_host: str = LOOPBACK, *, plan: Plan | Fault = PASS) -> None:
        self.target = (target_host, target_port)
        self._plan: Plan = _as_plan(plan)
        if isinstance(plan, RandomCuts):
            plan.proxy = self
        self.events: list[Event] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._totals = {UP: 0, DOWN: 0}
        self._live: set[_Connection] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    def __repr__(self) -> str:
        return f"TcpProxy({LOOPBACK}:{self.port} → {self.target[0]}:{self.target[1]}, events={len(self.events)})"

    # -- life cycle ---------------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._handle, LOOPBACK, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(THREAD_TIMEOUT)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- control and inspection (from any thread) ------------------------------------------------

    def set_plan(self, plan: Plan | Fault) -> None:
        """Faults for connections opened from now on (open ones keep theirs)."""
        if isinstance(plan, RandomCuts):
            plan.proxy = self
        with self._lock:
            self._plan = _as_plan(plan)

    def stall_now(self) -> None:
        """Black-hole every open connection from now on (both sockets stay open)."""
        self._call(self._stall_all())

    def drop_all(self) -> None:
        """Reset every open connection now (as a crashed middlebox would)."""
        self._call(self._drop_all())

    def injected(self, *kinds: str) -> int:
        with self._lock:
            return sum(1 for e in self.events if not kinds or e.kind in kinds)

    def first(self, kind: str) -> Event | None:
        with self._lock:
            return next((e for e in self.events if e.kind == kind), None)

    # -- the proxy (on its own loop) ----------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(THREAD_TIMEOUT)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._drop_all()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=THREAD_TIMEOUT / 2)
        if self._server is not None:
            await self._server.wait_closed()

    async def _stall_all(self) -> None:
        for conn in list(self._live):
            if not conn.stalled:
                conn.fault = stall(conn.moved[UP])
                self._inject(conn, UP)

    async def _drop_all(self) -> None:
        for conn in list(self._live):
            _abort(conn.client, rst=True)
            _abort(conn.server, rst=True)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(client_r, client_w)
        finally:
            self._handlers.discard(task)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        with self._lock:
            index = self.connections
            self.connections += 1
            plan = self._plan
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(client_w, rst=True)  # the server is down: the client sees its connection reset
            return
        conn = _Connection(index, plan(index), client_w, server_w)
        self._live.add(conn)
        try:
            await asyncio.gather(self._pump(conn, UP, client_r, server_w), self._pump(conn, DOWN, server_r, client_w))
        finally:
            self._live.discard(conn)
            _abort(client_w, rst=False)
            _abort(server_w, rst=False)
            await asyncio.sleep(0)  # let the transports finish closing

    async def _pump(
        self, conn: _Connection, direction: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        fault = conn.fault
        size = THROTTLE_CHUNK if fault.kind == "throttle" else CHUNK
        started = time.monotonic()
        try:
            while not conn.done:
                data = await reader.read(size)
                if not data:
                    if not conn.stalled:
                        with contextlib.suppress(OSError, RuntimeError):
                            writer.write_eof()  # pass the half-close on
                    return
                if conn.stalled:
                    continue  # black hole: swallow
                if fault.kind in ("cut", "reset", "stall") and fault.direction == direction:
                    position = self._totals[direction] if fault.cumulative else conn.moved[direction]
                    left = fault.at - position
                    if left <= len(data):
                        self._forward(conn, direction, writer, data[: max(left, 0)])
                        with contextlib.suppress(ConnectionError, RuntimeError):
                            await writer.drain()
                        self._inject(conn, direction)
                        if conn.stalled:
                            continue
                        return
                self._forward(conn, direction, writer, data)
                await writer.drain()
                if fault.kind == "throttle":
                    ahead = started + conn.moved[direction] / fault.rate - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        except (ConnectionError, OSError, RuntimeError):
            return
        finally:
            if not conn.stalled:
                conn.done = True

    def _forward(self, conn: _Connection, direction: str, writer: asyncio.StreamWriter, data: bytes) -> None:
        if data:
            writer.write(data)
            conn.moved[direction] += len(data)
            self._totals[direction] += len(data)

    def _inject(self, conn: _Connection, direction: str) -> None:
        kind = conn.fault.kind
        with self._lock:
            self.events.append(Event(time.monotonic(), time.time(), kind, conn.index, direction, conn.moved[direction]))
        if kind == "stall":
            conn.stalled = True
            return
        conn.done = True
        _abort(conn.client, rst=kind == "reset")
        _abort(conn.server, rst=kind == "reset")


def _as_plan(plan: Plan | Fault) -> Plan:
    if isinstance(plan, Fault):
        return lambda _index: plan
    return plan


def _abort(writer: asyncio.StreamWriter, *, rst: bool) -> None:
    """Close a side: with ``rst`` an immediate RST (SO_LINGER 0), else an orderly FIN."""
    transport = writer.transport
    if transport.is_closing():
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
