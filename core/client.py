"""The client library for the platform API. The CLI is a thin layer over it; Python tools can use it directly."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from .errors import ApiError, AuthError, MCPAgentCloudError
from .state import resolve_api_url, resolve_token


# Stop, start, rollback and delete wait behind a deploy of the same deployment: no read deadline.
LIFECYCLE_TIMEOUT = httpx.Timeout(30.0, read=None)
# Workflow calls go through the app; the platform gives each one up to two minutes.
WORKFLOW_TIMEOUT = httpx.Timeout(30.0, read=180.0)


class PlatformClient:
    def __init__(self, api_url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> None:
        self.api_url = resolve_api_url(api_url)
        self.token = resolve_token(self.api_url, token)
        headers = {"User-Agent": "mcp-agent-cloud-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self.http = httpx.Client(base_url=self.api_url, headers=headers,
                                 timeout=httpx.Timeout(timeout, read=None if timeout is None else timeout))

    def _qualify(self, name: str) -> str:
        """A short name means the org chosen with `mcp-agent configure`, when that differs from the token's org."""
        from .state import load_auth, load_session

        from .names import from_at_name

        name = from_at_name(name)
        org = load_session().get("org")
        if "." in name or not org or org == load_auth().get("org"):
            return name
        return f"{org}.{name}"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _raise(self, resp: httpx.Response) -> None:
        if resp.is_success:
            return
        try:
            body = resp.json()
        except ValueError:
            body = {"error": "http_error", "message": resp.text[:500] or resp.reason_phrase}
        if resp.status_code == 401:
            raise AuthError(body.get("message", "unauthorized"),
                            hint=f"log in: mcp-agent deploy auth login --api-url {self.api_url} --token TOKEN")
        raise ApiError(resp.status_code, body.get("error", "error"), body.get("message", resp.text[:500]),
                       hint=body.get("hint"), data=body)

    def _transport_error(self, exc: httpx.HTTPError) -> MCPAgentCloudError:
        if isinstance(exc, httpx.ConnectError):
            return MCPAgentCloudError(f"cannot reach the platform at {self.api_url}: {exc}",
                                      hint="start it with `mcp-agent serve`, or point the CLI elsewhere with "
                                           "--api-url or MCP_AGENT_CLOUD_API_URL")
        if isinstance(exc, httpx.TimeoutException):
            return MCPAgentCloudError(f"the platform at {self.api_url} did not answer in time ({type(exc).__name__})",
                                      hint="it may still be working on it: check `mcp-agent status NAME`")
        return MCPAgentCloudError(f"the connection to {self.api_url} failed: {type(exc).__name__}: {exc}",
                                  hint="check that the platform is still running, then `mcp-agent status NAME`")

    def request(self, method: str, path: str, **kw: Any) -> Any:
        if not self.token and path.startswith("/api/v1/") and path != "/api/v1/openapi.json":
            raise AuthError(f"not logged in to {self.api_url}",
                            hint=f"mcp-agent deploy auth login --api-url {self.api_url} --token TOKEN")
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        self._raise(resp)
        return resp.json() if resp.content and resp.headers.get("content-type", "").startswith("application/json") \
            else resp

    def _stream(self, method: str, path: str, **kw: Any) -> Iterator[httpx.Response]:
        try:
            with self.http.stream(method, path, timeout=httpx.Timeout(30.0, read=None), **kw) as resp:
                if not resp.is_success:
                    resp.read()
                    self._raise(resp)
                yield resp
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    # -- API ---------------------------------------------------------------------------------------------------

    def health(self) -> dict:
        return self.request("GET", "/healthz")

    def whoami(self) -> dict:
        return self.request("GET", "/api/v1/whoami")

    def create_key(self, *, name: str = "", role: str | None = None, scopes: list[str] | None = None,
                   expires_in: float | None = None) -> dict:
        body: dict = {"name": name, "scopes": scopes or []}
        if role:
            body["role"] = role
        if expires_in is not None:
            body["expires_in"] = expires_in
        return self.request("POST", "/api/v1/keys", json=body)

    def keys(self) -> list[dict]:
        return self.request("GET", "/api/v1/keys")["keys"]

    def revoke_key(self, key_id: str) -> dict:
        return self.request("DELETE", f"/api/v1/keys/{key_id}")

    def audit(self, **params) -> list[dict]:
        return self.request("GET", "/api/v1/audit",
                            params={k: v for k, v in params.items() if v is not None})["records"]

    def plugins(self) -> dict:
        return self.request("GET", "/api/v1/plugins")

    def server_types(self) -> list[dict]:
        return self.request("GET", "/api/v1/server-types")["server_types"]

    def has_package(self, sha256: str) -> bool:
        resp = self.http.head(f"/api/v1/packages/{sha256}")
        if resp.status_code == 401:
            self._raise(resp)
        return resp.status_code == 200

    def upload_package(self, path: Path, sha256: str, fmt: str,
                       on_progress: Callable[[int, int], None] | None = None) -> dict:
        size = path.stat().st_size

        def chunks():
            sent = 0
            with open(path, "rb") as f:
                while block := f.read(256 * 1024):
                    sent += len(block)
                    if on_progress:
                        on_progress(sent, size)
                    yield block

        return self.request("POST", "/api/v1/packages", content=chunks(),
                            headers={"X-Package-Sha256": sha256, "X-Package-Format": fmt,
                                     "Content-Type": "application/octet-stream", "Content-Length": str(size)},
                            timeout=httpx.Timeout(30.0, write=None, read=120.0))

    def deploy(self, name: str, body: dict, on_event: Callable[[dict], None] | None = None) -> dict:
        """Create a version and follow its progress; returns the result event or raises the error event."""
        result: dict | None = None
        for resp in self._stream("POST", f"/api/v1/deployments/{self._qualify(name)}/versions", json=body):
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if on_event:
                    on_event(event)
                if event.get("type") == "result":
                    result = event
                elif event.get("type") == "error":
                    raise ApiError(500, event.get("error", "deploy_failed"), event.get("message", "deploy failed"),
                                   hint=event.get("hint"), data=event)
        if result is None:
            raise MCPAgentCloudError("the platform closed the deploy stream without a result",
                                     hint="check `mcp-agent status NAME` and the platform's log")
        return result

    def list(self) -> list[dict]:
        return self.request("GET", "/api/v1/deployments")["deployments"]

    def status(self, name: str) -> dict:
        return self.request("GET", f"/api/v1/deployments/{self._qualify(name)}")

    def versions(self, name: str) -> list[dict]:
        return self.request("GET", f"/api/v1/deployments/{self._qualify(name)}/versions")["versions"]

    def traces(self, name: str, *, run: str | None = None, trace: str | None = None, limit: int = 20) -> dict:
        params = {k: v for k, v in {"run": run, "trace": trace, "limit": limit}.items() if v}
        return self.request("GET", f"/api/v1/deployments/{self._qualify(name)}/traces", params=params)

    def events(self, name: str, after: int = 0, limit: int = 100) -> list[dict]:
        return self.request("GET", f"/api/v1/deployments/{self._qualify(name)}/events",
                            params={"after": after, "limit": limit})["events"]

    def follow_events(self, name: str, after: int = 0) -> Iterator[dict]:
        """The deployment's events after ``after``, then each new one as any node records it (NDJSON)."""
        path = f"/api/v1/deployments/{self._qualify(name)}/events"
        for resp in self._stream("GET", path, params={"after": after, "follow": "1"}):
            for line in resp.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def export_k8s(self, name: str, *, namespace: str = "default", image: str | None = None,
                   version: int | None = None) -> dict:
        params = {"namespace": namespace, **({"image": image} if image else {}),
                  **({"version": version} if version else {})}
        return self.request("GET", f"/api/v1/deployments/{self._qualify(name)}/export/k8s", params=params)

    def stop(self, name: str) -> dict:
        return self.request("POST", f"/api/v1/deployments/{self._qualify(name)}/stop", timeout=LIFECYCLE_TIMEOUT)

    def start(self, name: str) -> dict:
        return self.request("POST", f"/api/v1/deployments/{self._qualify(name)}/start", timeout=LIFECYCLE_TIMEOUT)

    def rollback(self, name: str, to: int | None = None) -> dict:
        return self.request("POST", f"/api/v1/deployments/{self._qualify(name)}/rollback", json={"to": to} if to else {},
                            timeout=LIFECYCLE_TIMEOUT)

    def delete(self, name: str, *, force: bool = False) -> dict:
        return self.request("DELETE", f"/api/v1/deployments/{self._qualify(name)}",
                            params={"force": "1"} if force else None, timeout=LIFECYCLE_TIMEOUT)

    # -- the catalog ---------------------------------------------------------------------------------------------

    def publish(self, name: str, body: dict) -> dict:
        return self.request("POST", f"/api/v1/deployments/{self._qualify(name)}/publish", json=body)

    def unpublish(self, name: str, *, force: bool = False) -> dict:
        return self.request("POST", f"/api/v1/deployments/{self._qualify(name)}/unpublish", json={"force": force})

    def catalog(self, query: str = "", *, kind: str | None = None) -> list[dict]:
        params = {k: v for k, v in {"q": query, "kind": kind}.items() if v}
        return self.request("GET", "/api/v1/catalog", params=params)["entries"]

    def catalog_entry(self, address: str, *, since: str | None = None) -> dict:
        return self.request("GET", f"/api/v1/catalog/{address}", params={"since": since} if since else None)

    # -- secrets: values go only in request bodies and come back only from get_secret --------------------------

    def list_secrets(self, name: str, *, missing_ok: bool = False) -> dict:
        """``{"secrets": [{key, version, updated_at, handle, kind}], "missing": [KEY]}``, never values.
        ``missing_ok``: a deployment that does not exist yet has none, instead of a 404."""
        try:
            return self.request("GET", f"/api/v1/deployments/{self._qualify(name)}/secrets")
        except ApiError as exc:
            if missing_ok and exc.status == 404:
                return {"secrets": [], "missing": []}
            raise

    def set_secret(self, name: str, key: str, value: str) -> dict:
        """Store a new version of KEY; a serving deployment that uses it is restarted onto it (``restarted``)."""
        return self.request("PUT", f"/api/v1/deployments/{self._qualify(name)}/secrets/{key}", json={"value": value},
                            timeout=LIFECYCLE_TIMEOUT)

    def get_secret(self, name: str, key: str, version: int | None = None) -> dict:
        """The value (owner role; the platform records a ``secret.read`` event)."""
        return self.request("GET", f"/api/v1/deployments/{self._qualify(name)}/secrets/{key}",
                            params={"version": version} if version else None)

    def delete_secret(self, name: str, key: str, *, destroy: bool = False) -> dict:
        return self.request("DELETE", f"/api/v1/deployments/{self._qualify(name)}/secrets/{key}",
                            params={"destroy": "1"} if destroy else None)

    # -- workflows: runs live in the apps; the platform calls their workflows-* tools ----------------------------

    def workflows(self, name: str) -> dict:
        """``{"deployment", "workflows": [{name, description, run_tool, input_schema, schedules, ...}]}``."""
        return self.request("GET", f"/api/v1/workflows/{self._qualify(name)}", timeout=WORKFLOW_TIMEOUT)

    def run_workflow(self, name: str, workflow: str, params: dict | None = None, *, workflow_id: str | None = None,
                     priority: int | None = None) -> dict:
        """Start a run; ``{"workflow_id", "run_id", "execution_id", ...}``."""
        body = {"params": params or {}}
        if workflow_id:
            body["workflow_id"] = workflow_id
        if priority is not None:
            body["priority"] = priority
        return self.request("POST", f"/api/v1/workflows/{self._qualify(name)}/{workflow}/run", json=body,
                            timeout=WORKFLOW_TIMEOUT)

    def runs(self, name: str | None = None, *, status: str | None = None, workflow: str | None = None,
             limit: int = 100) -> dict:
        """Runs of one deployment (or of every serving app of the org), newest first."""
        params = {k: v for k, v in {"deployment": self._qualify(name) if name else None, "status": status,
                                    "workflow": workflow, "limit": limit}.items() if v}
        return self.request("GET", "/api/v1/runs", params=params, timeout=WORKFLOW_TIMEOUT)

    def run_status(self, run_id: str, *, history: bool = False) -> dict:
        return self.request("GET", f"/api/v1/runs/{run_id}", params={"history": "1"} if history else None,
                            timeout=WORKFLOW_TIMEOUT)

    def run_action(self, run_id: str, action: str, *, signal: str | None = None, payload: Any = None) -> dict:
        """``action``: pause, resume (with an optional signal name and payload) or cancel; the run's status."""
        body: dict[str, Any] = {}
        if signal:
            body["signal"] = signal
        if payload is not None:
            body["payload"] = payload
        return self.request("POST", f"/api/v1/runs/{run_id}/{action}", json=body, timeout=WORKFLOW_TIMEOUT)

    def workflow_batch(self, name: str, body: dict) -> dict:
        return self.request("POST", f"/api/v1/workflows/{self._qualify(name)}/batch", json=body,
                            timeout=WORKFLOW_TIMEOUT)

    def agent(self, name: str, action: str) -> dict:
        """``action``: run (start the instance), pause (suspend: no new runs), resume, stop."""
        return self.request("POST", f"/api/v1/agents/{self._qualify(name)}/{action}", timeout=LIFECYCLE_TIMEOUT)

    def logs(self, name: str, tail: int | None = 100, follow: bool = False, version: int | None = None, *,
             since: str | None = None, grep: str | None = None, timestamps: bool = False) -> Iterator[str]:
        """The app log as text chunks. ``tail`` None: the server's default (100; every line with ``since``)."""
        for resp in self._stream("GET", f"/api/v1/deployments/{self._qualify(name)}/logs",
                                 params=self._log_params(tail, follow, version, since, grep, timestamps=timestamps)):
            yield from resp.iter_text()

    def log_entries(self, name: str, tail: int | None = 100, follow: bool = False, version: int | None = None, *,
                    since: str | None = None, grep: str | None = None) -> Iterator[dict]:
        """The app log as ``{"ts", "stream", "line"}`` objects (``ts`` and ``stream`` None for lines of older
        logs, which have no time)."""
        params = self._log_params(tail, follow, version, since, grep, format="ndjson")
        for resp in self._stream("GET", f"/api/v1/deployments/{self._qualify(name)}/logs", params=params):
            for line in resp.iter_lines():
                if line.strip():
                    yield json.loads(line)

    @staticmethod
    def _log_params(tail, follow, version, since, grep, **extra) -> dict:
        params: dict[str, Any] = {"follow": "1" if follow else "0"}
        if tail is not None:
            params["tail"] = tail
        if version:
            params["version"] = version
        if since:
            params["since"] = since
        if grep:
            params["grep"] = grep
        if extra.pop("timestamps", False):
            params["timestamps"] = "1"
        return params | extra


@contextlib.asynccontextmanager
async def mcp_client(url: str, token: str | None = None, *, mode: str = "auto", read_timeout: float = 300.0,
                     headers: dict[str, str] | None = None):
    """A connected mcp SDK ``Client`` over Streamable HTTP, optionally with a bearer token.

    Used by the CLI (through the gateway), by the platform's health check (straight to an instance) and by tests.
    The SDK raises exception groups; they come out as one error naming the innermost cause.
    """
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=read_timeout)) as http:
            async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
                yield client
    except Exception as exc:
        leaf = exc
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        if leaf is exc and isinstance(exc, MCPAgentCloudError):
            raise
        raise MCPAgentCloudError(f"MCP request to {url} failed: {type(leaf).__name__}: {leaf}",
                                 hint="check that it is serving: `mcp-agent status NAME` and `mcp-agent logs NAME`") \
            from None
