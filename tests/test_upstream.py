"""The gateway's relay client (core/platform/upstream.py) against real sockets: a scripted asyncio server, so each
test controls exactly what the instance sends and when it closes."""

from __future__ import annotations

import asyncio

import pytest

from mcp_agent_cloud.platform import upstream
from mcp_agent_cloud.platform.upstream import ConnectError, ReadError, RemoteProtocolError, UpstreamPool
from mcp_agent_cloud.testing import free_port
from tests.contracts import async_test


class Server:
    """Answers each request with what ``answer(n, request_bytes)`` returns (bytes, or None to close without an
    answer); counts connections and requests."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + (await reader.readexactly(length) if length else b"")
                self.requests.append(request)
                out = self.answer(len(self.requests), request)
                if out is None:
                    break
                for part in out if isinstance(out, list) else [out]:
                    if isinstance(part, float):
                        await asyncio.sleep(part)
                        continue
                    writer.write(part)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/mcp"

    async def __aexit__(self, *exc) -> None:
        for w in self.writers:
            w.close()
        self.server.close()


def ok(body: bytes = b"hi", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%b\r\n%b" % (len(body), extra, body)


async def read(response) -> bytes:
    return b"".join([chunk async for chunk in response.aiter_stream()])


@async_test
async def test_requests_reuse_one_kept_alive_connection_and_send_what_they_are_given() -> None:
    server = Server(lambda n, req: ok(b"answer %d" % n, b"Mcp-Session-Id: s1\r\n"))
    pool = UpstreamPool()
    async with server as url:
        for n in (1, 2, 3):
            body = b'{"n": %d}' % n
            r = await pool.request(b"POST", url, [(b"x-trace", b"%d" % n)], body, query=b"a=1")
            assert r.status == 200 and (b"mcp-session-id", b"s1") in r.headers  # names come lower case
            assert await read(r) == b"answer %d" % n
        assert server.connections == 1
        # Host and Content-Length come from the pool, the caller's headers after them
        port = url.split(":")[2].split("/")[0].encode()
        assert server.requests[0].startswith(b"POST /mcp?a=1 HTTP/1.1\r\nhost: 127.0.0.1:%b\r\n"
                                             b"content-length: 8\r\nx-trace: 1\r\n\r\n" % port)
        assert server.requests[2].endswith(b'\r\n\r\n{"n": 3}')
    await pool.aclose()


@async_test
async def test_a_chunked_body_larger_than_the_high_water_mark_streams_whole(monkeypatch) -> None:
    monkeypatch.setattr(upstream, "HIGH_WATER", 1024)  # so reading pauses and resumes many times
    pieces = [bytes([65 + i % 26]) * 700 for i in range(60)]
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    server = Server(lambda n, req: [head, chunked] if n == 1 else ok())
    pool = UpstreamPool()
    async with server as url:
        r = await pool.request(b"GET", url, [])
        got = []
        async for chunk in r.aiter_stream():
            got.append(chunk)
            await asyncio.sleep(0)  # a slow reader
        assert b"".join(got) == b"".join(pieces)
        r2 = await pool.request(b"GET", url, [])  # the paused-and-resumed connection is reused and reads
        assert await read(r2) == b"hi" and server.connections == 1
    await pool.aclose()


@async_test
async def test_a_connection_released_while_reading_was_paused_reads_again(monkeypatch) -> None:
    # The whole answer arrives in one read while the client reads none of it: reading pauses at the high-water
    # mark, the message still ends (its bytes were in), and the connection goes back to the pool; the next
    # request on it must get its answer.
    monkeypatch.setattr(upstream, "HIGH_WATER", 1024)
    pieces = [b"z" * 70] * 60
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    server = Server(lambda n, req: head + chunked if n == 1 else ok(b"second"))
    pool = UpstreamPool()
    async with server as url:
        first = await pool.request(b"GET", url, [])
        for _ in range(100):
            if first._done:
                break
            await asyncio.sleep(0.01)
        assert first._done, "the first answer did not arrive in one piece; the test needs it to"
        async with asyncio.timeout(5):
            assert await read(await pool.request(b"GET", url, [])) == b"second"
        assert await read(first) == b"".join(pieces) and server.connections == 1
    await pool.aclose()


@async_test
async def test_a_kept_alive_connection_closed_by_the_instance_is_retried_once_on_a_new_one() -> None:
    # The second request arrives on the kept-alive connection and the server closes it without answering (as a
    # server does when its keep-alive timeout ends just then): the pool sends it again on a new connection.
    server = Server(lambda n, req: None if n == 2 else ok(b"n%d" % n))
    pool = UpstreamPool()
    async with server as url:
        assert await read(await pool.request(b"GET", url, [])) == b"n1"
        assert await read(await pool.request(b"GET", url, [])) == b"n3"
        assert server.connections == 2 and len(server.requests) == 3
    await pool.aclose()


@async_test
async def test_a_new_connection_closed_without_an_answer_is_an_error_not_a_retry() -> None:
    server = Server(lambda n, req: None)
    pool = UpstreamPool()
    async with server as url:
        with pytest.raises(ReadError, match="closed the connection before the response ended"):
            await pool.request(b"GET", url, [])
        assert len(server.requests) == 1
    await pool.aclose()


@async_test
async def test_a_body_cut_off_midway_raises_and_the_connection_is_not_reused() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"
    server = Server(lambda n, req: [head, b"x" * 10, 0.05, b"y" * 5] if n == 1 else None)
    pool = UpstreamPool()
    async with server as url:
        r = await pool.request(b"GET", url, [])
        writer = server.writers[0]
        chunks = []
        with pytest.raises(ReadError):
            async for chunk in r.aiter_stream():
                chunks.append(chunk)
                if sum(map(len, chunks)) >= 15:
                    writer.transport.abort()
        assert b"".join(chunks) == b"x" * 10 + b"y" * 5
        assert pool._idle.get(("127.0.0.1", int(url.split(":")[2].split("/")[0]))) in (None, [])
    await pool.aclose()


@async_test
async def test_closing_a_response_early_closes_its_connection() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    server = Server(lambda n, req: [head, b"5\r\nfirst\r\n", 5.0] if n == 1 else ok(b"second"))
    pool = UpstreamPool()
    async with server as url:
        r = await pool.request(b"GET", url, [])
        async for chunk in r.aiter_stream():
            assert chunk == b"first"
            break
        await r.aclose()
        assert await read(await pool.request(b"GET", url, [])) == b"second"
        assert server.connections == 2
    await pool.aclose()


@async_test
async def test_not_http_is_a_protocol_error_and_refused_is_a_connect_error() -> None:
    server = Server(lambda n, req: b"SSH-2.0-OpenSSH\r\n\r\n")
    pool = UpstreamPool()
    async with server as url:
        with pytest.raises(RemoteProtocolError, match="did not answer in HTTP/1.1"):
            await pool.request(b"GET", url, [])
    port = free_port()
    with pytest.raises(ConnectError, match=f"cannot connect to 127.0.0.1:{port}"):
        await pool.request(b"GET", f"http://127.0.0.1:{port}/mcp", [])
    with pytest.raises(ConnectError, match="plain HTTP"):
        await pool.request(b"GET", "https://127.0.0.1:1/mcp", [])
    await pool.aclose()


@async_test
async def test_a_cancelled_request_leaves_no_connection_for_the_next_one() -> None:
    server = Server(lambda n, req: [1.0, ok(b"late")] if n == 1 else ok(b"next"))
    pool = UpstreamPool()
    async with server as url:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await pool.request(b"GET", url, [])
        # The late answer of the first request must not be taken for the second's.
        assert await read(await pool.request(b"GET", url, [])) == b"next"
        assert server.connections == 2
    await pool.aclose()
