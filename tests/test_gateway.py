"""The pure parts of the gateway: which Host and Origin values are allowed, its config, the SSE event splitter."""

from __future__ import annotations

import json

import pytest

from mcp_agent_cloud.config import PlatformConfig, load_config
from mcp_agent_cloud.errors import ConfigError
from mcp_agent_cloud.platform.gateway import (
    _SSESplitter,
    allowed_hosts,
    allowed_origins,
    host_allowed,
    origin_allowed,
)


def rules(**config):
    cfg = PlatformConfig(**config)
    return allowed_hosts(cfg), allowed_origins(cfg)


def test_loopback_listener_allows_its_loopback_names_at_its_port_only():
    hosts, origins = rules(listen="127.0.0.1:8765")
    for host in ("127.0.0.1:8765", "localhost:8765", "LOCALHOST:8765", "[::1]:8765"):
        assert host_allowed(host, hosts), host
    for host in ("localhost", "localhost:8766", "evil.example:8765", "127.0.0.1.nip.io:8765", "", None):
        assert not host_allowed(host, hosts), host
    assert origin_allowed(None, origins)  # not a browser
    for origin in ("http://127.0.0.1:8765", "http://localhost:8765", "http://localhost:8765/"):
        assert origin_allowed(origin, origins), origin
    # Another port on the same machine is another site: refused unless configured.
    for origin in ("http://localhost:6274", "https://127.0.0.1:8765", "http://evil.example", "null"):
        assert not origin_allowed(origin, origins), origin


def test_public_url_and_wildcard_listener():
    hosts, origins = rules(listen="0.0.0.0:8765", public_url="https://mcp.example.com/")
    for host in ("mcp.example.com", "mcp.example.com:443", "localhost:8765", "127.0.0.1:8765"):
        assert host_allowed(host, hosts), host
    for host in ("0.0.0.0:8765", "10.0.0.5:8765", "mcp.example.com:8765"):
        assert not host_allowed(host, hosts), host
    assert origin_allowed("https://mcp.example.com", origins)
    assert not origin_allowed("http://mcp.example.com", origins)  # another scheme is another origin

    hosts, origins = rules(listen="10.0.0.5:9000", public_url="http://gw.internal:8080")
    assert host_allowed("10.0.0.5:9000", hosts) and host_allowed("gw.internal:8080", hosts)
    assert not host_allowed("localhost:9000", hosts)  # not listening on loopback
    assert not host_allowed("gw.internal", hosts)
    assert origin_allowed("http://gw.internal:8080", origins)
    assert not origin_allowed("http://localhost:9000", origins)


def test_configured_hosts_and_origins_with_patterns():
    hosts, origins = rules(gateway={"allowed_hosts": ["MCP.internal:*", "10.0.0.5:8765"],
                                    "allowed_origins": ["http://localhost:*", "https://app.example.com/"]})
    assert host_allowed("mcp.internal:1", hosts) and host_allowed("10.0.0.5:8765", hosts)
    assert not host_allowed("mcp.internal", hosts) and not host_allowed("mcp.internal:1.evil", hosts)
    assert not host_allowed("mcp.internal.evil:1", hosts)
    assert origin_allowed("http://localhost:6274", origins) and origin_allowed("https://app.example.com", origins)
    assert not origin_allowed("http://localhost.evil:1", origins)
    hosts, origins = rules(gateway={"allowed_hosts": ["*"], "allowed_origins": ["*"]})
    assert host_allowed("anything:1", hosts) and origin_allowed("https://any.where", origins)


@pytest.mark.parametrize("key,value,fragment", [
    ("allowed_origins", ["app.example.com"], "is not an origin"),
    ("allowed_origins", ["https://app.example.com/path"], "is not an origin"),
    ("allowed_hosts", ["https://mcp.example.com"], "is not a Host value"),
    ("max_message_bytes", 0, "greater than 0"),
    ("bogus", 1, "Extra inputs"),
])
def test_bad_gateway_config_is_refused(key, value, fragment):
    with pytest.raises(Exception) as caught:
        PlatformConfig(gateway={key: value})
    assert fragment in str(caught.value)


def test_gateway_keys_from_env_and_file(tmp_path, monkeypatch):
    path = tmp_path / "mcp_agent_cloud.config.yaml"
    path.write_text("gateway:\n  max_sessions_per_token: 5\n  allowed_origins: [http://localhost:6274]\n")
    monkeypatch.setenv("MCP_AGENT_CLOUD_GATEWAY__REQUEST_TIMEOUT", "12.5")
    monkeypatch.setenv("MCP_AGENT_CLOUD_GATEWAY__ALLOWED_HOSTS", "[mcp.internal, '10.0.0.5:*']")
    loaded = load_config(path)
    gw = loaded.config.gateway
    assert gw.request_timeout == 12.5 and gw.allowed_hosts == ["mcp.internal", "10.0.0.5:*"]
    assert gw.max_sessions_per_token == 5 and gw.allowed_origins == ["http://localhost:6274"]
    assert gw.max_message_bytes == 4 * 1024 * 1024 and gw.session_idle_timeout == 1800
    monkeypatch.setenv("MCP_AGENT_CLOUD_GATEWAY__MAX_SESSIONS_PER_DEPLOYMENT", "-1")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "env MCP_AGENT_CLOUD_GATEWAY__MAX_SESSIONS_PER_DEPLOYMENT: gateway.max_sessions_per_deployment" \
        in str(caught.value)


def test_sse_splitter_forwards_whole_events_and_notes_answers():
    s = _SSESplitter()
    first = b'event: message\r\ndata: {"jsonrpc": "2.0", "method": "notifications/progress"}\r\n\r\n'
    answer = b'event: message\ndata: {"jsonrpc": "2.0", "id": 7, "result": {}}\n\n'
    stream = first + answer + b"event: message\ndata: {\"jsonrpc\""
    out = b""
    for i in range(len(stream)):  # byte by byte: every split point, "\r" | "\n" included
        out += s.feed(stream[i:i + 1])
    assert out == first + answer
    assert s.buf == b"event: message\ndata: {\"jsonrpc\""
    assert s.answered == {json.dumps(7)}
    s2 = _SSESplitter()
    event = b'data: [{"jsonrpc": "2.0", "id": "a", "error": {"code": 1, "message": "x"}}]\r\r'
    assert s2.feed(event) == b""  # a final "\r" may be half of "\r\n": wait for the next byte
    assert s2.feed(b"data") == event
    assert s2.answered == {json.dumps("a")}


def test_sse_request_deadlines_end_with_their_answers():
    """The SSE bridge's gateway.request_timeout for a request lives only until the request is answered: no task
    per request sleeping out the whole timeout. Real parts: an SDK server over Streamable HTTP upstream, the
    bridge's own pump, the gateway's session table."""
    import asyncio

    import anyio
    import httpx
    import mcp_types as types
    import uvicorn
    from mcp.server.mcpserver import MCPServer
    from mcp.shared.message import SessionMessage

    from mcp_agent_cloud.config import GatewayConfig
    from mcp_agent_cloud.hookspecs.types import Identity
    from mcp_agent_cloud.platform.bridge import Bridge, SseConnection
    from mcp_agent_cloud.platform.gateway import Gateway, Target
    from tests.conftest import free_port

    upstream = MCPServer("upstream")

    @upstream.tool()
    def hello() -> str:
        return "hello"

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(upstream.streamable_http_app(), host="127.0.0.1", port=port,
                                           log_level="warning"))

    def expire_tasks() -> list:
        return [t for t in asyncio.all_tasks() if t.get_name().endswith("._expire")]

    async def main() -> None:
        async with anyio.create_task_group() as tg, httpx.AsyncClient() as http:
            tg.start_soon(server.serve)
            with anyio.fail_after(30):
                while not server.started:
                    await anyio.sleep(0.05)
            gateway = Gateway(None, GatewayConfig(request_timeout=600), http)
            bridge = Bridge(gateway)
            target = Target(key="default.up", org="default", name="up", url=f"http://127.0.0.1:{port}/mcp",
                            instance_id="i1")
            identity = Identity(subject="tester", org="default", provider="builtin", token_id="t1")
            conn = SseConnection(bridge, target, identity)
            conn.session_id = gateway.open_session(target, identity, "sse", conn.close)
            to_pump, client_read = anyio.create_memory_object_stream(10)
            client_write, from_pump = anyio.create_memory_object_stream(10)
            tg.start_soon(conn._pump, client_read, client_write)

            async def ask(request_id: int, method: str, params: dict | None = None) -> types.JSONRPCResponse:
                request = types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method, params=params)
                await to_pump.send(SessionMessage(request))
                with anyio.fail_after(30):
                    answer = (await from_pump.receive()).message
                assert isinstance(answer, types.JSONRPCResponse) and answer.id == request_id, answer
                return answer

            await ask(1, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                        "clientInfo": {"name": "t", "version": "0"}})
            await to_pump.send(SessionMessage(types.JSONRPCNotification(jsonrpc="2.0",
                                                                        method="notifications/initialized")))
            for request_id in range(2, 12):
                await ask(request_id, "tools/call", {"name": "hello", "arguments": {}})
            assert conn.pending == {}
            with anyio.fail_after(10):  # far less than the 600 s request timeout
                while expire_tasks():
                    await anyio.sleep(0.05)
            await to_pump.aclose()  # the client went away: the pump ends its upstream session
            server.should_exit = True
            await bridge.aclose()

    anyio.run(main)
