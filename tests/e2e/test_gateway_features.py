"""Every MCP feature through the gateway, with the real mcp SDK client, over each transport the gateway serves.

Two deployments carry the features: the real npm `@modelcontextprotocol/server-everything` (stdio, behind the
adapter) and our own Python app (tests/apps/features, deployed natively). One platform and its deployments serve
the whole module. Transports:

- ``http``: Streamable HTTP at /servers/NAME/mcp with the initialize handshake (``mode="legacy"``);
- ``http-auto``: the same URL with the SDK's default ``mode="auto"``: the Python app negotiates the stateless
  2026-07-28 protocol (sampling and elicitation as InputRequiredResult retries, logging opted in per request,
  subscriptions over subscriptions/listen); the everything server has no server/discover, so the client falls back
  to the handshake through the gateway;
- ``sse``: the legacy HTTP+SSE transport at /servers/NAME/sse.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import anyio
import mcp_types as types
import pytest

from tests.conftest import ROOT, PlatformProcess

# The SDK marks the handshake-era methods (logging/setLevel, resources/subscribe, ping) deprecated; the gateway must
# still carry them, so the tests call them on purpose.
pytestmark = [pytest.mark.e2e, pytest.mark.network,
              pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

FEATURES_APP = ROOT / "tests" / "apps" / "features"
TRANSPORTS = ["http", "http-auto", "sse"]
MODERN = "2026-07-28"


@dataclass
class Gateway:
    platform: PlatformProcess
    endpoints: dict[str, str]  # deployment name -> its /servers/NAME/mcp endpoint

    @property
    def token(self) -> str:
        return self.platform.token


@pytest.fixture(scope="module")
def gw(tmp_path_factory, shared_envs, everything_cmd) -> Gateway:
    platform = PlatformProcess(tmp_path_factory.mktemp("gwfeatures"), shared_envs)
    platform.start()
    try:
        node, *args = everything_cmd
        endpoints = {}
        for name, extra in (("everything", []), ("everything-shared", ["--session-mode", "shared"])):
            argv = [a for arg in args for a in ("--arg", arg)]
            result = platform.cli_json("deploy", "server", name, "--command", node, *argv, *extra)
            assert result["status"] == "running", result
            endpoints[name] = result["endpoint"]
        result = platform.cli_json("deploy", "app", str(FEATURES_APP), "--name", "features")
        assert result["status"] == "running", result
        endpoints["features"] = result["endpoint"]
        yield Gateway(platform, endpoints)
    finally:
        platform.stop()


class Seen:
    """What the client's callbacks received, with a way to wait for a match: the SDK runs notification and progress
    callbacks as tasks of their own, so they may still be pending when the call's result is returned."""

    def __init__(self) -> None:
        self.logs: list[types.LoggingMessageNotificationParams] = []
        self.notifications: list[object] = []
        self.sampling: list[types.CreateMessageRequestParams] = []
        self.elicitations: list[types.ElicitRequestParams] = []
        self.progress: list[tuple] = []
        self._changed = anyio.Event()

    def _note(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait(self, predicate, what: str, timeout: float = 20):
        with anyio.move_on_after(timeout):
            while not (found := predicate()):
                await self._changed.wait()
            return found
        raise AssertionError(f"no {what} within {timeout}s; notifications: {self.notifications!r}, "
                             f"logs: {self.logs!r}")

    async def on_progress(self, value, total, message) -> None:
        self.progress.append((value, total, message))
        self._note()

    async def on_log(self, params) -> None:
        self.logs.append(params)
        self._note()

    async def on_message(self, message) -> None:
        self.notifications.append(message)
        self._note()

    async def on_sampling(self, context, params) -> types.CreateMessageResult:
        self.sampling.append(params)
        return types.CreateMessageResult(role="assistant", model="gateway-test-model",
                                         content=types.TextContent(type="text", text="sampled through the gateway"))

    async def on_elicitation(self, context, params) -> types.ElicitResult:
        self.elicitations.append(params)
        return types.ElicitResult(action="accept", content={"name": "Ada Lovelace", "age": 36})

    async def on_roots(self, context) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///gateway/test-root", name="test-root")])


@contextlib.asynccontextmanager
async def connect(gw: Gateway, name: str, transport: str, **client_options):
    """An SDK client to deployment ``name`` through the gateway, plus what its callbacks saw."""
    import httpx2
    from mcp.client import Client
    from mcp.client.sse import sse_client
    from mcp.client.streamable_http import streamable_http_client

    endpoint = gw.endpoints[name]
    seen = Seen()
    options = dict(sampling_callback=seen.on_sampling, elicitation_callback=seen.on_elicitation,
                   list_roots_callback=seen.on_roots, logging_callback=seen.on_log, message_handler=seen.on_message,
                   read_timeout_seconds=60)
    options.update(client_options)
    headers = {"Authorization": f"Bearer {gw.token}"}
    if transport == "sse":
        url = endpoint.removesuffix("/mcp") + "/sse"
        async with Client(sse_client(url, headers=headers, timeout=30), mode="legacy", **options) as client:
            yield client, seen
        return
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=60.0)) as http:
        mode = "legacy" if transport == "http" else "auto"
        async with Client(streamable_http_client(endpoint, http_client=http), mode=mode, **options) as client:
            yield client, seen


def text_of(result) -> str:
    assert not result.is_error, result
    return "\n".join(getattr(c, "text", "") for c in result.content)


def run(fn, *args):
    return anyio.run(fn, *args)


def modern(client) -> bool:
    return client.protocol_version == MODERN


# -- the everything server (stdio, behind the adapter) ------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_everything_tools(gw, transport):
    async def go():
        async with connect(gw, "everything", transport) as (client, _):
            assert not modern(client)  # a handshake-era server: "auto" falls back through the gateway
            assert client.server_info.name  # the child's own initialize result came back
            names = {t.name for t in (await client.list_tools()).tools}
            # The request tools exist only for clients that declared sampling and elicitation: the capabilities
            # the client sent reached the child.
            assert {"echo", "get-sum", "trigger-sampling-request", "trigger-elicitation-request",
                    "get-roots-list"} <= names, names
            assert text_of(await client.call_tool("echo", {"message": "through the gateway"})) \
                == "Echo: through the gateway"
            assert "5" in text_of(await client.call_tool("get-sum", {"a": 2, "b": 3}))
            structured = await client.call_tool("get-structured-content", {"location": "Chicago"})
            assert structured.structured_content and "temperature" in structured.structured_content
            await client.send_ping()
    run(go)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_everything_resources_and_subscription(gw, transport):
    uri = "demo://resource/static/document/architecture.md"

    async def go():
        async with connect(gw, "everything", transport) as (client, seen):
            listed = await client.list_resources()
            assert uri in {str(r.uri) for r in listed.resources}
            read = await client.read_resource(uri)
            assert read.contents and read.contents[0].text.strip()
            templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
            assert "demo://resource/dynamic/text/{resourceId}" in templates
            dynamic = await client.read_resource("demo://resource/dynamic/text/7")
            assert "7" in dynamic.contents[0].text

            await client.subscribe_resource(uri)
            await client.call_tool("toggle-subscriber-updates", {})  # sends one update at once, then every 5s
            try:
                await seen.wait(lambda: [n for n in seen.notifications
                                         if isinstance(n, types.ResourceUpdatedNotification)
                                         and str(n.params.uri) == uri], "resources/updated")
            finally:
                await client.call_tool("toggle-subscriber-updates", {})  # off again
            await client.unsubscribe_resource(uri)
    run(go)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_everything_prompts_and_completion(gw, transport):
    async def go():
        async with connect(gw, "everything", transport) as (client, _):
            names = {p.name for p in (await client.list_prompts()).prompts}
            assert {"simple-prompt", "args-prompt", "completable-prompt"} <= names
            prompt = await client.get_prompt("args-prompt", {"city": "Lisbon", "state": "Estremadura"})
            assert "Lisbon" in prompt.messages[0].content.text

            ref = types.PromptReference(type="ref/prompt", name="completable-prompt")
            done = await client.complete(ref, {"name": "department", "value": "Ma"})
            assert done.completion.values == ["Marketing"]
            # The second argument's values depend on the first: the context arguments crossed the gateway too.
            done = await client.complete(ref, {"name": "name", "value": ""}, context_arguments={"department": "Sales"})
            assert done.completion.values == ["David", "Eve", "Frank"]
    run(go)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_everything_logging(gw, transport):
    async def go():
        async with connect(gw, "everything", transport) as (client, seen):
            await client.set_logging_level("debug")
            await client.call_tool("toggle-simulated-logging", {})  # one message at once, then every 5s
            try:
                found = await seen.wait(lambda: [m for m in seen.logs if "message" in str(m.data)], "a log message")
            finally:
                await client.call_tool("toggle-simulated-logging", {})
            assert found[0].level in ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
    run(go)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_everything_progress(gw, transport):
    async def go():
        async with connect(gw, "everything", transport) as (client, seen):
            result = await client.call_tool("trigger-long-running-operation", {"duration": 0.6, "steps": 3},
                                            progress_callback=seen.on_progress)
            assert "Long running operation completed" in text_of(result)
            await seen.wait(lambda: len(seen.progress) >= 3, "3 progress notifications")
        assert [(v, t) for v, t, _ in seen.progress] == [(1, 3), (2, 3), (3, 3)]
    run(go)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_everything_cancellation(gw, transport):
    async def go():
        started = anyio.Event()

        async def on_progress(value, total, message):
            started.set()

        async with connect(gw, "everything", transport) as (client, _):
            async with anyio.create_task_group() as tg:
                async def long_call():
                    await client.call_tool("trigger-long-running-operation", {"duration": 120, "steps": 240},
                                           progress_callback=on_progress)
                    raise AssertionError("the call finished although it was cancelled")

                tg.start_soon(long_call)
                with anyio.fail_after(30):
                    await started.wait()  # the call is running in the child
                tg.cancel_scope.cancel()  # the SDK sends notifications/cancelled
            # The session is still usable afterwards, and answers at once (not after the cancelled call).
            with anyio.fail_after(20):
                assert text_of(await client.call_tool("echo", {"message": "still here"})) == "Echo: still here"
    run(go)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_everything_sampling_elicitation_roots(gw, transport):
    async def go():
        async with connect(gw, "everything", transport) as (client, seen):
            sampled = text_of(await client.call_tool("trigger-sampling-request", {"prompt": "gateway?",
                                                                                  "maxTokens": 20}))
            assert "sampled through the gateway" in sampled and "gateway-test-model" in sampled
            assert seen.sampling and "gateway?" in seen.sampling[0].messages[0].content.text

            elicited = text_of(await client.call_tool("trigger-elicitation-request", {}))
            assert "- Name: Ada Lovelace" in elicited
            assert seen.elicitations and "name" in seen.elicitations[0].requested_schema["properties"]

            roots = text_of(await client.call_tool("get-roots-list", {}))
            assert "file:///gateway/test-root" in roots
    run(go)


# -- the Python features app (deployed natively) ------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_app_tools_resources_prompts_completion(gw, transport):
    async def go():
        async with connect(gw, "features", transport) as (client, _):
            assert modern(client) == (transport == "http-auto")
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"add", "slow", "wait_forever", "ask_llm", "ask_user", "log_at_levels"} <= names
            assert text_of(await client.call_tool("add", {"a": 20, "b": 22})) == "42"

            assert {str(r.uri) for r in (await client.list_resources()).resources} == {"features://static"}
            assert (await client.read_resource("features://static")).contents[0].text == "static content"
            templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
            assert templates == ["features://items/{item_id}"]
            assert (await client.read_resource("features://items/apple")).contents[0].text == "apple: a red fruit"

            prompt = await client.get_prompt("greeting", {"name": "Grace", "style": "pirate"})
            assert prompt.messages[0].content.text == "Write a pirate greeting for Grace."
            done = await client.complete(types.PromptReference(type="ref/prompt", name="greeting"),
                                         {"name": "style", "value": "f"})
            assert done.completion.values == ["formal", "friendly"]
            done = await client.complete(
                types.ResourceTemplateReference(type="ref/resource", uri="features://items/{item_id}"),
                {"name": "item_id", "value": "ap"})
            assert done.completion.values == ["apple", "apricot"]
    run(go)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_app_subscription(gw, transport):
    uri = "features://static"

    async def go():
        async with connect(gw, "features", transport) as (client, seen):
            if modern(client):
                async with client.listen(resource_subscriptions=[uri]) as sub:
                    assert sub.honored.resource_subscriptions == [uri]
                    await client.call_tool("touch", {"uri": uri})
                    with anyio.fail_after(20):
                        async for event in sub:
                            assert event.uri == uri
                            break
                return
            await client.subscribe_resource(uri)
            assert text_of(await client.call_tool("touch", {"uri": uri})) == "1"  # exactly this session
            await seen.wait(lambda: [n for n in seen.notifications if isinstance(n, types.ResourceUpdatedNotification)
                                     and str(n.params.uri) == uri], "resources/updated")
            await client.unsubscribe_resource(uri)
            assert text_of(await client.call_tool("touch", {"uri": uri})) == "0"
    run(go)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_app_logging_levels(gw, transport):
    async def go():
        # 2026-07-28 opts in per request (log_level); the handshake era sets a level for the session.
        async with connect(gw, "features", transport, log_level="warning") as (client, seen):
            if not modern(client):
                await client.set_logging_level("warning")
            assert text_of(await client.call_tool("log_at_levels", {})) == (
                "debug,info,notice,warning" if modern(client) else "warning")  # modern: the SDK filters
            await seen.wait(lambda: seen.logs, "a log message")
            # The server sends in order and the lower levels first: had any passed the filter, it would be here.
            assert [(m.level, m.data) for m in seen.logs] == [("warning", "warning message")]
    run(go)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_app_progress_and_cancellation(gw, transport):
    async def go():
        async with connect(gw, "features", transport) as (client, seen):
            result = await client.call_tool("slow", {"steps": 4}, progress_callback=seen.on_progress)
            assert text_of(result) == "done after 4 steps"
            await seen.wait(lambda: len(seen.progress) >= 4, "4 progress notifications")
            assert seen.progress == [(i, 4, f"step {i} of 4") for i in range(1, 5)]

            before = int(text_of(await client.call_tool("cancelled_calls", {})))
            with anyio.move_on_after(1.5) as scope:
                await client.call_tool("wait_forever", {})
            assert scope.cancelled_caught
            # The app saw the cancellation (its handler was cancelled, not left running behind the gateway).
            with anyio.fail_after(20):
                while int(text_of(await client.call_tool("cancelled_calls", {}))) <= before:
                    await anyio.sleep(0.2)
    run(go)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_app_sampling_and_elicitation(gw, transport):
    async def go():
        async with connect(gw, "features", transport) as (client, seen):
            answer = text_of(await client.call_tool("ask_llm", {"question": "what is 6 x 7?"}))
            assert answer == "gateway-test-model said: sampled through the gateway"
            assert seen.sampling[0].messages[0].content.text == "what is 6 x 7?"
            assert text_of(await client.call_tool("ask_user", {})) == "accepted: Ada Lovelace (36)"
            assert seen.elicitations[0].message == "Who are you?"
    run(go)


# -- session mode -------------------------------------------------------------------------------------------------


def test_session_mode_shown_and_shared_serves(gw):
    status = gw.platform.cli_json("status", "everything-shared")
    assert status["session_mode"] == "shared"
    assert gw.platform.cli_json("status", "everything")["session_mode"] == "isolated"
    assert "session_mode" not in gw.platform.cli_json("status", "features")  # an app runs its own sessions

    async def go():
        async with connect(gw, "everything-shared", "http") as (client, seen):
            assert text_of(await client.call_tool("echo", {"message": "shared"})) == "Echo: shared"
            await client.call_tool("trigger-long-running-operation", {"duration": 0.3, "steps": 3},
                                   progress_callback=seen.on_progress)
            assert "sampled through the gateway" in text_of(
                await client.call_tool("trigger-sampling-request", {"prompt": "shared?"}))
            await seen.wait(lambda: len(seen.progress) >= 3, "3 progress notifications")
        assert [v for v, _, _ in seen.progress] == [1, 2, 3]
    run(go)


def test_session_mode_rejected_for_other_kinds(gw):
    result = gw.platform.cli("deploy", "server", "remote-x", "--url", "https://example.com/mcp",
                             "--session-mode", "shared")
    assert result.returncode == 1
    assert "session mode applies to stdio servers only" in result.stderr, result.stderr

    r = gw.platform.api("POST", "/api/v1/deployments/app-x/versions",
                        json={"kind": "app", "package_sha256": "0" * 64, "session_mode": "isolated"})
    assert r.status_code == 400, r.text
    assert "session mode applies to stdio servers only, not to app deployments" in r.json()["message"]

    bad = gw.platform.cli("deploy", "server", "x", "--command", "node", "--session-mode", "pooled")
    assert bad.returncode == 2 and "isolated" in bad.stderr  # click lists the valid choices
    names = {d["name"] for d in gw.platform.cli_json("list")}
    assert not names & {"remote-x", "app-x", "x"}
