"""The ``process`` builder end to end: real virtualenvs from PyPI, real processes, real MCP clients."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client
from pydantic import ValidationError

from mcp_agent_cloud.errors import BuildError
from mcp_agent_cloud.hookspecs.types import (
    Artifact,
    BuildRequest,
    DeploymentRef,
    FileEntry,
    Instance,
    Manifest,
    PackageHints,
    PluginContext,
)
from mcp_agent_cloud.names import requirements_hash
from mcp_agent_cloud.plugins import process
from mcp_agent_cloud.plugins.process import ENV_MARKER, ProcessBuilder, ProcessConfig, descendants, pid_alive
from mcp_agent_cloud.plugins.tarball import TarballConfig, TarballPackager
from mcp_agent_cloud.runtime.ports import wait_port

HELLO = textwrap.dedent(
    """
    import importlib.util
    import os

    from mcp.server.mcpserver import MCPServer

    mcp = MCPServer("hello")

    @mcp.tool()
    def greet(name: str) -> str:
        return f"hello {name}"

    @mcp.tool()
    def env(name: str) -> str:
        return os.environ.get(name, "<unset>")

    @mcp.tool()
    def importable(module: str) -> bool:
        return importlib.util.find_spec(module) is not None
    """
)

MCP_1X = textwrap.dedent(
    """
    from mcp.server.fastmcp import FastMCP

    server = FastMCP("old")

    @server.tool()
    def add(a: int, b: int) -> int:
        return a + b
    """
)

DEFAULT_HASH = requirements_hash([process.DEFAULT_MCP])


class Logs(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    def text(self) -> str:
        return "\n".join(self)


class AsyncLogs(Logs):
    async def __call__(self, line: str) -> None:  # the platform's sink may be async
        await anyio.sleep(0)
        self.append(line)


@pytest.fixture(scope="module")
def envs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("envs")


def make_builder(envs_dir: Path, data_dir: Path, **options) -> ProcessBuilder:
    return ProcessBuilder(ProcessConfig(envs_dir=envs_dir, stop_timeout=5, **options), PluginContext(data_dir=data_dir))


def app_request(work: Path, source: str, requirements: list[str] | None = None, entrypoint: str = "main:mcp"):
    (work / "app").mkdir(parents=True, exist_ok=True)
    (work / "app" / "main.py").write_text(source)
    manifest = Manifest(format="tarball", name="hello", entrypoint=entrypoint, requirements=requirements or [])
    return BuildRequest(deployment=DeploymentRef(id="d-hello", org="acme", name="hello"), version=1, kind="app",
                        work_dir=work, source_dir=work / "app", manifest=manifest)


def stdio_request(work: Path, command: str, pip: list[str]) -> BuildRequest:
    return BuildRequest(deployment=DeploymentRef(id="d-time", org="acme", name="time"), version=1, kind="stdio",
                        work_dir=work, command=command, pip=pip)


@pytest.fixture(scope="module")
def hello(envs_dir: Path, tmp_path_factory) -> tuple[BuildRequest, Artifact, Logs]:
    """The hello app, built once for the module (the first build creates the shared environment)."""
    work = tmp_path_factory.mktemp("hello")
    request = app_request(work, HELLO)
    logs = Logs()

    async def build() -> Artifact:
        return await make_builder(envs_dir, work).build(request, logs)

    return request, anyio.run(build), logs


async def started(builder: ProcessBuilder, artifact: Artifact, log_path: Path, env=None) -> Instance:
    instance = await builder.start(artifact, env=env or {}, log_path=log_path)
    if not await wait_port("127.0.0.1", instance.data["port"], 60):
        await builder.stop(instance)
        pytest.fail("instance did not listen:\n" + log_path.read_text())
    return instance


def gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- builds ------------------------------------------------------------------------------------------------------


@pytest.mark.network
def test_first_build_creates_the_environment_and_the_second_reuses_it(hello, envs_dir: Path, tmp_path: Path) -> None:
    request, artifact, first = hello
    assert f"creating environment {DEFAULT_HASH[:12]}" in first.text()
    assert any("Successfully installed" in line for line in first), "pip output is streamed to the log"
    assert artifact.data["venv"] == str(envs_dir / DEFAULT_HASH)
    assert (envs_dir / DEFAULT_HASH / ENV_MARKER).is_file()
    assert artifact.data["entrypoint"] == "main:mcp" and artifact.kind == "app"

    again = Logs()
    second = anyio.run(make_builder(envs_dir, tmp_path).build, request, again)
    assert f"environment cached: {DEFAULT_HASH[:12]}" in again
    assert not any("pip" in line for line in again)
    assert second.data["venv"] == artifact.data["venv"]


def test_incomplete_environments_are_rebuilt(tmp_path: Path) -> None:
    reqs = ["--no-index"]  # installs nothing: no registry needed
    half_built = tmp_path / requirements_hash(reqs)
    (half_built / "bin").mkdir(parents=True)
    (half_built / "leftover").write_text("from a build that died")
    logs = Logs()
    env = anyio.run(make_builder(tmp_path, tmp_path).ensure_env, reqs, logs)
    assert env == half_built and (env / ENV_MARKER).is_file() and not (env / "leftover").exists()
    assert f"removing incomplete environment {half_built.name[:12]}" in logs
    assert (env / "bin" / "python").exists()


@pytest.mark.network
def test_concurrent_builds_of_one_environment_build_it_once(envs_dir: Path, tmp_path: Path) -> None:
    reqs = ["tzdata"]  # small: this is about the locking
    logs = [Logs(), AsyncLogs()]

    async def main() -> list[Path]:
        builder = make_builder(envs_dir, tmp_path)
        out: list[Path] = []

        async def build(i: int) -> None:
            out.append(await builder.ensure_env(reqs, logs[i]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(build, 0)
            tg.start_soon(build, 1)
        return out

    envs = anyio.run(main)
    texts = [log.text() for log in logs]
    assert sum("creating environment" in t for t in texts) == 1
    assert sum("environment cached" in t for t in texts) == 1
    assert envs[0] == envs[1] == envs_dir / requirements_hash(reqs)


@pytest.mark.network
def test_pip_failure_raises_build_error_with_the_log_tail(envs_dir: Path, tmp_path: Path) -> None:
    missing = "this-package-does-not-exist-mcpac==0.0.0"
    request = stdio_request(tmp_path, "whatever", [missing])
    with pytest.raises(BuildError) as caught:
        anyio.run(make_builder(envs_dir, tmp_path).build, request, AsyncLogs())
    assert "this-package-does-not-exist-mcpac" in caught.value.log_tail
    assert caught.value.hint
    assert not (envs_dir / requirements_hash([missing])).exists(), "a failed environment is not left behind"


def test_command_lines_are_logged_without_credentials() -> None:
    cmd = ["pip", "install", "--extra-index-url", "https://deploybot:s3cr3t@pkgs.example:8443/simple",
           "--index-url=https://tok3n@idx.example/simple", "-ihttps://u:p%40ss@short.example",
           "--proxy", "me:pw@proxy:3128",
           "--proxy=me:pw@proxy2:3128", "git+https://ghp_secret@github.com/a/b", "-i", "https://public.example/simple",
           "pkg @ https://files.example/p.whl", "name@example.com"]
    line = process.redact_command(cmd)
    for secret in ("deploybot", "s3cr3t", "tok3n", "p%40ss", "me:pw", "ghp_secret"):
        assert secret not in line
    for kept in ("https://***@pkgs.example:8443/simple", "--index-url=https://***@idx.example/simple",
                 "-ihttps://***@short.example", "***@proxy:3128", "--proxy=***@proxy2:3128",
                 "git+https://***@github.com/a/b", "https://public.example/simple", "pkg @ https://files.example/p.whl",
                 "name@example.com"):
        assert kept in line, kept
    assert process.redact("Looking in indexes: https://a:b@h/simple, https://h2/x") == (
        "Looking in indexes: https://***@h/simple, https://h2/x")


@pytest.mark.network
def test_pip_args_credentials_never_reach_the_logs(tmp_path: Path) -> None:
    index = "https://deploybot:s3cr3t-token@127.0.0.1:9/simple"
    builder = make_builder(tmp_path / "envs", tmp_path, pip_args=["--retries", "0", "--timeout", "2",
                                                                  "--extra-index-url", index])
    logs = Logs()
    try:  # nothing listens on port 9: pip warns and takes tzdata from PyPI
        output = anyio.run(builder.build, stdio_request(tmp_path / "work", "sh", ["tzdata"]), logs).model_dump_json()
    except BuildError as exc:
        output = f"{exc} {exc.hint} {exc.log_tail}"
    assert any(line.startswith("$ ") and "https://***@127.0.0.1:9/simple" in line for line in logs), logs.text()
    assert not [line for line in logs if "s3cr3t-token" in line]
    assert "s3cr3t-token" not in output


def test_requirements_on_local_paths_are_recognised() -> None:
    local = {
        "./mylib": ("./mylib", False), "-e ./mylib": ("./mylib", True), "--editable=./mylib": ("./mylib", True),
        "-e .": (".", True), "./mylib[extra] ; python_version > '3'": ("./mylib", False),
        "file:///srv/x": ("/srv/x", False), "mylib @ file:///srv/x.whl": ("/srv/x.whl", False),
        "mylib[a] @ file:./mylib": ("./mylib", False), "mylib-1.0.tar.gz": ("mylib-1.0.tar.gz", False),
        "dist/mylib-1.0-py3-none-any.whl": ("dist/mylib-1.0-py3-none-any.whl", False),
        "-f ./wheels": ("./wheels", False), "../outside": ("../outside", False), "/abs/lib": ("/abs/lib", False),
    }
    for line, expected in local.items():
        assert process.local_path(line) == expected, line
    for line in ("requests>=2", "mcp>=2.3,<3", "Django>=4; sys_platform == 'linux'", "x @ https://h/p.whl",
                 "git+https://github.com/a/b", "-e git+https://github.com/a/b#egg=b", "--index-url https://x/simple",
                 "-f https://h/links", "pkg==1 --hash=sha256:ab"):
        assert process.local_path(line) is None, line


def keyed_request(reqs: list[str], files: dict[str, str], org: str = "acme", source: str = "/data/app"):
    manifest = Manifest(format="tarball", name="a", requirements=reqs,
                        files=[FileEntry(path=p, sha256=h, size=1) for p, h in files.items()])
    return BuildRequest(deployment=DeploymentRef(id="d", org=org, name="a"), version=1, kind="app",
                        work_dir=Path("/data"), source_dir=Path(source), manifest=manifest)


def test_env_key_covers_local_files_and_org_but_not_for_index_requirements() -> None:
    files = {"main.py": "m1", "mylib/pyproject.toml": "p1", "mylib/mylib.py": "v1", "mylibextra/x.py": "x"}

    def key(reqs, files=files, **kw):
        return process.app_env_key(reqs, keyed_request(reqs, files, **kw))

    assert key(["requests"]) == (requirements_hash(["requests"]), "shared", [])
    assert key(["requests"], org="other")[0] == requirements_hash(["requests"]), "index envs stay shared"

    base, scope, paths = key(["./mylib", "requests"])
    assert scope == "org" and paths == ["./mylib"] and base != requirements_hash(["./mylib", "requests"])
    assert key(["./mylib", "requests"], {**files, "mylib/mylib.py": "v2"})[0] != base
    assert key(["./mylib", "requests"], org="other")[0] != base
    # Files outside the path, and where this version was unpacked, do not matter: the install is a copy.
    assert key(["./mylib", "requests"], {**files, "main.py": "m2", "mylibextra/x.py": "y"}, source="/v2")[0] == base
    assert key(["mylib @ file:./mylib", "requests"])[0] != base, "the requirement lines are part of the key"

    editable, scope, _ = key(["-e ./mylib", "requests"])
    assert scope == "source" and key(["-e ./mylib", "requests"], source="/v2")[0] != editable

    for outside in ("../outside", "./mylib/../../x", "/srv/lib", "file:///srv/lib", "mylib @ file:///srv/lib.whl",
                    "-e ../x", "mylib @ file://user:pw@host/share/lib"):
        with pytest.raises(BuildError, match="outside the app directory") as caught:
            key([outside])
        assert "vendor" in caught.value.hint and "pw@" not in str(caught.value)
    with pytest.raises(BuildError, match="no files under ./missing"):
        key(["./missing"])


def test_a_requirement_outside_the_app_fails_the_build(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "pyproject.toml").write_text("[project]\nname = 'outside'\n")
    request = app_request(tmp_path / "work", HELLO, ["../../outside"])
    with pytest.raises(BuildError, match="outside the app directory"):
        anyio.run(make_builder(tmp_path / "envs", tmp_path).build, request, Logs())
    assert not (tmp_path / "envs").exists() or not any((tmp_path / "envs").iterdir())


def test_remove_deletes_only_envs_bound_to_one_source_dir(tmp_path: Path) -> None:
    ref = DeploymentRef(id="d", org="acme", name="a")
    for scope, survives in (("source", False), ("org", True), ("shared", True), (None, True)):
        venv = tmp_path / f"env-{scope}"
        (venv / "bin").mkdir(parents=True)
        artifact = Artifact(builder="process", deployment=ref, version=1, kind="app",
                            data={"venv": str(venv), "env_scope": scope})
        anyio.run(make_builder(tmp_path, tmp_path).remove, artifact)
        assert venv.exists() == survives, scope


def test_remote_deployments_are_not_built(tmp_path: Path) -> None:
    request = BuildRequest(deployment=DeploymentRef(id="d", org="acme", name="r"), version=1, kind="remote",
                           work_dir=tmp_path, url="https://example.com/mcp")
    with pytest.raises(BuildError, match="remote"):
        anyio.run(make_builder(tmp_path, tmp_path).build, request, Logs())


def test_stdio_command_must_exist(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="no-such-command-mcpac"):
        anyio.run(make_builder(tmp_path, tmp_path).build, stdio_request(tmp_path, "no-such-command-mcpac", []), Logs())


def test_app_requirements_add_an_mcp_library_only_when_missing() -> None:
    assert process.app_requirements(["requests"]) == ["requests", process.DEFAULT_MCP]
    assert process.app_requirements(["MCP[cli]>=1.9"]) == ["MCP[cli]>=1.9"]
    assert process.app_requirements(["mcp_agent==0.1"]) == ["mcp_agent==0.1"]
    assert process.app_requirements(["fastmcp>=2", ""]) == ["fastmcp>=2"]
    assert process.app_requirements(["--index-url https://mcp.example"]) == [
        "--index-url https://mcp.example", process.DEFAULT_MCP]


def test_spec_and_config() -> None:
    (spec,) = list(process.mcp_agent_cloud_builders())
    assert spec.name == "process" and spec.backend is ProcessBuilder and spec.config_model is ProcessConfig
    assert "isolation" in spec.description.lower()
    with pytest.raises(ValidationError):
        ProcessConfig(unknown=1)
    builder = ProcessBuilder(ProcessConfig(), PluginContext(data_dir=Path("/data")))
    assert builder.envs_dir == Path("/data/envs")


# -- running ------------------------------------------------------------------------------------------------------


@pytest.mark.network
def test_app_runs_in_its_own_env_and_stops_cleanly(hello, envs_dir: Path, tmp_path: Path, monkeypatch) -> None:
    _, artifact, _ = hello
    monkeypatch.setenv("MCP_AGENT_CLOUD_SECRET_KEY", "platform-only")
    log_path = tmp_path / "logs" / "hello.log"

    async def main() -> None:
        builder = make_builder(envs_dir, tmp_path)
        await builder.setup()  # the backend lifecycle hook
        instance = await started(builder, artifact, log_path, env={"GREETING": "hi"})
        pid = instance.data["pid"]
        assert instance.url == f"http://127.0.0.1:{instance.data['port']}/mcp"
        try:
            async with Client(instance.url) as client:
                assert (await client.call_tool("greet", {"name": "ada"})).content[0].text == "hello ada"
                assert (await client.call_tool("env", {"name": "GREETING"})).content[0].text == "hi"
                leaked = await client.call_tool("env", {"name": "MCP_AGENT_CLOUD_SECRET_KEY"})
                assert leaked.content[0].text == "<unset>"
                assert (await client.call_tool("env", {"name": "PYTHONUNBUFFERED"})).content[0].text == "1"
                mine = await client.call_tool("importable", {"module": "mcp_agent_cloud"})
                assert mine.structured_content == {"result": False}, "the app env must not see the platform"
            assert await builder.is_alive(instance)
            stats = await builder.stats(instance)
            assert stats["rss_bytes"] > 10_000_000 and stats["cpu_seconds"] > 0
        finally:
            await builder.stop(instance)
        assert not pid_alive(pid)
        assert not await builder.is_alive(instance)
        assert await builder.stats(instance) == {}
        await builder.stop(instance)  # idempotent
        assert await builder.wait(instance) in (0, -1)

    anyio.run(main)
    assert "launcher: serving main:mcp" in log_path.read_text()


@pytest.mark.network
def test_wait_returns_when_the_app_is_killed(hello, envs_dir: Path, tmp_path: Path) -> None:
    _, artifact, _ = hello

    async def main() -> int:
        builder = make_builder(envs_dir, tmp_path)
        instance = await started(builder, artifact, tmp_path / "app.log")
        os.kill(instance.data["pid"], signal.SIGKILL)
        with anyio.fail_after(10):
            code = await builder.wait(instance)
        await builder.stop(instance)
        return code

    assert anyio.run(main) == -signal.SIGKILL


PLATFORM = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import anyio
    from mcp_agent_cloud.hookspecs.types import Artifact, PluginContext
    from mcp_agent_cloud.plugins.process import ProcessBuilder, ProcessConfig

    async def main():
        builder = ProcessBuilder(ProcessConfig(), PluginContext(data_dir=Path(sys.argv[2])))
        artifact = Artifact.model_validate_json(Path(sys.argv[1]).read_text())
        instance = await builder.start(artifact, env={}, log_path=Path(sys.argv[2]) / "app.log")
        print(instance.data["pid"], flush=True)
        await anyio.sleep_forever()

    anyio.run(main)
    """
)


@pytest.mark.network
def test_apps_die_with_a_killed_platform(hello, tmp_path: Path) -> None:
    _, artifact, _ = hello
    (tmp_path / "artifact.json").write_text(artifact.model_dump_json())
    platform = subprocess.Popen([sys.executable, "-c", PLATFORM, str(tmp_path / "artifact.json"), str(tmp_path)],
                                stdout=subprocess.PIPE, text=True)
    try:
        app_pid = int(platform.stdout.readline())
        deadline = time.monotonic() + 60
        while "serving" not in (tmp_path / "app.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid_alive(app_pid)
    finally:
        platform.kill()  # SIGKILL: the platform gets no chance to stop anything
        platform.wait()
    survived = not gone_within([app_pid], 10)
    if survived:
        os.killpg(app_pid, signal.SIGKILL)
    assert not survived, "the app outlived a SIGKILLed platform"


@pytest.mark.network
def test_a_restarted_platform_adopts_only_what_it_can_identify(hello, envs_dir: Path, tmp_path: Path) -> None:
    _, artifact, _ = hello

    async def main() -> None:
        instance = await started(make_builder(envs_dir, tmp_path), artifact, tmp_path / "app.log")
        pid = instance.data["pid"]
        later = make_builder(envs_dir, tmp_path)  # knows nothing but the recorded instances
        wrong_port = instance.model_copy(update={"data": {**instance.data, "port": instance.data["port"] + 1}})
        stranger = instance.model_copy(update={"data": {**instance.data, "pid": os.getpid(), "pgid": os.getpid()}})
        try:
            adopted = await later.adopt_existing([instance, wrong_port, stranger])
            assert adopted == [instance]
            assert await later.is_alive(instance) and not await later.is_alive(stranger)
            assert (await later.stats(instance))["pid"] == pid
            await later.stop(stranger)  # not ours: must not be touched (it is this test process)
            async with anyio.create_task_group() as tg:
                codes: list[int] = []

                async def waiter() -> None:
                    codes.append(await later.wait(instance))

                tg.start_soon(waiter)
                await anyio.sleep(0.3)
                await later.stop(instance)
            assert codes == [-1]
        finally:
            await later.stop(instance)
        assert not pid_alive(pid)

    anyio.run(main)


@pytest.mark.network
def test_stdio_server_from_pypi_through_the_adapter(envs_dir: Path, tmp_path: Path) -> None:
    logs = Logs()

    async def main() -> None:
        builder = make_builder(envs_dir, tmp_path)
        artifact = await builder.build(stdio_request(tmp_path / "work", "mcp-server-time", ["mcp-server-time"]), logs)
        assert artifact.data["command"] == "mcp-server-time" and artifact.data["venv"]
        instance = await started(builder, artifact, tmp_path / "time.log")
        pids: list[int] = []
        try:
            async with Client(instance.url) as client:
                result = await client.call_tool("get_current_time", {"timezone": "UTC"})
                assert not result.is_error and result.structured_content["timezone"] == "UTC"
                # Isolated mode: the session's child exists while the session does; stop() must take it too.
                pids = [instance.data["pid"], *descendants(instance.data["pid"])]
                assert len(pids) >= 2, "the adapter and the session's stdio child"
                await builder.stop(instance)
        finally:
            await builder.stop(instance)
        assert gone_within(pids, 5), "no process may outlive stop()"

    anyio.run(main)
    assert "serving ['mcp-server-time']" in (tmp_path / "time.log").read_text()


STUBBORN = textwrap.dedent(
    """
    from mcp.server.mcpserver import MCPServer

    mcp = MCPServer("stubborn")

    @mcp.tool()
    def ping() -> str:
        return "pong"

    mcp.run()
    """
)


def test_stop_leaves_no_process_even_when_the_stdio_server_ignores_sigterm(tmp_path: Path) -> None:
    # No pip requirements: the command comes from PATH, so this needs no registry.
    (tmp_path / "server.py").write_text(STUBBORN)
    stubborn = f"trap '' TERM; {shlex.quote(sys.executable)} {shlex.quote(str(tmp_path / 'server.py'))}; sleep 60"

    async def main() -> None:
        builder = make_builder(tmp_path / "envs", tmp_path)
        request = stdio_request(tmp_path / "work", "sh", [])
        request.args = ["-c", stubborn]
        artifact = await builder.build(request, Logs())
        assert artifact.data["venv"] is None
        instance = await started(builder, artifact, tmp_path / "stubborn.log")
        family = [instance.data["pid"], *descendants(instance.data["pid"])]
        async with Client(instance.url) as client:
            assert (await client.call_tool("ping", {})).content[0].text == "pong"
        # Shorter than the adapter's own bounded shutdown of a child that ignores EOF and SIGTERM.
        await builder.stop(instance, timeout=0.5)
        assert gone_within(family, 5), [p for p in family if pid_alive(p)]

    anyio.run(main)


@pytest.mark.network
def test_an_mcp_1x_fastmcp_app(envs_dir: Path, tmp_path: Path) -> None:
    async def main() -> None:
        builder = make_builder(envs_dir, tmp_path)
        request = app_request(tmp_path / "old", MCP_1X, ["mcp>=1.10,<2"], entrypoint="main:server")
        artifact = await builder.build(request, Logs())
        instance = await started(builder, artifact, tmp_path / "old.log")
        try:
            async with Client(instance.url) as client:
                assert (await client.call_tool("add", {"a": 2, "b": 2})).content[0].text == "4"
        finally:
            await builder.stop(instance)

    anyio.run(main)


MYLIB_PYPROJECT = textwrap.dedent(
    """
    [build-system]
    requires = ["setuptools>=61"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "mylib"
    version = "0.1"

    [tool.setuptools]
    py-modules = ["mylib"]
    """
)

USES_MYLIB = textwrap.dedent(
    """
    import mylib
    from mcp.server.mcpserver import MCPServer

    mcp = MCPServer("uses-mylib")

    @mcp.tool()
    def value() -> str:
        return mylib.VALUE
    """
)


@pytest.mark.network
def test_a_local_package_changed_between_versions_is_reinstalled(envs_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "mylib").mkdir(parents=True)
    (src / "mylib" / "pyproject.toml").write_text(MYLIB_PYPROJECT)
    (src / "main.py").write_text(USES_MYLIB)
    hints = PackageHints(name="uses-mylib", entrypoint="main:mcp", requirements=["./mylib", "mcp>=2.3,<3"])
    packager = TarballPackager(TarballConfig(), PluginContext(data_dir=tmp_path))

    async def deploy(version: int, value: str) -> tuple[Artifact, Logs, str]:
        (src / "mylib" / "mylib.py").write_text(f"VALUE = {value!r}\n")
        package = await packager.package(src, hints, tmp_path / "packages")
        work = tmp_path / f"v{version}"
        manifest = await packager.unpack(package.path, work / "app")
        request = BuildRequest(deployment=DeploymentRef(id="d-mylib", org="acme", name="uses-mylib"),
                               version=version, kind="app", work_dir=work, source_dir=work / "app", manifest=manifest)
        builder, logs = make_builder(envs_dir, tmp_path), Logs()
        artifact = await builder.build(request, logs)
        instance = await started(builder, artifact, work / "app.log")
        try:
            async with Client(instance.url) as client:
                return artifact, logs, (await client.call_tool("value", {})).content[0].text
        finally:
            await builder.stop(instance)

    async def main() -> None:
        first, logs, value = await deploy(1, "v1")
        assert value == "v1" and first.data["env_scope"] == "org"
        assert f"environment key {first.data['env_key'][:12]}" in logs.text() and "org acme only" in logs.text()
        second, logs, value = await deploy(2, "v2")
        assert not any("environment cached" in line for line in logs), logs.text()
        assert value == "v2", "the changed package must not come from the cached environment"
        assert second.data["venv"] != first.data["venv"]
        _, logs, value = await deploy(3, "v2")  # unchanged files: the cache still serves
        assert f"environment cached: {second.data['env_key'][:12]}" in logs and value == "v2"

    anyio.run(main)
