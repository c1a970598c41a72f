"""The hookspecs of mcp-agent-cloud: every way a plugin can extend the platform.

A plugin is a module (or object) with functions decorated by :data:`hookimpl`, registered through the entry-point
group ``mcp_agent_cloud.plugins``::

    # pyproject.toml of a plugin package
    [project.entry-points."mcp_agent_cloud.plugins"]
    zip = "mcp_agent_cloud_zip"

Two families of hooks:

* Registration hooks (``mcp_agent_cloud_packagers``, ``..._builders``, ``..._registries``, ``..._executors``,
  ``..._secrets_backends``, ``..._auth_providers``, ``..._telemetry_exporters``, ``..._server_types``) yield typed specs.
  Every plugin is asked; the manager indexes the specs by name, rejects two plugins that claim one name, and the
  YAML config selects backends by name. They are never ``firstresult``.
* Call-all hooks: ``mcp_agent_cloud_cli_commands`` (add click commands), ``mcp_agent_cloud_lifecycle_event``
  (observe deployments being created, built, started, stopped, failed and deleted), ``mcp_agent_cloud_configure``
  (historic: sees the validated config, even when registered late) and ``mcp_agent_cloud_pipeline_step``
  (context managers entered around each async deploy pipeline step, for tracing and timing).

Hooks are synchronous. The backends they describe have async methods (see :mod:`mcp_agent_cloud.hookspecs.types`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pluggy

from .types import (
    AuthProviderSpec,
    BuilderSpec,
    Event,
    ExecutorSpec,
    PackagerSpec,
    RegistrySpec,
    SecretsSpec,
    ServerTypeSpec,
    TelemetryExporterSpec,
)

if TYPE_CHECKING:
    import click

PROJECT = "mcp_agent_cloud"
ENTRY_POINT_GROUP = "mcp_agent_cloud.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# ---------------------------------------------------------------------------------------------------------------
# Registration hooks: pick one backend (or an ordered list) by name
# ---------------------------------------------------------------------------------------------------------------


@hookspec
def mcp_agent_cloud_packagers() -> Iterable[PackagerSpec]:
    """Register packagers: they turn an app directory into an archive and unpack it on the platform.

    Selected by ``packager: NAME`` in the config. Example::

        from mcp_agent_cloud.hookspecs import hookimpl
        from mcp_agent_cloud.hookspecs.types import PackagerSpec

        @hookimpl
        def mcp_agent_cloud_packagers():
            yield PackagerSpec(name="zip", backend=ZipPackager, config_model=ZipConfig,
                               description="zip archives")
    """


@hookspec
def mcp_agent_cloud_builders() -> Iterable[BuilderSpec]:
    """Register builders: they build a deployment version (a venv, an image) and run it as an instance.

    Selected by ``builder: NAME`` or ``builder: {name: NAME, ...options}``; a deploy may override it. Example::

        @hookimpl
        def mcp_agent_cloud_builders():
            yield BuilderSpec(name="docker", backend=DockerBuilder, config_model=DockerConfig,
                              requires=("docker",), extra="docker")
    """


@hookspec
def mcp_agent_cloud_registries() -> Iterable[RegistrySpec]:
    """Register registries: durable stores of orgs, deployments, versions, events and tokens.

    Selected by ``registry: NAME``. Example::

        @hookimpl
        def mcp_agent_cloud_registries():
            yield RegistrySpec(name="sqlite", backend=SqliteRegistry, config_model=SqliteConfig)
    """


@hookspec
def mcp_agent_cloud_executors() -> Iterable[ExecutorSpec]:
    """Register workflow executors (asyncio, Temporal, ...): what runs the workflows of MCPApp apps.

    An executor has two halves. ``backend`` is the in-app :class:`~.types.Executor`: the MCPApp runtime builds it
    inside each app process (in the app's own venv) from ``MCPAC_EXECUTOR``/``MCPAC_EXECUTOR_CONFIG`` and runs the
    workflow code there. ``supervisor`` (optional) is the platform-side :class:`~.types.ExecutorSupervisor`, built
    once by ``mcp-agent serve`` from ``executor: NAME``: it sets those variables per app instance (``app_env``),
    adds pip requirements to the app envs (``app_requirements``; a third-party plugin names itself there, since the
    app looks the executor up by entry point), may run an engine (the embedded Temporal server) and may clean up
    after a deleted deployment (``remove_deployment``). Example::

        @hookimpl
        def mcp_agent_cloud_executors():
            yield ExecutorSpec(name="asyncio", backend=AsyncioExecutor, supervisor=AsyncioSupervisor,
                               config_model=AsyncioExecutorConfig)
    """


@hookspec
def mcp_agent_cloud_secrets_backends() -> Iterable[SecretsSpec]:
    """Register secrets backends: encrypted stores of deployment secrets.

    Selected by ``secrets: NAME``. Example::

        @hookimpl
        def mcp_agent_cloud_secrets_backends():
            yield SecretsSpec(name="vault", backend=VaultSecrets, config_model=VaultConfig,
                              requires=("hvac",), extra="vault")
    """


@hookspec
def mcp_agent_cloud_auth_providers() -> Iterable[AuthProviderSpec]:
    """Register auth providers. The config lists the ones to use, in the order they are tried.

    ``auth: [builtin, {name: okta, issuer: ...}]``. Example::

        @hookimpl
        def mcp_agent_cloud_auth_providers():
            yield AuthProviderSpec(name="builtin", backend=BuiltinAuth, config_model=BuiltinAuthConfig)
    """


@hookspec
def mcp_agent_cloud_telemetry_exporters() -> Iterable[TelemetryExporterSpec]:
    """Register telemetry exporters. Every exporter named in ``telemetry: [...]`` receives every event.

    Example::

        @hookimpl
        def mcp_agent_cloud_telemetry_exporters():
            yield TelemetryExporterSpec(name="jsonl", backend=JsonlExporter, config_model=JsonlConfig)
    """


@hookspec
def mcp_agent_cloud_server_types() -> Iterable[ServerTypeSpec]:
    """Register known utility servers for ``mcp-agent deploy server NAME --type T``.

    Example::

        @hookimpl
        def mcp_agent_cloud_server_types():
            yield ServerTypeSpec(name="time", description="current time and time zones",
                                 command="mcp-server-time", pip=("mcp-server-time",))
    """


# ---------------------------------------------------------------------------------------------------------------
# Call-all hooks
# ---------------------------------------------------------------------------------------------------------------


@hookspec
def mcp_agent_cloud_cli_commands(cli: click.Group) -> None:
    """Add click commands or groups to the ``mcp-agent`` CLI. The built-in commands register this way too.

    Example::

        @hookimpl
        def mcp_agent_cloud_cli_commands(cli):
            @cli.command()
            def hello():
                click.echo("hi")
    """


@hookspec
def mcp_agent_cloud_lifecycle_event(event: Event) -> None:
    """Observe a deployment lifecycle event: ``deployment.created``, ``.built``, ``.started``, ``.stopped``,
    ``.failed``, ``.deleted``, ``.restarted``, ``.rolled_back``. Called for every plugin; must not block.

    Example::

        @hookimpl
        def mcp_agent_cloud_lifecycle_event(event):
            if event.type == "deployment.failed":
                page_someone(event.deployment, event.message)
    """


@hookspec(historic=True)
def mcp_agent_cloud_configure(config: Any) -> None:
    """Called once with the validated platform config (a ``PlatformConfig``). Historic: a plugin registered later
    still receives it. Example::

        @hookimpl
        def mcp_agent_cloud_configure(config):
            global DATA_DIR
            DATA_DIR = config.data_dir
    """


@hookspec
def mcp_agent_cloud_pipeline_step(step: str, deployment: str, version: int) -> Any:
    """Wrap a deploy pipeline step (unpack, build, start, health_check, route) for tracing or timing.

    Return a context manager (or ``None``); the platform enters every returned one around the step, which is
    async, so a plain ``wrapper=True`` hook could not span it. An exception raised by the step is visible in
    ``__exit__``. Example::

        @hookimpl
        def mcp_agent_cloud_pipeline_step(step, deployment, version):
            @contextlib.contextmanager
            def timed():
                t0 = time.monotonic()
                yield
                print(step, deployment, version, time.monotonic() - t0)
            return timed()
    """


__all__ = ["ENTRY_POINT_GROUP", "PROJECT", "hookimpl", "hookspec"]
