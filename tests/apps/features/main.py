"""A test app that uses every MCP feature the gateway must carry, deployed natively (`mcp-agent deploy app`).

Tools, resources with a template and subscriptions, prompts with arguments, completion, logging at levels,
progress, cancellation, and the server-to-client requests sampling and elicitation. Each tool answers with what
it saw, so a test can tell that the round trip really happened.
"""

from __future__ import annotations

import weakref
from typing import Annotated

import anyio
import mcp_types as types
from mcp.server.elicitation import AcceptedElicitation, ElicitationResult
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.server.mcpserver.resolve import Elicit, Resolve, Sample
from pydantic import BaseModel, Field

mcp = MCPServer("features", instructions="Exercises every MCP feature, for the gateway tests.")

ITEMS = {"apple": "a red fruit", "apricot": "an orange fruit", "banana": "a yellow fruit"}
STYLES = ["formal", "friendly", "pirate"]
LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]

# Per client connection (keyed weakly, so ended sessions drop out): the level set with logging/setLevel, and the
# resources it subscribed to. Held per connection so one client's settings never reach another.
_log_level: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_subscribers: dict[str, dict[object, object]] = {}
_cancelled = {"count": 0}


def _connection(ctx) -> object:
    return ctx.session._connection  # one per client session; ServerSession itself is per request


# -- tools -----------------------------------------------------------------------------------------------------


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@mcp.tool()
async def slow(steps: int, ctx: Context) -> str:
    """Report progress `steps` times, then answer."""
    for i in range(1, steps + 1):
        await ctx.report_progress(i, steps, f"step {i} of {steps}")
        await anyio.sleep(0.02)
    return f"done after {steps} steps"


@mcp.tool()
async def wait_forever(ctx: Context) -> str:
    """Block until the client cancels the call; the cancellation is counted (see `cancelled_calls`)."""
    try:
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            _cancelled["count"] += 1
    return "unreachable"


@mcp.tool()
def cancelled_calls() -> int:
    """How many `wait_forever` calls ended by cancellation."""
    return _cancelled["count"]


@mcp.tool()
async def log_at_levels(ctx: Context) -> str:
    """Send one log message at each level; the client sees those at or above the level it set."""
    floor = _log_level.get(_connection(ctx), "debug")
    sent = [lvl for lvl in LEVELS[:4] if LEVELS.index(lvl) >= LEVELS.index(floor)]
    for lvl in sent:
        await ctx.log(lvl, f"{lvl} message", logger_name="features")
    return ",".join(sent)


@mcp.tool()
async def touch(uri: str, ctx: Context) -> int:
    """Tell the sessions subscribed to `uri` that it changed; returns how many were told."""
    told = 0
    for session in list(_subscribers.get(uri, {}).values()):
        try:
            await session.send_resource_updated(uri)
            told += 1
        except Exception:  # a session that went away
            pass
    await ctx.notify_resource_updated(uri)  # 2026-07-28 clients listen with subscriptions/listen instead
    return told


def _ask_model(question: str) -> Sample:
    return Sample([types.SamplingMessage(role="user", content=types.TextContent(type="text", text=question))],
                  max_tokens=50)


@mcp.tool()
async def ask_llm(question: str, answer: Annotated[types.CreateMessageResult, Resolve(_ask_model)]) -> str:
    """Sampling round trip: ask the client's model, answer with what it said."""
    # Resolve sends sampling/createMessage mid-call on handshake-era sessions, and an InputRequiredResult the
    # client answers on a retry on 2026-07-28 ones: the same tool covers both.
    text = answer.content.text if isinstance(answer.content, types.TextContent) else repr(answer.content)
    return f"{answer.model} said: {text}"


class Person(BaseModel):
    name: str = Field(description="your name")
    age: int = Field(description="your age")


def _ask_person() -> Elicit[Person]:
    return Elicit("Who are you?", Person)


@mcp.tool()
async def ask_user(person: Annotated[ElicitationResult[Person], Resolve(_ask_person)]) -> str:
    """Elicitation round trip: ask the user for a name and age."""
    if isinstance(person, AcceptedElicitation):
        return f"accepted: {person.data.name} ({person.data.age})"
    return person.action


# -- resources -------------------------------------------------------------------------------------------------


@mcp.resource("features://static", mime_type="text/plain")
def static() -> str:
    """A fixed text resource."""
    return "static content"


@mcp.resource("features://items/{item_id}", mime_type="text/plain")
def item(item_id: str) -> str:
    """One item, by id (a resource template)."""
    return f"{item_id}: {ITEMS.get(item_id, 'unknown')}"


async def _subscribe(ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
    _subscribers.setdefault(str(params.uri), weakref.WeakKeyDictionary())[_connection(ctx)] = ctx.session
    return types.EmptyResult()


async def _unsubscribe(ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    _subscribers.get(str(params.uri), {}).pop(_connection(ctx), None)
    return types.EmptyResult()


async def _set_level(ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
    _log_level[_connection(ctx)] = params.level
    return types.EmptyResult()


# MCPServer has no decorators for these (handshake-era) methods: register them on the low-level server.
mcp._lowlevel_server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, _subscribe)
mcp._lowlevel_server.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, _unsubscribe)
mcp._lowlevel_server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, _set_level)


# -- prompts and completion ------------------------------------------------------------------------------------


@mcp.prompt()
def greeting(name: str, style: str = "friendly") -> list:
    """A greeting for `name` in a `style`."""
    return [UserMessage(f"Write a {style} greeting for {name}.")]


@mcp.completion()
async def complete(ref, argument, context) -> types.Completion | None:
    if isinstance(ref, types.PromptReference) and ref.name == "greeting" and argument.name == "style":
        values = [s for s in STYLES if s.startswith(argument.value)]
    elif isinstance(ref, types.ResourceTemplateReference) and argument.name == "item_id":
        values = [i for i in ITEMS if i.startswith(argument.value)]
    else:
        return None
    return types.Completion(values=values, total=len(values), has_more=False)
