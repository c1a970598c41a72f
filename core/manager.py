"""The plugin manager: loads plugins from entry points and answers typed look-ups by kind and name."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

import pluggy
from pydantic import BaseModel, ValidationError

from . import hookspecs
from .errors import MissingDependencyError, PluginError, UnknownBackendError
from .hookspecs.types import (
    AuthProviderSpec,
    BackendSpec,
    BuilderSpec,
    ExecutorSpec,
    PackagerSpec,
    PluginContext,
    RegistrySpec,
    SecretsSpec,
    ServerTypeSpec,
    TelemetryExporterSpec,
)

log = logging.getLogger(__name__)

DIST_NAME = "mcp-agent-cloud"
DISABLE_AUTOLOAD_ENV = "MCP_AGENT_CLOUD_DISABLE_PLUGIN_AUTOLOAD"
TRACE_ENV = "MCP_AGENT_CLOUD_TRACE_PLUGINS"

# Names of backends shipped as extras: an unknown name in this table gets an install hint.
KNOWN_EXTRAS: dict[tuple[str, str], str] = {
    ("builder", "docker"): "docker",
    ("builder", "podman"): "podman",
    ("executor", "temporal"): "temporal",
    ("secrets", "vault"): "vault",
    ("telemetry", "otlp"): "otel",
    ("registry", "postgres"): "postgres",
}

# kind -> (hook name, spec class)
KINDS: dict[str, tuple[str, type]] = {
    "packager": ("mcp_agent_cloud_packagers", PackagerSpec),
    "builder": ("mcp_agent_cloud_builders", BuilderSpec),
    "registry": ("mcp_agent_cloud_registries", RegistrySpec),
    "executor": ("mcp_agent_cloud_executors", ExecutorSpec),
    "secrets": ("mcp_agent_cloud_secrets_backends", SecretsSpec),
    "auth": ("mcp_agent_cloud_auth_providers", AuthProviderSpec),
    "telemetry": ("mcp_agent_cloud_telemetry_exporters", TelemetryExporterSpec),
    "server_type": ("mcp_agent_cloud_server_types", ServerTypeSpec),
}

S = TypeVar("S")


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin: where it came from."""

    name: str
    module: str
    distribution: str
    version: str
    builtin: bool


@dataclasses.dataclass(frozen=True)
class RegisteredSpec:
    spec: Any
    plugin: PluginInfo


class PluginManager:
    """Wraps a :class:`pluggy.PluginManager` with entry-point loading and a typed index of specs."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.warnings: list[str] = []
        self._index: dict[str, dict[str, RegisteredSpec]] | None = None
        if os.environ.get(TRACE_ENV):
            self.pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
            self.pm.enable_tracing()

    @property
    def hook(self) -> Any:
        return self.pm.hook

    # -- loading ---------------------------------------------------------------------------------------------

    def load_entry_points(
        self, *, disable: Iterable[str] = (), autoload: bool | None = None
    ) -> None:
        """Register every plugin in the entry-point group. With autoload off (the argument, or the env var
        ``MCP_AGENT_CLOUD_DISABLE_PLUGIN_AUTOLOAD``), only the built-in plugins of this distribution load."""
        from importlib.metadata import entry_points

        if autoload is None:
            autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
        disabled = set(disable)
        for ep in sorted(entry_points(group=hookspecs.ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            # a distribution whose metadata is missing or half-written (a pip install running) has no Name
            dist_name = (dist.metadata["Name"] if dist is not None else None) or "?"
            dist_version = dist.version if dist is not None else "?"
            builtin = _canon(dist_name) == _canon(DIST_NAME)
            if ep.name in disabled or (not autoload and not builtin):
                continue
            if ep.name in self.plugins:
                prev = self.plugins[ep.name]
                if _canon(prev.distribution) == _canon(dist_name):
                    continue  # the same distribution seen twice on sys.path
                self._warn(f"plugin {ep.name!r} from {dist_name} is ignored: the name is taken by {prev.distribution}")
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party plugin must not take the platform down
                self._warn(f"plugin {ep.name!r} ({dist_name} {dist_version}) failed to load and is skipped: "
                           f"{type(exc).__name__}: {exc}")
                continue
            try:
                self.register(obj, name=ep.name, distribution=dist_name, version=dist_version, builtin=builtin)
            except (pluggy.PluginValidationError, ValueError) as exc:
                # pluggy rejects e.g. a hookimpl whose arguments do not match its hookspec
                self._warn(f"plugin {ep.name!r} ({dist_name} {dist_version}) was rejected and is skipped: "
                           f"{type(exc).__name__}: {exc}")

    def register(
        self, plugin: object, *, name: str | None = None, distribution: str = "(registered in code)",
        version: str = "", builtin: bool = False,
    ) -> None:
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        self.pm.register(plugin, name=name)
        self.plugins[name] = PluginInfo(name=name, module=getattr(plugin, "__name__", repr(plugin)),
                                        distribution=distribution, version=version, builtin=builtin)
        self._index = None

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        self._index = None

    def check_pending(self) -> None:
        """Fail on hook implementations that match no hookspec (usually a misspelled hook name)."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(str(exc), hint="check the hook name against docs/plugins.md") from exc

    def require(self, names: Iterable[str]) -> None:
        missing = [n for n in names if n not in self.plugins]
        if missing:
            raise PluginError(
                f"required plugin(s) not loaded: {', '.join(missing)}",
                hint="install the package that provides them, or remove them from plugins.require",
            )

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)

    # -- the index -------------------------------------------------------------------------------------------

    def _build_index(self) -> dict[str, dict[str, RegisteredSpec]]:
        index: dict[str, dict[str, RegisteredSpec]] = {kind: {} for kind in KINDS}
        for kind, (hook_name, spec_cls) in KINDS.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                info = self.plugins.get(impl.plugin_name) or PluginInfo(
                    impl.plugin_name, impl.plugin_name, "(registered in code)", "", False
                )
                # called directly (not through pm.hook) so one failing plugin cannot hide the others' specs;
                # so trace it by hand for MCP_AGENT_CLOUD_TRACE_PLUGINS
                self.pm.trace.root.get("index")(hook_name, impl.plugin_name)
                try:
                    specs = list(impl.function() or ())
                except Exception as exc:
                    self._warn(f"plugin {info.name!r} ({info.distribution}) failed in {hook_name} and is skipped: "
                               f"{type(exc).__name__}: {exc}")
                    continue
                for spec in specs:
                    if not isinstance(spec, spec_cls):
                        self._warn(f"plugin {info.name!r} yielded {type(spec).__name__} from {hook_name}; "
                                   f"expected {spec_cls.__name__}; ignored")
                        continue
                    prev = index[kind].get(spec.name)
                    if prev is not None:
                        raise PluginError(
                            f"conflicting plugins: {kind} {spec.name!r} is provided by both "
                            f"{prev.plugin.distribution} (plugin {prev.plugin.name!r}) and "
                            f"{info.distribution} (plugin {info.name!r})",
                            hint=f"uninstall one of them, or disable one with plugins.disable: [{info.name}]",
                        )
                    index[kind][spec.name] = RegisteredSpec(spec, info)
        return index

    @property
    def index(self) -> dict[str, dict[str, RegisteredSpec]]:
        if self._index is None:
            self._index = self._build_index()
        return self._index

    def names(self, kind: str) -> list[str]:
        return sorted(self.index[kind])

    def specs(self, kind: str) -> list[RegisteredSpec]:
        return [self.index[kind][n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> Any:
        found = self.index[kind].get(name)
        if found is None:
            choices = ", ".join(self.names(kind)) or "(none)"
            extra = KNOWN_EXTRAS.get((kind, name))
            hint = (f"install it with: pip install 'mcp-agent-cloud[{extra}]'" if extra
                    else "install the plugin package that provides it, or pick one of the installed choices")
            raise UnknownBackendError(
                f"{kind} {name!r} is not available (plugin may not be installed). Installed {kind} choices: {choices}",
                hint=hint,
            )
        return found.spec

    def get_packager(self, name: str) -> PackagerSpec:
        return self.get("packager", name)

    def get_builder(self, name: str) -> BuilderSpec:
        return self.get("builder", name)

    def get_registry(self, name: str) -> RegistrySpec:
        return self.get("registry", name)

    def get_executor(self, name: str) -> ExecutorSpec:
        return self.get("executor", name)

    def get_secrets(self, name: str) -> SecretsSpec:
        return self.get("secrets", name)

    def get_auth_provider(self, name: str) -> AuthProviderSpec:
        return self.get("auth", name)

    def get_telemetry_exporter(self, name: str) -> TelemetryExporterSpec:
        return self.get("telemetry", name)

    def get_server_type(self, name: str) -> ServerTypeSpec:
        return self.get("server_type", name)

    # -- building backends -----------------------------------------------------------------------------------

    def validate_options(self, spec: BackendSpec, options: dict[str, Any], *, where: str = "") -> BaseModel:
        try:
            return spec.config_model.model_validate(options or {})
        except ValidationError as exc:
            from .config import format_validation_error

            raise PluginError(
                f"invalid options for {spec.kind} {spec.name!r}{where}:\n{format_validation_error(exc)}",
                hint=f"see docs/config.md for the options of {spec.kind} {spec.name!r}",
            ) from exc

    def check_requires(self, spec: BackendSpec) -> None:
        """Raise :class:`MissingDependencyError`, naming the extra to install, when a dependency is missing."""
        missing = [m for m in spec.requires if importlib.util.find_spec(m) is None]
        if missing:
            extra = spec.extra or KNOWN_EXTRAS.get((spec.kind, spec.name))
            hint = f"pip install 'mcp-agent-cloud[{extra}]'" if extra else f"pip install {' '.join(missing)}"
            raise MissingDependencyError(
                f"{spec.kind} {spec.name!r} needs {', '.join(missing)}, which is not installed", hint=hint
            )

    def build(self, spec: BackendSpec, options: dict[str, Any], ctx: PluginContext) -> Any:
        """Check the spec's dependencies, validate its options and construct its backend."""
        self.check_requires(spec)
        config = self.validate_options(spec, options)
        backend = spec.backend(config, ctx)
        backend.spec_name = spec.name
        return backend

    def describe(self) -> list[dict[str, Any]]:
        """One row per (kind, name) for ``mcp-agent plugins list``."""
        rows = []
        for kind in KINDS:
            for reg in self.specs(kind):
                rows.append({
                    "kind": kind, "name": reg.spec.name, "plugin": reg.plugin.name,
                    "distribution": reg.plugin.distribution, "version": reg.plugin.version,
                    "builtin": reg.plugin.builtin, "description": reg.spec.description,
                })
        return rows


def _canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def load_plugin_manager(
    *, disable: Iterable[str] = (), require: Iterable[str] = (), autoload: bool | None = None
) -> PluginManager:
    pm = PluginManager()
    pm.load_entry_points(disable=disable, autoload=autoload)
    pm.require(require)
    pm.check_pending()
    return pm
