"""Built-in builder ``process``: each deployment runs as a plain process on the platform host.

Apps get a virtualenv keyed by the hash of their requirements and shared by every deployment with the same
requirements (``DATA/envs/{hash}``). A requirement on a path inside the app also keys the env by the packaged files
under that path and by the org, so changed code is never served from the cache nor shared across orgs. An app is
served by ``runtime/launcher.py`` running inside that venv; a stdio server is wrapped by
``python -m mcp_agent_cloud.runtime.adapter``. There is no isolation: the code runs as the platform's user with full
access to its files and network.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ctypes
import ctypes.util
import fcntl
import hashlib
import importlib.util
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcp_agent_cloud import runtime
from mcp_agent_cloud.errors import BuildError, ValidationFailed
from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import (
    Artifact,
    Builder,
    BuilderSpec,
    BuildRequest,
    Instance,
    LogSink,
    PluginContext,
)
from mcp_agent_cloud.names import requirements_hash
from mcp_agent_cloud.runtime.ports import free_port

LAUNCHER = Path(runtime.__file__).with_name("launcher.py")
ADAPTER_MODULE = "mcp_agent_cloud.runtime.adapter"
ENV_MARKER = ".mcp-agent-cloud-env.json"  # written last: an env without it is incomplete
MCP_LIBRARIES = frozenset({"mcp", "mcp-agent", "fastmcp"})
DEFAULT_MCP = "mcp>=2.3,<3"
TAIL_LINES = 40
PLATFORM_ENV_PREFIX = "MCP_AGENT_CLOUD_"
PR_SET_PDEATHSIG = 1
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PIP_HINT = (
    "check the requirement names and versions (pip's output is above); a private index goes in the builder's "
    "pip_args, e.g. ['--extra-index-url', 'https://...']"
)
# Options whose value may hold credentials; pip also takes a scheme-less `user:pass@host:port` proxy.
CREDENTIAL_OPTIONS = frozenset({"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--proxy"})
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")
_LEADING_USERINFO = re.compile(r"^[^/?#\s]*@")
# Requirement-line options whose value is a path (or a URL) pip installs from.
PATH_OPTIONS = frozenset({"-e", "--editable", "-f", "--find-links"})
ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz")
OUTSIDE_HINT = "vendor the package into the app directory and require it by a relative path, e.g. ./vendor/mylib"
EnvScope = Literal["shared", "org", "source"]


class ProcessDeployOptions(BaseModel):
    """What a deployment may set itself (``deploy.builder: {name: process, ...}``)."""

    model_config = ConfigDict(extra="forbid")
    stop_timeout: float | None = Field(None, gt=0, description="seconds between SIGTERM and SIGKILL")


class ProcessConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    python: str | None = Field(None, description="interpreter that creates app virtualenvs (default: the platform's)")
    pip_args: list[str] = Field(default_factory=list, description="extra arguments for every `pip install`")
    envs_dir: Path | None = Field(None, description="where the shared virtualenvs live (default DATA/envs)")
    stop_timeout: float = Field(10.0, gt=0, description="seconds between SIGTERM and SIGKILL when stopping")
    host: str = Field("127.0.0.1", description="interface instances listen on")


# -- /proc helpers ---------------------------------------------------------------------------------------------


def proc_stat(pid: int) -> dict[str, Any] | None:
    """Fields of /proc/{pid}/stat, or None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields after the last ')' are fixed.
    fields = raw[raw.rindex(")") + 2 :].split()
    return {"state": fields[0], "ppid": int(fields[1]), "pgrp": int(fields[2]),
            "utime": int(fields[11]), "stime": int(fields[12])}


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    if Path("/proc").is_dir():
        stat = proc_stat(pid)
        return stat is not None and stat["state"] not in ("Z", "X")
    try:
        os.kill(pid, 0)  # no /proc (macOS): ask the kernel
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) is not None:
            children.setdefault(stat["ppid"], []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the platform dies (even by SIGKILL) the app gets SIGTERM.
    # The kernel ties this to the *thread* that forked, so the platform must spawn from a long-lived thread.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


# -- helpers -----------------------------------------------------------------------------------------------------


async def _read_pipe(fd: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                       os.fdopen(fd, "rb", buffering=0))
    return reader


async def pump_app_log(stream: asyncio.StreamReader, name: str, path: Path, max_bytes: int | None) -> None:
    """Copies one output stream of an instance into its app log, each line stamped with the time it came. A line
    left open for half a second is written as it is, so a prompt without a newline still shows up."""
    from mcp_agent_cloud.applog import AppLog, LineSplitter

    log = AppLog.open(path, max_bytes)
    splitter = LineSplitter()
    try:
        while True:
            try:
                chunk = await (asyncio.wait_for(stream.read(65536), 0.5) if splitter.pending
                               else stream.read(65536))
            except asyncio.TimeoutError:
                lines = splitter.flush()
            else:
                if not chunk:
                    break
                lines = splitter.feed(chunk)
            # A failed write (the deployment's directory deleted) must not stop the draining: the app would block.
            with contextlib.suppress(OSError):
                log.write(name, lines)
        with contextlib.suppress(OSError):
            log.write(name, splitter.flush())
    finally:
        log.close()


async def emit(log: LogSink, line: str) -> None:
    result = log(line)
    if inspect.isawaitable(result):
        await result


def requirement_name(line: str) -> str | None:
    """The normalised project name a requirement line installs (``MCP[cli]>=1`` -> ``mcp``), if it names one."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    if not match or line.lstrip().startswith("-"):
        return None
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def app_requirements(requirements: list[str]) -> list[str]:
    """The app's requirements, plus an MCP library for the launcher when the app names none."""
    reqs = [r for r in requirements if r.strip()]
    if not any(requirement_name(r) in MCP_LIBRARIES for r in reqs):
        reqs.append(DEFAULT_MCP)
    return reqs


def redact(text: str) -> str:
    """``text`` with the userinfo of every URL in it (``scheme://user:pass@host``) replaced by ``***``."""
    return _URL_USERINFO.sub(r"\1***@", text)


def redact_command(cmd: Sequence[str]) -> str:
    """``cmd`` as a shell line fit for logs: URL userinfo, and a scheme-less ``user:pass@`` after an index or
    proxy option, become ``***``; hosts stay visible."""
    out: list[str] = []
    for i, arg in enumerate(cmd):
        option, eq, value = arg.partition("=")
        if i and cmd[i - 1] in CREDENTIAL_OPTIONS:
            arg = _LEADING_USERINFO.sub("***@", arg)
        elif eq and option in CREDENTIAL_OPTIONS:
            arg = f"{option}={_LEADING_USERINFO.sub('***@', value)}"
        out.append(redact(arg))
    return shlex.join(out)


def local_path(line: str) -> tuple[str, bool] | None:
    """The path a requirement line installs from and whether it is editable; None for index, VCS and remote URLs.

    Covers ``./lib``, ``/abs``, ``dir/x.whl``, ``x.tar.gz``, ``file:...``, ``name @ file:...``, ``-e PATH`` and
    ``-f PATH``, like pip does."""
    target, editable, is_path = line.strip(), False, False
    if target.startswith("-"):
        match = re.match(r"(--[A-Za-z][A-Za-z-]*|-[A-Za-z])\s*=?\s*(.*)$", target)
        if match is None or match.group(1) not in PATH_OPTIONS:
            return None
        option, target = match.groups()
        editable, is_path = option in ("-e", "--editable"), True
    else:
        target = re.split(r"\s+-", target, maxsplit=1)[0]  # per-requirement options, split off as pip does
    target = target.split(";", 1)[0].strip()  # environment markers
    if match := re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*\s*(?:\[[^\]]*\])?\s*@\s*(\S+)$", target):
        target, is_path = match.group(1), False  # name @ url
    if target.lower().startswith("file:"):
        url = urlsplit(target)
        path = unquote(url.path)
        return (path if url.netloc in ("", "localhost") else f"//{url.netloc}{path}"), editable
    if "://" in target:
        return None
    target = re.sub(r"\[[^\]]*\]$", "", target)  # extras
    if is_path or target.startswith((".", "/")) or "/" in target or target.lower().endswith(ARCHIVE_SUFFIXES):
        return target, editable
    return None


def app_env_key(reqs: list[str], request: BuildRequest) -> tuple[str, EnvScope, list[str]]:
    """The cache key of an app's environment, its scope and the local paths it covers.

    Index requirements share one env across orgs ("shared"). Paths in the app add the sha256 of their packaged
    files and the org ("org"); an editable install points into this version's source dir, which joins the key
    too ("source"). A path outside the app fails the build."""
    digest = requirements_hash(reqs)
    local = [(line, ref) for line in reqs if (ref := local_path(line)) is not None]
    if not local:
        return digest, "shared", []
    files = request.manifest.files if request.manifest else []
    root = Path(request.source_dir or ".").resolve()
    covered: dict[str, str] = {}
    paths: list[str] = []
    editable = False
    for line, (path, is_editable) in local:
        rel = PurePosixPath(os.path.normpath(path))
        if rel.is_absolute() or rel.parts[:1] == ("..",) or not (root / rel).resolve().is_relative_to(root):
            raise BuildError(f"requirement {redact(line)!r} points outside the app directory", hint=OUTSIDE_HINT)
        prefix = "" if rel == PurePosixPath(".") else rel.as_posix()
        found = {f.path: f.sha256 for f in files if not prefix or f.path == prefix or f.path.startswith(prefix + "/")}
        if not found:
            raise BuildError(f"requirement {redact(line)!r}: the package has no files under ./{prefix}",
                             hint="check the path, and that .gitignore or .mcpacignore do not exclude it")
        covered.update(found)
        paths.append(f"./{prefix}")
        editable |= is_editable
    scope: EnvScope = "source" if editable else "org"
    parts = {"requirements": digest, "org": request.deployment.org, "files": sorted(covered.items()),
             "source": str(root) if editable else None}
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest(), scope, paths


def runtime_env_key(key: str, runtime_requirements: list[str]) -> str:
    """``key`` extended by the platform's runtime requirements. A ``name @ file://PATH`` line counts by the file's
    sha256, not its path: the same wheel in another data dir (another platform, a test) shares the env."""
    parts = []
    for line in runtime_requirements:
        name, sep, url = line.partition(" @ ")
        if sep and url.startswith("file:"):
            path = Path(unquote(urlsplit(url).path))
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else url
            parts.append(f"{name.strip()} @ sha256:{digest}")
        else:
            parts.append(line.strip())
    return hashlib.sha256(json.dumps({"app": key, "runtime": parts}).encode()).hexdigest()


def child_env(env: Mapping[str, str], venv: Path | None) -> dict[str, str]:
    """The instance's environment: the platform's minus its own settings, plus the deployment's."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(PLATFORM_ENV_PREFIX)}
    out["PYTHONUNBUFFERED"] = "1"
    if venv is not None:
        out["VIRTUAL_ENV"] = str(venv)
        out["PATH"] = os.pathsep.join(p for p in (str(venv / "bin"), out.get("PATH")) if p)
    out.update(env)
    return out


async def run_logged(cmd: list[str], log: LogSink, *, cwd: Path | None = None) -> tuple[int, list[str]]:
    """Run ``cmd``, streaming each output line to ``log``; return the exit code and the last lines.

    The command line and output are logged with credentials redacted; the environment is never logged."""
    await emit(log, "$ " + redact_command(cmd))
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=cwd, limit=1 << 20,
    )
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = redact(raw.decode(errors="replace").rstrip())
            tail.append(line)
            await emit(log, line)
        return await proc.wait(), list(tail)
    finally:
        if proc.returncode is None:  # cancelled: don't leave pip running
            proc.kill()
            await proc.wait()


def adapter_args(settings: Mapping[str, Any], session_mode: str | None) -> list[str]:
    """The stdio adapter's options (before ``--``) that follow from the platform's gateway settings."""
    args = ["--session-mode", session_mode] if session_mode else []
    idle = settings.get("session_idle_timeout")
    if idle:
        # The gateway reaps idle sessions first; the adapter's own timeout, a minute later, only catches
        # sessions the gateway lost track of (a platform that crashed), so it never cuts a live one.
        args += ["--idle-timeout", str(int(idle) + 60)]
    sessions = settings.get("max_sessions_per_deployment")
    if sessions:
        # The gateway enforces the limit (its REST sessions included); the adapter's own is a backstop with
        # headroom for sessions the gateway already ended whose DELETE has not reached the adapter yet.
        args += ["--max-sessions", str(int(sessions) + max(16, int(sessions) // 10))]
    return args


@dataclasses.dataclass(frozen=True)
class AppBuild:
    """What building an app deployment needs, whichever builder builds it."""

    entrypoint: str
    source: Path
    requirements: list[str]  # the app's, then the runtime's
    key: str  # the environment's cache key
    scope: EnvScope
    paths: list[str]  # local paths the key covers


def resolve_app(request: BuildRequest) -> AppBuild:
    """Check an app build request and work out its requirements and environment key; a BuildError says what is
    wrong with the package."""
    entrypoint = request.entrypoint or (request.manifest.entrypoint if request.manifest else None)
    source = Path(request.source_dir) if request.source_dir else None
    if source is None or not source.is_dir():
        raise BuildError(f"the app source directory {source} does not exist", hint="deploy the package again")
    if not entrypoint or ":" not in entrypoint:
        raise BuildError(f"invalid entrypoint {entrypoint!r}: expected module:attr",
                         hint="set deploy.entrypoint in mcp_agent.config.yaml, e.g. main:app")
    reqs = app_requirements(request.manifest.requirements if request.manifest else [])
    key, scope, paths = app_env_key(reqs, request)
    if request.runtime_requirements:
        # The MCPApp runtime (a wheel on the platform host) and what its executor needs: installed with the app's
        # own requirements, and part of the env key by content, so new runtime code means a new env.
        key = runtime_env_key(key, request.runtime_requirements)
        reqs = [*reqs, *request.runtime_requirements]
    return AppBuild(entrypoint=entrypoint, source=source, requirements=reqs, key=key, scope=scope, paths=paths)


@contextlib.asynccontextmanager
async def file_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive lock shared with other platform processes on the same data dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


# -- the builder ---------------------------------------------------------------------------------------------------


class ProcessBuilder(Builder):
    config: ProcessConfig

    def __init__(self, config: ProcessConfig, ctx: PluginContext) -> None:
        super().__init__(config, ctx)
        self._env_locks: dict[str, asyncio.Lock] = {}
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._pumps: dict[int, list[asyncio.Task]] = {}  # pid -> the tasks copying its stdout and stderr

    @property
    def envs_dir(self) -> Path:
        # Read at use time: the platform may hand the backend its final ctx after constructing it.
        return (self.config.envs_dir or Path(self.ctx.data_dir) / "envs").expanduser().absolute()

    @property
    def python(self) -> str:
        return self.config.python or sys.executable

    def check_options(self, options: Mapping[str, Any]) -> ProcessDeployOptions:
        try:
            return ProcessDeployOptions.model_validate(dict(options or {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValidationFailed(f"invalid process builder option {'.'.join(map(str, err['loc']))}: {err['msg']}",
                                   hint="a deployment may set stop_timeout; the rest is the operator's") from None

    # -- build --------------------------------------------------------------------------------------------------

    async def build(self, request: BuildRequest, log: LogSink) -> Artifact:
        opts = self.check_options(request.options)
        data: dict[str, Any] = {"kind": request.kind, "npm": request.npm, "venv": None,
                                "stop_timeout": opts.stop_timeout}
        if request.kind == "app":
            app = resolve_app(request)
            entrypoint, source, reqs, key, scope, paths = (app.entrypoint, app.source, app.requirements, app.key,
                                                           app.scope, app.paths)
            await emit(log, f"environment key {key[:12]}: " + {
                "shared": "requirements only, shared",
                "org": f"requirements + files under {', '.join(paths)}, org {request.deployment.org} only",
                "source": f"requirements + files under {', '.join(paths)}, this version only (editable)"}[scope])
            # pip resolves relative paths in the requirements against its cwd: the app's source dir.
            venv = await self.ensure_env(reqs, log, cwd=Path(source), key=key)
            data.update(venv=str(venv), entrypoint=entrypoint, source_dir=str(source),
                        requirements_hash=requirements_hash(reqs), env_key=key, env_scope=scope)
        elif request.kind == "stdio":
            if not request.command:
                raise BuildError("a stdio deployment needs a command", hint="pass --command, e.g. --command npx")
            reqs = [r for r in request.pip if r.strip()]
            venv = await self.ensure_env(reqs, log) if reqs else None
            if shutil.which(request.command, path=child_env({}, venv).get("PATH")) is None:
                raise BuildError(
                    f"command {request.command!r} not found" + (f" in {venv}/bin or on PATH" if venv else " on PATH"),
                    hint="install it on the platform host, or name the PyPI package that provides it with --pip",
                )
            data.update(venv=str(venv) if venv else None, command=request.command, args=list(request.args),
                        cwd=str(request.work_dir), requirements_hash=requirements_hash(reqs) if reqs else None,
                        session_mode=request.session_mode)
        else:
            raise BuildError(f"the process builder does not build {request.kind!r} deployments",
                             hint="remote deployments are proxied by the platform and need no builder")
        return Artifact(builder=self.spec_name or "process", deployment=request.deployment, version=request.version,
                        kind=request.kind, data=data)

    async def ensure_env(self, reqs: list[str], log: LogSink, *, cwd: Path | None = None,
                         key: str | None = None) -> Path:
        """The virtualenv for ``reqs`` (cached under ``key``, default their hash): reused when complete, else built
        once however many builds ask at once."""
        digest = key or requirements_hash(reqs)
        target = self.envs_dir / digest
        # The venv is built in place, not in a temp dir renamed after: scripts pip installs embed the absolute
        # interpreter path, so a moved venv would have broken console scripts. The marker is the commit point.
        lock = self._env_locks.setdefault(digest, asyncio.Lock())
        async with lock, file_lock(self.envs_dir / f".{digest}.lock"):
            complete = (target / ENV_MARKER).is_file()
            if complete and (target / "bin" / "python").exists():
                await emit(log, f"environment cached: {digest[:12]}")
                return target
            if target.exists():
                # No marker: a build died half-way. A dangling bin/python: its base interpreter was removed.
                await emit(log, f"removing {'broken' if complete else 'incomplete'} environment {digest[:12]}")
                shutil.rmtree(target)
            started = time.monotonic()
            await emit(log, f"creating environment {digest[:12]} for: {', '.join(map(redact, reqs))}")
            try:
                await self._create_env(target, reqs, log, cwd)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            marker = {"requirements": reqs, "python": self.python, "created_at": time.time()}
            (target / ENV_MARKER).write_text(json.dumps(marker, indent=2))
            await emit(log, f"environment ready: {digest[:12]} ({time.monotonic() - started:.1f}s)")
            return target

    async def _create_env(self, target: Path, reqs: list[str], log: LogSink, cwd: Path | None) -> None:
        # With pip in the platform's environment, a pip-less venv plus `pip --python` is seconds faster.
        platform_pip = importlib.util.find_spec("pip") is not None
        venv_cmd = [self.python, "-m", "venv", *(["--without-pip"] if platform_pip else []), str(target)]
        code, tail = await run_logged(venv_cmd, log)
        if code != 0:
            raise BuildError(f"could not create a virtualenv with {self.python} (exit {code})",
                             hint="the builder's python must be Python 3 with the venv module (e.g. python3-venv)",
                             log_tail="\n".join(tail))
        req_file = target / "requirements.txt"
        req_file.write_text("".join(f"{r}\n" for r in reqs))
        python = target / "bin" / "python"
        pip = [sys.executable, "-m", "pip", "--python", str(python)] if platform_pip else [str(python), "-m", "pip"]
        cmd = [*pip, "install", "--disable-pip-version-check", "--no-input", *self.config.pip_args, "-r", str(req_file)]
        code, tail = await run_logged(cmd, log, cwd=cwd)
        if code != 0:
            raise BuildError(f"pip could not install the requirements (exit {code})", hint=PIP_HINT,
                             log_tail="\n".join(tail))

    # -- run ----------------------------------------------------------------------------------------------------

    def command_for(self, artifact: Artifact, port: int) -> tuple[list[str], Path | None, Path | None]:
        """The instance's argv, working directory and venv."""
        data = artifact.data
        venv = Path(data["venv"]) if data.get("venv") else None
        host = self.config.host
        if artifact.kind == "app":
            assert venv is not None
            cmd = [str(venv / "bin" / "python"), str(LAUNCHER), "--entrypoint", data["entrypoint"],
                   "--host", host, "--port", str(port)]
            return cmd, Path(data["source_dir"]), venv
        cmd = [sys.executable, "-m", ADAPTER_MODULE, "--host", host, "--port", str(port),
               *adapter_args(self.ctx.settings, data.get("session_mode")), "--", data["command"], *data.get("args", [])]
        return cmd, Path(data["cwd"]) if data.get("cwd") else None, venv

    async def start(self, artifact: Artifact, *, env: Mapping[str, str], log_path: Path) -> Instance:
        port = free_port(self.config.host)
        cmd, cwd, venv = self.command_for(artifact, port)
        if cwd is not None:
            cwd.mkdir(parents=True, exist_ok=True)
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()  # it exists from the start, as before: readers need not wait for the first line
        # Pipes, not the file: the platform stamps each line with its time and stream (see pump_app_log). Our own
        # pipes, not asyncio's: its Process.wait() would wait for every descendant holding them to exit too.
        (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=out_w, stderr=err_w, cwd=cwd,
                env=child_env(env or {}, venv),
                # Own process group: stop() signals the whole group, and a Ctrl-C at the platform's terminal
                # reaches the platform only, which then stops apps in order.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        for pid in [p for p, known in self._procs.items() if known.returncode is not None]:
            del self._procs[pid]  # exited on their own and never stopped
        for pid in [p for p, tasks in self._pumps.items() if all(t.done() for t in tasks)]:
            del self._pumps[pid]
        self._procs[proc.pid] = proc
        max_bytes = self.ctx.settings.get("log_max_bytes")
        # Extended, not replaced: a reused pid's old pumps must stay referenced until they finish.
        self._pumps.setdefault(proc.pid, []).extend(
            [asyncio.create_task(pump_app_log(await _read_pipe(fd), name, log_path, max_bytes))
             for fd, name in ((out_r, "stdout"), (err_r, "stderr"))])
        # Listening on every interface still means the platform reaches the instance over loopback.
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.config.host, self.config.host)
        url_host = f"[{host}]" if ":" in host else host
        return Instance(builder=self.spec_name or "process", deployment=artifact.deployment,
                        version=artifact.version, url=f"http://{url_host}:{port}/mcp",
                        data={"pid": proc.pid, "pgid": proc.pid, "port": port, "cmd": cmd,
                              "stop_timeout": artifact.data.get("stop_timeout")})

    def _identifies(self, instance: Instance) -> bool:
        """True when the instance's pid is still the process we (or an earlier platform) started."""
        pid, port = instance.data.get("pid"), instance.data.get("port")
        if not isinstance(pid, int) or not pid_alive(pid):
            return False
        if pid in self._procs:
            return True
        argv = proc_cmdline(pid)
        ours = any(a == ADAPTER_MODULE or a.endswith("launcher.py") for a in argv)
        return ours and "--port" in argv[:-1] and argv[argv.index("--port") + 1] == str(port)

    async def wait(self, instance: Instance) -> int:
        pid = instance.data["pid"]
        proc = self._procs.get(pid)
        if proc is not None:
            code = await proc.wait()
            await self._drained(pid)
            return code
        while pid_alive(pid):  # adopted: not our child, so nothing to wait() on
            await asyncio.sleep(0.5)
        return -1

    async def stop(self, instance: Instance, *, timeout: float | None = None) -> None:
        timeout = timeout if timeout is not None else instance.data.get("stop_timeout") or self.config.stop_timeout
        pid = instance.data.get("pid")
        pgid = instance.data.get("pgid", pid)
        proc = self._procs.get(pid) if isinstance(pid, int) else None
        if proc is None and not self._identifies(instance):
            return  # gone already, or the pid now belongs to someone else
        # Noted first: the adapter's stdio child runs in a session of its own, out of reach of killpg.
        family = descendants(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (proc.returncode is None if proc else pid_alive(pid)):
            await asyncio.sleep(0.05)
        # Also takes down whatever the app left behind, in its group or not.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        for child in family:
            if pid_alive(child):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child, signal.SIGKILL)
        if proc is not None:
            await proc.wait()
            await self._drained(pid)
            self._procs.pop(pid, None)

    async def _drained(self, pid: int, timeout: float = 2.0) -> None:
        """Until the exited process's last output is in its log (what a failed deploy shows). Bounded: a
        descendant that outlived it may hold the pipes open; its output keeps reaching the log."""
        tasks = self._pumps.get(pid)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def is_alive(self, instance: Instance) -> bool:
        proc = self._procs.get(instance.data.get("pid"))
        if proc is not None:
            return proc.returncode is None
        return self._identifies(instance)

    async def stats(self, instance: Instance) -> dict[str, Any]:
        pid = instance.data.get("pid")
        if not isinstance(pid, int) or not await self.is_alive(instance):
            return {}
        pids = [pid, *descendants(pid)]  # the adapter's stdio child runs in a session of its own
        cpu, rss = 0.0, 0
        for p in pids:
            if (stat := proc_stat(p)) is not None:
                cpu += (stat["utime"] + stat["stime"]) / CLK_TCK
                rss += _rss_bytes(p)
        return {"pid": pid, "processes": len(pids), "rss_bytes": rss, "cpu_seconds": round(cpu, 3)}

    async def adopt_existing(self, instances: list[Instance]) -> list[Instance]:
        # Unidentifiable pids are left alone: after a reboot they may belong to anyone.
        return [i for i in instances if self._identifies(i)]

    async def remove(self, artifact: Artifact) -> None:
        """Removes an env bound to the artifact's source dir (editable local requirements); others are a cache
        shared by every deployment with the same requirements (and local files)."""
        venv = artifact.data.get("venv")
        if artifact.data.get("env_scope") == "source" and venv:
            async with file_lock(Path(venv).parent / f".{Path(venv).name}.lock"):
                shutil.rmtree(venv, ignore_errors=True)


@hookimpl
def mcp_agent_cloud_builders():
    yield BuilderSpec(
        name="process",
        backend=ProcessBuilder,
        config_model=ProcessConfig,
        description="runs each deployment as a local process in a cached virtualenv; NO isolation: app code runs "
        "as the platform's user with its files and network",
    )
