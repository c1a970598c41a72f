"""The gateway's HTTP/1.1 client to app instances: keep-alive connections on asyncio protocols, with responses parsed
by httptools (C).

The relay is the platform's hot path and needs little of a general client: plain HTTP to loopback ports, a request
it writes itself, and a response whose body it streams on unchanged. httpcore2's pure-Python h11 parsing was the
largest part of the gateway's CPU per call (docs/benchmarks.md), so the relay uses this instead; everything else
(the SDK transports, control requests) uses httpx2.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

# Reading pauses while this much of a body is waiting for the client, so a slow client holds the upstream back.
HIGH_WATER = 256 * 1024
# Below uvicorn's default keep-alive timeout (5 s): an idle connection is not reused when the server may be closing it.
IDLE_SECONDS = 4.0


class UpstreamError(Exception):
    """The request to the instance failed: no connection, or the connection broke, or the answer was not HTTP."""


class ConnectError(UpstreamError):
    pass


class ReadError(UpstreamError):
    pass


class RemoteProtocolError(UpstreamError):
    pass


class Response:
    """One response: ``status`` and ``headers`` (lower-case names, bytes) when returned; the body streams."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: UpstreamError | None = None
        self.received = False  # any byte of it arrived

    async def aiter_stream(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < HIGH_WATER:
                    self._conn.resume()
                yield chunk
            elif self._error is not None:
                raise self._error
            elif self._done:
                return
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter

    async def aclose(self) -> None:
        """Give the response up; a connection whose response was not read to its end is closed, not reused."""
        if not self._done and self._error is None:
            self._error = ReadError("the response was closed before its end")
            self._conn.close()
        self._chunks.clear()

    # -- fed by the connection ---------------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _end(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._done or self._error is not None:
            return
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
        self._wake()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        self.used = False  # it carried a request before the current one

    # -- asyncio.Protocol --------------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # nothing was asked: a server talking out of turn
            self.close()
            return
        response.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(RemoteProtocolError(f"the instance did not answer in HTTP/1.1: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if self.response is not None:
            why = f": {exc}" if exc else ""
            self.response._fail(ReadError(f"the instance closed the connection before the response ended{why}"))

    # -- httptools callbacks -----------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        response = self.response
        if response is not None and not response._head.done():
            response.status = self.parser.get_status_code()
            response._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._body(body)

    def on_message_complete(self) -> None:
        response, self.response = self.response, None
        if response is not None:
            response._end()
        if self.parser.should_keep_alive() and not self.closed:
            self.used = True
            self.pool._release(self)
        else:
            self.close()

    # -- used by the pool and the response ---------------------------------------------------------------------

    def send(self, data: bytes, response: Response) -> None:
        self.response = response
        self.transport.write(data)

    def pause(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool._forget(self)
            self.transport.close()


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to instances, by host and port. No cap: each carries one client request at a
    time, and a standing GET stream holds its connection while it is open."""

    def __init__(self, *, connect_timeout: float = 5.0, max_idle_per_host: int = 100) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle_per_host = max_idle_per_host
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._all: set[_Connection] = set()

    async def request(self, method: bytes, url: str, headers: list[tuple[bytes, bytes]], body: bytes = b"",
                      query: bytes = b"") -> Response:
        """Send one request and return once the response's status and headers are in. Host and (for a POST or a
        body) Content-Length are added here; ``headers`` must not hold them."""
        host, port, path, netloc = _split(url)
        target = path + b"?" + query if query else path
        framing = b"content-length: %d\r\n" % len(body) if body or method == b"POST" else b""
        head = b"".join([method, b" ", target, b" HTTP/1.1\r\nhost: ", netloc, b"\r\n", framing,
                         *[k + b": " + v + b"\r\n" for k, v in headers], b"\r\n"])
        for attempt in (0, 1):
            conn = self._idle_connection((host, port)) or await self._connect(host, port)
            response = Response(conn)
            conn.send(head + body if body else head, response)
            try:
                await response._head
                return response
            except ReadError:
                # A kept-alive connection the instance closed as the request went out: nothing was answered, so
                # the request is sent once more on a new connection.
                if attempt or not conn.used or response.received:
                    raise
            except BaseException:  # cancelled (a timeout, the client gone): the connection is in an unknown state
                conn.close()
                raise
        raise AssertionError("unreachable")

    def _idle_connection(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.close()
        return None

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(self, (host, port)), host, port)
        except TimeoutError:
            raise ConnectError(f"no connection to {host}:{port} within {self.connect_timeout:g}s") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        self._all.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        conn.resume()  # its last response may have paused reading; that response has all of its body now
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle_per_host:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()


@functools.lru_cache(maxsize=1024)
def _split(url: str) -> tuple[str, int, bytes, bytes]:
    """An instance URL as the pool uses it: host, port, path, and the Host header."""
    u = urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise ConnectError(f"the relay speaks plain HTTP to instances, not {url!r}; the builder gave an instance URL "
                           "the gateway cannot reach (report it to the builder plugin's authors)")
    return u.hostname, u.port or 80, (u.path or "/").encode(), u.netloc.encode()
