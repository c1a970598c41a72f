"""The MCP gateway over the wire: a real platform, a real app, raw HTTP and the real mcp SDK client.

Host/Origin checks before auth, CORS, gateway-minted session ids bound to the caller, 404 for dead sessions,
message size, protocol version, session limits, idle reaping, request timeouts and redeploys.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import PlatformProcess, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.network]

APP = '''
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer


class JsonServer(MCPServer):
    """Answers each POST with plain JSON once the result is ready: no response headers before that."""

    def streamable_http_app(self, **kw):
        kw["json_response"] = True
        return super().streamable_http_app(**kw)


def add_tools(server):
    @server.tool()
    def greet(name: str = "world") -> str:
        return f"Hello, {name}!"

    @server.tool()
    async def slow(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "done"

    @server.tool()
    async def slow_marked(seconds: float, path: str) -> str:
        """Sleeps, then writes "done" to path; "cancelled" if the call is cancelled first."""
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            Path(path).write_text("cancelled")
            raise
        Path(path).write_text("done")
        return "done"


mcp = MCPServer("gw")
add_tools(mcp)
jmcp = JsonServer("gwjson")
add_tools(jmcp)
'''

ACCEPT = {"Accept": "application/json, text/event-stream"}
VERSION = "2025-06-18"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gwapp")
    (path / "main.py").write_text(APP)
    (path / "requirements.txt").write_text("mcp>=2.3,<3\n")  # as examples/hello: the venv is shared
    return path


def start_platform(root: Path, envs: Path, gateway: str) -> PlatformProcess:
    p = PlatformProcess(root, envs, extra_config=f"gateway: {gateway}\n")
    p.start()
    return p


@pytest.fixture(scope="module")
def gw(tmp_path_factory, shared_envs, app_dir):
    p = start_platform(tmp_path_factory.mktemp("gw"), shared_envs,
                       "{allowed_origins: ['http://allowed.example:3000'], allowed_hosts: ['mcp.internal:*'], "
                       "max_message_bytes: 65536, request_timeout: 3, max_sessions_per_token: 3}")
    try:
        p.cli_json("deploy", "app", str(app_dir), "--name", "gw", "--app", "main:mcp")
        p.cli_json("deploy", "app", str(app_dir), "--name", "gwjson", "--app", "main:jmcp")
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def tight(tmp_path_factory, shared_envs, app_dir):
    p = start_platform(tmp_path_factory.mktemp("tight"), shared_envs,
                       "{session_idle_timeout: 1, max_sessions_per_deployment: 2}")
    try:
        p.cli_json("deploy", "app", str(app_dir), "--name", "gw", "--app", "main:mcp")
        yield p
    finally:
        p.stop()


def new_token(p: PlatformProcess, subject: str) -> str:
    return p.cli_json("admin", "token", "--org", "default", "--role", "developer", "--subject", subject)["token"]


def endpoint(p: PlatformProcess, name: str = "gw") -> str:
    return f"{p.url}/servers/{name}/mcp"


def post(url: str, token: str | None, body, sid: str | None = None, headers: dict | None = None,
         **kw) -> httpx.Response:
    h = {**ACCEPT, **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    if sid:
        h["Mcp-Session-Id"] = sid
        h.setdefault("MCP-Protocol-Version", VERSION)
    if isinstance(body, (bytes, str)) or hasattr(body, "__iter__") and not isinstance(body, (dict, list)):
        return httpx.post(url, content=body, headers={"Content-Type": "application/json", **h}, timeout=60, **kw)
    return httpx.post(url, json=body, headers=h, timeout=60, **kw)


def request(method: str, params: dict | None = None) -> dict:
    return {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": params or {}}


def initialize() -> dict:
    return request("initialize", {"protocolVersion": VERSION, "capabilities": {},
                                  "clientInfo": {"name": "gateway-test", "version": "0"}})


def messages(r: httpx.Response) -> list[dict]:
    """The JSON-RPC messages of a response, whether it came as JSON or as an SSE stream."""
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        out = []
        for block in r.text.replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].lstrip() for line in block.split("\n") if line.startswith("data:"))
            if data:
                out.append(json.loads(data))
        return out
    body = r.json()
    return body if isinstance(body, list) else [body]


def open_session(url: str, token: str) -> str:
    r = post(url, token, initialize())
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    assert "result" in messages(r)[-1], r.text
    r = post(url, token, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid=sid)
    assert r.status_code == 202, r.text
    return sid


def call(url: str, token: str, sid: str, tool: str, args: dict) -> httpx.Response:
    return post(url, token, request("tools/call", {"name": tool, "arguments": args}), sid=sid)


def text_of(r: httpx.Response) -> str:
    (result,) = [m for m in messages(r) if "result" in m]
    return result["result"]["content"][0]["text"]


def rpc_error(r: httpx.Response) -> dict:
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["jsonrpc"] == "2.0", body
    return body["error"]


# -- Host and Origin, before auth ---------------------------------------------------------------------------------


def test_foreign_host_is_refused_before_auth(gw):
    for path in ("/servers/gw/mcp", "/api/v1/deployments", "/api/v1/whoami"):
        r = httpx.post(gw.url + path, headers={"Host": "evil.example", **ACCEPT}, json=initialize())
        assert r.status_code == 421, (path, r.status_code, r.text)
        text = r.text
        assert "evil.example" in text and "gateway.allowed_hosts" in text and "Host" in text
    body = httpx.get(gw.url + "/servers/gw/mcp", headers={"Host": "evil.example:80"}).json()
    assert body["error"]["data"] == {"header": "Host", "value": "evil.example:80",
                                     "config_key": "gateway.allowed_hosts"}
    # Allowed names get as far as auth: 401 without a token, served with one.
    for host in ("mcp.internal:1234", f"localhost:{gw.port}", f"127.0.0.1:{gw.port}"):
        r = httpx.get(gw.url + "/api/v1/whoami", headers={"Host": host})
        assert r.status_code == 401, (host, r.text)
    r = httpx.get(gw.url + "/api/v1/whoami", headers={"Host": "mcp.internal:1", "Authorization": f"Bearer {gw.token}"})
    assert r.status_code == 200 and r.json()["org"] == "default"
    # Probes address the platform by IP: /healthz answers whatever the Host.
    assert httpx.get(gw.url + "/healthz", headers={"Host": "10.1.2.3:9"}).status_code == 200


def test_origin_is_checked_and_cors_only_for_allowed_origins(gw):
    url = endpoint(gw)
    # Another port on the same machine is another origin: a page there must not drive the platform.
    for origin in ("http://evil.example", "http://127.0.0.1:9999", "http://localhost:6274", "null"):
        r = post(url, None, initialize(), headers={"Origin": origin})
        assert r.status_code == 403, (origin, r.text)
        error = rpc_error(r)
        assert error["data"] == {"header": "Origin", "value": origin, "config_key": "gateway.allowed_origins"}
        assert "access-control-allow-origin" not in r.headers
    r = httpx.get(gw.url + "/api/v1/deployments", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["config_key"] == "gateway.allowed_origins"

    # The configured origin passes (to auth: 401, which the page can read thanks to the CORS headers) ...
    origin = "http://allowed.example:3000"
    r = post(url, None, initialize(), headers={"Origin": origin})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == origin
    assert "mcp-session-id" in r.headers["access-control-expose-headers"].lower()
    # ... and with a token it opens a session whose id the page may read.
    r = post(url, gw.token, initialize(), headers={"Origin": origin})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    assert httpx.request("DELETE", url, headers={"Authorization": f"Bearer {gw.token}", "Origin": origin,
                                                 "Mcp-Session-Id": r.headers["mcp-session-id"]}).status_code == 200
    # Preflight, before auth.
    r = httpx.options(url, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                    "Access-Control-Request-Headers": "authorization, mcp-session-id"})
    assert r.status_code == 204, r.text
    assert r.headers["access-control-allow-origin"] == origin
    allowed = r.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "content-type", "mcp-session-id", "mcp-protocol-version", "last-event-id"):
        assert header in allowed
    assert "DELETE" in r.headers["access-control-allow-methods"]
    r = httpx.options(url, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    # The platform's own origin is allowed; no Origin at all (non-browser clients) too.
    assert post(url, None, initialize(), headers={"Origin": gw.url}).status_code == 401
    assert post(url, None, initialize()).status_code == 401


# -- Sessions ------------------------------------------------------------------------------------------------------


def test_sdk_client_end_to_end_with_gateway_session_ids(gw):
    from mcp_agent_cloud.client import mcp_client

    url = endpoint(gw)

    async def run(mode: str) -> list[str]:
        async with mcp_client(url, gw.token, mode=mode, read_timeout=60) as client:
            tools = await client.list_tools()
            result = await client.call_tool("greet", {"name": mode})
            return [t.name for t in tools.tools] + [result.content[0].text]

    for mode in ("legacy", "auto"):  # the initialize handshake, and the stateless 2026-07-28 protocol
        got = anyio.run(run, mode)
        assert {"greet", "slow"} <= set(got) and got[-1] == f"Hello, {mode}!"

    # The id the client sees is the gateway's: the instance itself does not know it.
    token = new_token(gw, "rewrite")
    sid = open_session(url, token)
    assert text_of(call(url, token, sid, "greet", {"name": "a"})) == "Hello, a!"
    upstream = gw.instance("gw")["url"]
    direct = post(upstream, None, request("tools/list"), sid=sid)
    assert direct.status_code == 404
    assert post(url, token, {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, sid=sid).status_code == 200


def test_unknown_foreign_and_deleted_sessions_get_404(gw):
    url = endpoint(gw)
    owner, other = new_token(gw, "owner"), new_token(gw, "other")

    def assert_404(r: httpx.Response) -> None:
        assert r.status_code == 404, r.text
        error = rpc_error(r)
        # The code and words of the SDK's own servers (-32001 is the SDK's request timeout).
        assert error["code"] == -32600 and error["message"].startswith("Session not found"), error
        assert r.json()["id"] is None

    assert_404(post(url, owner, request("tools/list"), sid="no-such-session"))
    assert_404(httpx.get(url, headers={**ACCEPT, "Authorization": f"Bearer {owner}", "Mcp-Session-Id": "nope"}))

    sid = open_session(url, owner)
    # Another token of the same org cannot use (or end) it ...
    assert_404(post(url, other, request("tools/list"), sid=sid))
    assert_404(httpx.request("DELETE", url, headers={"Authorization": f"Bearer {other}", "Mcp-Session-Id": sid}))
    # ... and neither can the owner on another deployment.
    assert_404(post(endpoint(gw, "gwjson"), owner, request("tools/list"), sid=sid))
    assert text_of(call(url, owner, sid, "greet", {"name": "still"})) == "Hello, still!"

    r = httpx.request("DELETE", url, headers={"Authorization": f"Bearer {owner}", "Mcp-Session-Id": sid,
                                              "MCP-Protocol-Version": VERSION})
    assert r.status_code == 200, r.text
    assert_404(call(url, owner, sid, "greet", {}))


def test_client_disconnect_closes_the_upstream_stream(gw):
    url = endpoint(gw)
    token = new_token(gw, "disconnect")
    sid = open_session(url, token)
    headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {token}", "Mcp-Session-Id": sid,
               "MCP-Protocol-Version": VERSION}
    with httpx.stream("GET", url, headers=headers, timeout=30) as first:
        assert first.status_code == 200
        # The instance allows one GET stream per session ...
        with httpx.stream("GET", url, headers=headers, timeout=30) as second:
            assert second.status_code == 409
    # ... so a second one opens only once the gateway closed its upstream side of the first.

    def reopened() -> bool:
        with httpx.stream("GET", url, headers=headers, timeout=30) as again:
            return again.status_code == 200

    wait_for(reopened, timeout=30, what="a new GET stream after the client closed the first")


def test_session_limit_per_token(gw):
    url = endpoint(gw)
    token = new_token(gw, "limited")
    sids = [open_session(url, token) for _ in range(3)]
    r = post(url, token, initialize())
    assert r.status_code == 429, r.text
    error = rpc_error(r)
    assert error["data"]["config_key"] == "gateway.max_sessions_per_token" and error["data"]["value"] == 3
    assert "gateway.max_sessions_per_token" in error["message"]
    assert r.json()["id"] is not None  # the initialize request's id
    # Another token is not affected; ending one session frees a slot.
    sid = open_session(url, new_token(gw, "unlimited"))
    assert text_of(call(url, token, sids[0], "greet", {"name": "x"})) == "Hello, x!"
    httpx.request("DELETE", url, headers={"Authorization": f"Bearer {token}", "Mcp-Session-Id": sids[0]})
    assert open_session(url, token) not in sids + [sid]


def test_rest_sessions_count_in_the_token_limit(gw):
    """The REST surface's upstream session of a token is one of its sessions: one per deployment, however many
    calls it makes."""
    token = new_token(gw, "rest-limited")
    for name in ("gw", "gwjson", "gw", "gwjson", "gw"):
        r = httpx.post(f"{gw.url}/servers/{name}/call_tool", json={"name": "greet", "arguments": {"name": name}},
                       headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert r.status_code == 200 and r.json()["content"][0]["text"] == f"Hello, {name}!", r.text
    open_session(endpoint(gw), token)  # the third of max_sessions_per_token (3)
    r = post(endpoint(gw), token, initialize())
    assert r.status_code == 429 and rpc_error(r)["data"]["config_key"] == "gateway.max_sessions_per_token"
    # The REST sessions themselves go on serving.
    r = httpx.post(f"{gw.url}/servers/gwjson/call_tool", json={"name": "greet"},
                   headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert r.status_code == 200, r.text


# -- The body and the headers -------------------------------------------------------------------------------------


def test_bad_bodies_and_headers_are_refused_before_the_upstream(gw):
    url = endpoint(gw)
    token = new_token(gw, "bodies")
    r = post(url, token, b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert r.status_code == 400 and rpc_error(r)["code"] == -32700
    for bad in (b"[]", b'"hello"', b'{"id": 1, "method": "tools/list"}', b'[{"jsonrpc": "2.0"}]'):
        r = post(url, token, bad)
        assert r.status_code == 400 and rpc_error(r)["code"] == -32600, bad

    big = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": "greet", "arguments": {"name": "x" * 70000}}}
    r = post(url, token, big)  # with Content-Length
    assert r.status_code == 413
    assert rpc_error(r)["data"]["config_key"] == "gateway.max_message_bytes"
    assert "gateway.max_message_bytes" in rpc_error(r)["message"]
    payload = json.dumps(big).encode()
    r = post(url, token, (payload[i:i + 8192] for i in range(0, len(payload), 8192)))  # chunked, no length
    assert r.status_code == 413 and rpc_error(r)["data"]["limit"] == "max_message_bytes"

    sid = open_session(url, token)
    r = post(url, token, request("tools/list"), sid=sid, headers={"MCP-Protocol-Version": "1999-01-01"})
    assert r.status_code == 400
    error = rpc_error(r)
    assert "1999-01-01" in error["message"] and VERSION in error["data"]["supported"]
    # The session is unharmed, and a just-small-enough message goes through.
    assert text_of(call(url, token, sid, "greet", {"name": "y" * 60000})) == "Hello, " + "y" * 60000 + "!"


def test_request_timeout_ends_the_request_with_an_error_naming_the_limit(gw):
    from mcp.shared.exceptions import MCPError

    from mcp_agent_cloud.client import mcp_client

    token = new_token(gw, "slow")
    # A streamed (SSE) answer: the stream ends with a JSON-RPC error for the request.
    url = endpoint(gw)
    sid = open_session(url, token)
    req = request("tools/call", {"name": "slow", "arguments": {"seconds": 30}})
    r = post(url, token, req, sid=sid)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    last = messages(r)[-1]
    assert last["id"] == req["id"] and last["error"]["data"]["config_key"] == "gateway.request_timeout"
    assert "gateway.request_timeout" in last["error"]["message"]
    assert text_of(call(url, token, sid, "greet", {"name": "after"})) == "Hello, after!"

    # A plain JSON answer that has not started by then: 504 with the request's id.
    jurl = endpoint(gw, "gwjson")
    jsid = open_session(jurl, token)
    req = request("tools/call", {"name": "slow", "arguments": {"seconds": 30}})
    r = post(jurl, token, req, sid=jsid)
    assert r.status_code == 504
    assert r.json()["id"] == req["id"] and rpc_error(r)["data"]["config_key"] == "gateway.request_timeout"
    assert text_of(call(jurl, token, jsid, "greet", {"name": "j"})) == "Hello, j!"

    # The SDK client sees an MCP error that names the limit.
    async def run() -> str:
        async with mcp_client(url, gw.token, mode="legacy", read_timeout=60) as client:
            with pytest.raises(MCPError) as caught:
                await client.call_tool("slow", {"seconds": 30})
            return str(caught.value)

    assert "gateway.request_timeout" in anyio.run(run)


def test_request_timeouts_are_cancelled_upstream(gw, tmp_path):
    """Both ways a request outlives gateway.request_timeout (a streamed answer, a JSON answer not yet started) tell
    the instance to stop working on it: the tool sees the cancellation, long before it would have finished."""
    token = new_token(gw, "cancelled")
    for name in ("gw", "gwjson"):
        url = endpoint(gw, name)
        sid = open_session(url, token)
        marker = tmp_path / f"{name}.state"
        req = request("tools/call", {"name": "slow_marked", "arguments": {"seconds": 60, "path": str(marker)}})
        r = post(url, token, req, sid=sid)
        (answer,) = [m for m in messages(r) if m.get("id") == req["id"]]
        assert answer["error"]["code"] == -32011, answer
        wait_for(lambda: marker.exists(), timeout=30, what=f"{name}: the timed-out call to be cancelled upstream")
        assert marker.read_text() == "cancelled"
        assert text_of(call(url, token, sid, "greet", {"name": name})) == f"Hello, {name}!"


def test_gateway_refusals_on_mcp_are_jsonrpc_errors(gw):
    """Unknown deployment, another org's, one not serving: JSON-RPC errors (id null: the body was not read) with
    the platform's error in data and the HTTP status of the platform's API. 401 is the auth layer's answer."""
    token = new_token(gw, "refusals")

    def refusal(r: httpx.Response, status: int, code: int, kind: str) -> dict:
        assert r.status_code == status, r.text
        assert r.json()["id"] is None
        error = rpc_error(r)
        assert error["code"] == code and error["data"]["error"] == kind and error["data"]["hint"], error
        assert error["data"]["message"] in error["message"] and error["data"]["hint"] in error["message"]
        return error

    error = refusal(post(endpoint(gw, "nosuch"), token, initialize()), 404, -32600, "not_found")
    assert "default.nosuch" in error["message"]
    refusal(post(endpoint(gw, "otherorg.gw"), token, initialize()), 403, -32600, "forbidden")
    r = post(endpoint(gw), None, initialize())
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"] == "unauthorized"
    gw.cli("stop", "gwjson", check=True)
    try:
        refusal(post(endpoint(gw, "gwjson"), token, initialize()), 503, -32012, "unavailable")
    finally:
        gw.cli("start", "gwjson", check=True)


def test_redeploy_invalidates_sessions(gw, app_dir):
    url = endpoint(gw)
    token = new_token(gw, "redeploy")
    sid = open_session(url, token)
    gw.cli_json("deploy", "app", str(app_dir), "--name", "gw", "--app", "main:mcp")
    r = call(url, token, sid, "greet", {})
    assert r.status_code == 404 and rpc_error(r)["code"] == -32600
    sid = open_session(url, token)  # the client re-initializes
    assert text_of(call(url, token, sid, "greet", {"name": "new"})) == "Hello, new!"


# -- Limits on a second platform ---------------------------------------------------------------------------------


def test_session_limit_per_deployment(tight):
    url = endpoint(tight)
    # tokens first: minting one runs the CLI, which can outlast the 1s idle timeout on a loaded machine
    a, b, c = new_token(tight, "a"), new_token(tight, "b"), new_token(tight, "c")
    first = open_session(url, a)
    open_session(url, b)
    r = post(url, c, initialize())
    assert r.status_code == 429
    assert rpc_error(r)["data"]["config_key"] == "gateway.max_sessions_per_deployment"
    assert "default.gw" in rpc_error(r)["message"]
    httpx.request("DELETE", url, headers={"Authorization": f"Bearer {a}", "Mcp-Session-Id": first})
    open_session(url, a)


def test_a_session_is_not_reaped_while_its_request_body_arrives(tight):
    """The session is in use from the moment its id is looked up, not only once the body has been read."""
    url = endpoint(tight)
    token = new_token(tight, "slowbody")

    def try_open() -> str | None:
        # Sessions of other tests fill max_sessions_per_deployment (2) until the reaper ends them (1s idle).
        r = post(url, token, initialize())
        return None if r.status_code == 429 else r.headers["mcp-session-id"]

    sid = wait_for(try_open, timeout=30, what="a free session slot")
    assert post(url, token, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid=sid).status_code == 202
    payload = json.dumps(request("tools/call", {"name": "greet", "arguments": {"name": "slow body"}})).encode()

    def trickle():
        yield payload[:10]
        time.sleep(3)  # past gateway.session_idle_timeout (1s) and several reaper rounds
        yield payload[10:]

    r = post(url, token, trickle(), sid=sid)
    assert r.status_code == 200, r.text
    assert text_of(r) == "Hello, slow body!"


def test_idle_sessions_are_reaped_and_ended_upstream(tight):
    url = endpoint(tight)
    time.sleep(1.5)  # let sessions of other tests on this platform expire
    token = new_token(tight, "idle")
    sid = open_session(url, token)
    assert text_of(call(url, token, sid, "greet", {"name": "i"})) == "Hello, i!"
    log = tight.root / "data"

    def upstream_deletes() -> int:
        return sum(p.read_text(errors="replace").count('"DELETE /mcp') for p in log.rglob("*.log"))

    before = upstream_deletes()
    time.sleep(1.5)  # longer than gateway.session_idle_timeout (1s)
    r = call(url, token, sid, "greet", {})
    assert r.status_code == 404 and rpc_error(r)["code"] == -32600
    # The reaper told the instance to end its side of the session.
    wait_for(lambda: upstream_deletes() > before, timeout=30, what="DELETE /mcp in the app log")
