"""The docker and podman builders end to end, on the real engines scripts/engines.sh starts: one code path for both
(the ``engine`` fixture runs every test once per engine)."""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import anyio
import httpx
import kubernetes_validate
import pytest
import yaml

from tests.conftest import PlatformProcess, call_tool, wait_for

ROOT = Path(__file__).resolve().parents[2]
HELLO = str(ROOT / "examples" / "hello")
PROBE = ROOT / "tests" / "apps" / "probe"
LABEL = "org.mcp-agent-cloud"
# One xdist worker runs them all: Docker rewrites FORWARD when it creates a network, under podman's egress jump.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("engines")]


def container_platform(tmp_path, shared_envs, engine, **options) -> PlatformProcess:
    """A platform whose default builder stays `process`; deploys pick the engine's builder by name, configured by
    the operator under `builders:`."""
    cfg = json.dumps({engine.name: engine.builder_config(**options)})
    return PlatformProcess(tmp_path, shared_envs, extra_config=f"builders: {cfg}\n")


def build_log(p: PlatformProcess, name: str, version: int) -> str:
    return (p.root / "data" / "deployments" / f"default.{name}" / f"v{version}" / "build.log").read_text()


def ours(client, deployment_id: str) -> tuple[list, list]:
    """The deployment's containers (running or not) and app images, found by the labels the builder sets."""
    flt = {"label": f"{LABEL}.deployment-id={deployment_id}"}  # a string: podman-py mangles a list
    containers = client.containers.list(all=True, filters=flt)
    for c in containers:
        c.reload()  # podman-py's list holds summaries (State is a string); the inspect has the full attrs
    return containers, client.images.list(filters=flt)


def answers(fn):
    """``fn()``, or None while it fails (an instance that is restarting)."""
    try:
        return fn()
    except Exception:
        return None


def tool(result: dict, name: str, args: dict, token: str) -> str:
    return anyio.run(call_tool, result["endpoint"], token, name, args)


def test_app_build_run_redeploy_adopt_delete(tmp_path, shared_envs, engine):
    client = engine.client()
    registry, namespace = engine.registry, f"t{secrets.token_hex(4)}"  # the registry outlives test runs
    p = container_platform(tmp_path, shared_envs, engine, keep_images=2,
                           push={"registry": f"{registry}/{namespace}", "tls_verify": False})
    p.start()
    try:
        # Deploy examples/hello in a container; call a tool through the gateway.
        first = p.cli("deploy", "app", HELLO, "--name", "hello", "--builder", engine.name, "--verbose")
        assert first.returncode == 0, first.stderr + first.stdout
        result = p.cli_json("status", "hello")
        assert result["builder"] == engine.name, result
        endpoint = f"{p.url}/servers/hello/mcp"
        assert anyio.run(call_tool, endpoint, p.token, "greet", {"name": "box"}) == "Hello, box!"
        # The build streamed to the CLI (-v): the engine's own steps. (The dependency image may come from the
        # engine's cache already: it is keyed by requirements and base image, not by platform.)
        assert "COPY app /opt/app" in first.stdout + first.stderr, first.stdout + first.stderr
        assert "COPY app /opt/app" in build_log(p, "hello", 1)
        containers, images = ours(client, result["id"])
        assert len(containers) == 1 and len(images) == 1
        labels = images[0].labels
        assert labels[f"{LABEL}.org"] == "default" and labels[f"{LABEL}.name"] == "hello"
        assert labels[f"{LABEL}.version"] == "1" and len(labels[f"{LABEL}.package-sha256"]) == 64
        assert labels[f"{LABEL}.platform"]
        assert any(t.endswith("mcp-agent-cloud/default.hello:1") for t in images[0].tags), images[0].tags
        first_container = containers[0].id

        # A code-only change: the dependency image comes from the cache, only the thin app image is built.
        src = tmp_path / "hello2"
        shutil.copytree(HELLO, src)
        main = src / "main.py"
        main.write_text(main.read_text().replace('f"Hello, {name}!"', 'f"Hi again, {name}!"'))
        p.cli("deploy", "app", str(src), "--name", "hello", "--builder", engine.name, "--json", check=True)
        log2 = build_log(p, "hello", 2)
        assert "dependency image cached" in log2 and "building dependency image" not in log2, log2
        assert anyio.run(call_tool, endpoint, p.token, "greet", {"name": "box"}) == "Hi again, box!"
        _, images = ours(client, result["id"])
        deps = {img.labels.get(f"{LABEL}.version"): img for img in images}
        assert set(deps) == {"1", "2"}
        # Both versions' images sit on the same dependency layers.
        h1 = [layer["Id"] for layer in client.images.get(deps["1"].id).history() if layer["Id"] != "<missing>"]
        h2 = [layer["Id"] for layer in client.images.get(deps["2"].id).history() if layer["Id"] != "<missing>"]
        assert set(h1[1:]) & set(h2[1:]), (h1, h2)
        containers, _ = ours(client, result["id"])
        running = [c for c in containers if c.status == "running"]
        assert len(running) == 1 and running[0].id != first_container  # v1's container was retired

        # Logs of the container reach `mcp-agent logs`; stats reach `mcp-agent status`.
        wait_for(lambda: "Uvicorn running" in p.cli("logs", "hello").stdout or "Application startup" in
                 p.cli("logs", "hello").stdout, timeout=30, what="the container's output in mcp-agent logs")
        status = p.cli_json("status", "hello")
        assert status["stats"]["memory_limit_bytes"] == 512 * 1024 * 1024, status["stats"]
        # The image's health probe runs (on podman without systemd, when status asks).
        wait_for(lambda: p.cli_json("status", "hello")["stats"].get("health") == "healthy", timeout=40,
                 what="a healthy container in mcp-agent status")

        # Every version's image went to the registry (push), under the operator's namespace.
        tags = httpx.get(f"http://{registry}/v2/{namespace}/mcp-agent-cloud/default.hello/tags/list").json()
        assert sorted(tags["tags"]) == ["1", "2"], tags

        # Stop removes the container; start runs a new one from the same image.
        p.cli("stop", "hello", check=True)
        assert ours(client, result["id"])[0] == []
        p.cli("start", "hello", check=True)
        containers, _ = ours(client, result["id"])
        assert len(containers) == 1 and containers[0].status == "running"
        assert anyio.run(call_tool, endpoint, p.token, "greet", {"name": "box"}) == "Hi again, box!"

        # A third version: keep_images 2 removes v1's image (no container uses it any more).
        main.write_text(main.read_text().replace("Hi again", "Third"))
        p.cli("deploy", "app", str(src), "--name", "hello", "--builder", engine.name, "--json", check=True)
        versions = sorted(i.labels[f"{LABEL}.version"] for i in ours(client, result["id"])[1])
        assert versions == ["2", "3"], versions
        # Rolling back to a removed image says so instead of starting something else.
        r = p.cli("rollback", "hello", "--to", "1")
        assert r.returncode == 1 and "keep_images" in r.stderr, r.stderr

        # The platform dies; the container does not. A new platform adopts it and starts no second one; a stray
        # container of the same deployment (say, a start that a crash interrupted) is removed.
        serving = [c for c in ours(client, result["id"])[0] if c.status == "running"]
        assert len(serving) == 1
        serving = serving[0].id
        p.kill()
        stray = client.containers.run(engine.base_image, ["sleep", "300"], detach=True,
                                      labels=dict(client.containers.get(serving).labels))
        p.start()
        # serving_version is what this platform process serves (the registry's status predates the restart).
        wait_for(lambda: p.cli_json("status", "hello")["serving_version"] == 3, timeout=60, what="restore")
        containers, _ = ours(client, result["id"])
        assert [c.id for c in containers] == [serving], [(c.id, c.status) for c in containers]
        assert stray.id not in [c.id for c in client.containers.list(all=True)]
        assert anyio.run(call_tool, endpoint, p.token, "greet", {"name": "again"}) == "Third, again!"
        # Logs of the adopted container are followed again.
        marker_count = p.cli("logs", "hello", "--tail", "500").stdout.count("POST /mcp")
        anyio.run(call_tool, endpoint, p.token, "greet", {"name": "log"})
        wait_for(lambda: p.cli("logs", "hello", "--tail", "500").stdout.count("POST /mcp") > marker_count,
                 timeout=20, what="the adopted container's new output in mcp-agent logs")

        # Delete: no container, image or volume of the deployment is left.
        p.cli("delete", "hello", "--yes", check=True)
        containers, images = ours(client, result["id"])
        assert containers == [] and images == []
        assert not [v for v in client.volumes.list() if result["id"] in v.name]
    finally:
        p.stop()
        client.close()


def test_sandbox_hardening(tmp_path, shared_envs, engine):
    client = engine.client()
    shared, reference = tmp_path / "shared", tmp_path / "reference"
    (shared / "work").mkdir(parents=True)
    (shared / "work").chmod(0o777)  # the operator lets the container's user (10001) write there
    reference.mkdir()
    (reference / "data.txt").write_text("reference data")
    p = container_platform(tmp_path, shared_envs, engine, filesystem={"allowed_paths": [
        {"path": str(shared), "mode": "rw"}, {"path": str(reference), "mode": "ro"}]})
    src = tmp_path / "probe"
    shutil.copytree(PROBE, src)
    cfg = src / "mcp_agent.config.yaml"
    # The deployment tightens the operator's memory limit (512m) for itself, and mounts two allowed paths.
    options = {"name": engine.name, "limits": {"memory": "160m"}, "mounts": [
        {"source": str(shared / "work"), "target": "/work", "mode": "rw"},
        {"source": str(reference), "target": "/ref", "mode": "ro"}]}
    cfg.write_text(cfg.read_text() + f"  builder: {json.dumps(options)}\n")
    secret = f"s3cret-{secrets.token_hex(8)}"
    (src / "mcp_agent.secrets.yaml").write_text(f"probe:\n  token: {secret}\n")
    p.start()
    try:
        result = p.cli_json("deploy", "app", str(src), "--name", "probe", "--secrets-as", "file")
        t = p.token
        # The secrets file is mounted read-only from the host's tmpfs; the value is in no image and no env.
        path = tool(result, "env", {"name": "MCP_AGENT_SECRETS_FILE"}, t)
        assert path == "/run/mcpac/mcp_agent.secrets.yaml"
        assert secret in tool(result, "read", {"path": path}, t)
        assert tool(result, "write", {"path": path}, t).startswith("error:")
        assert tool(result, "read", {"path": "/opt/app/mcp_agent.secrets.yaml"}, t).startswith("error:")
        box = ours(client, result["id"])[0][0]
        assert secret not in json.dumps(box.attrs) and secret not in json.dumps(client.images.get(box.image.id).attrs)
        uid = tool(result, "whoami", {}, t)
        assert uid == "10001:10001"
        assert tool(result, "write", {"path": "/probe"}, t) == "error: Read-only file system"
        assert tool(result, "write", {"path": "/opt/app/main.py"}, t).startswith("error:")
        assert tool(result, "write", {"path": "/tmp/probe"}, t) == "ok"
        assert tool(result, "write", {"path": "/data/probe"}, t) == "ok"
        assert tool(result, "read", {"path": "/data/probe"}, t) == "x"
        # The allowlisted mounts, each in its mode.
        assert tool(result, "write", {"path": "/work/out.txt"}, t) == "ok"
        assert (shared / "work" / "out.txt").read_text() == "x"
        assert tool(result, "read", {"path": "/ref/data.txt"}, t) == "reference data"
        assert tool(result, "write", {"path": "/ref/new.txt"}, t) == "error: Read-only file system"
        # The platform hands apps a data dir: inside the container it is the volume, not a host path.
        assert tool(result, "env", {"name": "MCPAC_APP_DATA_DIR"}, t) == "/data"
        # The metadata address is rejected at once (not a timeout: the REJECT rule, not an unrouted address).
        assert tool(result, "connect", {"host": "169.254.169.254", "port": 80}, t) == "error: ConnectionRefusedError"

        containers, _ = ours(client, result["id"])
        attrs = containers[0].attrs
        host = attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True and host["Memory"] == 160 * 1024 * 1024
        assert host["PidsLimit"] == 256 and host["NanoCpus"] == 10**9
        # Every capability is gone, as the app's own process sees it (podman's inspect lists the dropped ones by
        # name, Docker's says ALL).
        caps = dict(line.split(":\t", 1) for line in tool(result, "read", {"path": "/proc/self/status"}, t)
                    .splitlines() if line.startswith("Cap"))
        assert caps["CapEff"] == caps["CapBnd"] == caps["CapPrm"] == "0" * 16, caps
        assert not host.get("CapAdd"), host.get("CapAdd")
        assert any("no-new-privileges" in o for o in host["SecurityOpt"] or [])
        bound = attrs["NetworkSettings"]["Ports"]["8000/tcp"]
        assert {b["HostIp"] for b in bound} == {"127.0.0.1"}, bound

        # The memory limit holds: an allocation over it kills the instance, and the supervisor restarts it.
        with pytest.raises(Exception):
            tool(result, "allocate", {"megabytes": 400}, t)
        wait_for(lambda: p.cli_json("status", "probe")["restarts"] >= 1, timeout=60, what="a restart after OOM")
        wait_for(lambda: p.cli_json("status", "probe")["status"] == "running", timeout=60, what="running again")
        assert "out of memory" in p.cli("logs", "probe", "--tail", "200").stdout
        assert tool(result, "allocate", {"megabytes": 20}, t) == "allocated 20 MB"

        # The same hardening as Kubernetes manifests, valid against the API's schemas; the secret by reference.
        exported = p.cli_json("export", "k8s", "probe", "-n", "agents")
        assert secret not in json.dumps(exported)
        for doc in exported["manifests"]:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        deployment = next(d for d in exported["manifests"] if d["kind"] == "Deployment")
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        assert c["resources"]["limits"]["memory"] == str(160 * 1024 * 1024)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["runAsUser"] == 10001
        mounts = {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]}
        assert mounts["/ref"] is True and mounts["/work"] is False and mounts["/run/mcpac"] is True
        assert any("create the Secret agents/" in n for n in exported["notes"])
        out = tmp_path / "probe.yaml"
        r = p.cli("export", "k8s", "probe", "-n", "agents", "-o", str(out), check=True)
        assert "note: " in r.stderr
        docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
        assert [d["kind"] for d in docs] == [d["kind"] for d in exported["manifests"]]

        # A deployment may not loosen the operator's settings.
        r = p.api("POST", "/api/v1/deployments/probe2/versions", json={
            "kind": "stdio", "command": "mcp-server-time", "pip": ["mcp-server-time"],
            "builder": {"name": engine.name, "limits": {"memory": "4g"}}})
        assert r.status_code == 400 and "above the operator's limit" in r.json()["message"], r.text
        r = p.api("POST", "/api/v1/deployments/probe2/versions", json={
            "kind": "stdio", "command": "mcp-server-time", "pip": ["mcp-server-time"],
            "builder": {"name": engine.name, "hardening": {"read_only": False}}})
        assert r.status_code == 400 and "hardening" in r.json()["message"], r.text
        for mount, why in (({"source": str(tmp_path), "target": "/x"}, "not under the operator's allowed paths"),
                           ({"source": str(reference), "target": "/x", "mode": "rw"}, "only be mounted read-only"),
                           ({"source": str(shared), "target": "/data"}, "reserved")):
            r = p.api("POST", "/api/v1/deployments/probe2/versions", json={
                "kind": "stdio", "command": "mcp-server-time", "pip": ["mcp-server-time"],
                "builder": {"name": engine.name, "mounts": [mount]}})
            assert r.status_code == 400 and why in r.json()["message"], r.text
    finally:
        p.stop()
        client.close()


def test_stdio_server_restart_policy_and_failed_build(tmp_path, shared_envs, engine):
    client = engine.client()
    p = container_platform(tmp_path, shared_envs, engine, restart_policy="on-failure", max_restarts=2)
    p.start()
    try:
        # restart_policy on-failure: the engine restarts a crashed container itself, on the same port, before the
        # platform's supervisor would notice anything.
        probe = p.cli_json("deploy", "app", str(PROBE), "--name", "probe", "--builder", engine.name)
        container = ours(client, probe["id"])[0][0]
        with pytest.raises(Exception):
            tool(probe, "crash", {"code": 3}, p.token)
        wait_for(lambda: client.containers.get(container.id).attrs["RestartCount"] >= 1, timeout=30,
                 what="the engine's restart")
        wait_for(lambda: answers(lambda: tool(probe, "whoami", {}, p.token)) == "10001:10001", timeout=30,
                 what="the restarted app")
        status = p.cli_json("status", "probe")
        assert status["stats"]["restarts"] >= 1 and status["restarts"] == 0, status  # the engine's, not ours
        assert [c.id for c in ours(client, probe["id"])[0]] == [container.id]

        # A stdio server from PyPI: the adapter runs in the container with the server as its child.
        result = p.cli_json("deploy", "server", "clock", "--command", "mcp-server-time", "--pip", "mcp-server-time",
                            "--builder", engine.name)
        assert "UTC" in tool(result, "get_current_time", {"timezone": "UTC"}, p.token)
        containers, _ = ours(client, result["id"])
        assert len(containers) == 1 and containers[0].attrs["Config"]["User"] == "10001:10001"

        # A Node server (npm, as `--type everything` gives it): installed on the host, run by the image's node.
        everything = p.cli_json("deploy", "server", "every", "--type", "everything", "--builder", engine.name)
        assert tool(everything, "echo", {"message": "from a box"}, p.token) == "Echo: from a box"

        # A build that fails names the failing step, and the serving version keeps serving.
        bad = p.cli("deploy", "server", "clock", "--command", "mcp-server-time", "--pip",
                    "mcp-server-time", "--pip", "no-such-package-mcpac-xyz", "--builder", engine.name)
        assert bad.returncode == 1 and "pip could not resolve" in bad.stderr, bad.stderr
        assert "no-such-package-mcpac-xyz" in bad.stderr
        assert "UTC" in tool(result, "get_current_time", {"timezone": "UTC"}, p.token)
        status = p.cli_json("status", "clock")
        assert status["status"] == "running" and status["serving_version"] == 1
    finally:
        p.stop()
        client.close()

