"""JSON-RPC error codes and bodies shared by the gateway and the stdio adapter.

Plain dicts and no imports: the adapter runs as its own process and must stay light to start.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Standard JSON-RPC codes, as the mcp SDK uses them.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600  # also "Session not found" (the SDK's own answer to an unknown Mcp-Session-Id)
# -32000..-32019 are implementation-defined in MCP; the SDK takes -32000 (connection closed) and -32001 (timeout).
LIMIT_EXCEEDED = -32010
REQUEST_TIMED_OUT = -32011
UPSTREAM_FAILED = -32012
HEADER_REJECTED = -32013
UNSUPPORTED_PROTOCOL_VERSION = -32022  # spec-defined (2026-07-28); data: {supported, requested}


def error_object(code: int, message: str, id: Any = None, data: dict | None = None) -> dict[str, Any]:
    """A JSON-RPC error message."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": error}


def session_not_found(detail: str, data: dict | None = None) -> dict[str, Any]:
    """The answer to an unknown Mcp-Session-Id (HTTP 404), worded and coded as the SDK's servers answer it."""
    return error_object(INVALID_REQUEST, f"Session not found: {detail}", None, data)


def unsupported_version(requested: str, supported: Iterable[str], detail: str) -> dict[str, Any]:
    """The answer to an MCP-Protocol-Version header this server does not speak (HTTP 400)."""
    supported = list(supported)
    return error_object(UNSUPPORTED_PROTOCOL_VERSION, f"unsupported MCP-Protocol-Version {requested!r}: {detail}",
                        None, {"supported": supported, "requested": requested})


def cancelled_notification(request_id: Any, reason: str) -> dict[str, Any]:
    """notifications/cancelled for a request the sender gave up on."""
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id,
                                                                              "reason": reason}}
