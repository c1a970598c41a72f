"""The platform service: builds the selected backends and runs the deploy pipeline and the supervisor.

One process, one asyncio loop: the HTTP app (API, gateway, auth) calls into this object.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..config import PlatformConfig
from ..errors import (
    BuildError,
    ConflictError,
    ForbiddenError,
    MCPAgentCloudError,
    NotFoundError,
    PackageError,
    TooLargeError,
    ValidationFailed,
)
from ..hookspecs.types import (
    Artifact,
    AuditRecord,
    BuildRequest,
    DeploymentRecord,
    Event,
    SpanData,
    EventRecord,
    ExecutorSupervisor,
    Identity,
    Instance,
    Manifest,
    PluginContext,
    ROLE_RANK,
    TokenRecord,
    UsageDelta,
    UsageSummary,
    VersionRecord,
)
from ..applog import append_app_log, read_app_log, tail_file
from ..manager import PluginManager
from ..names import AUTH_RE, auth_provider, named_in_path, split_qualified, validate_name
from ..telemetry import Metrics, SpanStore, Tracer
from .audit import scope_refusal
from .catalog import Catalog, auth_of, is_public, usage_bucket
from .cluster import Cluster
from .secrets import (
    MAX_VALUE,
    SECRETS_FILE_ENV,
    SECRETS_FILENAME,
    MissingSecretsError,
    RestartFailed,
    SecretFiles,
    SecretRef,
    check_refs,
    make_handle,
    missing_keys,
    resolve,
    scope_of,
    validate_key,
)

log = logging.getLogger("mcp_agent_cloud.platform")

# An app runs our MCPApp runtime when it imports the package (or names it in its requirements).
RUNTIME_IMPORT = re.compile(rb"^[ \t]*(?:from|import)[ \t]+mcp_agent_cloud\b", re.MULTILINE)
RUNTIME_DIST = "mcp-agent-cloud"
SCAN_SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".mcpac-data"})
SCAN_MAX_BYTES = 2 * 1024 * 1024
CONTROL_PATH = "/_mcpac/control"
USAGE_FLUSH_SECONDS = 5.0  # how stale another node's usage counts may be


def _requirement_name(line: str) -> str | None:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    if not match or line.lstrip().startswith("-"):
        return None
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def uses_runtime(source_dir: Path | None, requirements: list[str]) -> bool:
    """Whether the app needs the MCPApp runtime: a requirement on mcp-agent-cloud, or a .py file importing it."""
    if any(_requirement_name(r) == RUNTIME_DIST for r in requirements):
        return True
    if source_dir is None or not Path(source_dir).is_dir():
        return False
    for dirpath, dirnames, filenames in os.walk(source_dir):
        dirnames[:] = [d for d in dirnames if d not in SCAN_SKIP_DIRS]
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            try:
                if path.stat().st_size <= SCAN_MAX_BYTES and RUNTIME_IMPORT.search(path.read_bytes()):
                    return True
            except OSError:
                continue
    return False

Progress = Callable[[dict[str, Any]], Awaitable[None]]


async def _no_progress(_: dict[str, Any]) -> None:
    return None


class ClientStep(BaseModel):
    step: Literal["validate", "package", "upload"]
    status: Literal["ok", "failed"] = "ok"
    start_ns: int = Field(ge=0)
    end_ns: int = Field(ge=0)


class DeployRequest(BaseModel):
    """Body of ``POST /api/v1/deployments/{name}/versions``."""

    kind: Literal["app", "stdio", "remote"] = "app"
    package_sha256: str | None = Field(None, description="an uploaded package (kind app)")
    package_format: str | None = Field(None, description="packager that made it (default: the configured one)")
    entrypoint: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    pip: list[str] = Field(default_factory=list)
    npm: str | None = None
    server_type: str | None = Field(None, description="a known utility server (see GET /api/v1/server-types)")
    dir: str | None = Field(None, description="directory for server types that need one (git, filesystem)")
    url: str | None = Field(None, description="upstream Streamable HTTP URL (kind remote)")
    session_mode: Literal["isolated", "shared"] | None = Field(
        None, description="stdio servers: one child per client session (isolated, the default) or one child "
                          "shared by all sessions (shared)")
    builder: str | dict[str, Any] | None = None
    description: str | None = None
    region: str | None = None
    public: bool | None = None
    uses: list[str] | None = Field(None, max_length=50, description="deployments it calls (NAME, ORG.NAME or "
                                   "@ORG/NAME): each must exist and be of its org or public; None keeps the last")
    auth: str | None = Field(
        None, pattern=AUTH_RE.pattern,
        description="who may call its MCP endpoints: platform (a token of its org; the default), none (anyone who "
                    "can reach it: asked for explicitly, and flagged in list), or provider:NAME (users of its org "
                    "who logged in through that auth provider)")
    secrets: dict[str, str] = Field(default_factory=dict, repr=False,
                                    description="KEY -> value supplied now: stored in the secrets backend, never in "
                                                "the registry")
    secret_refs: list[SecretRef] = Field(default_factory=list,
                                         description="every secret the app needs; a key of `secrets` not listed "
                                                     "here is declared as a developer secret")
    secrets_as: Literal["env", "file"] = Field(
        "env", description="hand secrets to the app as environment variables, or as a mcp_agent.secrets.yaml on a "
                           "tmpfs (its path in MCP_AGENT_SECRETS_FILE)")
    client_steps: list[ClientStep] = Field(default_factory=list, max_length=8,
                                           description="steps the CLI ran before this request (validate, package, "
                                           "upload) with their times: spans of the deploy's trace")


class Active:
    """The instance currently serving a deployment, and the task that supervises it."""

    def __init__(self, record: DeploymentRecord, version: int, artifact: Artifact | None, instance: Instance,
                 builder: Any = None) -> None:
        self.record = record
        self.version = version
        self.artifact = artifact
        self.instance = instance
        self.builder = builder  # None for remote servers: nothing to supervise
        self.stopping = False
        self.task: asyncio.Task | None = None
        self.restarts = 0
        self.traced = True  # its control route hands over spans (false once it answered 404: not an MCPApp)


def _own_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024




async def mcp_health_check(
    url: str, *, timeout: float, alive: Callable[[], Awaitable[bool]] | None = None,
) -> list[str]:
    """MCP initialize + tools/list against ``url`` until it answers; returns the tool names."""
    import anyio

    from ..client import mcp_client

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if alive is not None and not await alive():
            raise BuildError("the app exited while starting", hint="read the log tail below; fix the app and deploy again")
        try:
            with anyio.fail_after(min(15.0, max(1.0, deadline - time.monotonic()))):
                async with mcp_client(url, mode="legacy", read_timeout=30.0) as client:
                    result = await client.list_tools()
            return [t.name for t in result.tools]
        except Exception as exc:  # keep trying until the deadline: the app may still be importing
            last = exc
            await asyncio.sleep(0.3)
    raise BuildError(f"health check failed: no MCP answer from {url} within {timeout:.0f}s ({last})",
                     hint="the app must serve MCP (initialize and tools/list); read the log tail below")


class Platform:
    def __init__(self, config: PlatformConfig, pm: PluginManager) -> None:
        self.config = config
        self.pm = pm
        self.data_dir = config.data_dir
        self.active: dict[str, Active] = {}
        self._audit_warned = False
        self._usage_warned = False
        self._auth_cache: dict[str, tuple[tuple[str, bool] | None, float]] = {}
        self.catalog = Catalog(self)
        # Tool calls counted since the last write to the registry: (org.name, hour) -> [calls, errors, ms, callers]
        self._calls: dict[tuple[str, int], list] = {}
        from .oauth import OAuthServer

        # The OAuth authorization server (oauth.py): its routes exist from here, its keys from start().
        self.oauth = OAuthServer(self, config.oauth) if config.oauth.enabled else None
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()
        self._backends: dict[str, Any] = {}
        self.exporters: list[Any] = []
        self.auth_providers: list[Any] = []
        self.started = False
        self.bootstrap_token: str | None = None
        self.secret_files = SecretFiles(self.data_dir)
        # Control-route bearer tokens of running app instances, by instance URL. In memory only: a token never
        # reaches the registry, and an instance started by an earlier platform process has none here.
        self._control_tokens: dict[str, str] = {}
        self._wheel: Path | None = None
        self.cluster: Cluster | None = None
        self.registry = None  # built in start()
        self.metrics = Metrics()
        self.span_store = SpanStore(config.tracing.keep_spans)
        self.tracer = Tracer()  # off until start() knows the exporters
        self._span_exporters: list[Any] = []
        self.gateway: Any = None  # the Gateway registers itself (its sessions are a metric)
        self._control_http: Any = None
        self._define_metrics()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def _ctx(self) -> PluginContext:
        gateway = self.config.gateway
        # Builders size what they start (the stdio adapter's idle timeout and session cap) from the gateway's limits.
        return PluginContext(data_dir=self.data_dir, emit=self.emit, registry=self.registry,
                             metrics=self.metrics,
                             settings={"base_url": self.config.base_url,
                                       "session_idle_timeout": gateway.session_idle_timeout,
                                       "max_sessions_per_deployment": gateway.max_sessions_per_deployment,
                                       # builders rotate the app logs they write at this size
                                       "log_max_bytes": self.config.limits.log_max_bytes})

    def _build(self, kind: str, ref) -> Any:
        spec = self.pm.get(kind, ref.name)
        return self.pm.build(spec, ref.options, self._ctx())

    def _build_supervisor(self) -> ExecutorSupervisor:
        """The platform half of the configured executor (``executor:``). Workflows run inside the app processes;
        the supervisor tells them how to reach the executor (env vars) and runs any engine it needs."""
        ref = self.config.executor
        spec = self.pm.get_executor(ref.name)
        cls = getattr(spec, "supervisor", None) or ExecutorSupervisor
        return self.pm.build(dataclasses.replace(spec, backend=cls), ref.options, self._ctx())

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in ("packages", "deployments", "keys"):
            (self.data_dir / sub).mkdir(exist_ok=True, mode=0o700)
        cfg = self.config
        # Build every selected backend before starting any: a bad name fails fast with nothing half-started.
        self.registry = self._build("registry", cfg.registry)
        exporters = [self._build("telemetry", ref) for ref in cfg.telemetry]
        self.packager = self._build("packager", cfg.packager)
        self.builder = self._build("builder", cfg.builder)
        self.executor = self._build_supervisor()
        self.secrets = self._build("secrets", cfg.secrets)
        await self.registry.setup()
        ctx = self._ctx()
        providers = [self._build("auth", ref) for ref in cfg.auth]
        for backend in exporters:
            backend.ctx = ctx
            await backend.setup()
        # The exporters are in place before the other backends start, so the events those emit while starting
        # (the executor supervisor's `executor.temporal.started` or `.adopted`, say) are exported too.
        self.exporters = exporters
        self._span_exporters = [e for e in exporters if type(e).takes_spans()]
        if cfg.tracing.enabled:
            self.tracer = Tracer(self.export_span, sample_ratio=cfg.tracing.sample_ratio)
        for backend in (self.packager, self.builder, self.executor, self.secrets, *providers):
            backend.ctx = ctx
            await backend.setup()
        self.auth_providers = providers
        self.pm.hook.mcp_agent_cloud_configure.call_historic(kwargs={"config": cfg})
        await self.registry.ensure_org(cfg.default_org)
        await self._bootstrap_admin()
        await self._remove_stale_secret_files()
        if self.oauth is not None:
            await self.oauth.start()
            self._spawn(self.oauth.rotate_loop())
        self.cluster = Cluster(self, cfg.node)
        await self.cluster.start()
        self.started = True
        self.emit(Event(type="platform.started", message=f"listening on {cfg.base_url}",
                        data={"builder": cfg.builder.name, "registry": cfg.registry.name}))
        self._spawn(self._restore())
        if self.tracer.enabled:
            self._spawn(self._collect_spans_loop())
        self._spawn(self._usage_loop())
        self._spawn(self._flush_usage_loop())
        self._spawn(self._retention_loop())

    async def _bootstrap_admin(self) -> None:
        builtin = next((p for p in self.auth_providers if p.spec_name == "builtin"), None)
        if builtin is None or not builtin.config.bootstrap_admin:
            return
        if await self.registry.list_tokens(self.config.default_org):
            return
        token, _ = await builtin.issue_token(org=self.config.default_org, subject="admin", roles=["owner"],
                                             name="bootstrap admin")
        self.bootstrap_token = token
        from ..state import save_auth

        path = save_auth(api_url=self.config.base_url, access_token=token, org=self.config.default_org)
        self.emit(Event(type="platform.bootstrap", message=f"created org {self.config.default_org!r} and an admin "
                        f"token; the CLI's credentials were written to {path}"))

    async def stop(self) -> None:
        for active in list(self.active.values()):
            await self._stop_active(active)
        if self.registry is not None:
            with contextlib.suppress(Exception):
                await self.flush_usage()
        if self.cluster is not None:
            await self.cluster.stop()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._control_http is not None:
            with contextlib.suppress(Exception):
                await self._control_http.aclose()
        for backend in (*self.auth_providers, self.secrets, self.executor, self.builder, *self._backends.values(),
                        self.packager,
                        *self.exporters, self.registry):
            with contextlib.suppress(Exception):
                await backend.aclose()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- events ------------------------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        for exporter in self.exporters:
            try:
                exporter.export(event)
            except Exception as exc:  # an exporter must never break the platform
                log.warning("telemetry exporter %s failed: %s", exporter.spec_name, exc)
        if event.type.startswith("deployment."):
            try:
                self.pm.hook.mcp_agent_cloud_lifecycle_event(event=event)
            except Exception as exc:
                log.warning("a lifecycle_event hook failed: %s", exc)

    def export_span(self, span: SpanData) -> None:
        """Every finished span, the platform's and the apps': kept for ``traces``, then to each exporter."""
        self.span_store.add(span)
        for exporter in self._span_exporters:
            try:
                exporter.export_span(span)
            except Exception as exc:  # an exporter must never break the platform
                log.warning("telemetry exporter %s failed on a span: %s", exporter.spec_name, exc)

    def _define_metrics(self) -> None:
        m = self.metrics
        dep = ("org", "deployment")
        self.m_requests = m.counter("mcp_agent_cloud_requests_total",
                                    "JSON-RPC requests through the gateway", (*dep, "method"))
        self.m_errors = m.counter("mcp_agent_cloud_request_errors_total", "gateway requests answered with a "
                                  "JSON-RPC error or a tool result with isError", (*dep, "method"))
        self.m_latency = m.histogram("mcp_agent_cloud_request_duration_seconds",
                                     "gateway request latency, from the request to the end of its answer",
                                     (*dep, "method"))
        self.m_restarts = m.counter("mcp_agent_cloud_restarts_total", "app instances restarted after a crash", dep)
        self.m_deploys = m.counter("mcp_agent_cloud_deploys_total", "deploy pipelines run, by outcome",
                                   ("org", "result"))
        self.m_spans_dropped = m.counter("mcp_agent_cloud_telemetry_dropped_total",
                                         "telemetry items an exporter dropped (its queue was full)",
                                         ("exporter", "signal"))
        self._usage: dict[tuple[str, str], dict] = {}
        self._usage_at = 0.0
        self._usage_read_at = -math.inf  # when a reader (an exporter's collection, /metrics) last read the usage
        m.gauge("mcp_agent_cloud_app_cpu_seconds_total", "CPU time of the app's processes or container", dep,
                lambda: self._read_usage("cpu_seconds"))
        m.gauge("mcp_agent_cloud_app_memory_bytes", "resident memory of the app's processes or container", dep,
                lambda: self._read_usage("rss_bytes"))
        m.gauge("mcp_agent_cloud_deployment_up", "1 for each deployment this node serves", (*dep, "version"),
                lambda: {(a.record.org, a.record.name, str(a.version)): 1 for a in list(self.active.values())})
        m.gauge("process_resident_memory_bytes", "the platform process's resident memory", (),
                lambda: {(): _own_rss()})
        m.gauge("process_cpu_seconds_total", "the platform process's CPU time", (),
                lambda: {(): time.process_time()})

    def _read_usage(self, key: str) -> dict[tuple[str, str], float]:
        self._usage_read_at = time.monotonic()
        return {k: u[key] for k, u in self._usage.items() if key in u}

    async def sample_usage(self, max_age: float = 2.0) -> None:
        """Refresh the CPU and memory of every serving instance (read by the gauges above)."""
        if time.monotonic() - self._usage_at < max_age:
            return
        self._usage_at = time.monotonic()
        usage = {}
        for active in list(self.active.values()):
            if active.builder is None:
                continue
            with contextlib.suppress(Exception):
                usage[(active.record.org, active.record.name)] = await active.builder.stats(active.instance)
        self._usage = usage

    async def _retention_loop(self) -> None:
        while True:
            await self.prune_once()
            await asyncio.sleep(3600)

    async def prune_once(self) -> None:
        """What the registry keeps no longer: old events, and OAuth registrations nobody finished."""
        days = self.config.limits.events_keep_days
        try:
            if days > 0 and (removed := await self.registry.prune_events(before=time.time() - days * 86400)):
                log.info("deleted %d events older than %g days (limits.events_keep_days)", removed, days)
            if self.oauth is not None and (removed := await self.oauth.prune_abandoned_clients()):
                log.info("deleted %d OAuth clients that got no token in %g hours (oauth.abandoned_client_hours)",
                         removed, self.config.oauth.abandoned_client_hours)
        except Exception as exc:  # noqa: BLE001 - retention must not take the platform down; next hour again
            log.warning("pruning the registry failed: %s", exc)

    async def _usage_loop(self) -> None:
        # For readers that cannot wait for a sample (an exporter's collection thread), and only while one reads:
        # the /metrics and status routes sample on demand, and asking every container's engine costs.
        while True:
            await asyncio.sleep(10)
            if time.monotonic() - self._usage_read_at < 120:
                await self.sample_usage()

    def count_calls(self, org: str, name: str, caller: str | None, calls: int, errors: int,
                    duration_ms: float = 0.0) -> None:
        """Tool calls just answered, for the usage the catalog and the console show: kept here, written every few
        seconds."""
        entry = self._calls.setdefault((f"{org}.{name}", usage_bucket(time.time())), [0, 0, 0.0, set()])
        entry[0] += calls
        entry[1] += errors
        entry[2] += duration_ms
        if caller is not None and len(entry[3]) < 100_000:
            entry[3].add(caller)

    async def flush_usage(self) -> None:
        pending, self._calls = self._calls, {}
        deltas = []
        for (key, bucket), (calls, errors, duration_ms, callers) in pending.items():
            org, _, short = key.partition(".")
            # Counted calls were served here, so the deployment is almost always active: no registry read.
            active = self.active.get(key)
            record = active.record if active is not None else await self.registry.get_deployment(org, short)
            if record is not None:
                deltas.append(UsageDelta(deployment_id=record.id, bucket=bucket, calls=calls, errors=errors,
                                         duration_ms=duration_ms, callers=sorted(callers)))
        if not deltas:
            return
        try:
            await self.registry.add_usage(deltas)
        except NotImplementedError as exc:
            if not self._usage_warned:
                self._usage_warned = True
                log.warning("usage is not kept: %s", exc)
        except Exception as exc:  # noqa: BLE001 - counts are best effort; serving goes on
            log.warning("could not write usage (%d deployment-hours dropped): %s", len(deltas), exc)

    async def _flush_usage_loop(self) -> None:
        while True:
            await asyncio.sleep(USAGE_FLUSH_SECONDS)
            await self.flush_usage()

    async def usage_of(self, record: DeploymentRecord, since: float) -> UsageSummary:
        await self.flush_usage()  # this node's latest counts; other nodes' within USAGE_FLUSH_SECONDS
        return await self.registry.get_usage(record.id, since)

    def health(self, org: str, name: str) -> dict:
        """Request metrics of one deployment since this node started serving it, for ``status``."""
        requests = errors = 0
        for (o, n, _), v in list(self.m_requests.values.items()):
            if (o, n) == (org, name):
                requests += int(v)
        for (o, n, _), v in list(self.m_errors.values.items()):
            if (o, n) == (org, name):
                errors += int(v)
        calls = (org, name, "tools/call")
        out = {"requests": requests, "errors": errors,
               "error_rate": round(errors / requests, 4) if requests else 0.0,
               "tool_calls": int(self.m_requests.get(calls)), "tool_call_errors": int(self.m_errors.get(calls))}
        for q in (0.5, 0.95, 0.99):
            value = self.m_latency.quantile(calls, q)
            out[f"p{int(q * 100)}_ms"] = None if value is None else round(value * 1000, 2)
        out["active_sessions"] = int(self.gateway.session_counts().get((org, name), 0)) if self.gateway else 0
        usage = self._usage.get((org, name)) or {}
        out["cpu_seconds"] = usage.get("cpu_seconds")
        out["memory_bytes"] = usage.get("rss_bytes")
        return out

    async def record(self, event: Event, deployment_id: str | None = None) -> None:
        self.emit(event)
        data = dict(event.data)
        for key in ("step", "status", "version", "duration_ms"):
            value = getattr(event, key)
            if value is not None:
                data[key] = value
        await self.registry.add_event(EventRecord(org=event.org, deployment_id=deployment_id, type=event.type,
                                                  message=event.message, data=data, created_at=event.ts))

    # -- auth and names ----------------------------------------------------------------------------------------

    async def authenticate(self, request) -> Identity | None:
        if self.oauth is not None:
            from .oauth import looks_like_jwt

            value = request.headers.get("authorization") or ""
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and looks_like_jwt(token.strip()):
                return await self.oauth.authenticate(token.strip())
        for provider in self.auth_providers:
            identity = await provider.authenticate(request)
            if identity is not None:
                return identity
        return None

    async def deployment_auth(self, path: str, org: str | None = None) -> tuple[str, str, bool] | None:
        """For a path under /servers/: the deployment (``org.name``, a short name taken as ``org``'s, else the
        default org's), who may call it (``auth_of``) and whether it is public, cached for 2 s. None for other
        paths and unknown names."""
        named = named_in_path(path) if path.startswith("/servers/") else None
        if named is None:
            return None
        try:
            owner, short = split_qualified(named[0], org or self.config.default_org)
        except Exception:  # noqa: BLE001 - not a deployment name: the handler says so
            return None
        key, now = f"{owner}.{short}", time.monotonic()
        hit = self._auth_cache.get(key)
        if hit is None or now - hit[1] > 2.0:
            record = await self.registry.get_deployment(owner, short)
            if len(self._auth_cache) > 10_000:
                self._auth_cache.clear()
            hit = self._auth_cache[key] = ((auth_of(record), is_public(record)) if record is not None else None, now)
        return (key, *hit[0]) if hit[0] is not None else None

    def forget_auth(self, record: DeploymentRecord) -> None:
        """A change of who may call it holds at once on this node (others see it within the cache's 2 s)."""
        self._auth_cache.pop(f"{record.org}.{record.name}", None)

    async def caller_for(self, path: str, identity: Identity | None, had_token: bool) -> Identity | None:
        """Who calls a deployment's endpoint: the identity, or without a token on one with ``auth: none`` an
        anonymous viewer of that deployment alone. Raises ForbiddenError for a deployment with ``auth:
        provider:NAME`` and a caller who logged in otherwise."""
        found = await self.deployment_auth(path, identity.org if identity else None)
        if found is None:
            return identity
        key, mode, public = found
        owner = key.partition(".")[0]
        if identity is None:
            if mode != "none" or had_token:
                return None
            return Identity(subject="anonymous", org=owner, roles=["viewer"],
                            scopes=["mcp", f"deployment:{key}"], provider="none")
        if (name := auth_provider(mode)) is not None and identity.login_provider != name:
            raise ForbiddenError(f"{key} takes only callers who logged in through {name}",
                                 hint=f"log in through {name} (its button on the login page, or `mcp-agent login "
                                      f"--provider {name}`)")
        if public and identity.org != owner and scope_refusal(identity, path) is None:
            # A public deployment takes every org's users, as viewers of it alone: its MCP endpoints, nothing
            # else of the org. The subject keeps the caller's org, for usage and the audit log.
            return Identity(subject=f"{identity.org}/{identity.subject}", org=owner, roles=["viewer"],
                            scopes=["mcp", f"deployment:{key}"], provider=identity.provider,
                            token_id=identity.token_id, via=identity.via)
        return identity

    def challenge(self, path: str, error: str = "", description: str = "") -> str:
        """The ``WWW-Authenticate`` of a 401 on ``path`` (with OAuth on, a deployment's names its metadata)."""
        if self.oauth is not None:
            return self.oauth.challenge(path, error, description)
        return 'Bearer realm="mcp-agent-cloud"' + (f', error="{error}"' if error else "")

    def qualify(self, identity: Identity, name: str) -> tuple[str, str]:
        org, short = split_qualified(name, identity.org)
        if org != identity.org and "admin" not in identity.roles:
            raise ForbiddenError(f"{org}.{short} belongs to org {org!r}; your token is for org {identity.org!r}",
                                 hint="use a token of that org, or deploy under your own org's name")
        return org, short

    # -- audit log and API keys ----------------------------------------------------------------------------------

    async def audit(self, record: AuditRecord) -> None:
        """Append to the audit log. A registry that keeps none is warned about once; a failed write is logged (the
        action already happened: its answer is out)."""
        try:
            await self.registry.add_audit(record)
        except NotImplementedError as exc:
            if not self._audit_warned:
                self._audit_warned = True
                log.warning("%s: management actions are not audited", exc)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not write the audit record of %s by %s: %s", record.action, record.actor, exc)

    def _key_issuer(self):
        for provider in self.auth_providers:
            if callable(getattr(provider, "issue_token", None)):
                return provider
        raise ValidationFailed("API keys need an auth provider that issues tokens (builtin), and none is configured",
                               hint="add `builtin` to `auth` in the platform config")

    async def create_key(self, identity: Identity, *, name: str, role: str | None, scopes: list[str],
                         expires_in: float) -> tuple[str, TokenRecord]:
        """An API key for the caller's org, acting as the caller, with at most the caller's role and scopes."""
        from .audit import check_scopes

        held = max((ROLE_RANK.get(r, -1) for r in identity.roles), default=-1)
        role = role or max(identity.roles, key=lambda r: ROLE_RANK.get(r, -1), default="viewer")
        if role not in ROLE_RANK or role == "admin":
            raise ValidationFailed(f"unknown role {role!r}", hint="use owner, developer or viewer")
        if ROLE_RANK[role] > held:
            raise ForbiddenError(f"a key may not have more than your role: you are {', '.join(identity.roles)}, "
                                 f"the key asks for {role}", hint="ask an owner of the org for that key")
        try:
            scopes = check_scopes(scopes)
        except ValueError as exc:
            raise ValidationFailed(str(exc)) from None
        if identity.scopes:
            if not scopes:
                scopes = list(identity.scopes)  # a scoped key makes keys scoped as narrowly
            elif not set(scopes) <= set(identity.scopes):
                raise ForbiddenError(f"a key may not have scopes yours lacks (yours: {', '.join(identity.scopes)})")
        return await self._key_issuer().issue_token(org=identity.org, subject=identity.subject, roles=[role],
                                                    name=name, scopes=scopes, expires_in=expires_in)

    async def list_keys(self, identity: Identity) -> list[TokenRecord]:
        """The org's keys for owners; one's own for the other roles."""
        rows = await self.registry.list_tokens(identity.org)
        return rows if identity.can("admin") else [r for r in rows if r.subject == identity.subject]

    async def revoke_key(self, identity: Identity, key_id: str) -> TokenRecord:
        found = next((r for r in await self.list_keys(identity) if r.id == key_id), None)
        if found is None:  # another org's key, or another member's, looks like none at all
            raise NotFoundError(f"no key {key_id} in org {identity.org}", hint="see `mcp-agent keys list`")
        await self.registry.revoke_token(key_id)
        for provider in self.auth_providers:
            if callable(forget := getattr(provider, "forget", None)):
                forget(key_id)  # at once on this node; other nodes within their cache time
        return found.model_copy(update={"revoked": True})

    async def find(self, identity: Identity, name: str) -> DeploymentRecord:
        org, short = self.qualify(identity, name)
        record = await self.registry.get_deployment(org, short)
        if record is None:
            raise NotFoundError(f"no deployment {org}.{short}", hint="see `mcp-agent list` for your deployments")
        return record

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # -- packages ----------------------------------------------------------------------------------------------

    def package_path(self, org: str, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValidationFailed(f"invalid sha256 {sha256!r}", hint="give the hex SHA-256 of the archive")
        # Packages are stored per org: content addressing must not tell one tenant what another uploaded.
        return self.data_dir / "packages" / org / f"{sha256}.pkg"

    async def store_package(self, org: str, chunks, *, sha256: str, fmt: str | None, length: int | None) -> Manifest:
        limit = self.config.limits.max_upload_bytes
        if length is not None and length > limit:
            raise TooLargeError(f"package is {length} bytes; the limit is {limit}",
                                hint="exclude large files with .mcpacignore, or raise limits.max_upload_bytes")
        final = self.package_path(org, sha256)
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = final.with_name(f".upload-{secrets.token_hex(6)}")
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise TooLargeError(f"package is over the limit of {limit} bytes",
                                            hint="exclude large files with .mcpacignore, or raise limits.max_upload_bytes")
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != sha256:
                raise PackageError(f"checksum mismatch: the upload hashes to {digest.hexdigest()}, not {sha256}",
                                   hint="the archive was corrupted in transit; deploy again")
            packager = await self.packager_for(fmt)
            manifest = await packager.inspect(tmp)
            os.replace(tmp, final)
            (final.with_suffix(".format")).write_text(packager.spec_name)
            if self.registry.shares_packages:  # so the node that builds it need not be this one
                await self.registry.put_package(org, sha256, packager.spec_name, final)
            return manifest
        finally:
            tmp.unlink(missing_ok=True)

    async def has_package(self, org: str, sha256: str) -> bool:
        return self.package_path(org, sha256).is_file() or await self.registry.has_package(org, sha256)

    async def ensure_package(self, org: str, sha256: str) -> Path:
        """The archive on this node's disk, fetched from the shared registry when another node took the upload."""
        final = self.package_path(org, sha256)
        if final.is_file():
            return final
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = final.with_name(f".fetch-{secrets.token_hex(6)}")
        try:
            found, fmt = await self.registry.get_package(org, sha256, tmp)
            if not found:
                raise NotFoundError(f"package {sha256[:12]} is not on this node and not in the registry",
                                    hint="deploy again: the CLI uploads the package first")
            digest = hashlib.sha256()
            with open(tmp, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            if digest.hexdigest() != sha256:
                raise PackageError(f"package {sha256[:12]} from the registry hashes to {digest.hexdigest()[:12]}",
                                   hint="the stored copy is damaged; deploy again to upload it anew")
            os.replace(tmp, final)
            if fmt:
                final.with_suffix(".format").write_text(fmt)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    async def _backend_for(self, kind: str, ref) -> Any:
        """A backend other than the configured one (a per-deploy builder, an archive's packager): built and set up
        once, then reused; closed with the others at shutdown."""
        key = f"{kind}:{ref.model_dump_json()}"
        if key not in self._backends:
            backend = self._build(kind, ref)
            await backend.setup()
            self._backends[key] = backend
        return self._backends[key]

    async def packager_for(self, fmt: str | None):
        if not fmt or fmt == self.packager.spec_name:
            return self.packager
        from ..config import BackendRef

        return await self._backend_for("packager", BackendRef(name=fmt))

    async def builder_for(self, choice: str | dict | None):
        if choice is None:
            return self.builder
        from pydantic import ValidationError

        from ..config import BackendRef

        try:
            ref = BackendRef.model_validate(choice)
        except ValidationError as exc:
            raise ValidationFailed(f"invalid builder choice {choice!r}: {exc.errors()[0]['msg']}",
                                   hint="give a builder name, or {name: NAME, ...options}") from None
        # The deploy names a builder; its options come from the operator (`builder`, `builders.NAME`). The
        # deploy's own options go to the builder's check_options and build, which may not let them loosen anything.
        if ref.name == self.config.builder.name:
            builder = self.builder
        else:
            builder = await self._backend_for("builder", BackendRef(name=ref.name,
                                                                    **self.config.builders.get(ref.name, {})))
        builder.check_options(ref.options)
        return builder

    # -- the deploy pipeline -----------------------------------------------------------------------------------

    def _dep_dir(self, org: str, name: str) -> Path:
        return self.data_dir / "deployments" / f"{org}.{name}"

    def app_log(self, org: str, name: str, version: int) -> Path:
        """Each version has its own log, so a failed deploy's tail never mixes in the serving version's lines."""
        return self._dep_dir(org, name) / f"v{version}" / "app.log"

    def _resolve_request(self, req: DeployRequest) -> DeployRequest:
        """Check the request and expand server types, before any state changes."""
        if req.server_type:
            st = self.pm.get_server_type(req.server_type)
            if st.needs_dir:
                if not req.dir:
                    raise ValidationFailed(f"server type {st.name!r} needs a directory",
                                           hint=f"pass --dir PATH (the directory the {st.name} server may use)")
                if not Path(req.dir).is_dir():
                    raise ValidationFailed(f"--dir {req.dir} is not a directory on the platform host")
            args = [a.replace("{dir}", str(Path(req.dir).resolve()) if req.dir else "") for a in st.args]
            req = req.model_copy(update={"kind": "stdio", "command": st.command, "args": args + list(req.args),
                                         "pip": list(st.pip), "npm": st.npm,
                                         "description": req.description or st.description})
        if req.kind == "app" and not req.package_sha256:
            raise ValidationFailed("an app deploy needs an uploaded package", hint="upload it with POST /api/v1/packages")
        if req.kind == "stdio" and not req.command:
            raise ValidationFailed("a stdio server deploy needs a command", hint="pass --command CMD (and --arg A ...)")
        if req.session_mode is not None and req.kind != "stdio":
            raise ValidationFailed(f"session mode applies to stdio servers only, not to {req.kind} deployments",
                                   hint="drop --session-mode: apps and remote servers manage their own sessions")
        for key in req.env:
            if not key or not (key[0].isalpha() or key[0] == "_") or not all(c.isalnum() or c == "_" for c in key):
                raise ValidationFailed(f"invalid environment variable name {key!r}")
        return self._resolve_secrets(req)

    @staticmethod
    def _resolve_secrets(req: DeployRequest) -> DeployRequest:
        """Supplied values are declared too; keys, sizes and paths are checked. Messages name keys, never values."""
        refs = list(req.secret_refs)
        declared = {r.key for r in refs}
        for key, value in req.secrets.items():
            validate_key(key)
            if len(value.encode()) > MAX_VALUE:
                raise TooLargeError(f"the value of secret {key} is over {MAX_VALUE} bytes",
                                    hint="store a path or a reference to the large item instead")
            if key not in declared:
                refs.append(SecretRef(key=key))
                declared.add(key)
        check_refs(refs)
        if refs and req.kind == "remote":
            raise ValidationFailed("a remote server runs elsewhere: the platform cannot hand it secrets",
                                   hint="drop the secrets, or configure them where the server runs")
        if both := sorted(declared & set(req.env)):
            raise ValidationFailed(f"{', '.join(both)} given both as --env and as a secret",
                                   hint="keep one: secrets are for credentials, --env for plain settings")
        return req.model_copy(update={"secret_refs": refs})

    def display_name(self, org: str, short: str, caller_org: str | None = None) -> str:
        """How a user names the deployment in a CLI command."""
        return short if org == (caller_org or self.config.default_org) else f"{org}.{short}"

    async def check_deploy(self, identity: Identity, name: str, req: DeployRequest) -> tuple[str, str, DeployRequest]:
        """Every check that needs no work, so a bad request fails with a plain error before anything changes."""
        if not identity.can("write"):
            raise ForbiddenError("your role may not deploy", hint="ask an owner of the org for the developer role")
        org, short = self.qualify(identity, name)
        validate_name(short)
        req = self._resolve_request(req)
        if req.kind != "remote":
            await self.builder_for(req.builder)
        else:
            await self._check_remote_url(req.url)
        if req.kind == "app" and not self.package_path(org, req.package_sha256).is_file():
            raise NotFoundError(f"package {req.package_sha256[:12]} was not uploaded to org {org}",
                                hint="upload it first with POST /api/v1/packages")
        # Refused before anything is built: a declared secret with no value would only fail at start.
        if missing := await missing_keys(self.secrets, scope_of(org, short), req.secret_refs, req.secrets):
            raise MissingSecretsError(self.display_name(org, short, identity.org), missing)
        if req.uses is not None:
            req = req.model_copy(update={"uses": await self.catalog.check_uses(identity, req.uses, org, short)})
        return org, short, req

    async def _check_remote_url(self, url: str | None) -> None:
        """Instances listen on loopback without auth: a remote URL must not be a way into them (or into other
        internal services). Private, loopback and link-local targets need ``remote.allow_private`` or the host in
        ``remote.allow_hosts``."""
        import ipaddress
        from urllib.parse import urlsplit

        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationFailed("a remote server needs an http(s) URL", hint="pass --url https://host/mcp")
        rules = self.config.remote
        if rules.allow_private or parts.hostname in rules.allow_hosts:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443)
        except OSError as exc:
            raise ValidationFailed(f"cannot resolve {parts.hostname}: {exc}", hint="check the URL") from None
        for info in infos:
            addr = ipaddress.ip_address(info[4][0].split("%")[0])
            if not addr.is_global:
                raise ForbiddenError(
                    f"{parts.hostname} resolves to {addr}, a private, loopback or link-local address",
                    hint="an operator can allow it with `remote: {allow_hosts: [HOST]}` or "
                         "`remote: {allow_private: true}` in the platform config")

    async def deploy(self, identity: Identity, name: str, req: DeployRequest, progress: Progress = _no_progress,
                     *, checked: tuple[str, str, DeployRequest] | None = None) -> dict:
        """Run the pipeline. ``checked`` is what :meth:`check_deploy` returned, when the caller ran it already."""
        org, short, req = checked or await self.check_deploy(identity, name, req)
        attrs = {"deployment": f"{org}.{short}", "org": org, "kind": req.kind, "enduser.id": identity.subject}
        now = time.time_ns()
        # The CLI's own steps, if their times are sane (within the last hour, in order): the trace starts with them.
        steps = [s for s in req.client_steps if now - 3600 * 10**9 < s.start_ns <= s.end_ns <= now]
        first = min((s.start_ns for s in steps), default=None)
        with self.tracer.span("deploy", kind="server", org=org, deployment=short, attributes=attrs,
                              start_ns=first) as span:
            for s in steps:
                child = self.tracer.start(f"deploy.{s.step}", attributes=attrs | {"side": "cli"}, start_ns=s.start_ns)
                if child is not None:
                    if s.status == "failed":
                        child.fail("failed in the CLI")
                    child.end(s.end_ns)
            try:
                result = await self._deploy(org, short, req, progress)
            except BaseException:
                self.m_deploys.inc((org, "failed"))
                raise
            self.m_deploys.inc((org, "ok"))
            if span is not None:
                span.set("version", result.get("version"))
            return result

    async def _deploy(self, org: str, short: str, req: DeployRequest, progress: Progress) -> dict:
        if (wanted := auth_provider(req.auth)) is not None:
            names = [p.spec_name for p in self.auth_providers]
            if wanted not in names:
                raise ValidationFailed(f"auth {req.auth}: no auth provider {wanted!r} is configured here "
                                       f"(configured: {', '.join(names)})",
                                       hint="name one of them, or configure the provider under auth: in the "
                                            "platform config")
        await self.registry.ensure_org(org)
        await self.claim(f"{org}.{short}")
        builder = await self.builder_for(req.builder) if req.kind != "remote" else None
        manifest: Manifest | None = None
        async with self.lock(f"{org}.{short}"):
            record = await self.registry.get_deployment(org, short)
            spec_update = {k: v for k, v in {"description": req.description, "region": req.region,
                                              "public": req.public, "url": req.url, "auth": req.auth,
                                              "uses": req.uses}.items() if v is not None}
            if record is None:
                record = await self.registry.create_deployment(DeploymentRecord(
                    id="dep_" + secrets.token_hex(8), org=org, name=short, kind=req.kind,
                    builder=builder.spec_name if builder else "remote", status="building", spec=spec_update))
                await self.record(Event(type="deployment.created", org=org, deployment=short,
                                        message=f"created {org}.{short}"), record.id)
            else:
                # kind, builder and desired state change only when the new version serves (in _switch).
                record = await self.registry.update_deployment(record.id, spec={**record.spec, **spec_update})
            self.forget_auth(record)
            # The registry gets the declarations and their handles; values go to the secrets backend only.
            refs = [r.model_dump() | {"handle": make_handle(org, short, r.key)} for r in req.secret_refs]
            options = req.model_dump(exclude={"env", "secrets", "secret_refs", "client_steps"}) | {
                "env_keys": sorted(req.env), "secret_refs": refs, "built_on": self.cluster.node_id}
            ver = await self.registry.create_version(record.id, status="building", package_sha256=req.package_sha256,
                                                     options=options)
            version = ver.version
            work_dir = self._dep_dir(org, short) / f"v{version}"
            work_dir.mkdir(parents=True, exist_ok=True)
            build_log = work_dir / "build.log"
            ref = record.ref
            dq = f"{org}.{short}"
            span_attrs = {"deployment": dq, "org": org, "version": version}

            async def step(name: str, coro_fn):
                await progress({"type": "step", "step": name, "status": "started"})
                t0 = time.monotonic()
                managers = [m for m in self.pm.hook.mcp_agent_cloud_pipeline_step(
                    step=name, deployment=dq, version=version) if m is not None]
                try:
                    with contextlib.ExitStack() as stack:
                        stack.enter_context(self.tracer.span(f"deploy.{name}", attributes=span_attrs))
                        for m in managers:
                            stack.enter_context(m)
                        result = await coro_fn()
                except BaseException as exc:
                    ms = (time.monotonic() - t0) * 1000
                    await self.record(Event(type="deploy.step", org=org, deployment=short, version=version, step=name,
                                            status="failed", message=str(getattr(exc, "message", exc)), duration_ms=ms),
                                      record.id)
                    await progress({"type": "step", "step": name, "status": "failed", "duration_ms": ms})
                    raise
                ms = (time.monotonic() - t0) * 1000
                await self.record(Event(type="deploy.step", org=org, deployment=short, version=version, step=name,
                                        status="ok", duration_ms=ms), record.id)
                await progress({"type": "step", "step": name, "status": "ok", "duration_ms": ms})
                return result

            async def build_line(line: str) -> None:
                with open(build_log, "a", encoding="utf-8") as f:
                    f.write(line.rstrip("\n") + "\n")
                await progress({"type": "log", "stream": "build", "line": line.rstrip("\n")})

            instance: Instance | None = None
            try:
                if req.kind == "app":
                    manifest = await step("unpack", lambda: self._unpack(org, req.package_sha256, work_dir))
                    await self.registry.update_version(record.id, version, manifest=manifest.model_dump(mode="json"))
                request = await self._build_request(ref, version, req.kind, work_dir, manifest, options, build_line)
                if request.runtime_requirements:
                    options = {**options, "mcpac_runtime": True}
                    await self.registry.update_version(record.id, version, options=options)
                if req.kind == "app" and not request.entrypoint:
                    raise ValidationFailed("the package names no entrypoint",
                                           hint="set deploy.entrypoint in mcp_agent.config.yaml or pass --app module:attr")
                if req.env:
                    # --env values may be secrets: they live in the secrets backend, never in the registry.
                    await self.secrets.put(f"{org}/{short}", f"_deploy_env_v{version}", json.dumps(req.env))
                for key, value in req.secrets.items():
                    await self.secrets.put(scope_of(org, short), key, value)
                if req.kind == "remote":
                    artifact = None
                    instance = Instance(builder="remote", deployment=ref, version=version, url=req.url)
                else:
                    artifact = await step("build", lambda: builder.build(request, build_line))
                    await self.registry.update_version(record.id, version, status="starting",
                                                       artifact=artifact.model_dump(mode="json"))
                    await self.record(Event(type="deployment.built", org=org, deployment=short, version=version), record.id)
                    instance = await step("start", lambda: self._launch(builder, artifact, record, version))
                tools = await step("health_check", lambda: self._health(builder, instance))
            except BaseException as exc:
                if instance is not None and builder is not None:
                    with contextlib.suppress(Exception):
                        await self._stop_instance(builder, instance, timeout=5)
                message = str(getattr(exc, "message", None) or exc) if not isinstance(exc, asyncio.CancelledError) else "cancelled"
                # Once the version wrote output, that says why it failed; before that, the build's does.
                app_lines = read_app_log(self.app_log(org, short, version), tail=40)
                app_tail = ("\n".join(e.line for e in app_lines)
                            if any(e.stream != "platform" for e in app_lines) else "")
                log_tail = getattr(exc, "log_tail", "") or app_tail or tail_file(build_log, 30)
                await self.registry.update_version(record.id, version, status="failed", error=message)
                current = self.active.get(dq)
                fresh = await self.registry.get_deployment_by_id(record.id)
                after = "running" if current else ("stopped" if fresh and fresh.desired_state == "stopped"
                                                   and fresh.current_version is not None else "failed")
                await self.registry.update_deployment(record.id, status=after)
                await self.record(Event(type="deployment.failed", org=org, deployment=short, version=version,
                                        status="failed", message=message,
                                        data={"serving_version": current.version if current else None}), record.id)
                if isinstance(exc, MCPAgentCloudError):
                    raise BuildError(message, hint=exc.hint or ("the previous version keeps serving" if current else None),
                                     log_tail=log_tail) from exc
                if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
                    raise
                raise BuildError(f"deploy failed: {type(exc).__name__}: {exc}", log_tail=log_tail) from exc
            await step("route", lambda: self._switch(record, version, artifact, instance, builder))
            record = await self.registry.get_deployment_by_id(record.id)
            return self.describe_result(record, version, tools)

    async def _unpack(self, org: str, sha256: str | None, work_dir: Path) -> Manifest:
        archive = await self.ensure_package(org, sha256 or "")
        src = work_dir / "app"
        if src.exists():
            shutil.rmtree(src)
        fmt_file = archive.with_suffix(".format")
        fmt = fmt_file.read_text().strip() if fmt_file.exists() else None
        return await (await self.packager_for(fmt)).unpack(archive, src, max_bytes=self.config.limits.max_unpacked_bytes)

    async def _build_request(self, ref, version: int, kind: str, work_dir: Path, manifest: Manifest | None,
                             options: dict, build_line) -> BuildRequest:
        """What the builder gets for a version, from its stored options: a deploy and a rebuild elsewhere (a
        takeover) build the same thing."""
        build_manifest, runtime_reqs = manifest, []
        if kind == "app" and manifest is not None and uses_runtime(work_dir / "app", manifest.requirements):
            build_manifest, runtime_reqs = await self._runtime_build(manifest)
            names = ", ".join(r.split(" @ ")[0] for r in runtime_reqs)
            await build_line(f"the app uses the MCPApp runtime: installing {names} (runtime wheel "
                             f"{self._wheel.parent.name}, executor {self.executor.spec_name})")
        choice = options.get("builder")
        return BuildRequest(
            deployment=ref, version=version, kind=kind, work_dir=work_dir,
            source_dir=(work_dir / "app") if kind == "app" else None, manifest=build_manifest,
            entrypoint=options.get("entrypoint") or (manifest.entrypoint if manifest else None),
            command=options.get("command"), args=options.get("args") or [], pip=options.get("pip") or [],
            npm=options.get("npm"), url=options.get("url"), session_mode=options.get("session_mode"),
            package_sha256=options.get("package_sha256"),
            options={k: v for k, v in choice.items() if k != "name"} if isinstance(choice, dict) else {},
            runtime_requirements=runtime_reqs)

    async def _rebuild(self, record: DeploymentRecord, ver: VersionRecord, builder) -> Artifact:
        """Build a version again on this node: it was built on another one (a takeover), whose artifact (a venv,
        a local image) this node may not have. The same package, the same options."""
        work_dir = self._dep_dir(record.org, record.name) / f"v{ver.version}"
        work_dir.mkdir(parents=True, exist_ok=True)
        build_log = work_dir / "build.log"

        async def build_line(line: str) -> None:
            with open(build_log, "a", encoding="utf-8") as f:
                f.write(line.rstrip("\n") + "\n")

        options = dict(ver.options or {})
        kind = options.get("kind", record.kind)
        manifest = await self._unpack(record.org, ver.package_sha256, work_dir) if kind == "app" else None
        request = await self._build_request(record.ref, ver.version, kind, work_dir, manifest, options, build_line)
        artifact = await builder.build(request, build_line)
        await self.registry.update_version(record.id, ver.version, artifact=artifact.model_dump(mode="json"),
                                           options={**options, "built_on": self.cluster.node_id})
        return artifact

    async def _runtime_build(self, manifest: Manifest) -> tuple[Manifest, list[str]]:
        """The manifest to build with and the runtime requirements of an app that uses the MCPApp runtime: a wheel of
        this very package (the app's own ``mcp-agent-cloud`` line is dropped: the runtime must match the platform)
        plus what the executor needs in the app."""
        from ..runtime.wheel import build_wheel, requirement

        if self._wheel is None or not self._wheel.is_file():
            self._wheel = await asyncio.to_thread(build_wheel, self.data_dir / "wheelhouse")
        kept = [r for r in manifest.requirements if _requirement_name(r) != RUNTIME_DIST]
        return manifest.model_copy(update={"requirements": kept}), [requirement(self._wheel),
                                                                     *self.executor.app_requirements()]

    def describe_result(self, record: DeploymentRecord, version: int, tools: list[str] | None = None) -> dict:
        return {"id": record.id, "org": record.org, "name": record.name, "version": version, "status": record.status,
                "builder": record.builder, "endpoint": self.endpoint(record), "tools": tools or [],
                "auth": auth_of(record)}

    def endpoint(self, record: DeploymentRecord) -> str:
        name = record.name if record.org == self.config.default_org else f"{record.org}.{record.name}"
        return f"{self.config.base_url}/servers/{name}/mcp"

    async def _start_instance(self, builder, artifact: Artifact, env: dict, org: str, short: str, version: int) -> Instance:
        path = self.app_log(org, short, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        append_app_log(path, "platform", [f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting version {version} ---"],
                       max_bytes=self.config.limits.log_max_bytes)
        return await builder.start(artifact, env=env, log_path=path)

    async def _launch(self, builder, artifact: Artifact, record: DeploymentRecord, version: int, *,
                      latest: set[str] | frozenset[str] = frozenset()) -> Instance:
        """Start an instance of ``version`` with its environment and secrets resolved now: the secret versions the
        version is pinned to, except the keys in ``latest`` and keys without a pin (see :meth:`_env_for`)."""
        env, secret_versions = await self._env_for(record, version, latest=latest)
        control_token = None
        if artifact.kind == "app":
            control_token = secrets.token_urlsafe(32)
            env.update(await self._runtime_env(record, control_token))
        file = env.get(SECRETS_FILE_ENV)
        secrets_dir = str(Path(file).parent) if file and self.secret_files.owns(Path(file).parent) else None
        link = None
        try:
            source = self._dep_dir(record.org, record.name) / f"v{version}" / "app"
            if secrets_dir and artifact.kind == "app" and source.is_dir():
                link = self.secret_files.link(source, Path(file))
            instance = await self._start_instance(builder, artifact, env, record.org, record.name, version)
        except BaseException:
            self.secret_files.remove(secrets_dir, link)
            raise
        if control_token:
            self._control_tokens[instance.url] = control_token
        if secrets_dir:
            instance.data["secrets_dir"] = secrets_dir  # a path, no value: removed when the instance stops
        if secret_versions:
            # Numbers only: _switch pins them on the version once this instance has passed its health check.
            instance.data["secret_versions"] = secret_versions
        return instance

    def _drop_secret_files(self, instance: Instance) -> None:
        secrets_dir = (instance.data or {}).get("secrets_dir")
        if secrets_dir:
            ref = instance.deployment
            link = self._dep_dir(ref.org, ref.name) / f"v{instance.version}" / "app" / SECRETS_FILENAME
            self.secret_files.remove(secrets_dir, link)

    async def _stop_instance(self, builder, instance: Instance, **kw) -> None:
        try:
            await builder.stop(instance, **kw)
        finally:
            self._drop_secret_files(instance)
            self._control_tokens.pop(instance.url, None)

    def app_data_dir(self, org: str, name: str) -> Path:
        """The app's own persistent directory (run stores): shared by its versions, kept across restarts, removed
        with the deployment."""
        return self._dep_dir(org, name) / "data"

    async def _runtime_env(self, record: DeploymentRecord, control_token: str) -> dict[str, str]:
        """What the MCPApp runtime inside an app instance reads: the executor (from the supervisor), the
        deployment's name and data dir, the control route's token, and whether the deployment is suspended."""
        data = self.app_data_dir(record.org, record.name)
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = await self.registry.get_deployment_by_id(record.id) or record
        env = {k: str(v) for k, v in self.executor.app_env(record.ref).items()}
        env.update({"MCPAC_DEPLOYMENT": f"{record.org}.{record.name}", "MCPAC_APP_DATA_DIR": str(data),
                    "MCPAC_CONTROL_TOKEN": control_token})
        if fresh.spec.get("suspended"):
            env["MCPAC_SUSPENDED"] = "1"  # a restart keeps a suspended deployment suspended
        if self.tracer.enabled:
            env["MCPAC_TRACING"] = "1"
        return env

    async def _health(self, builder, instance: Instance) -> list[str]:
        async def alive() -> bool:
            try:
                return await builder.is_alive(instance)
            except NotImplementedError:
                return True
        return await mcp_health_check(instance.url, timeout=self.config.limits.health_timeout,
                                      alive=alive if builder is not None else None)

    async def _switch(self, record: DeploymentRecord, version: int, artifact: Artifact | None, instance: Instance,
                      builder) -> None:
        """Move traffic to the new instance, then retire the old one. Only called after a passing health check."""
        dq = f"{record.org}.{record.name}"
        old = self.active.get(dq)
        fresh = await self.registry.get_deployment_by_id(record.id) or record
        new = Active(record, version, artifact, instance, builder)
        self.active[dq] = new
        ver = await self.registry.get_version(record.id, version)
        # Only the MCPApp runtime hands over spans: other servers are never asked.
        new.traced = bool(ver is not None and (ver.options or {}).get("mcpac_runtime"))
        pinned = {}
        if ver is not None and (instance.data or {}).get("secret_versions"):
            # This instance is healthy: what it runs with is what later restarts of the version must use, so a
            # rotation whose instance failed never reaches the version through a crash or a platform restart.
            pinned = {"options": {**(ver.options or {}), "secret_versions": dict(instance.data["secret_versions"])}}
        ver = await self.registry.update_version(record.id, version, status="serving",
                                                 instance=instance.model_dump(mode="json"), **pinned)
        kind = (ver.options or {}).get("kind", record.kind) if ver else record.kind
        await self.registry.update_deployment(record.id, current_version=version, status="running",
                                              desired_state="running", kind=kind,
                                              builder=builder.spec_name if builder is not None else "remote")
        if builder is not None:
            new.task = self._spawn(self._supervise(new))
        if old is not None:  # whatever served before stops, even the same version number (a restart)
            await self._stop_active(old)
        for previous in {fresh.current_version, old.version if old else None} - {None, version}:
            await self.registry.update_version(record.id, previous, status="superseded")
        await self.record(Event(type="deployment.started", org=record.org, deployment=record.name, version=version,
                                message=f"serving at {self.endpoint(record)}"), record.id)

    async def _stop_active(self, active: Active) -> None:
        active.stopping = True
        key = f"{active.record.org}.{active.record.name}"
        if self.tracer.enabled and self.active.get(key) is active:
            with contextlib.suppress(Exception):  # its last spans, before it goes (briefly: it may be hung)
                await self.collect_app_spans(key, timeout=1.0)
        if active.builder is not None:
            with contextlib.suppress(Exception):
                await self._stop_instance(active.builder, active.instance)
        if active.task is not None and active.task is not asyncio.current_task():
            active.task.cancel()
            with contextlib.suppress(BaseException):
                await active.task

    # -- supervisor --------------------------------------------------------------------------------------------

    async def _supervise(self, active: Active) -> None:
        """Restart the instance when it exits on its own, with exponential backoff, until it is stopped."""
        builder = active.builder
        rec = active.record
        sup = self.config.supervisor
        backoff = sup.backoff_initial
        while not active.stopping:
            started = time.monotonic()
            code = await builder.wait(active.instance)
            if active.stopping:
                return
            self._drop_secret_files(active.instance)  # it exited: its file is no longer needed
            if time.monotonic() - started > sup.stable_after:
                backoff = sup.backoff_initial
            await self.registry.update_deployment(rec.id, status="crashed")
            await self.record(Event(type="deployment.crashed", org=rec.org, deployment=rec.name, version=active.version,
                                    status="failed", message=f"exited with code {code}; restarting in {backoff:.0f}s",
                                    data={"exit_code": code, "restarts": active.restarts}), rec.id)
            while not active.stopping:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, sup.backoff_max)
                if active.stopping:
                    return
                instance = None
                try:
                    instance = await self._launch(builder, active.artifact, rec, active.version)
                    # Traffic moves to the new process only once it answers MCP.
                    await self._health(builder, instance)
                except BaseException as exc:
                    if instance is not None:  # never leave an unhealthy (or, on cancel, orphaned) process behind
                        with contextlib.suppress(Exception):
                            await self._stop_instance(builder, instance, timeout=5)
                    if not isinstance(exc, Exception):
                        raise
                    await self.record(Event(type="deployment.restart_failed", org=rec.org, deployment=rec.name,
                                            version=active.version, status="failed",
                                            message=f"{getattr(exc, 'message', exc)}; next try in {backoff:.0f}s"),
                                      rec.id)
                    continue
                active.instance = instance
                active.restarts += 1
                self.m_restarts.inc((rec.org, rec.name))
                await self.registry.update_version(rec.id, active.version, instance=instance.model_dump(mode="json"))
                await self.registry.update_deployment(rec.id, status="running")
                await self.record(Event(type="deployment.restarted", org=rec.org, deployment=rec.name,
                                        version=active.version, status="ok",
                                        message=f"restarted (restart #{active.restarts})"), rec.id)
                break

    async def _env_for(self, record: DeploymentRecord, version: int, *,
                       latest: set[str] | frozenset[str] = frozenset()) -> tuple[dict[str, str], dict[str, int]]:
        """The instance's environment, resolved at every (re)start: the package's env, the version's declared
        secrets (in file mode the path of a freshly written secrets file) and its --env values; and the secret
        versions used. Each key takes the version pinned in the version's options (``secret_versions``, set by
        the last healthy start), unless it is in ``latest`` (a rotation) or has no pin yet (a deploy)."""
        ver = await self.registry.get_version(record.id, version)
        options = (ver.options or {}) if ver else {}
        env = dict(((ver.manifest or {}).get("env") or {}) if ver else {})
        scope = scope_of(record.org, record.name)
        used: dict[str, int] = {}
        if refs := [SecretRef.stored(r) for r in options.get("secret_refs") or []]:
            values, used = await resolve(self.secrets, scope, refs, name=self.display_name(record.org, record.name),
                                         pins=options.get("secret_versions"), latest=latest)
            if options.get("secrets_as") == "file":
                env[SECRETS_FILE_ENV] = str(self.secret_files.write(refs, values))
            else:
                env.update(values)
        if options.get("env_keys"):
            env.update(json.loads(await self.secrets.get(scope, f"_deploy_env_v{version}")))
        return env, used

    async def _remove_stale_secret_files(self) -> None:
        """Secrets files of instances a crash left behind. Before serving, so no new instance's file is at risk;
        those of serving versions stay until _restore adopts their instance or drops the file."""
        keep = []
        for record in await self.registry.list_deployments():
            for ver in await self.registry.list_versions(record.id):
                if ver.status == "serving" and (ver.instance or {}).get("data", {}).get("secrets_dir"):
                    keep.append(ver.instance["data"]["secrets_dir"])
        self.secret_files.cleanup(keep)

    async def _restore(self) -> None:
        """After a platform restart: close out deploys the restart interrupted, then bring back every deployment
        that should be running."""
        for record in await self.registry.list_deployments():
            if not self.cluster.mine(await self.cluster.claim(f"{record.org}.{record.name}")):
                continue  # another live node runs it
            for ver in await self.registry.list_versions(record.id):
                if ver.status in ("building", "starting"):
                    await self.registry.update_version(record.id, ver.version, status="failed",
                                                       error="interrupted by a platform restart")
                elif ver.status == "serving" and ver.version != record.current_version:
                    await self.registry.update_version(record.id, ver.version, status="superseded")
            if record.desired_state != "running" or record.current_version is None:
                if record.status in ("building", "running", "crashed"):
                    status = "stopped" if record.current_version is not None else "failed"
                    await self.registry.update_deployment(record.id, status=status)
                continue
            self._spawn(self._restore_one(record))

    async def _restore_one(self, record: DeploymentRecord, *, takeover_from: str | None = None) -> None:
        dq = f"{record.org}.{record.name}"
        async with self.lock(dq):
            if dq in self.active:
                return  # the restore and a sweep both claimed it
            if takeover_from is not None:
                fresh = await self.registry.get_deployment_by_id(record.id)
                if fresh is None or dq not in self.cluster.held:
                    return  # deleted, or served here, or lost again meanwhile
                record = fresh
                for ver in await self.registry.list_versions(record.id):
                    if ver.status in ("building", "starting"):  # a deploy the dead node did not finish
                        await self.registry.update_version(record.id, ver.version, status="failed",
                                                           error=f"interrupted: node {takeover_from} stopped")
                await self.record(Event(type="deployment.takeover", org=record.org, deployment=record.name,
                                        version=record.current_version,
                                        message=f"node {self.cluster.node_id} takes over from node {takeover_from}",
                                        data={"from_node": takeover_from, "to_node": self.cluster.node_id}),
                                  record.id)
            try:
                await self._activate(record, record.current_version, reason="restore")
            except Exception as exc:
                await self.registry.update_deployment(record.id, status="failed")
                what = "take over" if takeover_from is not None else "restore after restart"
                await self.record(Event(type="deployment.failed", org=record.org, deployment=record.name,
                                        version=record.current_version, status="failed",
                                        message=f"could not {what}: {exc}"), record.id)

    # -- nodes -------------------------------------------------------------------------------------------------

    async def claim(self, key: str) -> None:
        """Own ``key`` (``org.name``) on this node before starting anything of it. A live other node's lease is
        a conflict: the HTTP layer forwards such requests to that node, so this is a lost race or a library call."""
        lease = await self.cluster.claim(key)
        if not self.cluster.mine(lease):
            raise ConflictError(f"{key} runs on node {lease.node_id} ({lease.url})",
                                hint="send the request to that node, or to any node's HTTP API, which forwards it")

    def take_over(self, record: DeploymentRecord, previous: str | None) -> None:
        """The cluster claimed an orphaned deployment for this node: start it here."""
        if previous == self.cluster.node_id:  # its own lease, expired while it was down: a restore
            self._spawn(self._restore_one(record))
        else:
            self._spawn(self._restore_one(record, takeover_from=previous or "unknown"))

    async def lease_lost(self, key: str) -> None:
        """Another node took ``key`` over (this node failed to renew in time): stop serving it here."""
        active = self.active.pop(key, None)
        if active is not None:
            await self._stop_active(active)
        org, _, name = key.partition(".")
        record = await self.registry.get_deployment(org, name)
        await self.record(Event(type="deployment.lease_lost", org=org, deployment=name, status="failed",
                                message=f"node {self.cluster.node_id} lost its lease: another node serves it now"),
                          record.id if record else None)

    async def _activate(self, record: DeploymentRecord, version: int, *, reason: str,
                        latest: set[str] | frozenset[str] = frozenset()) -> None:
        """Start (or adopt) an already-built version and switch traffic to it, on its pinned secret versions
        (``latest``: keys to take at their latest version instead, as a rotation does)."""
        await self.claim(f"{record.org}.{record.name}")
        ver = await self.registry.get_version(record.id, version)
        if ver is None:
            raise NotFoundError(f"{record.org}.{record.name} has no version {version}",
                                hint=f"see `mcp-agent status {record.name}` for its versions")
        if (ver.options or {}).get("kind", record.kind) == "remote":  # the version's kind, not the latest deploy's
            url = (ver.options or {}).get("url") or record.spec.get("url")
            instance = Instance(builder="remote", deployment=record.ref, version=version, url=url)
            await mcp_health_check(instance.url, timeout=self.config.limits.health_timeout)
            await self._switch(record, version, None, instance, None)
            return
        if not ver.artifact:
            raise ValidationFailed(f"version {version} of {record.org}.{record.name} was never built",
                                   hint="deploy again, or roll back to a version that built")
        artifact = Artifact.model_validate(ver.artifact)
        builder = await self.builder_for((ver.options or {}).get("builder"))
        if (ver.options or {}).get("built_on") not in (None, self.cluster.node_id):
            artifact = await self._rebuild(record, ver, builder)
            reason = "rebuilt"  # nothing of the other node's to adopt
        instance = None
        if reason == "restore" and ver.instance:
            previous = Instance.model_validate(ver.instance)
            adopted = await builder.adopt_existing([previous])
            instance = adopted[0] if adopted else None
            if instance is None:
                self._drop_secret_files(previous)
        if instance is None:
            instance = await self._launch(builder, artifact, record, version, latest=latest)
        try:
            await self._health(builder, instance)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._stop_instance(builder, instance, timeout=5)
            raise
        await self._switch(record, version, artifact, instance, builder)

    # -- lifecycle operations ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def locked(self, identity: Identity, name: str):
        """The deployment, read again once its lock is held: an operation that waited behind a deploy must act on
        what that deploy left, not on what was true when it started waiting."""
        record = await self._writable(identity, name)
        async with self.lock(f"{record.org}.{record.name}"):
            fresh = await self.registry.get_deployment_by_id(record.id)
            if fresh is None:
                raise NotFoundError(f"{record.org}.{record.name} was deleted meanwhile",
                                    hint="deploy it again if you still need it")
            yield fresh

    async def stop_deployment(self, identity: Identity, name: str) -> DeploymentRecord:
        async with self.locked(identity, name) as record:
            await self._retire(record)
            if record.current_version is not None:
                await self.registry.update_version(record.id, record.current_version, status="stopped")
            record = await self.registry.update_deployment(record.id, status="stopped", desired_state="stopped")
            await self.record(Event(type="deployment.stopped", org=record.org, deployment=record.name,
                                    version=record.current_version), record.id)
            return record

    async def control(self, record: DeploymentRecord, body: dict | None = None) -> dict:
        """``GET`` (or ``POST body``) the control route of the deployment's serving MCPApp instance."""
        import httpx

        dq = f"{record.org}.{record.name}"
        active = self.active.get(dq)
        if active is None or active.builder is None:
            raise ConflictError(f"{dq} is not running", hint=f"start it with `mcp-agent start {record.name}`")
        ver = await self.registry.get_version(record.id, active.version)
        if not ((ver.options or {}).get("mcpac_runtime") if ver else False):
            raise ConflictError(f"{dq} does not run the MCPApp runtime: pause and resume apply to apps built with "
                                "`from mcp_agent_cloud import MCPApp`",
                                hint="stop it with `mcp-agent stop NAME` instead, or rebuild the app on MCPApp")
        token = self._control_tokens.get(active.instance.url)
        if token is None:
            raise ConflictError(f"{dq} was started by an earlier platform process, which holds its control token",
                                hint=f"restart it so this platform can control it: `mcp-agent stop {record.name}` "
                                     f"then `mcp-agent start {record.name}`")
        try:
            resp = await self._control_call(active, token, body)
        except httpx.HTTPError as exc:
            raise MCPAgentCloudError(f"{dq}: its control route did not answer: {type(exc).__name__}: {exc}",
                                     hint=f"check `mcp-agent logs {record.name}`") from None
        if resp.status_code != 200:
            raise MCPAgentCloudError(f"{dq}: its control route answered {resp.status_code}: {resp.text[:300]}",
                                     hint=f"check `mcp-agent logs {record.name}`")
        return resp.json()

    async def _control_call(self, active: Active, token: str, body: dict | None = None, path: str = "",
                            timeout: float = 30.0):
        import httpx

        url = active.instance.url
        base = url.rsplit("/", 1)[0] if url.endswith("/mcp") else url
        if self._control_http is None:  # one pool: spans are fetched from every app each second
            self._control_http = httpx.AsyncClient()
        headers = {"Authorization": f"Bearer {token}"}
        if body is not None:
            return await self._control_http.post(base + CONTROL_PATH + path, json=body, headers=headers,
                                                 timeout=timeout)
        return await self._control_http.get(base + CONTROL_PATH + path, headers=headers, timeout=timeout)

    async def collect_app_spans(self, key: str, timeout: float = 5.0) -> int:
        """Fetch the spans an MCPApp instance finished since the last fetch (its control route hands them over
        once) and pass them on like the platform's own. Returns how many. Org and deployment come from the
        instance, not from what it sent: an app cannot file spans under another deployment."""
        active = self.active.get(key)
        token = self._control_tokens.get(active.instance.url) if active is not None else None
        if active is None or token is None or not active.traced:
            return 0
        try:
            resp = await self._control_call(active, token, path="/spans", timeout=timeout)
            if resp.status_code == 404:  # a runtime from before span support
                active.traced = False
                return 0
            payload = resp.json() if resp.status_code == 200 else {}
        except Exception as exc:  # noqa: BLE001 - a busy or restarting app: its spans come on the next fetch
            log.debug("no spans from %s: %s", key, exc)
            return 0
        org, name = active.record.org, active.record.name
        count = 0
        for raw in payload.get("spans") or []:
            try:
                span = SpanData.model_validate(raw)
            except Exception:  # noqa: BLE001 - one malformed span does not lose the others
                continue
            self.export_span(span.model_copy(update={"org": org, "deployment": name, "service": key}))
            count += 1
        if payload.get("dropped"):
            self.m_spans_dropped.inc((f"app:{key}", "traces"), int(payload["dropped"]))
        return count

    async def _collect_spans_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tracing.app_pull_seconds)
            # Together, so one slow app does not hold back the others' spans.
            await asyncio.gather(*(self.collect_app_spans(key, timeout=2.0) for key in list(self.active)
                                   if self.active[key].traced), return_exceptions=True)

    async def set_suspended(self, identity: Identity, name: str, suspended: bool) -> dict:
        """Suspend (no new runs; runs in flight go on) or resume an MCPApp deployment. The state is kept in the
        deployment's spec, so restarts of its instance keep it."""
        async with self.locked(identity, name) as record:
            reply = await self.control(record, {"suspended": suspended})
            record = await self.registry.update_deployment(record.id, spec={**record.spec, "suspended": suspended})
            verb = "suspended" if suspended else "resumed"
            await self.record(Event(type=f"deployment.{verb}", org=record.org, deployment=record.name,
                                    message=f"{identity.subject} {verb} {record.org}.{record.name}"
                                    + (": it accepts no new runs" if suspended else ""),
                                    data={"active_runs": reply.get("active_runs")}), record.id)
            return {"name": record.name, "org": record.org, "suspended": bool(reply.get("suspended", suspended)),
                    "active_runs": reply.get("active_runs"), "status": record.status}

    async def start_deployment(self, identity: Identity, name: str) -> DeploymentRecord:
        async with self.locked(identity, name) as record:
            if f"{record.org}.{record.name}" in self.active:
                return record
            if record.current_version is None:
                raise ConflictError(f"{record.org}.{record.name} has no version that ever served",
                                    hint="deploy it first")
            await self._activate(record, record.current_version, reason="start")
            return await self.registry.get_deployment_by_id(record.id)

    async def rollback(self, identity: Identity, name: str, to: int | None) -> dict:
        async with self.locked(identity, name) as record:
            versions = await self.registry.list_versions(record.id)
            if to is None:
                candidates = [v for v in versions if v.version != record.current_version
                              and (v.artifact or (v.options or {}).get("kind") == "remote")
                              and v.status in ("superseded", "stopped") and
                              (record.current_version is None or v.version < record.current_version)]
                if not candidates:
                    raise ConflictError(f"{record.org}.{record.name} has no earlier version to roll back to",
                                        hint="see `mcp-agent status NAME` for its versions")
                to = max(v.version for v in candidates)
            target = next((v for v in versions if v.version == to), None)
            if target is None:
                raise NotFoundError(f"{record.org}.{record.name} has no version {to}",
                                    hint=f"see `mcp-agent status {record.name}` for its versions")
            if to == record.current_version and f"{record.org}.{record.name}" in self.active:
                raise ConflictError(f"version {to} is already serving",
                                    hint="pick another version with --to N, or leave it as it is")
            await self._activate(record, to, reason="rollback")
            await self.record(Event(type="deployment.rolled_back", org=record.org, deployment=record.name,
                                    version=to, message=f"rolled back to version {to}"), record.id)
            record = await self.registry.get_deployment_by_id(record.id)
            return self.describe_result(record, to)

    async def delete_deployment(self, identity: Identity, name: str, *, force: bool = False) -> list[str]:
        """Delete it; a public one that others use only when an owner forces it. Returns its dependents (a
        private deployment's, left without it), as the caller may see them."""
        async with self.locked(identity, name) as record:
            left = await self.catalog.check_removal(identity, record, force=force, action="delete")
            await self._retire(record)
            used = {}
            for ver in await self.registry.list_versions(record.id):
                if ver.artifact:
                    with contextlib.suppress(Exception):
                        b = await self.builder_for((ver.options or {}).get("builder"))
                        used[b.spec_name] = b
                        await b.remove(Artifact.model_validate(ver.artifact))
            for b in used.values():  # containers, volumes: what the builder keeps per deployment
                with contextlib.suppress(Exception):
                    await b.remove_deployment(record.ref)
            # Every secret of the deployment goes with it, every version: a later deployment of the same name
            # must not inherit them.
            scope = scope_of(record.org, record.name)
            with contextlib.suppress(Exception):
                for info in await self.secrets.list(scope):
                    await self.secrets.delete(scope, info.key, destroy=True)
            # What the executor keeps outside the app for it (Temporal Schedules would go on starting runs that
            # nobody serves). A failure does not stop the delete; the event says what is left behind.
            leftover = ""
            remove = getattr(self.executor, "remove_deployment", None)
            if callable(remove):
                try:
                    result = remove(record.ref)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    leftover = (f"; the {self.executor.spec_name} executor could not remove what it keeps for it "
                                f"({type(exc).__name__}: {exc})")
                    log.warning("delete %s.%s: executor cleanup failed: %s", record.org, record.name, exc)
            await self.registry.delete_deployment(record.id)
            await self.cluster.release(f"{record.org}.{record.name}")
            shutil.rmtree(self._dep_dir(record.org, record.name), ignore_errors=True)
            await self.record(Event(type="deployment.deleted", org=record.org, deployment=record.name,
                                    status="failed" if leftover else "info",
                                    message=f"deleted {record.org}.{record.name}{leftover}"), record.id)
            self.forget_auth(record)
            return self.catalog.shown(left, identity)

    # -- secrets -----------------------------------------------------------------------------------------------

    async def _declared(self, record: DeploymentRecord | None) -> dict[str, SecretRef]:
        """The secrets the serving version declares (else the current one, else the latest deploy)."""
        if record is None:
            return {}
        active = self.active.get(f"{record.org}.{record.name}")
        number = active.version if active else record.current_version
        if number is None:
            versions = await self.registry.list_versions(record.id)
            number = versions[-1].version if versions else None
        ver = await self.registry.get_version(record.id, number) if number is not None else None
        refs = [SecretRef.stored(r) for r in ((ver.options or {}).get("secret_refs") or [])] if ver else []
        return {r.key: r for r in refs}

    def _secret_target(self, identity: Identity, name: str, key: str | None, need: str) -> tuple[str, str]:
        org, short = self.qualify(identity, name)
        if not identity.can(need):
            raise ForbiddenError(
                {"read": "your role may not see secrets", "write": "your role may not change secrets",
                 "admin": "reading a secret's value needs the owner role"}[need],
                hint="`mcp-agent secrets list` shows keys and versions to every role" if need == "admin"
                else "ask an owner of the org for the developer role")
        if key is not None:
            validate_key(key)
        return org, short

    async def export_k8s(self, identity: Identity, name: str, *, namespace: str = "default",
                         image: str | None = None, version: int | None = None) -> dict:
        """Kubernetes manifests for a deployment's current (or given) version, from its container builder's run
        spec. Secret values are never included: the Deployment references a Secret the operator creates."""
        from ..plugins.kubernetes import k8s_name

        record = await self.find(identity, name)
        number = version or record.current_version
        ver = await self.registry.get_version(record.id, number) if number else None
        if ver is None or not ver.artifact:
            raise NotFoundError(f"{record.org}.{record.name} has no built version {number or ''}".rstrip(),
                                hint="deploy it first; `mcp-agent status NAME` lists its versions")
        if k8s_name(namespace) != namespace:
            raise ValidationFailed(f"invalid namespace {namespace!r}", hint="lowercase letters, digits and '-'")
        builder = await self.builder_for((ver.options or {}).get("builder"))
        export = getattr(builder, "export_k8s", None)
        if export is None:
            raise ValidationFailed(
                f"{record.org}.{record.name} v{ver.version} was built by the {builder.spec_name} builder, which "
                "makes no container image", hint="deploy it with --builder docker or --builder podman, then export")
        options = ver.options or {}
        # Secrets become references to a Secret: the declared ones as env vars or, with --secrets-as file, as the
        # mounted secrets file; --env values too, since the platform stores them as secrets.
        as_file = options.get("secrets_as") == "file"
        declared = [r["key"] for r in options.get("secret_refs") or []]
        keys = ([] if as_file else declared) + list(options.get("env_keys") or [])
        env = {str(k): str(v) for k, v in ((ver.manifest or {}).get("env") or {}).items()}
        env["MCPAC_DEPLOYMENT"] = f"{record.org}.{record.name}"  # no control token: the pod has no platform
        docs, notes = export(Artifact.model_validate(ver.artifact), namespace=namespace, image=image, env=env,
                             secret_keys=keys, secrets_file=as_file and bool(declared))
        return {"deployment": f"{record.org}.{record.name}", "version": ver.version, "namespace": namespace,
                "manifests": docs, "notes": notes}

    async def list_secrets(self, identity: Identity, name: str) -> dict:
        """Keys, versions and handles of the deployment's secrets (never values); ``missing``: declared, unset."""
        org, short = self._secret_target(identity, name, None, "read")
        infos = [i for i in await self.secrets.list(scope_of(org, short)) if not i.key.startswith("_")]
        declared = await self._declared(await self.registry.get_deployment(org, short))
        rows = [{"key": i.key, "version": i.version, "updated_at": i.updated_at,
                 "handle": make_handle(org, short, i.key),
                 "kind": declared[i.key].kind if i.key in declared else None} for i in infos]
        return {"secrets": rows, "missing": sorted(set(declared) - {i.key for i in infos})}

    async def set_secret(self, identity: Identity, name: str, key: str, value: str) -> dict:
        """Store a new version. A serving deployment that declares the key is restarted onto it through the
        health-checked switch; when the new instance fails, the old one keeps serving and the error is raised."""
        org, short = self._secret_target(identity, name, key, "write")
        if not isinstance(value, str):
            raise ValidationFailed("the value must be a string")
        if len(value.encode()) > MAX_VALUE:
            raise TooLargeError(f"the value is over {MAX_VALUE} bytes",
                                hint="store a path or a reference to the large item instead")
        scope, dq = scope_of(org, short), f"{org}.{short}"
        async with self.lock(dq):
            number = await self.secrets.put(scope, key, value)
            record = await self.registry.get_deployment(org, short)
            active = self.active.get(dq)
            restart = (record is not None and active is not None and active.builder is not None
                       and key in await self._declared(record))
            data = {"key": key, "secret_version": number, "subject": identity.subject, "token_id": identity.token_id}
            error: Exception | None = None
            if not restart and record is not None and active is None and record.current_version is not None:
                # Stopped (or failed): no switch can try the value now, so the next `start` takes it instead of the
                # pinned one; that start pins it once healthy.
                await self._unpin(record, record.current_version, key)
            if restart:
                try:
                    # The new value for this key, the pinned ones for the others: an earlier failed rotation of
                    # another key stays out. The pin moves only if the switch succeeds.
                    await self._activate(record, active.version, reason="secret", latest={key})
                except Exception as exc:
                    error = exc
            await self.record(Event(type="secret.set", org=org, deployment=short,
                                    status="failed" if error else "ok",
                                    message=f"{identity.subject} set secret {key} (version {number})"
                                    + (f"; restart failed: {getattr(error, 'message', error)}" if error
                                       else "; restarted onto it" if restart else ""),
                                    data=data | {"restarted": restart and error is None}),
                              record.id if record else None)
            if error is not None:
                raise RestartFailed(
                    f"secret {key} is stored as version {number}, but the instance started with it failed: "
                    f"{getattr(error, 'message', error)}",
                    hint=f"version {active.version} keeps serving with the previous value, and restarts keep using "
                         f"it (it is pinned); the new value is stored but not in use: set a working value with "
                         f"`mcp-agent secrets set {self.display_name(org, short, identity.org)} {key}`",
                    log_tail=getattr(error, "log_tail", "") or tail_file(self.app_log(org, short, active.version), 30),
                    key=key, secret_version=number, serving_version=active.version,
                    reason=str(getattr(error, "message", error)),
                ) from error
        return {"key": key, "version": number, "handle": make_handle(org, short, key), "restarted": restart}

    async def _unpin(self, record: DeploymentRecord, version: int, key: str) -> None:
        ver = await self.registry.get_version(record.id, version)
        pins = dict((ver.options or {}).get("secret_versions") or {}) if ver else {}
        if pins.pop(key, None) is not None:
            await self.registry.update_version(record.id, version, options={**ver.options, "secret_versions": pins})

    async def get_secret(self, identity: Identity, name: str, key: str, version: int | None = None) -> dict:
        """A value, for owners only; every read is recorded as a ``secret.read`` event (without the value)."""
        org, short = self._secret_target(identity, name, key, "admin")
        scope = scope_of(org, short)
        info = next((i for i in await self.secrets.list(scope) if i.key == key), None)
        if info is None:
            raise NotFoundError(f"{org}.{short} has no secret {key}",
                                hint=f"set it with `mcp-agent secrets set {self.display_name(org, short, identity.org)} "
                                     f"{key}`")
        number = version or info.version
        value = await self.secrets.get(scope, key, version=number)
        record = await self.registry.get_deployment(org, short)
        # Recorded before the value is handed out: an unaudited read must not happen.
        await self.record(Event(type="secret.read", org=org, deployment=short,
                                message=f"{identity.subject} read secret {key} (version {number})",
                                data={"key": key, "secret_version": number, "subject": identity.subject,
                                      "token_id": identity.token_id, "provider": identity.provider}),
                          record.id if record else None)
        return {"key": key, "version": number, "value": value}

    async def delete_secret(self, identity: Identity, name: str, key: str, *, destroy: bool = False) -> dict:
        org, short = self._secret_target(identity, name, key, "write")
        scope = scope_of(org, short)
        async with self.lock(f"{org}.{short}"):
            if not any(i.key == key for i in await self.secrets.list(scope)):
                raise NotFoundError(f"{org}.{short} has no secret {key}", hint="see `mcp-agent secrets list NAME`")
            await self.secrets.delete(scope, key, destroy=destroy)
            record = await self.registry.get_deployment(org, short)
            declared = key in await self._declared(record)
            await self.record(Event(type="secret.deleted", org=org, deployment=short,
                                    message=f"{identity.subject} {'destroyed' if destroy else 'deleted'} secret {key}",
                                    data={"key": key, "destroy": destroy, "subject": identity.subject,
                                          "token_id": identity.token_id}), record.id if record else None)
        out = {"deleted": key, "destroyed": destroy, "declared": declared}
        if declared:
            out["hint"] = (f"the deployment still declares {key}: it keeps serving, but cannot start again until "
                           f"the key is set")
        return out

    async def _retire(self, record: DeploymentRecord) -> None:
        """Take a deployment out of the gateway and stop its instance."""
        active = self.active.pop(f"{record.org}.{record.name}", None)
        if active is not None:
            await self._stop_active(active)

    async def _writable(self, identity: Identity, name: str) -> DeploymentRecord:
        record = await self.find(identity, name)
        if not identity.can("write"):
            raise ForbiddenError("your role may not change deployments",
                                 hint="ask an owner of the org for the developer role")
        return record

    async def status(self, record: DeploymentRecord, identity: Identity | None = None) -> dict:
        out = record.model_dump(mode="json")
        out["endpoint"] = self.endpoint(record)
        out["auth"] = auth_of(record)
        active = self.active.get(f"{record.org}.{record.name}")
        out["serving_version"] = active.version if active else None
        out["node"] = self.cluster.node_id if active else None
        out["restarts"] = active.restarts if active else 0
        if record.kind == "stdio" and active is not None and active.artifact is not None:
            out["session_mode"] = active.artifact.data.get("session_mode") or "isolated"  # the adapter's default
        stats = {}
        if active is not None and active.builder is not None:
            with contextlib.suppress(Exception):
                stats = await active.builder.stats(active.instance)
        out["stats"] = stats
        if active is not None:
            self._usage[(record.org, record.name)] = stats
        out["health"] = self.health(record.org, record.name)
        out["public"] = is_public(record)
        out["uses"] = record.spec.get("uses") or []
        out["used_by"] = self.catalog.shown(await self.catalog.dependents(record), identity) if identity else []
        out["versions"] = [v.model_dump(mode="json", include={"version", "status", "package_sha256", "error",
                                                              "created_at"})
                           for v in await self.registry.list_versions(record.id)]
        return out
