"""Typed specs that registration hooks yield, and the interface each backend kind implements.

Hooks stay synchronous and only *describe* backends. The backends themselves are classes with async methods.
Each backend class is constructed by the plugin manager as ``Backend(config, ctx)`` where ``config`` is an instance
of the spec's pydantic ``config_model`` (validated from the YAML) and ``ctx`` is a :class:`PluginContext`.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # starlette is only needed by auth providers at run time
    from starlette.requests import Request
    from starlette.routing import BaseRoute


class NoConfig(BaseModel):
    """Config model for backends that take no options. Unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackendSpec:
    """What a registration hook yields: a name the config selects, a backend class and its config model.

    ``requires`` lists importable module names the backend needs (checked before it is built, so a missing
    heavy dependency becomes an error that names ``extra``, the pip extra that installs it).
    """

    kind: ClassVar[str] = "backend"
    name: str
    backend: type
    config_model: type[BaseModel] = NoConfig
    description: str = ""
    requires: tuple[str, ...] = ()
    extra: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "_").replace(".", "_").isidentifier():
            raise ValueError(f"invalid {self.kind} name {self.name!r}: use letters, digits, '-', '_' or '.'")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackagerSpec(BackendSpec):
    kind: ClassVar[str] = "packager"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuilderSpec(BackendSpec):
    kind: ClassVar[str] = "builder"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegistrySpec(BackendSpec):
    kind: ClassVar[str] = "registry"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecutorSpec(BackendSpec):
    """``backend`` is the in-app half (an :class:`Executor`, built inside each app process by the MCPApp runtime);
    ``supervisor`` is the platform half (an :class:`ExecutorSupervisor`, built once by ``mcp-agent serve``)."""

    kind: ClassVar[str] = "executor"
    supervisor: type | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecretsSpec(BackendSpec):
    kind: ClassVar[str] = "secrets"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuthProviderSpec(BackendSpec):
    kind: ClassVar[str] = "auth"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TelemetryExporterSpec(BackendSpec):
    kind: ClassVar[str] = "telemetry"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerTypeSpec:
    """A known utility MCP server for ``mcp-agent deploy server NAME --type T``.

    Exactly one of ``pip`` (PyPI requirement specs installed into the deployment's environment) or ``npm``
    (an npm package run with ``npx``) says where the server comes from. ``command`` and ``args`` start it over
    stdio; ``{dir}`` in ``args`` is replaced by the directory given with ``--dir`` (``needs_dir=True``).
    """

    kind: ClassVar[str] = "server_type"
    name: str
    description: str
    command: str
    args: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    npm: str | None = None
    needs_dir: bool = False


# ---------------------------------------------------------------------------------------------------------------
# Shared data models
# ---------------------------------------------------------------------------------------------------------------

DeploymentKind = Literal["app", "stdio", "remote"]


class FileEntry(BaseModel):
    path: str
    sha256: str
    size: int


class Manifest(BaseModel):
    """Describes a package. Written by the packager into the archive and returned by ``unpack``."""

    format: str = Field(description="name of the packager that made the archive")
    format_version: int = 1
    name: str
    kind: DeploymentKind = "app"
    entrypoint: str | None = Field(None, description="module:attr of the MCP server object")
    requirements: list[str] = Field(default_factory=list)
    requirements_hash: str = ""
    description: str = ""
    env: dict[str, str] = Field(default_factory=dict, description="non-secret environment from deploy.env")
    files: list[FileEntry] = Field(default_factory=list)


class Package(BaseModel):
    path: Path
    sha256: str
    size: int
    manifest: Manifest


class PackageHints(BaseModel):
    """What the CLI knows about the app before packaging (from flags, mcp_agent.config.yaml and detection)."""

    name: str
    entrypoint: str | None = None
    requirements: list[str] = Field(default_factory=list)
    description: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    max_bytes: int | None = None


class DeploymentRef(BaseModel):
    id: str
    org: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.org}.{self.name}"


class BuildRequest(BaseModel):
    """Everything a builder needs to turn one deployment version into something it can start."""

    deployment: DeploymentRef
    version: int
    kind: DeploymentKind
    work_dir: Path = Field(description="DATA/deployments/{org}.{name}/{version}: the builder may write here")
    source_dir: Path | None = Field(None, description="extracted app (kind app)")
    manifest: Manifest | None = None
    entrypoint: str | None = None
    command: str | None = Field(None, description="stdio server command (kind stdio)")
    args: list[str] = Field(default_factory=list)
    pip: list[str] = Field(default_factory=list, description="requirements to install (kind stdio)")
    npm: str | None = None
    url: str | None = Field(None, description="upstream URL (kind remote)")
    session_mode: Literal["isolated", "shared"] | None = Field(
        None, description="kind stdio: one child per client session, or one shared child (None: the adapter's default)")
    package_sha256: str | None = Field(None, description="the uploaded package's sha256 (kind app)")
    options: dict[str, Any] = Field(default_factory=dict, description="the deployment's own builder options "
                                    "(checked by the builder's check_options; they may not loosen the operator's)")
    runtime_requirements: list[str] = Field(
        default_factory=list, description="added by the platform to an app's requirements (kind app): the MCPApp "
        "runtime (a wheel of this package) and what the executor needs, when the app imports mcp_agent_cloud")


class Artifact(BaseModel):
    """The result of a build. ``data`` is builder-specific (a venv path, an image id)."""

    builder: str
    deployment: DeploymentRef
    version: int
    kind: DeploymentKind
    data: dict[str, Any] = Field(default_factory=dict)


class Instance(BaseModel):
    """A started artifact. ``url`` is the Streamable HTTP endpoint the gateway proxies to."""

    builder: str
    deployment: DeploymentRef
    version: int
    url: str
    data: dict[str, Any] = Field(default_factory=dict)
    started_at: float = Field(default_factory=time.time)


ROLE_RANK = {"viewer": 0, "developer": 1, "owner": 2, "admin": 3}  # admin: the platform's operators, any org


class Identity(BaseModel):
    subject: str
    org: str
    roles: list[str] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list)
    provider: str
    token_id: str | None = None
    via: str | None = Field(None, description="for the platform's own OAuth tokens: the auth provider the user "
                            "logged in through (builtin, okta, github)")

    @property
    def login_provider(self) -> str:
        return self.via or self.provider

    def can(self, action: Literal["read", "write", "admin"]) -> bool:
        need = {"read": {"viewer", "developer", "owner", "admin"}, "write": {"developer", "owner", "admin"},
                "admin": {"owner", "admin"}}[action]
        return bool(need.intersection(self.roles))


class Event(BaseModel):
    """A structured platform event. Every deploy pipeline step and lifecycle change produces one."""

    type: str
    ts: float = Field(default_factory=time.time)
    org: str | None = None
    deployment: str | None = None
    version: int | None = None
    step: str | None = None
    status: Literal["started", "ok", "failed", "info"] = "info"
    message: str = ""
    duration_ms: float | None = None
    data: dict[str, Any] = Field(default_factory=dict)


SpanKind = Literal["internal", "server", "client", "producer", "consumer"]
AttributeValue = str | bool | int | float


class SpanData(BaseModel):
    """A finished span, as exporters receive it. Ids are W3C trace-context hex (32 and 16 digits), times are
    epoch nanoseconds. Kept this small on purpose: the core and the app runtime make spans without the
    OpenTelemetry SDK (an extra), and the ``otlp`` exporter hands them to that SDK, which does the protocol work.

    ``service`` is the OpenTelemetry ``service.name``: ``mcp-agent-cloud`` for the platform's own spans, the
    deployment's ``org.name`` for spans made inside an app. ``org`` and ``deployment`` say whose span it is
    (tenant isolation of ``GET .../traces``).
    """

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None = None
    kind: SpanKind = "internal"
    start_ns: int
    end_ns: int
    status: Literal["unset", "ok", "error"] = "unset"
    status_message: str = ""
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)
    service: str = "mcp-agent-cloud"
    org: str | None = None
    deployment: str | None = None

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


# Registry records ----------------------------------------------------------------------------------------------

DeploymentStatus = Literal["pending", "building", "running", "stopped", "failed", "crashed"]
VersionStatus = Literal["building", "starting", "serving", "failed", "superseded", "stopped"]


class OrgRecord(BaseModel):
    name: str
    created_at: float = Field(default_factory=time.time)


class DeploymentRecord(BaseModel):
    id: str
    org: str
    name: str
    kind: DeploymentKind
    builder: str
    status: DeploymentStatus = "pending"
    desired_state: Literal["running", "stopped"] = "running"
    current_version: int | None = None
    spec: dict[str, Any] = Field(default_factory=dict, description="description, region, public, url ...")
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)

    @property
    def ref(self) -> DeploymentRef:
        return DeploymentRef(id=self.id, org=self.org, name=self.name)


class VersionRecord(BaseModel):
    deployment_id: str
    version: int
    status: VersionStatus = "building"
    package_sha256: str | None = None
    manifest: dict[str, Any] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    artifact: dict[str, Any] | None = None
    instance: dict[str, Any] | None = None
    error: str | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


class EventRecord(BaseModel):
    id: int | None = None
    org: str | None = None
    deployment_id: str | None = None
    type: str
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)


class UserRecord(BaseModel):
    """A local user of the ``builtin`` provider (``mcp-agent admin users add``): logs in with a password."""

    username: str
    org: str
    roles: list[str] = Field(default_factory=list)
    password_hash: str = Field(description="scrypt, as scrypt$N$r$p$salt$hash (base64)")
    disabled: bool = False
    created_at: float = Field(default_factory=time.time)


class OAuthClientRecord(BaseModel):
    """A client registered with the platform's authorization server (RFC 7591 dynamic registration): an MCP client
    such as Claude Desktop or VS Code. Public clients (``token_endpoint_auth_method`` ``none``) have no secret;
    a confidential one's secret is stored as its SHA-256."""

    client_id: str
    secret_hash: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict, description="the registered client metadata (RFC 7591 2)")
    source: str = Field("", description="the address that registered it")
    created_at: float = Field(default_factory=time.time)
    used_at: float | None = Field(None, description="when it first got a token; None: not yet (a registration "
                                  "nobody finished is pruned after oauth.abandoned_client_hours)")


class UsageDelta(BaseModel):
    """Tool calls to one deployment in one hour, counted by a node since it last wrote: added to what is stored."""

    deployment_id: str
    bucket: int = Field(description="the hour's start, in epoch seconds")
    calls: int = 0
    errors: int = 0
    duration_ms: float = Field(0.0, description="the calls' answer times, summed")
    callers: list[str] = Field(default_factory=list, description="opaque caller ids (hashes), each once")


class UsageBucket(BaseModel):
    bucket: int
    calls: int = 0
    errors: int = 0
    callers: int = 0
    avg_ms: float | None = Field(None, description="mean answer time of the hour's calls")


class UsageSummary(BaseModel):
    """Tool calls to a deployment since a time: totals (``callers`` distinct over the whole span) and per hour."""

    since: float
    calls: int = 0
    errors: int = 0
    callers: int = 0
    buckets: list[UsageBucket] = Field(default_factory=list)


class RefreshTokenRecord(BaseModel):
    """An OAuth refresh token, stored as its SHA-256. Each use rotates it: the used one is marked ``used_at`` and a
    new one of the same ``family`` is issued; a used one presented again revokes the whole family."""

    id: str
    family: str
    token_hash: str
    client_id: str
    org: str
    subject: str
    scope: str = ""
    audience: str = ""
    created_at: float = Field(default_factory=time.time)
    expires_at: float
    used_at: float | None = None
    revoked: bool = False


AuditOutcome = Literal["ok", "denied", "failed", "error"]


class AuditRecord(BaseModel):
    """One management action: who did what, when, from where, and how it ended. Registries only append these."""

    id: int | None = None
    org: str
    actor: str = Field(description="the identity's subject")
    provider: str | None = None
    token_id: str | None = None
    action: str = Field(description='the API route, as "METHOD /path/{param}"')
    target: str = Field("", description="the route's parameters, as name=value pairs")
    source: str = Field("", description="the client's address")
    user_agent: str = ""
    status: int = 0
    outcome: AuditOutcome = "ok"
    message: str = ""
    created_at: float = Field(default_factory=time.time)


class NodeRecord(BaseModel):
    """A platform node (``mcp-agent serve`` process) sharing the registry: how the others reach it."""

    id: str
    url: str
    started_at: float = Field(default_factory=time.time)
    heartbeat_at: float = Field(default_factory=time.time)
    age: float = Field(0.0, description="seconds since its last heartbeat, by the registry's clock")


class LeaseRecord(BaseModel):
    """Which node owns a deployment (``key`` is ``org.name``) until ``expires_at`` (the registry's clock)."""

    key: str
    node_id: str
    expires_at: float
    epoch: int = Field(1, description="raised each time another node takes the lease over")
    remaining: float = Field(0.0, description="seconds left, by the registry's clock: <= 0 is expired")
    url: str | None = Field(None, description="the holder's URL, from its node record")
    previous: str | None = Field(None, description="acquire_lease: the node that held it before, if another")

    @property
    def live(self) -> bool:
        return self.remaining > 0


class TokenRecord(BaseModel):
    id: str
    org: str
    subject: str
    name: str = ""
    token_hash: str
    roles: list[str] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list)
    created_at: float = Field(default_factory=time.time)
    expires_at: float | None = None
    revoked: bool = False


RunStatus = Literal["running", "paused", "completed", "error", "cancelled", "interrupted"]
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "error", "cancelled", "interrupted"})


class RunRecord(BaseModel):
    """One workflow run, as ``workflows-get_status`` reports it (plus fields mcp-agent's shape lacks)."""

    run_id: str
    workflow_id: str
    name: str = Field(description="the workflow's name")
    status: RunStatus = "running"
    state: dict[str, Any] = Field(default_factory=dict, description="what the run published with update_state")
    result: Any = None
    error: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="the validated run parameters")
    waiting_for: str | None = Field(None, description="the signal a paused run waits for ('resume' when paused)")
    priority: int = 0
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    history: list[dict[str, Any]] = Field(
        default_factory=list, description="state changes and signals, oldest first: {ts, kind, ...}")

    @property
    def running(self) -> bool:
        return self.status not in FINAL_STATUSES


class RunPage(BaseModel):
    runs: list[RunRecord]
    next_page_token: str | None = None


class RetryPolicy(BaseModel):
    """Retries of a step: attempt ``n`` (from 1) that fails waits ``min(initial_interval * backoff**(n-1),
    max_interval)`` seconds before attempt ``n+1``, up to ``max_attempts`` attempts in all."""

    model_config = ConfigDict(extra="forbid")
    max_attempts: int = Field(3, ge=1)
    initial_interval: float = Field(1.0, gt=0)
    backoff: float = Field(2.0, ge=1)
    max_interval: float = Field(60.0, gt=0)
    non_retryable: list[str] = Field(default_factory=list, description="exception class names never retried")

    def delay(self, attempt: int) -> float:
        return min(self.initial_interval * self.backoff ** (attempt - 1), self.max_interval)


class Schedule(BaseModel):
    """Start a workflow on a timer: a cron expression (5 fields, or 6 with seconds first) or a fixed interval."""

    model_config = ConfigDict(extra="forbid")
    cron: str | None = None
    every: float | None = Field(None, gt=0, description="seconds between starts")
    params: dict[str, Any] = Field(default_factory=dict, description="run parameters for each start")
    id: str | None = Field(None, description="stable id; default: WORKFLOW-INDEX")


@dataclasses.dataclass
class StepDef:
    """A side-effecting step (a Temporal activity): run through :meth:`RunContext.run_step`, retried per ``retry``."""

    name: str
    fn: Callable[..., Any]
    retry: RetryPolicy | None = None
    timeout: float | None = None  # seconds per attempt


@dataclasses.dataclass
class WorkflowDef:
    """A workflow class registered with ``@app.workflow`` (or a function with ``@app.async_tool``)."""

    name: str
    cls: type  # has ``async def run(self, **params)``; the executor makes one instance per run
    description: str = ""
    input_model: type[BaseModel] | None = None  # from run()'s signature; validates params
    schedules: list[Schedule] = dataclasses.field(default_factory=list)
    priority: int = 0
    rate_limit: str | None = None  # "N/second|minute|hour"


@dataclasses.dataclass
class AppBinding:
    """What the MCPApp runtime hands the in-app executor before ``setup``."""

    app_name: str
    deployment: str  # "org.name" (or the app name when run outside the platform)
    data_dir: Path  # persistent across versions and restarts
    workflows: Mapping[str, WorkflowDef]
    steps: Mapping[str, StepDef]


class SecretInfo(BaseModel):
    key: str
    version: int
    updated_at: float


# ---------------------------------------------------------------------------------------------------------------
# Backend interfaces
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PluginContext:
    """What the platform hands every backend it builds."""

    data_dir: Path
    emit: Callable[[Event], None] = lambda event: None
    registry: Registry | None = None
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # The platform's metrics (a mcp_agent_cloud.telemetry.Metrics): exporters read it, and count their drops in it.
    metrics: Any = None


class Backend(abc.ABC):
    """Base of every backend. ``setup`` runs once after construction inside the event loop; ``aclose`` at shutdown.

    (Not ``start``: builders use that name for starting an instance.)
    """

    spec_name: ClassVar[str] = ""

    def __init__(self, config: BaseModel, ctx: PluginContext) -> None:
        self.config = config
        self.ctx = ctx

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Open connections, create files. Default: nothing."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what ``setup`` opened. Default: nothing."""


class Packager(Backend):
    """Turns an app directory into one archive, and unpacks it safely on the platform."""

    @abc.abstractmethod
    async def package(self, src_dir: Path, hints: PackageHints, out_dir: Path) -> Package:
        """Write ``out_dir/<sha256>.<ext>`` and return it with its manifest. Same tree in, same bytes out."""

    @abc.abstractmethod
    async def unpack(self, archive: Path, dest: Path, *, max_bytes: int | None = None) -> Manifest:
        """Validate then extract ``archive`` into ``dest``; refuse traversal, absolute paths, links and devices
        before anything is written (raise :class:`~mcp_agent_cloud.errors.PackageError`)."""

    async def inspect(self, archive: Path) -> Manifest:
        """Validate ``archive`` and return its manifest without extracting it."""
        raise NotImplementedError


LogSink = Callable[[str], Awaitable[None] | None]


class Builder(Backend):
    """Builds a deployment version and runs it as an instance that speaks Streamable HTTP."""

    @abc.abstractmethod
    async def build(self, request: BuildRequest, log: LogSink) -> Artifact:
        """Prepare the artifact (a virtualenv, an image). Stream human-readable progress lines to ``log``."""

    @abc.abstractmethod
    async def start(self, artifact: Artifact, *, env: Mapping[str, str], log_path: Path) -> Instance:
        """Start the artifact; its stdout and stderr go to ``log_path``. Returns when the process or container exists
        (readiness is the platform's health check)."""

    @abc.abstractmethod
    async def wait(self, instance: Instance) -> int:
        """Return the exit code once the instance has exited (the supervisor awaits this)."""

    @abc.abstractmethod
    async def stop(self, instance: Instance, *, timeout: float = 10.0) -> None:
        """Stop the instance: gracefully, then by force after ``timeout``. Idempotent."""

    async def is_alive(self, instance: Instance) -> bool:
        raise NotImplementedError

    async def stats(self, instance: Instance) -> dict[str, Any]:
        """CPU and memory of the instance, when the builder can tell."""
        return {}

    async def adopt_existing(self, instances: list[Instance]) -> list[Instance]:
        """After a platform restart: return the instances still running that this builder can take over.
        Anything it cannot adopt it must stop. Default: adopt nothing."""
        return []

    async def remove(self, artifact: Artifact) -> None:  # noqa: B027 - optional hook
        """Delete what ``build`` produced, unless it is shared (a cached venv, a base layer)."""

    async def remove_deployment(self, deployment: DeploymentRef) -> list[str]:
        """Delete what the builder keeps for a deployment beyond its versions' artifacts (containers, a data
        volume), when the deployment is deleted. Returns what it removed. Default: nothing."""
        return []

    def check_options(self, options: Mapping[str, Any]) -> BaseModel | None:
        """Validate a deployment's own builder options (``deploy.builder: {name: NAME, ...}``, given to
        :meth:`build` as ``BuildRequest.options``), raising :class:`~mcp_agent_cloud.errors.ValidationFailed`.
        They come from whoever deploys, so they may only tighten what the operator configured, never loosen it.
        Default: a builder takes none."""
        if options:
            from mcp_agent_cloud.errors import ValidationFailed

            raise ValidationFailed(f"the {self.spec_name} builder takes no per-deployment options "
                                   f"(got {', '.join(sorted(options))})",
                                   hint="builder options are the operator's: set them in the platform config")
        return None


class Registry(Backend):
    """Durable platform state: orgs, deployments, versions, events and tokens."""

    # orgs
    @abc.abstractmethod
    async def ensure_org(self, name: str) -> OrgRecord: ...
    @abc.abstractmethod
    async def get_org(self, name: str) -> OrgRecord | None: ...
    @abc.abstractmethod
    async def list_orgs(self) -> list[OrgRecord]: ...

    # deployments
    @abc.abstractmethod
    async def create_deployment(self, record: DeploymentRecord) -> DeploymentRecord:
        """Insert; raise :class:`~mcp_agent_cloud.errors.ConflictError` if ``(org, name)`` exists."""
    @abc.abstractmethod
    async def get_deployment(self, org: str, name: str) -> DeploymentRecord | None: ...
    @abc.abstractmethod
    async def get_deployment_by_id(self, deployment_id: str) -> DeploymentRecord | None: ...
    @abc.abstractmethod
    async def list_deployments(self, org: str | None = None) -> list[DeploymentRecord]: ...
    @abc.abstractmethod
    async def update_deployment(self, deployment_id: str, **fields: Any) -> DeploymentRecord: ...
    @abc.abstractmethod
    async def delete_deployment(self, deployment_id: str) -> None:
        """Delete the deployment and its versions. Events stay (they are history)."""

    # versions
    @abc.abstractmethod
    async def create_version(self, deployment_id: str, **fields: Any) -> VersionRecord:
        """Allocate the next version number atomically and insert it."""
    @abc.abstractmethod
    async def get_version(self, deployment_id: str, version: int) -> VersionRecord | None: ...
    @abc.abstractmethod
    async def list_versions(self, deployment_id: str) -> list[VersionRecord]: ...
    @abc.abstractmethod
    async def update_version(self, deployment_id: str, version: int, **fields: Any) -> VersionRecord: ...

    # events
    @abc.abstractmethod
    async def add_event(self, record: EventRecord) -> EventRecord: ...
    @abc.abstractmethod
    async def list_events(
        self, *, org: str | None = None, deployment_id: str | None = None, after_id: int = 0, limit: int = 100
    ) -> list[EventRecord]: ...

    async def prune_events(self, *, before: float) -> int:
        """Delete the events created before ``before`` (epoch seconds); returns how many. Ids are never reused.
        The default keeps everything (``limits.events_keep_days`` then does nothing)."""
        return 0

    # tokens
    @abc.abstractmethod
    async def add_token(self, record: TokenRecord) -> TokenRecord: ...
    @abc.abstractmethod
    async def find_token(self, token_hash: str) -> TokenRecord | None: ...
    @abc.abstractmethod
    async def list_tokens(self, org: str) -> list[TokenRecord]: ...
    @abc.abstractmethod
    async def revoke_token(self, token_id: str) -> None: ...

    # audit log: append only (there is no update or delete)
    async def add_audit(self, record: AuditRecord) -> AuditRecord:
        """Append a record; returns it with its id. The default keeps none (the platform warns once)."""
        raise NotImplementedError(f"the {self.spec_name} registry keeps no audit log")

    async def list_audit(self, *, org: str, before_id: int | None = None, limit: int = 100,
                         actor: str | None = None, action: str | None = None,
                         since: float | None = None) -> list[AuditRecord]:
        """The org's records, newest first, at most ``limit``, with ``id < before_id`` (paging back), ``actor``
        equal, ``action`` containing the text, ``created_at >= since``."""
        return []

    # local users, OAuth clients and refresh tokens (optional: without them, password login and OAuth are off)
    async def add_user(self, record: UserRecord) -> UserRecord:
        raise NotImplementedError(f"the {self.spec_name} registry keeps no users")

    async def get_user(self, username: str) -> UserRecord | None:
        return None

    async def list_users(self, org: str | None = None) -> list[UserRecord]:
        return []

    async def update_user(self, username: str, **fields: Any) -> UserRecord:
        """Set ``roles``, ``password_hash`` or ``disabled``."""
        raise NotImplementedError(f"the {self.spec_name} registry keeps no users")

    async def add_oauth_client(self, record: OAuthClientRecord) -> OAuthClientRecord:
        raise NotImplementedError(f"the {self.spec_name} registry keeps no OAuth clients")

    async def get_oauth_client(self, client_id: str) -> OAuthClientRecord | None:
        return None

    async def mark_oauth_client_used(self, client_id: str) -> None:
        """Set the client's ``used_at`` (when it is still unset): it got a token, so it is no abandoned registration."""

    async def prune_oauth_clients(self, *, before: float) -> int:
        """Delete the clients registered before ``before`` that never got a token; returns how many. The default
        keeps every client."""
        return 0

    async def add_refresh_token(self, record: RefreshTokenRecord) -> RefreshTokenRecord:
        raise NotImplementedError(f"the {self.spec_name} registry keeps no refresh tokens")

    async def find_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None:
        return None

    async def use_refresh_token(self, token_id: str) -> bool:
        """Mark it used, atomically: True for the one caller that did, False if it was used (or revoked) before."""
        return False

    async def revoke_refresh_family(self, family: str) -> int:
        """Revoke every token of the family; returns how many were live."""
        return 0

    async def refresh_family_live(self, family: str) -> bool:
        """Whether the family has a token that is not revoked (access tokens of a revoked family are refused)."""
        return False

    # usage of deployments (the catalog's metrics); rows go with their deployment
    async def add_usage(self, deltas: list[UsageDelta]) -> None:
        """Add the counts; a caller id already recorded for that deployment and hour counts once."""
        raise NotImplementedError(f"the {self.spec_name} registry keeps no usage")

    async def get_usage(self, deployment_id: str, since: float) -> UsageSummary:
        return UsageSummary(since=since)

    # nodes and leases: which platform node runs which deployment (see docs/scaling.md)
    @abc.abstractmethod
    async def heartbeat(self, node_id: str, url: str) -> NodeRecord:
        """Insert or refresh the node's record (its URL and heartbeat time)."""
    @abc.abstractmethod
    async def list_nodes(self) -> list[NodeRecord]: ...
    @abc.abstractmethod
    async def acquire_lease(self, key: str, node_id: str, ttl: float) -> LeaseRecord:
        """Take ``key`` for ``node_id`` for ``ttl`` seconds if it is free, expired or already the node's, in one
        atomic step; return the lease as it stands after (held by another node when that one's is live)."""
    @abc.abstractmethod
    async def renew_leases(self, node_id: str, ttl: float) -> list[str]:
        """Extend every lease the node holds; the keys it still holds (the others were taken over)."""
    @abc.abstractmethod
    async def get_lease(self, key: str) -> LeaseRecord | None: ...
    @abc.abstractmethod
    async def list_leases(self) -> list[LeaseRecord]: ...
    @abc.abstractmethod
    async def release_lease(self, key: str, node_id: str) -> None:
        """Drop the lease if ``node_id`` holds it."""

    # packages: a registry that several hosts share can hold the uploaded archives too, so any node can build
    # any deployment (a deploy routed to its owner, a takeover). A registry that is one host's file need not.
    shares_packages = False

    async def put_package(self, org: str, sha256: str, fmt: str | None, path: Path) -> None:  # noqa: B027
        """Store the archive at ``path`` (already checked against ``sha256``) unless it is stored already."""

    async def get_package(self, org: str, sha256: str, dest: Path) -> tuple[bool, str | None]:
        """Write a stored archive to ``dest``: (found, its format)."""
        return False, None

    async def has_package(self, org: str, sha256: str) -> bool:
        return False

    async def migrate(self) -> tuple[int, int] | None:
        """Apply pending schema migrations without starting the registry (``mcp-agent admin migrate``): the
        schema versions before and after, or None for a backend without a schema. Default: None."""
        return None

    async def watch(self, *, org: str | None = None, after_id: int = 0) -> AsyncIterator[EventRecord]:
        """Yield events as they are added. Default: poll ``list_events``."""
        import anyio

        while True:
            batch = await self.list_events(org=org, after_id=after_id, limit=500)
            for event in batch:
                after_id = max(after_id, event.id or after_id)
                yield event
            await anyio.sleep(0.5)


class RunContext(abc.ABC):
    """What a running workflow talks to (``Workflow.context``); each executor implements it.

    Every await point here is also a pause point: a paused run stops at the next one until resumed."""

    run_id: str
    workflow_id: str

    @abc.abstractmethod
    async def wait_for_signal(self, name: str, timeout: float | None = None) -> Any:
        """The payload of the next signal ``name`` for this run; signals sent before the wait are kept.
        The run shows ``paused`` with ``waiting_for=name`` meanwhile. :class:`TimeoutError` after ``timeout``."""
    @abc.abstractmethod
    def update_state(self, **values: Any) -> None:
        """Merge ``values`` into the run's ``state`` (progress, shown by get_status). JSON values only."""
    @abc.abstractmethod
    async def run_step(self, step: StepDef, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """Run a side-effecting step with its retry policy (a Temporal activity on temporal)."""
    @abc.abstractmethod
    async def sleep(self, seconds: float) -> None: ...


class Executor(Backend):
    """The in-app half of an executor: runs one app's workflows inside the app process.

    The MCPApp runtime builds it from ``MCPAC_EXECUTOR``/``MCPAC_EXECUTOR_CONFIG`` (set by the platform's
    :class:`ExecutorSupervisor`), calls :meth:`bind`, then ``setup`` (open the run store, mark runs a dead process
    left behind, start workers and schedules), and drives it from the ``workflows-*`` tools. Runs are addressed
    by ``run_id`` (or the latest run of a ``workflow_id``); signals reach only the run named.
    Errors: :class:`~mcp_agent_cloud.errors.NotFoundError` (unknown run), ``ConflictError`` (a finished run),
    ``ValidationFailed`` (bad params).
    """

    binding: AppBinding

    def bind(self, binding: AppBinding) -> None:
        self.binding = binding

    @abc.abstractmethod
    async def start_run(self, workflow: str, params: Mapping[str, Any], *, workflow_id: str | None = None,
                        priority: int | None = None) -> RunRecord:
        """Start ``workflow`` (a name in ``binding.workflows``) with already-validated params."""
    @abc.abstractmethod
    async def status(self, run_id: str | None = None, *, workflow_id: str | None = None,
                     history: bool = False) -> RunRecord: ...
    @abc.abstractmethod
    async def signal(self, run_id: str, name: str, payload: Any = None) -> RunRecord:
        """Deliver a signal. ``resume`` also lifts a pause."""
    @abc.abstractmethod
    async def pause(self, run_id: str) -> RunRecord:
        """Hold the run at its next pause point until a ``resume`` signal."""
    @abc.abstractmethod
    async def cancel(self, run_id: str) -> RunRecord: ...
    @abc.abstractmethod
    async def list_runs(self, *, status: str | None = None, workflow: str | None = None, limit: int = 100,
                        page_token: str | None = None) -> RunPage:
        """Newest first."""

    async def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        """Until the run has finished; for tests and batch tools. Default: poll ``status``."""
        import anyio

        with anyio.fail_after(timeout):
            while (record := await self.status(run_id)).running:
                await anyio.sleep(0.1)
        return record


class ExecutorSupervisor(Backend):
    """The platform half of an executor: what every app process needs to reach it, and any engine the platform
    runs for it (the embedded Temporal dev server). The default passes the executor's config to the apps."""

    def app_env(self, deployment: DeploymentRef) -> dict[str, str]:
        """Environment for an app instance; the MCPApp runtime builds the in-app executor from it."""
        import json

        return {"MCPAC_EXECUTOR": self.spec_name,
                "MCPAC_EXECUTOR_CONFIG": json.dumps(self.config.model_dump(mode="json"))}

    def app_requirements(self) -> list[str]:
        """Extra pip requirements for the environment of an app that uses the MCPApp runtime."""
        return []


class SecretsBackend(Backend):
    """Stores secret values per scope (``{org}/{deployment}``). Values never leave it except through ``get``."""

    @abc.abstractmethod
    async def put(self, scope: str, key: str, value: str) -> int:
        """Store a new version; return its number."""
    @abc.abstractmethod
    async def get(self, scope: str, key: str, *, version: int | None = None) -> str:
        """Raise :class:`~mcp_agent_cloud.errors.NotFoundError` when missing."""
    @abc.abstractmethod
    async def list(self, scope: str) -> list[SecretInfo]: ...
    @abc.abstractmethod
    async def delete(self, scope: str, key: str, *, destroy: bool = False) -> None:
        """Remove ``key`` so ``get`` and ``list`` no longer see it; :class:`NotFoundError` when missing.

        By default a backend that keeps history soft-deletes (an operator can still recover the versions);
        ``destroy=True`` removes every version for good. A backend without soft delete always destroys.
        """
    async def rotate(self) -> None:
        """Rotate the key material that protects the stored values."""
        raise NotImplementedError


class AuthProvider(Backend):
    """Turns a request into an :class:`Identity`. Providers are tried in the configured order."""

    @abc.abstractmethod
    async def authenticate(self, request: Request) -> Identity | None:
        """Return the caller's identity, or ``None`` when this provider does not recognise the credentials."""

    def routes(self) -> list[BaseRoute]:
        """Public routes for login flows, mounted under ``/auth/{provider}/``."""
        return []

    def metadata(self) -> dict[str, Any]:
        """Public facts about the provider (shown by ``GET /api/v1/auth/providers``)."""
        return {}


class TelemetryExporter(Backend):
    """Receives every platform event, and every finished span if it overrides ``export_span``. Neither may
    block the request path: buffer (bounded), count what is dropped, and flush in ``aclose``."""

    @abc.abstractmethod
    def export(self, event: Event) -> None: ...

    def export_span(self, span: SpanData) -> None:
        """A finished span (the platform's, or one made inside an app). The default ignores spans, and the
        platform makes no spans at all when no exporter takes them."""

    @classmethod
    def takes_spans(cls) -> bool:
        return cls.export_span is not TelemetryExporter.export_span
