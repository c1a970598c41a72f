"""The container builders' engine-independent parts, without an engine: option checks, names, parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_agent_cloud.errors import BuildError, ValidationFailed
from mcp_agent_cloud.hookspecs.types import PluginContext
from mcp_agent_cloud.plugins.container import npm_command, npm_name, parse_size
from mcp_agent_cloud.plugins.docker_builder import DockerBuilder, DockerConfig, build_stream, stats_from_api
from mcp_agent_cloud.plugins.engine import EngineBuildError, EngineError
from mcp_agent_cloud.plugins.process import ProcessBuilder, ProcessConfig


def builder(tmp_path: Path, **config) -> DockerBuilder:
    b = DockerBuilder(DockerConfig(**config), PluginContext(data_dir=tmp_path))
    b.spec_name = "docker"
    return b


def test_sizes():
    assert parse_size("512m") == 512 * 1024 * 1024
    assert parse_size("1g") == 1024 ** 3 and parse_size("1GiB") == 1024 ** 3 and parse_size(4096) == 4096
    assert parse_size("1.5k") == 1536
    with pytest.raises(ValueError):
        parse_size("lots")


def test_deploy_options_only_tighten(tmp_path):
    allowed = tmp_path / "shared"
    (allowed / "sub").mkdir(parents=True)
    b = builder(tmp_path, limits={"memory": "1g", "cpus": 2, "pids": 100},
                filesystem={"allowed_paths": [{"path": str(allowed), "mode": "ro"}]})
    opts = b.check_options({"limits": {"memory": "256m", "cpus": 0.5},
                            "mounts": [{"source": str(allowed / "sub"), "target": "/in"}]})
    assert opts.limits == {"memory": "256m", "cpus": 0.5, "pids": 100}  # unset ones stay the operator's
    assert b.check_options({}).limits == {"memory": "1g", "cpus": 2.0, "pids": 100}
    for options, message in (
        ({"limits": {"memory": "2g"}}, "above the operator's limit"),
        ({"limits": {"cpus": 4}}, "cpus"),
        ({"limits": {"pids": 1000}}, "pids"),
        ({"limits": {"memory": "1k"}}, "below 6m"),
        ({"hardening": {"user": "0:0"}}, "hardening"),
        ({"base_image": "evil"}, "base_image"),
        ({"mounts": [{"source": str(allowed), "target": "/in", "mode": "rw"}]}, "read-only"),
        ({"mounts": [{"source": str(tmp_path), "target": "/in"}]}, "allowed paths"),
        ({"mounts": [{"source": str(allowed / ".." / "x"), "target": "/in"}]}, "allowed paths"),
        ({"mounts": [{"source": str(allowed), "target": "relative"}]}, "absolute"),
        ({"mounts": [{"source": str(allowed), "target": "/opt/app"}]}, "reserved"),
    ):
        with pytest.raises(ValidationFailed) as info:
            b.check_options(options)
        assert message in info.value.message, (options, info.value.message)


def test_a_symlink_does_not_escape_the_allowlist(tmp_path):
    allowed = tmp_path / "shared"
    allowed.mkdir()
    (allowed / "escape").symlink_to(tmp_path)
    b = builder(tmp_path, filesystem={"allowed_paths": [{"path": str(allowed)}]})
    with pytest.raises(ValidationFailed):
        b.check_options({"mounts": [{"source": str(allowed / "escape"), "target": "/in"}]})


def test_process_builder_takes_only_stop_timeout(tmp_path):
    b = ProcessBuilder(ProcessConfig(), PluginContext(data_dir=tmp_path))
    b.spec_name = "process"
    assert b.check_options({"stop_timeout": 3}).stop_timeout == 3
    with pytest.raises(ValidationFailed) as info:
        b.check_options({"envs_dir": "/elsewhere"})  # the operator's, not the deployer's
    assert "envs_dir" in info.value.message


def test_npm_commands():
    assert npm_name("@scope/pkg@1.2.3") == "@scope/pkg" and npm_name("@scope/pkg") == "@scope/pkg"
    assert npm_name("pkg@2") == "pkg" and npm_name("pkg") == "pkg"
    script = "/opt/node/node_modules/@m/server-everything/dist/index.js"
    assert npm_command(script, "@m/server-everything", ["-y", "@m/server-everything", "stdio"]) == (
        "node", [script, "stdio"])
    assert npm_command(script, "@m/server-everything@1", ["--yes", "@m/server-everything@1"]) == ("node", [script])
    with pytest.raises(BuildError):
        npm_command("", "pkg", [])


def test_build_stream_names_the_failing_step():
    lines: list[str] = []
    chunks = [{"stream": "Step 1/3 : FROM base\n"}, {"stream": " ---> abc\n"},
              {"stream": "Step 2/3 : RUN pip install x\n"}, {"stream": "Collecting x\nERROR: no x\n"},
              {"errorDetail": {"message": "The command '/bin/sh -c pip install x' returned a non-zero code: 1"},
               "error": "..."}]
    with pytest.raises(EngineBuildError) as info:
        build_stream(iter(chunks), lines.append)
    assert info.value.step == "Step 2/3 : RUN pip install x"
    assert info.value.tail[:2] == ["Collecting x", "ERROR: no x"]
    assert "Collecting x" in lines and lines[-1].startswith("The command")
    ok = [{"stream": "Step 1/1 : FROM base\n"}, {"stream": "Successfully built 0123abcd\n"}]
    assert build_stream(iter(ok), lines.append) == "0123abcd"
    assert build_stream(iter([{"aux": {"ID": "sha256:ff"}}]), lines.append) == "sha256:ff"


def test_stats_fields():
    raw = {"cpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}},
           "memory_stats": {"usage": 100, "limit": 1000, "stats": {"total_inactive_file": 40}},
           "pids_stats": {"current": 3}}
    assert stats_from_api(raw) == {"cpu_seconds": 2.5, "memory_bytes": 60, "memory_limit_bytes": 1000, "pids": 3}


def test_platform_id_is_per_data_dir(tmp_path):
    a, b = builder(tmp_path / "a"), builder(tmp_path / "b")
    assert a.platform_id != b.platform_id and a.network_name == f"mcpac-{a.platform_id}"
    assert builder(tmp_path / "a", network="custom").network_name == "custom"


def test_podman_reads_retry_a_storage_race_but_writes_do_not():
    # Podman's image store has no consistent snapshot: a GET that meets a removal elsewhere answers 500
    # "image not known" (containers/podman#24800). Reads repeat; a failed write is reported at once.
    from mcp_agent_cloud.plugins.podman_builder import READ_RETRIES, PodmanEngine

    class Response:
        def __init__(self, status, message=""):
            self.status_code, self.message = status, message

        def json(self):
            return {"message": self.message}

    class Api:
        def __init__(self, answers):
            self.answers, self.calls = list(answers), 0

        def _next(self, path, **kwargs):
            self.calls += 1
            return self.answers.pop(0)

        get = post = _next

    race = Response(500, 'reading image "f63d": locating image with ID "f63d": image not known')
    engine = PodmanEngine.__new__(PodmanEngine)
    engine.errors = type("errors", (), {"APIError": OSError})
    engine.api = Api([race, race, Response(200)])
    assert engine._call("get", "/images/json").status_code == 200 and engine.api.calls == 3
    engine.api = Api([race] * (READ_RETRIES + 1))
    with pytest.raises(EngineError, match="image not known"):
        engine._call("get", "/images/json")
    assert engine.api.calls == READ_RETRIES + 1
    engine.api = Api([race, Response(200)])
    with pytest.raises(EngineError, match="image not known"):
        engine._call("post", "/images/x/tag")
    assert engine.api.calls == 1
    engine.api = Api([race, Response(201)])  # a create that failed created nothing: it may repeat
    assert engine._call("post", "/containers/create", ok=(201,), repeatable=True).status_code == 201
    assert engine.api.calls == 2


def test_podman_build_repeats_after_a_storage_race_only(tmp_path):
    # Concurrent builds share cached layers; one's forcerm can remove a layer another reads. That build is
    # repeated; a failing RUN step is not.
    from mcp_agent_cloud.plugins import podman_builder
    from mcp_agent_cloud.plugins.engine import EngineBuildError, ImageInfo

    streams = []

    class Engine(podman_builder.PodmanEngine):
        def __init__(self):
            self.tar = lambda anchor: open(__file__, "rb")
            self.calls = 0

        def _call(self, method, path, **kwargs):
            self.calls += 1
            return streams.pop(0)

        def _json_lines(self, response):
            return iter(response)

        def image(self, ref):
            return ImageInfo(id="sha256:built", tags=[ref], labels={})

    race = [{"stream": "STEP 2/4: COPY --from=build /opt/venv /opt/venv\n"},
            {"error": 'reading image "61c7cdb": image not known'}]
    lines = []
    streams[:] = [race, [{"stream": "STEP 1/1: FROM x\n"}, {"aux": {"ID": "sha256:built"}}]]
    engine = Engine()
    assert engine.build(tmp_path, "t:1", labels={}, on_line=lines.append) == "sha256:built"
    assert engine.calls == 2 and any("building again" in line for line in lines)
    failing = [{"stream": "STEP 3/4: RUN pip install x\n"}, {"error": "error building at STEP: exit status 1"}]
    streams[:] = [failing, []]
    engine = Engine()
    with pytest.raises(EngineBuildError, match="exit status 1"):
        engine.build(tmp_path, "t:1", labels={}, on_line=lines.append)
    assert engine.calls == 1
    streams[:] = [race] * (podman_builder.BUILD_RETRIES + 1)
    engine = Engine()
    with pytest.raises(EngineBuildError, match="image not known"):
        engine.build(tmp_path, "t:1", labels={}, on_line=lines.append)
    assert engine.calls == podman_builder.BUILD_RETRIES + 1


def test_wait_gives_the_engine_its_restart_but_not_forever(tmp_path, monkeypatch):
    # restart_policy on-failure: podman shows a crashed container "exited" before it restarts it. The supervisor's
    # wait must not take that moment for an exit of its own to handle (it would replace the container), but an
    # exit the engine will not restart (a clean one, retries used up, no policy) ends the wait.
    import anyio

    from mcp_agent_cloud.hookspecs.types import DeploymentRef, Instance
    from mcp_agent_cloud.plugins import container
    from mcp_agent_cloud.plugins.engine import ContainerInfo

    monkeypatch.setattr(container, "WAIT_POLL", 0.01)

    class Engine:
        def __init__(self, states):
            self.states, self.removed = list(states), []

        def inspect(self, cid, port=None):
            status, code, restarts = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return ContainerInfo(id=cid, name="c", status=status, labels={}, exit_code=code, restart_count=restarts)

        def remove(self, cid):
            self.removed.append(cid)

    def waiting(states, **config):
        b = builder(tmp_path, **config)
        b._engine = Engine(states)
        instance = Instance(builder="docker", deployment=DeploymentRef(id="d", org="o", name="n"), version=1,
                            url="http://127.0.0.1:1/mcp", data={"container": "c1"})
        return b, instance

    # the engine restarts it: the wait goes on through the exited moment, and ends at the next, final exit
    b, instance = waiting([("running", None, 0), ("exited", 3, 0), ("exited", 3, 0), ("running", None, 1),
                           ("exited", 0, 1)], restart_policy="on-failure", max_restarts=2)
    assert anyio.run(b.wait, instance) == 0 and b._engine.removed == ["c1"]
    assert b._engine.states == [("exited", 0, 1)]  # every state was seen: it did not stop at the first exit

    # retries used up, or no policy: the first exit ends it
    for states, config in (([("exited", 3, 2)], {"restart_policy": "on-failure", "max_restarts": 2}),
                           ([("exited", 3, 0)], {})):
        b, instance = waiting(states, **config)
        assert anyio.run(b.wait, instance) == 3

    # an engine that never restarts it after all: the grace ends
    monkeypatch.setattr(container, "ENGINE_RESTART_GRACE", 0.1)
    b, instance = waiting([("exited", 3, 0)], restart_policy="on-failure", max_restarts=2)
    assert anyio.run(b.wait, instance) == 3
