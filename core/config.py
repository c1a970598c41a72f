"""Platform config (``mcp_agent_cloud.config.yaml``): discovery, YAML with line numbers, env overrides, validation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

CONFIG_FILENAME = "mcp_agent_cloud.config.yaml"
ENV_PREFIX = "MCP_AGENT_CLOUD_"
# Env vars that belong to the CLI or to discovery, never to platform keys.
NON_CONFIG_ENV = {"CONFIG", "API_URL", "AUTH_URL", "HOME", "DISABLE_PLUGIN_AUTOLOAD", "TRACE_PLUGINS", "TOKEN"}


def home_dir() -> Path:
    """``~/.mcp-agent-cloud``, or ``$MCP_AGENT_CLOUD_HOME``."""
    env = os.environ.get(ENV_PREFIX + "HOME")
    return Path(env).expanduser() if env else Path.home() / ".mcp-agent-cloud"


class BackendRef(BaseModel):
    """``builder: process`` or ``builder: {name: process, some_option: 1}``."""

    model_config = ConfigDict(extra="allow")
    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_str(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "name" not in value:
            raise ValueError("a backend given as a mapping needs a 'name' key, e.g. {name: process, ...}")
        return value

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PluginsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disable: list[str] = Field(default_factory=list, description="entry-point names of plugins not to load")
    require: list[str] = Field(default_factory=list, description="plugins that must be present, or start fails")


class LimitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_upload_bytes: int = Field(100 * 1024 * 1024, gt=0, description="largest package the API accepts (413 above)")
    max_unpacked_bytes: int = Field(500 * 1024 * 1024, gt=0, description="largest extracted app")
    health_timeout: float = Field(120.0, gt=0, description="seconds a new version has to pass its health check")
    events_keep_days: float = Field(30.0, ge=0, description="events older than this are deleted from the registry "
                                    "(checked hourly); 0 keeps them forever")
    log_max_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="size at which a version's app log is "
                               "rotated (one rotated file is kept, so at most twice this per version)")


class SupervisorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backoff_initial: float = Field(1.0, gt=0)
    backoff_max: float = Field(30.0, gt=0)
    stable_after: float = Field(30.0, gt=0, description="uptime after which the backoff resets")


class RemoteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allow_private: bool = Field(False, description="allow `deploy server --url` to loopback, private and link-local "
                                "addresses (where the platform's own instances listen)")
    allow_hosts: list[str] = Field(default_factory=list, description="host names or IPs always allowed as remotes")


class GatewayConfig(BaseModel):
    """The MCP gateway at /servers/{name}/...: which names and origins it answers, and its limits."""

    model_config = ConfigDict(extra="forbid")
    allowed_hosts: list[str] = Field(default_factory=list, description="extra Host header values accepted on every "
                                     "route, as host:port, host (default port), host:* (any port) or * (any)")
    allowed_origins: list[str] = Field(default_factory=list, description="browser origins allowed to call the "
                                       "platform (they also get CORS headers), as scheme://host[:port], "
                                       "scheme://host:* (any port) or * (any)")
    max_message_bytes: int = Field(4 * 1024 * 1024, gt=0, description="largest MCP request body (413 above)")
    max_sessions_per_deployment: int = Field(1000, gt=0, description="open MCP sessions per deployment (429 above)")
    max_sessions_per_token: int = Field(100, gt=0, description="open MCP sessions per token (429 above)")
    session_idle_timeout: float = Field(1800.0, gt=0, description="seconds after which an unused session is ended")
    request_timeout: float = Field(300.0, gt=0, description="seconds an MCP request may take before the gateway "
                                   "answers it with an error")

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            item = item.strip().lower()
            if not item or "/" in item or "@" in item:
                raise ValueError(f"{item!r} is not a Host value: use host, host:port, host:* or *, "
                                 "e.g. mcp.example.com or 10.0.0.5:8765")
            out.append(item)
        return out

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            item = item.strip().lower().rstrip("/")
            scheme, sep, rest = item.partition("://")
            if item != "*" and (not sep or not scheme or not rest or "/" in rest):
                raise ValueError(f"{item!r} is not an origin: use scheme://host[:port] with no path, "
                                 "e.g. https://app.example.com or http://localhost:6274")
            out.append(item)
        return out


class NodeConfig(BaseModel):
    """This process as one node of several sharing a registry (docs/scaling.md). One node needs none of it."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
                           description="the node's name among those sharing the registry (default: made once and "
                           "kept in DATA/node-id, so a restarted node finds its own deployments)")
    url: str | None = Field(None, description="URL the other nodes reach this one at (default: public_url, else "
                            "from listen); API and MCP requests for the deployments it runs are forwarded there")
    lease_seconds: float = Field(15.0, ge=1.0, le=3600.0,
                                 description="a node owns its deployments this long without renewing (it renews "
                                 "every third of it): a dead node's deployments move to another node after about "
                                 "this long")


class TracingConfig(BaseModel):
    """Spans of deploys, gateway requests and app runs (docs/observability.md)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="make spans at all (off: no spans for `mcp-agent traces` or exporters)")
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0, description="share of new traces kept, decided by trace id "
                                "(a trace that arrives sampled or not keeps its caller's decision)")
    keep_spans: int = Field(5000, ge=0, le=1_000_000, description="finished spans kept in memory per deployment "
                            "for `mcp-agent traces` (the oldest go first)")
    app_pull_seconds: float = Field(1.0, ge=0.1, le=60.0, description="how often the platform fetches the spans "
                                    "apps finished (through their control route) and passes them on")


class MetricsConfig(BaseModel):
    """``GET /metrics`` (Prometheus text format)."""

    model_config = ConfigDict(extra="forbid")
    listen: str | None = Field(None, description="host:port of a separate, unauthenticated listener that serves "
                               "every metric at /metrics, for a scraper on a private interface (default: none; "
                               "the main listener's /metrics needs a token and shows the caller's org)")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9464")
        return value


class OAuthConfig(BaseModel):
    """The platform's OAuth 2.1 authorization server (docs/auth.md): `mcp-agent login`'s device flow, and MCP
    clients' authorization code + PKCE with dynamic registration."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="serve /oauth/* and /.well-known/* and take the JWT access tokens "
                          "they issue (off: only the auth providers' own tokens work)")
    access_token_seconds: int = Field(3600, ge=60, le=86400, description="lifetime of an access token (the CLI "
                                      "refreshes it on its own before it expires)")
    refresh_token_days: float = Field(30, gt=0, le=365, description="lifetime of a refresh token; each use "
                                      "replaces it with a new one")
    key_rotation_days: float = Field(30, gt=0, le=365, description="age at which the signing key gets a "
                                     "successor (the old one verifies until its tokens expire)")
    device_code_seconds: int = Field(600, ge=60, le=3600, description="how long a login's user code is valid")
    poll_interval: int = Field(5, ge=1, le=60, description="seconds between the CLI's polls of the token "
                               "endpoint during a device login (slow_down adds 5)")
    dynamic_registration: bool = Field(True, description="let MCP clients register themselves (RFC 7591) at "
                                       "/oauth/register, as the MCP authorization spec expects (off: no client "
                                       "but the CLI can get tokens)")
    registrations_per_hour: int = Field(30, ge=1, le=10000, description="dynamic registrations one address may "
                                        "make in an hour")
    abandoned_client_hours: float = Field(24, ge=0, description="a registered client that got no token in this "
                                          "many hours is deleted (0: kept for ever)")


class PlatformConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen: str = Field("127.0.0.1:8765", description="host:port the platform binds")
    public_url: str | None = Field(None, description="URL clients use to reach the platform (default from listen)")
    data_dir: Path = Field(default_factory=lambda: home_dir() / "data")
    default_org: str = "default"
    packager: BackendRef = BackendRef(name="tarball")
    builder: BackendRef = BackendRef(name="process")
    builders: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="options of the other builders a deploy may pick by name "
        "(`builders: {docker: {base_image: ...}}`); a deploy's own options may only tighten them")
    registry: BackendRef = BackendRef(name="sqlite")
    executor: BackendRef = BackendRef(name="asyncio")
    secrets: BackendRef = BackendRef(name="local")
    auth: list[BackendRef] = Field(default_factory=lambda: [BackendRef(name="builtin")])
    telemetry: list[BackendRef] = Field(default_factory=lambda: [BackendRef(name="console"), BackendRef(name="jsonl")])
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    remote: RemoteConfig = Field(default_factory=RemoteConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    node: NodeConfig = Field(default_factory=NodeConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    oauth: OAuthConfig = Field(default_factory=OAuthConfig)
    log_level: str = "info"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:8765")
        return value

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return Path(os.path.expandvars(str(value))).expanduser()

    @field_validator("auth", "telemetry", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, dict)) else value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


# ---------------------------------------------------------------------------------------------------------------
# YAML with line numbers
# ---------------------------------------------------------------------------------------------------------------


class LocatedYaml:
    """A parsed YAML document plus the line of every key path, for error messages."""

    def __init__(self, data: Any, lines: dict[tuple[Any, ...], int], source: str) -> None:
        self.data = data
        self.lines = lines
        self.source = source

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return None


def load_yaml(text: str, source: str) -> LocatedYaml:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"invalid YAML in {where}: {exc.problem or exc}",
                          hint="fix the syntax at that line (indentation, quoting, a missing ':')") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {source}: {exc}") from None
    lines: dict[tuple[Any, ...], int] = {}

    def walk(n: Any, path: tuple[Any, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = key_node.value
                lines[path + (key,)] = key_node.start_mark.line + 1
                walk(value_node, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    if node is not None:
        walk(node, ())
    return LocatedYaml(data, lines, source)


def format_validation_error(
    exc: ValidationError, located: LocatedYaml | None = None, prefix: tuple = (),
    env: dict[tuple[str, ...], str] | None = None,
) -> str:
    """One line per error: ``file:line: dotted.key: message``. ``env`` maps key paths set by environment
    overrides to the variable's name, so such errors blame the variable instead of a file line."""
    out = []
    for err in exc.errors():
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("function-before",)))
        # pydantic adds the validator name for union/model_validator branches; drop non-key parts
        key = ".".join(str(p) for p in loc) or "(top level)"
        where = ""
        env_name = next((name for kp, name in (env or {}).items() if loc[:len(kp)] == kp), None)
        if env_name is not None:
            where = f"env {env_name}: "
        elif located is not None:
            line = located.line_of(loc)
            where = f"{located.source}:{line}: " if line else f"{located.source}: "
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(f"  {where}{key}: {msg}")
    return "\n".join(out)


def validate_located(model: type[BaseModel], located: LocatedYaml, *, prefix: tuple = (), what: str = "config") -> Any:
    data = located.data
    for p in prefix:
        data = (data or {}).get(p) if isinstance(data, dict) else None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        line = located.line_of(prefix)
        raise ConfigError(f"{located.source}:{line or 1}: {what} must be a mapping of keys to values")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {what} in {located.source}:\n{format_validation_error(exc, located, prefix)}",
                          hint="fix the keys named above; see docs/config.md") from None


# ---------------------------------------------------------------------------------------------------------------
# Discovery, env overrides, sources
# ---------------------------------------------------------------------------------------------------------------


def find_config_file(explicit: str | Path | None = None, cwd: Path | None = None) -> Path | None:
    """``--config``, then ``$MCP_AGENT_CLOUD_CONFIG``, then the working directory, then ``~/.mcp-agent-cloud/``."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}", hint="check the path given with --config")
        return path
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (from ${ENV_PREFIX}CONFIG)",
                              hint=f"fix or unset {ENV_PREFIX}CONFIG")
        return path
    for candidate in ((cwd or Path.cwd()) / CONFIG_FILENAME, home_dir() / CONFIG_FILENAME):
        if candidate.is_file():
            return candidate
    return None


def _env_overrides() -> dict[tuple[str, ...], tuple[str, str]]:
    """``MCP_AGENT_CLOUD_LISTEN=...`` sets ``listen``; ``MCP_AGENT_CLOUD_LIMITS__MAX_UPLOAD_BYTES`` a nested key.
    Values are parsed as YAML scalars so numbers and lists work."""
    fields = set(PlatformConfig.model_fields)
    out = {}
    for name, value in os.environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):]
        if rest in NON_CONFIG_ENV:
            continue
        path = tuple(p.lower() for p in rest.split("__"))
        if path[0] in fields:
            out[path] = (name, value)
    return out


def _backend_ref_mapping(key: str, value: Any) -> Any:
    """``process`` -> ``{name: process}`` for a single-backend key; the field's default name when unset."""
    field = PlatformConfig.model_fields.get(key)
    if field is None or field.annotation is not BackendRef:
        return value
    if isinstance(value, str):
        return {"name": value}
    if value is None and isinstance(field.default, BackendRef):
        return {"name": field.default.name}
    return value


class LoadedConfig:
    """The effective config plus where each top-level value came from."""

    def __init__(self, config: PlatformConfig, path: Path | None, sources: dict[str, str]) -> None:
        self.config = config
        self.path = path
        self.sources = sources


def load_config(explicit: str | Path | None = None, *, cwd: Path | None = None) -> LoadedConfig:
    path = find_config_file(explicit, cwd)
    if path is not None:
        located = load_yaml(path.read_text(encoding="utf-8"), str(path))
    else:
        located = LocatedYaml({}, {}, "(defaults)")
    data = located.data if located.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{located.source}: the config must be a mapping of keys to values")
    data = dict(data)
    sources = {}
    for key in data:
        line = located.lines.get((key,))
        sources[key] = f"{located.source}:{line}" if line else located.source
    env_keys: dict[tuple[str, ...], str] = {}
    for keypath, (env_name, raw) in sorted(_env_overrides().items()):
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        if keypath == ("data_dir",) or keypath == ("listen",) or keypath == ("public_url",):
            value = raw  # never reinterpret paths and addresses
        target = data
        for depth, part in enumerate(keypath[:-1]):
            nxt = target.get(part)
            if depth == 0 and not isinstance(nxt, dict):
                # BUILDER__X=1 on top of `builder: process` (or the default) must keep the backend's name
                nxt = _backend_ref_mapping(part, nxt)
            target[part] = dict(nxt) if isinstance(nxt, dict) else {}
            target = target[part]
        target[keypath[-1]] = value
        sources[keypath[0]] = f"env {env_name}"
        env_keys[keypath] = env_name
    try:
        config = PlatformConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid config in {located.source}:\n{format_validation_error(exc, located, env=env_keys)}",
            hint="fix the keys named above (environment overrides are named MCP_AGENT_CLOUD_<KEY>); see docs/config.md",
        ) from None
    for key in PlatformConfig.model_fields:
        sources.setdefault(key, "default")
    return LoadedConfig(config, path, sources)
