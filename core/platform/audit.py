"""The audit log of management actions, and the scopes an API key is limited to.

``AuditMiddleware`` runs after authentication: every request to the management API that changes something (POST,
PUT, PATCH, DELETE under ``/api/v1/``) and every read of a secret's value becomes one append-only
:class:`AuditRecord` (who, what, when, from where, how it ended) once its answer has gone out. A request another
node forwarded was recorded by the node that took it, so it is not recorded twice.

``ScopeGuard`` runs after it, so refusals are audited too. An identity without scopes may do what its role allows;
with scopes (API keys made with ``--scope``) it is limited to them:

- ``api``: the management API (``/api/v1/...``, ``/metrics``); ``mcp``: deployments' MCP endpoints (``/servers/...``).
  A key with neither kind may use both.
- ``deployment:NAME``: only that deployment (repeatable). Requests that name no deployment are refused, except the
  few a deploy or a client needs (whoami, package upload, server types, plugins).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.routing import compile_path

from ..errors import ForbiddenError
from ..hookspecs.types import AuditRecord, Identity
from ..names import named_in_path, named_in_request, split_qualified
from .cluster import forwarded

log = logging.getLogger("mcp_agent_cloud.audit")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SECRET_VALUE = re.compile(r"^/api/v1/deployments/[^/]+/secrets/[^/]+$")
# What a deployment-scoped key may do without naming its deployment: deploy to it, and say who it is.
_UNNAMED_OK = ("/api/v1/whoami", "/api/v1/packages", "/api/v1/server-types", "/api/v1/plugins")
SCOPE_KINDS = ("api", "mcp")
SCOPE_DEPLOYMENT = "deployment:"
_MESSAGE_MAX = 300


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes, validated (ValueError names the bad one)."""
    out = []
    for scope in scopes:
        scope = scope.strip()
        if scope in SCOPE_KINDS or (scope.startswith(SCOPE_DEPLOYMENT) and len(scope) > len(SCOPE_DEPLOYMENT)):
            if scope not in out:
                out.append(scope)
        else:
            raise ValueError(f"unknown scope {scope!r}: use api, mcp or deployment:NAME")
    return out


def scope_refusal(identity: Identity, path: str, query_string: bytes = b"") -> str | None:
    """Why ``identity``'s scopes do not cover a request to ``path``, or None when they do."""
    if not identity.scopes:
        return None
    kind = "mcp" if path.startswith("/servers/") else "api"
    kinds = [s for s in identity.scopes if s in SCOPE_KINDS]
    if kinds and kind not in kinds:
        return f"this key is limited to scope {', '.join(kinds)}; this request needs {kind}"
    allowed = [s[len(SCOPE_DEPLOYMENT):] for s in identity.scopes if s.startswith(SCOPE_DEPLOYMENT)]
    if not allowed:
        return None
    named = named_in_request(path, query_string)
    name = named[0] if named else None
    if name is None:
        if path in _UNNAMED_OK or path.startswith("/api/v1/packages/"):
            return None
        return f"this key is limited to deployment {', '.join(allowed)}; this request names no deployment"
    try:
        wanted = split_qualified(name, identity.org)
        if any(split_qualified(a, identity.org) == wanted for a in allowed):
            return None
    except Exception:  # noqa: BLE001 - a malformed name is the handler's to report
        return None
    return f"this key is limited to deployment {', '.join(allowed)}, not {name}"


class ScopeGuard:
    """Refuses, before any handler reads the body: what the caller's scopes do not cover, and a deployment of
    another org named in the path (each handler checks that too; this makes it 403 on every route alike)."""

    def __init__(self, app, platform=None) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope, receive, send) -> None:
        identity = scope.get("state", {}).get("identity") if scope["type"] == "http" else None
        if identity is not None:
            why = scope_refusal(identity, scope["path"], scope.get("query_string", b""))
            hint = "use a key with the scope this needs (`mcp-agent keys create --scope`)"
            if why is None and self.platform is not None and (named := named_in_path(scope["path"])):
                try:
                    self.platform.qualify(identity, named[0])
                except ForbiddenError as exc:
                    why, hint = exc.message, exc.hint
                except Exception:  # noqa: BLE001 - a malformed name: the handler says what is wrong with it
                    pass
            if why is not None:
                if self.platform is not None and _bound_elsewhere(identity, scope["path"]):
                    # RFC 6750 3.1: a token for another resource is invalid here, so the client gets one for this
                    response = JSONResponse(
                        {"error": "unauthorized", "message": why, "hint": "connect to this deployment again: "
                         "your MCP client gets a token for it"}, status_code=401,
                        headers={"WWW-Authenticate": self.platform.challenge(
                            scope["state"].get("address", scope["path"]), "invalid_token",
                            "the token is for another deployment")})
                    return await response(scope, receive, send)
                if scope["path"].startswith("/servers/"):  # MCP endpoints answer with JSON-RPC errors
                    from .gateway import platform_error

                    response = platform_error(ForbiddenError(why, hint=hint))
                else:
                    response = JSONResponse({"error": "forbidden", "message": why, "hint": hint}, status_code=403)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _bound_elsewhere(identity: Identity, path: str) -> bool:
    """An OAuth token bound to one deployment (its audience), used on another deployment's endpoint."""
    return identity.provider == "oauth" and path.startswith("/servers/") and any(
        s.startswith(SCOPE_DEPLOYMENT) for s in identity.scopes)


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "denied"
    return "failed" if status < 500 else "error"


class AuditMiddleware:
    def __init__(self, app, platform, templates: Iterable[str] = ()) -> None:
        self.app = app
        self.platform = platform
        self.routes = [(t, compile_path(t)[0]) for t in templates]
        self._warned = False

    def audited(self, scope) -> bool:
        path, method = scope["path"], scope["method"]
        if not path.startswith("/api/v1/"):
            return False
        return method in WRITE_METHODS or (method == "GET" and _SECRET_VALUE.match(path) is not None)

    def action(self, method: str, path: str) -> tuple[str, str]:
        for template, regex in self.routes:
            if match := regex.match(path):
                return f"{method} {template}", " ".join(f"{k}={v}" for k, v in match.groupdict().items())
        return f"{method} {path}", ""

    async def __call__(self, scope, receive, send) -> None:
        identity = scope.get("state", {}).get("identity") if scope["type"] == "http" else None
        if identity is None or forwarded(scope) or not self.audited(scope):
            return await self.app(scope, receive, send)
        seen = {"status": 0, "type": b"", "body": b""}

        async def watch(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["type"] = dict(message.get("headers") or ()).get(b"content-type", b"")
            elif message["type"] == "http.response.body" and (seen["status"] >= 400 or b"ndjson" in seen["type"]):
                # Kept: an error's body (its message) and a stream's last line (a deploy's result or error).
                seen["body"] = (seen["body"] + message.get("body", b""))[-8192:]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except BaseException:
            seen["status"] = seen["status"] or 500
            raise
        finally:
            await self._record(identity, scope, seen)

    async def _record(self, identity: Identity, scope, seen: dict) -> None:
        status = seen["status"]
        outcome, message = outcome_of(status), ""
        body = seen["body"].decode("utf-8", "replace")
        if b"ndjson" in seen["type"]:
            last = body.strip().rsplit("\n", 1)[-1] if body.strip() else ""
            try:
                item = json.loads(last) if last else {}
            except ValueError:
                item = {}
            if item.get("type") == "error":
                outcome, message = "failed", str(item.get("message", ""))
        elif status >= 400:
            try:
                message = str(json.loads(body).get("message", ""))
            except (ValueError, AttributeError):
                message = ""
        action, target = self.action(scope["method"], scope["path"])
        headers = dict(scope.get("headers") or ())
        client = scope.get("client")
        record = AuditRecord(
            org=identity.org, actor=identity.subject, provider=identity.provider, token_id=identity.token_id,
            action=action, target=target, source=client[0] if client else "",
            user_agent=headers.get(b"user-agent", b"").decode("latin-1")[:200], status=status, outcome=outcome,
            message=message[:_MESSAGE_MAX])
        await self.platform.audit(record)
