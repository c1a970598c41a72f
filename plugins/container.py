"""The shared core of the container builders (``docker``, ``podman``): images from packaged apps, hardened containers.

Each version becomes two images:

- a dependency image ``mcp-agent-cloud/deps:{key16}``, keyed like the process builder's virtualenvs (requirements,
  local files, runtime wheel) plus the base image, so a code-only redeploy reuses it from the cache;
- a thin app image ``mcp-agent-cloud/{org}.{name}:{version}`` on top: the app's files and the launcher, labelled
  with the org, name, version, package sha256 and platform id.

Dependencies are resolved on the platform host with ``pip wheel`` (the host reaches the package index; a build in
an isolated network need not) and installed in the image with ``pip --no-index``; the base image's Python must
therefore match the platform's (checked as the first build step). A stdio server's image holds the adapter (in
``/opt/mcpac/venv``), the server's PyPI packages (``/opt/venv``) or its npm package (``/opt/node``, installed on the
host with ``npm``), and runs the adapter with the server as its child.

Containers run hardened by default (non-root, read-only root, no capabilities, no-new-privileges, init, memory,
CPU and pids limits, loopback-only published port, a per-platform network without the metadata address). A
deployment's own options may only tighten that. See docs/builders.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from mcp_agent_cloud.errors import BuildError, MCPAgentCloudError, ValidationFailed
from mcp_agent_cloud.hookspecs.types import (
    Artifact,
    Builder,
    BuildRequest,
    DeploymentRef,
    Instance,
    LogSink,
    PluginContext,
)
from mcp_agent_cloud.names import requirements_hash
from mcp_agent_cloud.plugins.engine import (
    ContainerInfo,
    Engine,
    EngineBuildError,
    EngineError,
    Mount,
    RunSpec,
)
from mcp_agent_cloud.plugins.process import (
    LAUNCHER,
    PIP_HINT,
    adapter_args,
    emit,
    file_lock,
    redact,
    resolve_app,
    run_logged,
    runtime_env_key,
)
from mcp_agent_cloud.runtime.ports import free_port

LABEL = "org.mcp-agent-cloud"
PORT = 8000
DATA_PATH = "/data"
SECRETS_PATH = "/run/mcpac/mcp_agent.secrets.yaml"
METADATA_ADDRESS = "169.254.169.254/32"
EGRESS_CHAIN = "MCPAC-EGRESS"
APP_PYTHON = "/opt/venv/bin/python"
ADAPTER_PYTHON = "/opt/mcpac/venv/bin/python"
PATH_ENV = "/opt/venv/bin:/opt/node/node_modules/.bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_IPTABLES_LOCK = threading.Lock()
# With restart_policy on-failure the engine restarts a failed container itself; podman shows it exited for a moment
# first (docker says "restarting"). The supervisor waits this long before it takes the exit for its own to handle.
ENGINE_RESTART_GRACE = 5.0
WAIT_POLL = 0.5
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(value: str | int) -> int:
    """``512m`` / ``1g`` / ``1048576`` -> bytes."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"invalid size {value!r}: use bytes or a number with k, m, g (e.g. 512m)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_kmgt".index(unit.lower() or "_"))


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    memory: str = Field("512m", description="memory limit (no swap beyond it), e.g. 512m or 1g")
    cpus: float = Field(1.0, gt=0, description="CPU limit, in cores")
    pids: int = Field(256, gt=0, description="most processes and threads at once")

    @field_validator("memory")
    @classmethod
    def _size(cls, value: str) -> str:
        if parse_size(value) < 6 * 1024 * 1024:
            raise ValueError("memory below 6m cannot start a container")
        return value


class Hardening(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field("10001:10001", description="uid:gid the instance runs as (never root unless set so)")
    read_only: bool = Field(True, description="read-only root filesystem; /tmp and /data stay writable")
    no_new_privileges: bool = True
    drop_capabilities: bool = Field(True, description="drop every Linux capability")
    init: bool = Field(True, description="an init process as PID 1 (signals, zombies)")
    tmp_size: str = Field("64m", description="size of the /tmp tmpfs")
    block_metadata: bool = Field(True, description=f"REJECT traffic from the platform network to {METADATA_ADDRESS} "
                                 "(iptables; needs root, see docs/builders.md)")


class AllowedPath(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path = Field(description="a host directory deployments may mount (it and what is below it)")
    mode: Literal["ro", "rw"] = Field("ro", description="the most a deployment may ask for")


class FilesystemConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allowed_paths: list[AllowedPath] = Field(default_factory=list)


class PushConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    registry: str = Field(description="host[:port][/namespace] of an OCI registry, e.g. registry.example.com/team")
    tls_verify: bool = True
    username: str | None = None
    password: SecretStr | None = None


class ContainerConfig(BaseModel):
    """Operator options of a container builder (``builder: {name: docker, ...}`` in the platform config)."""

    model_config = ConfigDict(extra="forbid")
    base_image: str = Field("python:3.11-slim-bookworm", description="image every app image starts from; it needs "
                            "python3 with venv, of the platform's Python version (and node for npm servers)")
    python: str = Field("python3", description="the interpreter in the base image that creates virtualenvs")
    pip_args: list[str] = Field(default_factory=list, description="extra arguments for `pip wheel` on the host")
    network: str | None = Field(None, description="the network instances join (default mcpac-{platform id})")
    hardening: Hardening = Field(default_factory=Hardening)
    limits: Limits = Field(default_factory=Limits)
    filesystem: FilesystemConfig = Field(default_factory=FilesystemConfig)
    restart_policy: Literal["no", "on-failure"] = Field(
        "no", description="the engine's restart policy; `no` leaves restarts to the platform's supervisor")
    max_restarts: int = Field(3, ge=0, description="with on-failure: restarts before the engine gives up")
    health_interval: float = Field(10.0, gt=0, description="seconds between the engine's health probes")
    keep_images: int = Field(3, ge=1, description="app images kept per deployment (older ones are removed)")
    push: PushConfig | None = Field(None, description="push every app image to this registry")
    stop_timeout: float = Field(10.0, gt=0, description="seconds between SIGTERM and SIGKILL when stopping")
    engine_timeout: float = Field(120.0, gt=0, description="seconds an engine API call may take")


class MountRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Path = Field(description="host directory, under one of the operator's filesystem.allowed_paths")
    target: str = Field(description="absolute path in the container")
    mode: Literal["ro", "rw"] = "ro"


class DeployOptions(BaseModel):
    """What a deployment may set (``deploy.builder: {name: docker, ...}``): only ever tighter than the operator's."""

    model_config = ConfigDict(extra="forbid")
    limits: dict[str, Any] = Field(default_factory=dict, description="memory, cpus, pids: at most the operator's")
    mounts: list[MountRequest] = Field(default_factory=list)
    stop_timeout: float | None = Field(None, gt=0)


def _platform_id(data_dir: Path) -> str:
    return hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]


def _tail(lines: list[str], n: int = 30) -> str:
    return "\n".join(lines[-n:])


class LogFollower(threading.Thread):
    """Copies a container's output into the version's app.log until the container stops (``mcp-agent logs``),
    each line stamped with its time and stream."""

    def __init__(self, engine: Engine, container: str, path: Path, since: float | None,
                 max_bytes: int | None = None) -> None:
        super().__init__(daemon=True, name=f"logs-{container[:12]}")
        self.engine, self.container, self.path, self.since = engine, container, Path(path), since
        self.max_bytes = max_bytes

    def run(self) -> None:
        from mcp_agent_cloud.applog import AppLog, LineSplitter

        log = AppLog.open(self.path, self.max_bytes)
        splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        # An engine without log_frames cannot tell the streams apart: its output counts as stdout.
        frames = getattr(self.engine, "log_frames", None)
        source = (frames(self.container, since=self.since) if frames is not None
                  else (("stdout", chunk) for chunk in self.engine.logs(self.container, since=self.since)))
        try:
            with contextlib.suppress(Exception):
                for stream, chunk in source:
                    log.write(stream, splitters[stream].feed(chunk))
            for stream, splitter in splitters.items():
                with contextlib.suppress(OSError):
                    log.write(stream, splitter.flush())
        finally:
            log.close()


class ContainerBuilder(Builder):
    """The engine-independent builder; subclasses only say how to reach their engine (:meth:`make_engine`)."""

    config: ContainerConfig
    deploy_options_model = DeployOptions
    #: how the engine lists images it built: podman prefixes ``localhost/``
    image_prefix = ""
    # Where the jump to EGRESS_CHAIN goes, the first chain that exists: it must come before the engine's own
    # ACCEPT rules for the network's forwarded traffic.
    egress_parents: tuple[str, ...] = ("FORWARD",)

    def __init__(self, config: ContainerConfig, ctx: PluginContext) -> None:
        super().__init__(config, ctx)
        self._engine: Engine | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._followers: dict[str, LogFollower] = {}
        self._subnet: str | None = None
        self._egress_note: str | None = None

    # -- engine ----------------------------------------------------------------------------------------------------

    def make_engine(self) -> Engine:
        raise NotImplementedError

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self.make_engine()
        return self._engine

    async def call(self, fn, *args, **kwargs):
        """An engine call in a worker thread; an engine failure becomes a platform error with a hint."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except EngineBuildError:
            raise
        except EngineError as exc:
            raise MCPAgentCloudError(f"{self.spec_name}: {exc}", hint=self.engine_hint()) from None

    def engine_hint(self) -> str:
        return (f"check that the {self.spec_name} engine runs and that the builder's `host` points at it "
                "(scripts/engines.sh starts Docker and Podman on a Debian machine)")

    async def setup(self) -> None:
        try:
            facts = await asyncio.to_thread(lambda: self.engine.ping())
        except EngineError as exc:
            raise MCPAgentCloudError(f"the {self.spec_name} builder cannot reach its engine: {exc}",
                                     hint=self.engine_hint()) from None
        self.engine_facts = facts

    async def aclose(self) -> None:
        if self._engine is None:
            return
        if self._subnet is not None and not await asyncio.to_thread(self._engine.containers, {
                f"{LABEL}.platform": self.platform_id}):
            # Nothing of this platform runs any more (none to adopt later): its network and rule go too.
            with contextlib.suppress(EngineError):
                await asyncio.to_thread(self._engine.remove_network, self.network_name)
                await asyncio.to_thread(self._unblock_metadata, self._subnet)
        await asyncio.to_thread(self._engine.close)

    @property
    def platform_id(self) -> str:
        return _platform_id(self.ctx.data_dir)

    @property
    def network_name(self) -> str:
        return self.config.network or f"mcpac-{self.platform_id}"

    def labels_for(self, ref: DeploymentRef) -> dict[str, str]:
        return {f"{LABEL}.platform": self.platform_id, f"{LABEL}.deployment-id": ref.id}

    def local(self, ref: str) -> str:
        """``ref`` as the engine names it in listings (podman: ``localhost/``)."""
        return self.image_prefix + ref if self.image_prefix and not ref.startswith(self.image_prefix) else ref

    # -- per-deployment options --------------------------------------------------------------------------------

    def check_options(self, options: dict[str, Any]) -> DeployOptions:
        """The deployment's options, validated against the operator's settings: they can only tighten them."""
        try:
            opts = DeployOptions.model_validate(options or {})
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValidationFailed(
                f"invalid {self.spec_name} builder option {'.'.join(map(str, err['loc'])) or '?'}: {err['msg']}",
                hint="a deployment may set limits (memory, cpus, pids), mounts and stop_timeout; everything else "
                     "is the operator's (see docs/builders.md)") from None
        ops = self.config.limits
        try:
            mine = Limits.model_validate({**ops.model_dump(), **opts.limits})
        except ValidationError as exc:
            raise ValidationFailed(f"invalid {self.spec_name} builder limits: {exc.errors()[0]['msg']}",
                                   hint="e.g. limits: {memory: 256m, cpus: 0.5, pids: 64}") from None
        for key, over in (("memory", parse_size(mine.memory) > parse_size(ops.memory)),
                          ("cpus", mine.cpus > ops.cpus), ("pids", mine.pids > ops.pids)):
            if over:
                raise ValidationFailed(f"the deployment asks for {key} {getattr(mine, key)}, above the operator's "
                                       f"limit of {getattr(ops, key)}",
                                       hint="ask for less, or ask the operator to raise builder.limits")
        for mount in opts.mounts:
            if not PurePosixPath(mount.target).is_absolute() or ".." in PurePosixPath(mount.target).parts:
                raise ValidationFailed(f"mount target {mount.target!r} must be an absolute path without '..'",
                                       hint="e.g. target: /workspace")
            if mount.target in ("/", DATA_PATH, "/tmp", "/opt", "/opt/app", "/opt/venv", "/opt/mcpac", "/run/mcpac"):
                raise ValidationFailed(f"mount target {mount.target} is reserved", hint="pick another path")
            source = mount.source.expanduser()
            allowed = next((a for a in self.config.filesystem.allowed_paths
                            if _is_under(source, a.path.expanduser())), None)
            if allowed is None:
                paths = ", ".join(str(a.path) for a in self.config.filesystem.allowed_paths) or "none"
                raise ValidationFailed(f"mount source {source} is not under the operator's allowed paths ({paths})",
                                       hint="ask the operator to add it to builder.filesystem.allowed_paths")
            if mount.mode == "rw" and allowed.mode != "rw":
                raise ValidationFailed(f"mount source {source} may only be mounted read-only",
                                       hint="use mode: ro, or ask the operator for mode rw on that path")
        opts.limits = mine.model_dump()
        return opts

    # -- build -------------------------------------------------------------------------------------------------

    async def build(self, request: BuildRequest, log: LogSink) -> Artifact:
        opts = self.check_options(request.options)
        ref = request.deployment
        base = self.config.base_image
        base_info = await self.call(self.engine.image, base)
        if base_info is None:
            raise BuildError(f"the base image {base} is not in the {self.spec_name} engine",
                             hint="pull it, or build one locally (docs/builders.md: 'a base image offline'); "
                                  "scripts/engines.sh imports mcp-agent-cloud-base:bookworm")
        ctx_dir = Path(request.work_dir) / "image"
        shutil.rmtree(ctx_dir, ignore_errors=True)
        ctx_dir.mkdir(parents=True)
        uid_gid = self.config.hardening.user
        data: dict[str, Any] = {"kind": request.kind, "base_image": base, "user": uid_gid,
                                "options": opts.model_dump(mode="json")}
        labels = {**self.labels_for(ref), f"{LABEL}.org": ref.org, f"{LABEL}.name": ref.name,
                  f"{LABEL}.version": str(request.version), f"{LABEL}.kind": request.kind}
        if request.kind == "app":
            app = resolve_app(request)
            entrypoint, source = app.entrypoint, app.source
            deps, _ = await self.ensure_deps(app.key, {"app": app.requirements}, base_info.id, log, cwd=source)
            _copy_tree(source, ctx_dir / "app")
            shutil.copy2(LAUNCHER, ctx_dir / "launcher.py")
            cmd = [APP_PYTHON, "/opt/mcpac/launcher.py", "--entrypoint", entrypoint, "--host", "0.0.0.0",
                   "--port", str(PORT)]
            dockerfile = [f"FROM {deps}", "COPY app /opt/app", "COPY launcher.py /opt/mcpac/launcher.py",
                          "WORKDIR /opt/app"]
            data.update(entrypoint=entrypoint, python=APP_PYTHON, requirements_hash=requirements_hash(app.requirements))
        elif request.kind == "stdio":
            if not request.command:
                raise BuildError("a stdio deployment needs a command", hint="pass --command, e.g. --command npx")
            from mcp_agent_cloud.runtime.wheel import build_wheel, requirement

            wheel = await asyncio.to_thread(build_wheel, Path(self.ctx.data_dir) / "wheelhouse")
            runtime = [requirement(wheel)]
            pip = [r for r in request.pip if r.strip()]
            parts: dict[str, list[str]] = {"runtime": runtime, "app": pip}
            key = runtime_env_key(requirements_hash(pip) + json.dumps({"npm": request.npm}), runtime)
            deps, deps_labels = await self.ensure_deps(key, parts, base_info.id, log, npm=request.npm)
            command, args = request.command, list(request.args)
            if request.npm and command == "npx":
                command, args = npm_command(deps_labels.get(f"{LABEL}.npm-bin", ""), request.npm, args)
            cmd = [ADAPTER_PYTHON, "-m", "mcp_agent_cloud.runtime.adapter", "--host", "0.0.0.0", "--port", str(PORT),
                   *adapter_args(self.ctx.settings, request.session_mode), "--", command, *args]
            dockerfile = [f"FROM {deps}", "WORKDIR /tmp"]
            data.update(command=command, args=args, python=ADAPTER_PYTHON, npm=request.npm,
                        session_mode=request.session_mode)
        else:
            raise BuildError(f"the {self.spec_name} builder does not build {request.kind!r} deployments",
                             hint="remote deployments are proxied by the platform and need no builder")
        tag = f"mcp-agent-cloud/{ref.org}.{ref.name}:{request.version}"
        if request.package_sha256:
            labels[f"{LABEL}.package-sha256"] = request.package_sha256
        dockerfile += [f"USER {uid_gid}", f"ENV PYTHONUNBUFFERED=1 HOME=/tmp PATH={PATH_ENV}",
                       f"EXPOSE {PORT}", f"CMD {json.dumps(cmd)}"]
        (ctx_dir / "Dockerfile").write_text("\n".join(dockerfile) + "\n")
        await emit(log, f"building image {tag} on {deps.split(':')[-1][:12]} ({self.spec_name})")
        try:
            image_id = await self._build_image(ctx_dir, tag, labels, log, what="the app image")
        finally:
            shutil.rmtree(ctx_dir, ignore_errors=True)  # a copy of the app; the image has it now
        data.update(image=image_id, tag=tag, deps_image=deps, command_line=cmd)
        if self.config.push:
            data["pushed"] = await self._push(image_id, tag, log)
        await self._prune_images(ref, log, keep_tag=tag)
        return Artifact(builder=self.spec_name, deployment=ref, version=request.version, kind=request.kind, data=data)

    async def ensure_deps(self, key: str, parts: dict[str, list[str]], base_id: str, log: LogSink, *,
                          cwd: Path | None = None, npm: str | None = None) -> tuple[str, dict[str, str]]:
        """The dependency image for ``key`` on the base image and its labels: reused when it exists, built once
        otherwise."""
        full = hashlib.sha256(json.dumps({"key": key, "base": base_id, "python": self.config.python,
                                          "user": self.config.hardening.user}).encode()).hexdigest()
        tag = f"mcp-agent-cloud/deps:{full[:16]}"
        lock = self._locks.setdefault(full, asyncio.Lock())
        async with lock, file_lock(Path(self.ctx.data_dir) / "images" / f".{full[:16]}.lock"):
            info = await self.call(self.engine.image, tag)
            if info is not None and info.labels.get(f"{LABEL}.deps-key") == full:
                await emit(log, f"dependency image cached: {tag}")
                return tag, info.labels
            started = time.monotonic()
            work = Path(self.ctx.data_dir) / "images" / full[:16]
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            try:
                py = self.config.python
                want = "%d.%d" % sys.version_info[:2]
                check = (f"import sys; v='%d.%d' % sys.version_info[:2]; assert v == '{want}', "
                         f"'the base image has Python ' + v + ' but the dependencies were resolved on the platform "
                         f"host for Python {want}: use a base image with Python {want}'")
                stage = [f"FROM {self.config.base_image} AS build", f"RUN {py} -c {json.dumps(check)}"]
                final = [f"FROM {self.config.base_image}"]
                venvs = {"runtime": "/opt/mcpac/venv", "app": "/opt/venv"}
                for part, reqs in parts.items():
                    if not reqs:
                        continue
                    wheels = work / part
                    await self._wheels(reqs, wheels, log, cwd=cwd)
                    stage += [f"COPY {part} /tmp/{part}",
                              f"RUN {py} -m venv {venvs[part]} && {venvs[part]}/bin/pip install --no-index "
                              f"--no-cache-dir --disable-pip-version-check /tmp/{part}/*.whl"]
                    final.append(f"COPY --from=build {venvs[part]} {venvs[part]}")
                labels = {f"{LABEL}.deps-key": full, f"{LABEL}.platform": self.platform_id}
                if npm:
                    labels[f"{LABEL}.npm-bin"] = await self._npm_install(npm, work / "node", log)
                    final.append("COPY node /opt/node")
                final.append(f"RUN mkdir -p {DATA_PATH} && chown {self.config.hardening.user} {DATA_PATH}")
                (work / "Dockerfile").write_text("\n".join([*stage, *final]) + "\n")
                await emit(log, f"building dependency image {tag}")
                await self._build_image(work, tag, labels, log, what="the dependency image")
            finally:
                shutil.rmtree(work, ignore_errors=True)
            await emit(log, f"dependency image ready: {tag} ({time.monotonic() - started:.1f}s)")
            return tag, labels

    async def _wheels(self, reqs: list[str], target: Path, log: LogSink, *, cwd: Path | None) -> None:
        target.mkdir(parents=True, exist_ok=True)
        req_file = target.parent / f"{target.name}-requirements.txt"
        req_file.write_text("".join(f"{r}\n" for r in reqs))
        await emit(log, f"resolving wheels on the host for: {', '.join(map(redact, reqs))}")
        cmd = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-input",
               *self.config.pip_args, "--wheel-dir", str(target), "-r", str(req_file)]
        code, tail = await run_logged(cmd, log, cwd=cwd)
        req_file.unlink(missing_ok=True)
        if code != 0:
            raise BuildError(f"pip could not resolve the requirements (exit {code})", hint=PIP_HINT,
                             log_tail="\n".join(tail))

    async def _npm_install(self, package: str, target: Path, log: LogSink) -> str:
        """Install ``package`` under ``target`` on the host; return the path of its bin script in the image."""
        npm = shutil.which("npm")
        if npm is None:
            raise BuildError("npm is not installed on the platform host: npm servers are installed there and "
                             "copied into the image", hint="install Node.js and npm on the platform host")
        target.mkdir(parents=True, exist_ok=True)
        (target / "package.json").write_text('{"name": "mcpac-server", "private": true}\n')
        code, tail = await run_logged([npm, "install", "--no-audit", "--no-fund", "--omit=dev", package], log,
                                      cwd=target)
        if code != 0:
            raise BuildError(f"npm could not install {package} (exit {code})",
                             hint="check the package name and version", log_tail="\n".join(tail))
        name = npm_name(package)
        meta = json.loads((target / "node_modules" / name / "package.json").read_text())
        bins = meta.get("bin") or {}
        if isinstance(bins, str):
            bins = {name.rsplit("/", 1)[-1]: bins}
        if not bins:
            raise BuildError(f"the npm package {package} has no bin script to run",
                             hint="deploy a package that declares `bin` in its package.json")
        script = bins.get(name.rsplit("/", 1)[-1]) or next(iter(bins.values()))
        return str(PurePosixPath("/opt/node/node_modules") / name / script)

    async def _build_image(self, context: Path, tag: str, labels: dict[str, str], log: LogSink, *, what: str) -> str:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def on_line(line: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, redact(line))

        async def pump() -> None:
            while (line := await queue.get()) is not None:
                await emit(log, line)

        pumping = asyncio.create_task(pump())
        try:
            return await asyncio.to_thread(self.engine.build, context, self.local(tag), labels=labels,
                                           on_line=on_line)
        except EngineBuildError as exc:
            step = f" at {exc.step}" if exc.step else ""
            raise BuildError(f"{what} failed to build{step}: {exc}",
                             hint="fix the failing step (its output is above); the previous version keeps serving",
                             log_tail=_tail(exc.tail)) from None
        except EngineError as exc:
            raise BuildError(f"{what} failed to build: {exc}", hint=self.engine_hint()) from None
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)
            await pumping

    async def _push(self, image_id: str, tag: str, log: LogSink) -> str:
        push = self.config.push
        assert push is not None
        remote = f"{push.registry.rstrip('/')}/{tag}"
        auth = ({"username": push.username, "password": push.password.get_secret_value() if push.password else ""}
                if push.username else None)
        await emit(log, f"pushing {remote}")
        await self.call(self.engine.tag, image_id, remote)
        try:
            await self.call(self.engine.push, remote, on_line=lambda line: None, tls_verify=push.tls_verify,
                            auth=auth)
        except MCPAgentCloudError as exc:
            raise BuildError(f"pushing {remote} failed: {exc.message}",
                             hint="check the registry address and credentials in builder.push") from None
        finally:
            with contextlib.suppress(Exception):
                await self.call(self.engine.remove_image, remote)  # the local alias; the registry keeps it
        await emit(log, f"pushed {remote}")
        return remote

    async def _prune_images(self, ref: DeploymentRef, log: LogSink, *, keep_tag: str) -> None:
        """Keep the newest ``keep_images`` app images of the deployment; one still in use stays."""
        try:
            images = await self.call(self.engine.images, self.labels_for(ref))
        except MCPAgentCloudError as exc:  # housekeeping: the build stands, a later deploy prunes
            await emit(log, f"old images not pruned this time: {exc.message}")
            return
        apps = sorted((i for i in images if f"{LABEL}.version" in i.labels),
                      key=lambda i: int(i.labels[f"{LABEL}.version"]), reverse=True)
        for image in apps[self.config.keep_images:]:
            if any(t.endswith(keep_tag) for t in image.tags):
                continue
            try:
                await asyncio.to_thread(self.engine.remove_image, image.id)
                await emit(log, f"removed old image of version {image.labels[f'{LABEL}.version']} "
                                f"(keep_images {self.config.keep_images})")
            except EngineError as exc:  # still used by a container: kept until a later deploy prunes it
                await emit(log, f"kept old image of version {image.labels[f'{LABEL}.version']}: {exc}")

    # -- run ---------------------------------------------------------------------------------------------------

    async def _network(self) -> str:
        if self._subnet is None:
            self._subnet = await self.call(self.engine.ensure_network, self.network_name,
                                           {f"{LABEL}.platform": self.platform_id})
        # Checked at every start, not once: an engine that rewrites its chains may have dropped the jump.
        self._egress_note = await asyncio.to_thread(self._block_metadata, self._subnet)
        return self.network_name

    def _iptables(self) -> str | None:
        iptables = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
        return iptables if iptables and os.geteuid() == 0 else None

    def _egress_rule(self, subnet: str) -> list[str]:
        return ["-A", EGRESS_CHAIN, "-s", subnet, "-d", METADATA_ADDRESS, "-j", "REJECT"]

    def _block_metadata(self, subnet: str) -> str:
        """REJECT traffic from the platform network to the cloud metadata address; returns what was done."""
        if not self.config.hardening.block_metadata:
            return "metadata address not blocked (hardening.block_metadata: false)"
        if not subnet:
            return "metadata address not blocked: the network's subnet is unknown"
        iptables = self._iptables()
        if iptables is None:
            return "metadata address not blocked: needs root and iptables on the platform host"

        def ipt(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([iptables, "-w", *args], capture_output=True, text=True)

        def listed(chain: str) -> list[str]:
            # `-S`, not `-C`: iptables-nft's -C reports a jump to a chain as present when it is not.
            return ipt("-S", chain).stdout.splitlines()

        with _IPTABLES_LOCK:  # check-then-insert; other processes race only to a duplicate rule, which is harmless
            ipt("-N", EGRESS_CHAIN)
            parent = next((c for c in self.egress_parents if ipt("-S", c).returncode == 0), "FORWARD")
            # First in its chain, or an ACCEPT inserted above it since (netavark's, Docker's) wins.
            jump = f"-A {parent} -j {EGRESS_CHAIN}"
            if [line for line in listed(parent) if line.startswith("-A ")][:1] != [jump]:
                for _ in range(listed(parent).count(jump)):
                    ipt("-D", parent, "-j", EGRESS_CHAIN)
                ipt("-I", parent, "1", "-j", EGRESS_CHAIN)
            rule = self._egress_rule(subnet)
            if not any(line.startswith(" ".join(rule)) for line in listed(EGRESS_CHAIN)):
                ipt(*rule)
            if not any(line.startswith(" ".join(rule)) for line in listed(EGRESS_CHAIN)):
                return "metadata address not blocked: iptables refused the rule"
        return f"metadata address blocked for {subnet} (iptables chain {EGRESS_CHAIN})"

    def _unblock_metadata(self, subnet: str) -> None:
        if subnet and (iptables := self._iptables()):
            subprocess.run([iptables, "-w", "-D", *self._egress_rule(subnet)[1:]], capture_output=True)

    def _mounts(self, artifact: Artifact, env: dict[str, str]) -> tuple[list[Mount], dict[str, str]]:
        """The instance's mounts, and its env with host paths turned into the paths inside the container."""
        ref = artifact.deployment
        mounts = [Mount(source=f"mcpac-data-{ref.id}", target=DATA_PATH, read_only=False, type="volume")]
        env = dict(env)
        if "MCPAC_APP_DATA_DIR" in env:
            env["MCPAC_APP_DATA_DIR"] = DATA_PATH
        secrets_file = env.get("MCP_AGENT_SECRETS_FILE")
        if secrets_file:
            if os.geteuid() == 0:
                # 0600 stays; the owner becomes the container's user so that it alone can read the file.
                uid, _, gid = artifact.data.get("user", self.config.hardening.user).partition(":")
                with contextlib.suppress(OSError, ValueError):
                    os.chown(secrets_file, int(uid), int(gid or uid))
            mounts.append(Mount(source=secrets_file, target=SECRETS_PATH, read_only=True))
            env["MCP_AGENT_SECRETS_FILE"] = SECRETS_PATH
        for m in (artifact.data.get("options") or {}).get("mounts") or []:
            mounts.append(Mount(source=str(Path(m["source"]).expanduser()), target=m["target"],
                                read_only=m.get("mode", "ro") != "rw"))
        return mounts, env

    def run_spec(self, artifact: Artifact, env: dict[str, str]) -> RunSpec:
        ref = artifact.deployment
        opts = artifact.data.get("options") or {}
        limits = Limits.model_validate(opts.get("limits") or self.config.limits.model_dump())
        hard = self.config.hardening
        mounts, env = self._mounts(artifact, env)
        interval = int(self.config.health_interval * 1e9)
        probe = f"import socket; socket.create_connection(('127.0.0.1', {PORT}), 2).close()"
        policy = ({"Name": "on-failure", "MaximumRetryCount": self.config.max_restarts}
                  if self.config.restart_policy == "on-failure" else None)
        labels = {**self.labels_for(ref), f"{LABEL}.org": ref.org, f"{LABEL}.name": ref.name,
                  f"{LABEL}.version": str(artifact.version)}
        return RunSpec(
            image=artifact.data["image"], name=f"mcpac-{ref.org}.{ref.name}-v{artifact.version}-{secrets.token_hex(3)}",
            labels=labels, env=env, command=artifact.data["command_line"], port=PORT, host_ip="127.0.0.1",
            user=artifact.data.get("user", hard.user), read_only=hard.read_only,
            tmpfs={"/tmp": f"rw,noexec,nosuid,nodev,size={parse_size(hard.tmp_size)}"},
            no_new_privileges=hard.no_new_privileges, cap_drop=["ALL"] if hard.drop_capabilities else [],
            init=hard.init, memory_bytes=parse_size(limits.memory), nano_cpus=int(limits.cpus * 1e9),
            pids_limit=limits.pids, mounts=mounts,
            healthcheck={"Test": ["CMD", artifact.data.get("python", APP_PYTHON), "-c", probe],
                         "Interval": interval, "Timeout": 3 * 10**9, "Retries": 3, "StartPeriod": 60 * 10**9},
            restart_policy=policy,
        )

    def export_k8s(self, artifact: Artifact, *, namespace: str, image: str | None, env: dict[str, str],
                   secret_keys: list[str], secrets_file: bool, instance: str | None = None,
                   labels: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """Kubernetes manifests for the version, from the same RunSpec its containers run with (``instance`` and
        ``labels``: see :func:`~mcp_agent_cloud.plugins.kubernetes.manifests`)."""
        from mcp_agent_cloud.plugins.kubernetes import manifests

        spec = self.run_spec(artifact, {**env, "MCPAC_APP_DATA_DIR": DATA_PATH})
        notes = []
        if image is None:
            image = artifact.data.get("pushed")
            if not image:
                image = artifact.data["tag"]
                notes.append(f"the image {image} is only in the platform host's {self.spec_name} engine: push it "
                             "to a registry the cluster can pull from (the builder's `push` option), or pass --image")
        ref = artifact.deployment
        docs, more = manifests(spec, org=ref.org, name=ref.name, version=artifact.version, namespace=namespace,
                               image=image, secret_keys=secret_keys,
                               secrets_file=SECRETS_PATH if secrets_file else None,
                               block_metadata=self.config.hardening.block_metadata,
                               instance=instance, extra_labels=labels)
        return docs, notes + more

    async def start(self, artifact: Artifact, *, env, log_path: Path) -> Instance:
        network = await self._network()
        spec = self.run_spec(artifact, {str(k): str(v) for k, v in (env or {}).items()})
        spec.network = network
        spec.host_port = free_port("127.0.0.1")
        if await self.call(self.engine.image, artifact.data["image"]) is None:
            raise BuildError(f"the image of version {artifact.version} is gone (removed by keep_images "
                             f"{self.config.keep_images}, or by hand)", hint="deploy the app again")
        cid = await self.call(self.engine.run, spec)
        info = await self._wait_port(cid)
        self._follow(cid, log_path, since=None)
        return Instance(builder=self.spec_name, deployment=artifact.deployment, version=artifact.version,
                        url=f"http://127.0.0.1:{info.host_port}/mcp",
                        data={"container": cid, "name": spec.name, "port": info.host_port,
                              "log_path": str(log_path), "egress": self._egress_note,
                              "stop_timeout": (artifact.data.get("options") or {}).get("stop_timeout"),
                              "limits": (artifact.data.get("options") or {}).get("limits")})

    async def _wait_port(self, cid: str) -> ContainerInfo:
        deadline = time.monotonic() + 10
        while True:
            info = await self.call(self.engine.inspect, cid, PORT)
            if info is None:
                raise BuildError("the container vanished right after it started", hint="see `mcp-agent logs`")
            if info.host_port:
                return info
            if info.status in ("exited", "dead") or time.monotonic() > deadline:
                raise BuildError(f"the container did not publish its port (status {info.status}, "
                                 f"exit code {info.exit_code})", hint="see `mcp-agent logs NAME`")
            await asyncio.sleep(0.1)

    def _follow(self, cid: str, log_path: Path | str, since: float | None) -> None:
        old = self._followers.get(cid)
        if old is not None and old.is_alive():
            return
        follower = LogFollower(self.engine, cid, Path(log_path), since, self.ctx.settings.get("log_max_bytes"))
        follower.start()
        self._followers[cid] = follower

    async def wait(self, instance: Instance) -> int:
        cid = instance.data["container"]
        exited_at = None
        while True:
            info = await self.call(self.engine.inspect, cid)
            if info is None:
                return -1
            if info.status in ("exited", "dead"):
                exited_at = exited_at or time.monotonic()
                if not (self._engine_restarts(info) and time.monotonic() - exited_at < ENGINE_RESTART_GRACE):
                    break
            else:
                exited_at = None
            await asyncio.sleep(WAIT_POLL)
        code = info.exit_code if info.exit_code is not None else -1
        note = None
        if info.oom_killed:
            note = f"the container was killed: out of memory (limit {self._limit_text(instance)}); raise limits.memory"
        elif code == 137 and not self.engine.reports_oom:
            note = (f"the container was killed (SIGKILL, exit code 137), most likely out of memory (limit "
                    f"{self._limit_text(instance)}; {self.spec_name} does not say); if so, raise limits.memory")
        if note and instance.data.get("log_path"):
            from mcp_agent_cloud.applog import append_app_log

            with contextlib.suppress(OSError):
                append_app_log(instance.data["log_path"], "platform", [f"--- {note} ---"],
                               max_bytes=self.ctx.settings.get("log_max_bytes"))
        follower = self._followers.pop(cid, None)
        if follower is not None:
            await asyncio.to_thread(follower.join, 5)
        await self.call(self.engine.remove, cid)
        return code

    def _engine_restarts(self, info: ContainerInfo) -> bool:
        """The engine will restart this exited container by its restart policy (a failure, retries left)."""
        return (self.config.restart_policy == "on-failure" and info.status == "exited"
                and info.exit_code not in (0, None) and info.restart_count < self.config.max_restarts)

    def _limit_text(self, instance: Instance) -> str:
        return str((instance.data.get("limits") or {}).get("memory") or self.config.limits.memory)

    async def stop(self, instance: Instance, *, timeout: float | None = None) -> None:
        cid = instance.data.get("container")
        if not cid:
            return
        timeout = timeout if timeout is not None else instance.data.get("stop_timeout") or self.config.stop_timeout
        await self.call(self.engine.stop, cid, timeout)
        await self.call(self.engine.remove, cid)
        follower = self._followers.pop(cid, None)
        if follower is not None:
            await asyncio.to_thread(follower.join, 5)

    async def is_alive(self, instance: Instance) -> bool:
        info = await self.call(self.engine.inspect, instance.data.get("container", ""))
        return info is not None and info.status in ("running", "restarting")

    async def stats(self, instance: Instance) -> dict[str, Any]:
        cid = instance.data.get("container")
        info = await self.call(self.engine.inspect, cid) if cid else None
        if info is None or info.status != "running":
            return {}
        out = await self.call(self.engine.stats, cid)
        out.update(container=info.name, health=await self.call(self.engine.health, cid, info),
                   restarts=info.restart_count)
        return {k: v for k, v in out.items() if v is not None}

    async def adopt_existing(self, instances: list[Instance]) -> list[Instance]:
        """Containers that still run are taken over (their logs followed again); every other container of the same
        deployments (a duplicate, one a crash left behind) is stopped and removed."""
        adopted: list[Instance] = []
        for instance in instances:
            cid = instance.data.get("container")
            info = await self.call(self.engine.inspect, cid, PORT) if cid else None
            ours = info is not None and info.labels.get(f"{LABEL}.platform") == self.platform_id
            if ours and info.status == "running" and info.host_port:
                instance = instance.model_copy(update={
                    "url": f"http://127.0.0.1:{info.host_port}/mcp", "data": {**instance.data, "port": info.host_port}})
                if instance.data.get("log_path"):
                    self._follow(info.id, instance.data["log_path"], since=time.time())
                adopted.append(instance)
        keep = {i.data["container"] for i in adopted}
        for ref_id in {i.deployment.id for i in instances}:
            others = await self.call(self.engine.containers, {f"{LABEL}.platform": self.platform_id,
                                                              f"{LABEL}.deployment-id": ref_id})
            for other in others:
                if other.id not in keep:
                    await self.call(self.engine.stop, other.id, 5)
                    await self.call(self.engine.remove, other.id)
        return adopted

    async def remove(self, artifact: Artifact) -> None:
        """The version's app image; the dependency image is a cache shared with other versions."""
        if artifact.data.get("image"):
            with contextlib.suppress(EngineError):
                await asyncio.to_thread(self.engine.remove_image, artifact.data["image"])

    async def remove_deployment(self, ref: DeploymentRef) -> list[str]:
        """Everything the deployment left in the engine: containers, app images, its data volume."""
        removed = []
        labels = self.labels_for(ref)
        for info in await self.call(self.engine.containers, labels):
            await self.call(self.engine.remove, info.id)
            removed.append(f"container {info.name}")
        for image in await self.call(self.engine.images, labels):
            if f"{LABEL}.version" in image.labels:
                await self.call(self.engine.remove_image, image.id)
                removed.append(f"image {image.tags[0] if image.tags else image.id[:19]}")
        await self.call(self.engine.remove_volume, f"mcpac-data-{ref.id}")
        return removed


def _is_under(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def _copy_tree(source: Path, target: Path) -> None:
    """The app's files for the build context; links are left out (the secrets link among them)."""
    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if os.path.islink(os.path.join(directory, n)) or n == "__pycache__"]

    shutil.copytree(source, target, symlinks=True, ignore=ignore)


def npm_name(package: str) -> str:
    """``@scope/pkg@1.2`` -> ``@scope/pkg``."""
    head, at, _version = package[1:].partition("@")
    return package[0] + head if at else package


def npm_command(script: str, package: str, args: list[str]) -> tuple[str, list[str]]:
    """``npx -y PKG ARGS`` becomes ``node SCRIPT ARGS``: the image has node and the package, not npm."""
    if not script:
        raise BuildError(f"the dependency image does not say how to run {package}", hint="deploy again")
    rest = list(args)
    while rest and rest[0].startswith("-"):
        rest.pop(0)
    if rest and npm_name(rest[0]) == npm_name(package):
        rest.pop(0)
    return "node", [script, *rest]
