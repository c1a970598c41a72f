"""The `kubernetes` builder without a cluster (none can run here) and without a fake one: its registration, its
options, the real client's errors when no cluster is configured or reachable, and the exact objects a start applies,
validated against the Kubernetes OpenAPI schemas (PyPI kubernetes-validate, strict). The apply, wait, stop and
adopt calls against a live API server are not tested here."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
from pydantic import ValidationError

from mcp_agent_cloud.errors import BuildError, PluginError, ValidationFailed
from mcp_agent_cloud.hookspecs.types import Artifact, BuilderSpec, DeploymentRef, PluginContext
from mcp_agent_cloud.manager import PluginManager, load_plugin_manager
from mcp_agent_cloud.plugins import kubernetes_builder as plugin
from mcp_agent_cloud.plugins.kubernetes_builder import (
    KubernetesBuilder,
    KubernetesConfig,
    deployment_state,
    exit_code,
    plan,
)
from mcp_agent_cloud.runtime.ports import free_port
from tests.contracts import assert_registers, async_test
from tests.test_kubernetes_export import K8S_VERSION

PUSH = {"registry": "registry.example.com/team"}
PUSHED = "registry.example.com/team/mcp-agent-cloud/acme.My_App:3"


def make(tmp_path: Path, **options) -> KubernetesBuilder:
    """Built as the platform builds a backend: through the plugin manager, from the entry point."""
    pm = load_plugin_manager()
    options.setdefault("image_builder", {"name": "docker", "push": PUSH})
    return pm.build(pm.get_builder("kubernetes"), options, PluginContext(data_dir=tmp_path))


def artifact(**data) -> Artifact:
    return Artifact(builder="kubernetes", deployment=DeploymentRef(id="dep_0123abcd", org="acme", name="My_App"),
                    version=3, kind="app",
                    data={"image": "sha256:abc", "tag": "mcp-agent-cloud/acme.My_App:3", "pushed": PUSHED,
                          "command_line": ["/opt/venv/bin/python", "/opt/mcpac/launcher.py"], "user": "10001:10001",
                          "options": {}, "image_builder": "docker", "plain_env": {"LOG_LEVEL": "debug"}, **data})


def by_kind(objects: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objects}


# -- registration and options ------------------------------------------------------------------------------------


def test_registers_through_the_entry_point():
    assert_registers(plugin.mcp_agent_cloud_builders, BuilderSpec, "kubernetes", KubernetesBuilder, KubernetesConfig)
    pm = load_plugin_manager()
    spec = pm.get_builder("kubernetes")
    assert (spec.backend, spec.requires, spec.extra) == (KubernetesBuilder, ("kubernetes",), "kubernetes")
    info = pm.plugins["kubernetes_builder"]
    assert info.builtin and info.module == "mcp_agent_cloud.plugins.kubernetes_builder"


def test_the_module_imports_without_the_kubernetes_client():
    code = ("import sys; sys.modules['kubernetes'] = None\n"  # `import kubernetes` now fails
            "import mcp_agent_cloud.plugins.kubernetes_builder as m\n"
            "print(m.KubernetesConfig.model_fields['namespace'].default)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "default"


def test_a_missing_client_names_the_extra():
    pm = PluginManager()
    pm.register(plugin, name="kubernetes_builder")
    spec = pm.get_builder("kubernetes")
    missing = BuilderSpec(name=spec.name, backend=spec.backend, config_model=spec.config_model,
                          requires=("kubernetes_not_installed_here",), extra=spec.extra)
    with pytest.raises(PluginError, match=r"mcp-agent-cloud\[kubernetes\]"):
        pm.check_requires(missing)


def test_defaults_and_every_field_described():
    cfg = KubernetesConfig(image_builder={"name": "podman", "push": PUSH})
    assert (cfg.namespace, cfg.kubeconfig, cfg.context, cfg.ready_timeout) == ("default", None, None, 300.0)
    assert cfg.service_url == "http://{service}.{namespace}.svc.cluster.local:{port}/mcp"
    assert cfg.image_builder.options == {"push": PUSH}
    assert all(f.description for f in KubernetesConfig.model_fields.values())


@pytest.mark.parametrize(("options", "match"), [
    ({}, "image_builder"),
    ({"image_builder": "docker"}, "needs `push"),
    ({"image_builder": {"name": "docker"}}, "needs `push"),
    ({"image_builder": {"name": "process", "push": PUSH}}, "docker"),
    ({"image_builder": {"name": "docker", "push": PUSH, "base_imag": "x"}}, "base_imag"),
    ({"image_builder": {"name": "docker", "push": {"registy": "r"}}}, "registy"),
    ({"namespace": "Not_A_Label"}, "invalid namespace"),
    ({"service_url": "http://{svc}:{port}/mcp"}, "service_url may use only"),
    ({"ready_timeout": 0}, "greater than 0"),
    ({"no_such_option_typo": 1}, "no_such_option_typo"),
])
def test_invalid_options_are_refused(options, match):
    if "image_builder" not in options and match != "image_builder":
        options = {"image_builder": {"name": "docker", "push": PUSH}, **options}
    with pytest.raises(ValidationError, match=match):
        KubernetesConfig.model_validate(options)
    # and as the platform reports them at start
    pm = load_plugin_manager()
    with pytest.raises(PluginError, match="invalid options for builder 'kubernetes'"):
        pm.validate_options(pm.get_builder("kubernetes"), options)


def test_deployments_may_not_mount_host_paths(tmp_path):
    b = make(tmp_path)
    with pytest.raises(ValidationFailed, match="no mounts"):
        b.check_options({"mounts": [{"source": str(tmp_path), "target": "/work"}]})
    opts = b.check_options({"limits": {"memory": "256m"}})  # the image builder's own check, limits tighten
    assert opts.limits["memory"] == "256m"
    with pytest.raises(ValidationFailed, match="above the operator's"):
        b.check_options({"limits": {"memory": "64g"}})


# -- no cluster: the real client's config loading and connection -------------------------------------------------


def kubeconfig(tmp_path: Path, port: int, context: str = "test-ctx") -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({  # JSON is YAML: the client reads it as a kubeconfig
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "nowhere", "cluster": {"server": f"https://127.0.0.1:{port}",
                                                     "insecure-skip-tls-verify": True}}],
        "users": [{"name": "someone", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": context, "context": {"cluster": "nowhere", "user": "someone"}}]}))
    return path


@async_test
async def test_an_unreachable_cluster_is_a_clear_error(tmp_path):
    port = free_port()  # nobody listens there
    path = kubeconfig(tmp_path, port)
    for step in ("setup", "start"):
        b = make(tmp_path, kubeconfig=str(path))
        with pytest.raises(BuildError) as err:
            if step == "setup":
                await b.setup()
            else:
                await b.start(artifact(), env={}, log_path=tmp_path / "app.log")
        msg = str(err.value)
        assert f"https://127.0.0.1:{port}" in msg and f"kubeconfig {path}" in msg and "context test-ctx" in msg
        assert "kubectl version" in err.value.hint
    # an explicit context is the one named
    b = make(tmp_path, kubeconfig=str(path), context="test-ctx")
    with pytest.raises(BuildError, match="context test-ctx"):
        await b.setup()


@async_test
async def test_an_unknown_context_is_a_clear_error(tmp_path):
    path = kubeconfig(tmp_path, free_port())
    b = make(tmp_path, kubeconfig=str(path), context="prod")
    with pytest.raises(ValidationFailed) as err:
        await b.setup()
    assert f"kubeconfig {path} (context prod)" in err.value.message and "get-contexts" in err.value.hint


@async_test
async def test_a_missing_kubeconfig_is_a_clear_error(tmp_path):
    b = make(tmp_path, kubeconfig=str(tmp_path / "nope.yaml"))
    with pytest.raises(ValidationFailed) as err:
        await b.setup()
    assert f"kubeconfig {tmp_path / 'nope.yaml'} (no such file)" in err.value.message
    assert "`kubeconfig`" in err.value.hint and "`context`" in err.value.hint


@async_test
async def test_no_cluster_at_all_names_both_places_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    b = make(tmp_path)
    with pytest.raises(ValidationFailed) as err:
        await b.setup()
    assert "in-cluster config" in err.value.message
    assert f"kubeconfig {tmp_path / '.kube' / 'config'} (no such file)" in err.value.message


# -- what a start applies ----------------------------------------------------------------------------------------


ENV = {"LOG_LEVEL": "debug", "OPENAI_API_KEY": "sk-very-secret-value", "MCPAC_CONTROL_TOKEN": "control-token-xyz",
       "MCPAC_DEPLOYMENT": "acme.My_App", "MCPAC_APP_DATA_DIR": "/home/platform/data/deployments/acme.My_App/data",
       "MCPAC_EXECUTOR": "asyncio"}
SECRET_VALUES = ("sk-very-secret-value", "control-token-xyz")


def test_the_objects_a_start_applies_validate_and_keep_values_in_the_secret(tmp_path):
    b = make(tmp_path, namespace="agents")
    objects, notes = b.objects_to_apply(artifact(), ENV, start_id="abc123")
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert [o["kind"] for o in objects] == ["ServiceAccount", "Secret", "NetworkPolicy", "Service", "Deployment"]
    kinds = by_kind(objects)
    assert all(o["metadata"]["namespace"] == "agents" for o in objects)
    assert kinds["Deployment"]["metadata"]["name"] == "mcpac-acme-my-app-v3"  # per version: two run side by side
    labels = kinds["Deployment"]["metadata"]["labels"]
    assert labels["mcp-agent-cloud/platform"] == b.platform_id
    assert labels["mcp-agent-cloud/deployment-id"] == "dep_0123abcd" and labels["mcp-agent-cloud/version"] == "3"
    assert all(labels.items() <= o["metadata"]["labels"].items() for o in objects)  # stop finds them all by label

    secret = kinds["Secret"]
    assert secret["metadata"]["name"] == "mcpac-acme-my-app-v3-secrets"
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert values == {"OPENAI_API_KEY": "sk-very-secret-value", "MCPAC_CONTROL_TOKEN": "control-token-xyz",
                      "MCPAC_EXECUTOR": "asyncio"}
    others = json.dumps([o for o in objects if o["kind"] != "Secret"])
    assert not any(v in others for v in SECRET_VALUES)

    pod = kinds["Deployment"]["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"mcp-agent-cloud/start": "abc123"}
    (c,) = pod["spec"]["containers"]
    assert c["image"] == PUSHED
    env = {e["name"]: e for e in c["env"]}
    assert env["LOG_LEVEL"] == {"name": "LOG_LEVEL", "value": "debug"}
    assert env["MCPAC_DEPLOYMENT"]["value"] == "acme.My_App" and env["MCPAC_APP_DATA_DIR"]["value"] == "/data"
    for key in ("OPENAI_API_KEY", "MCPAC_CONTROL_TOKEN", "MCPAC_EXECUTOR"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "mcpac-acme-my-app-v3-secrets", "key": key}
    assert not any("create the Secret" in n for n in notes)  # the builder creates it
    assert b.service_url(objects) == "http://mcpac-acme-my-app-v3.agents.svc.cluster.local:8000/mcp"


def test_a_secret_that_shadows_a_package_env_key_stays_secret(tmp_path):
    b = make(tmp_path)
    objects, _ = b.objects_to_apply(artifact(), {**ENV, "LOG_LEVEL": "secret-override"})
    kinds = by_kind(objects)
    assert "secret-override" not in json.dumps(kinds["Deployment"])
    assert base64.b64decode(kinds["Secret"]["data"]["LOG_LEVEL"]).decode() == "secret-override"


def test_the_secrets_file_becomes_a_key_of_the_secret(tmp_path):
    b = make(tmp_path, service_url="http://{service}.{namespace}:{port}/mcp")
    host_file = "/home/platform/data/secrets/abc/mcp_agent.secrets.yaml"
    text = "openai:\n  api_key: sk-file-secret\n"
    objects, _ = b.objects_to_apply(artifact(plain_env={}), {"MCP_AGENT_SECRETS_FILE": host_file},
                                    secrets_file_text=text)
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    kinds = by_kind(objects)
    assert base64.b64decode(kinds["Secret"]["data"]["mcp_agent.secrets.yaml"]).decode() == text
    deployment = json.dumps(kinds["Deployment"])
    assert "sk-file-secret" not in deployment and host_file not in deployment
    c = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "MCP_AGENT_SECRETS_FILE", "value": "/run/mcpac/mcp_agent.secrets.yaml"} in c["env"]
    assert b.service_url(objects) == "http://mcpac-acme-my-app-v3.default:8000/mcp"


def test_no_secret_without_secret_values(tmp_path):
    b = make(tmp_path)
    objects, _ = b.objects_to_apply(artifact(), {"LOG_LEVEL": "debug", "MCPAC_DEPLOYMENT": "acme.My_App"})
    assert "Secret" not in by_kind(objects)


def test_a_referenced_key_without_a_value_is_an_error(tmp_path):
    b = make(tmp_path)
    docs, _ = b.image_builder.export_k8s(artifact(), namespace="default", image=PUSHED, env={},
                                         secret_keys=["OPENAI_API_KEY"], secrets_file=False)
    with pytest.raises(BuildError, match="no value for OPENAI_API_KEY"):
        plan(docs, env_secrets={}, secrets_file_text=None, start_id="x")


def test_long_names_keep_their_version_suffix(tmp_path):
    b = make(tmp_path)
    art = artifact().model_copy(update={"deployment": DeploymentRef(id="dep_1", org="acme", name="x" * 70)})
    objects, _ = b.objects_to_apply(art, {})
    name = by_kind(objects)["Deployment"]["metadata"]["name"]
    assert len(name) <= 63 and name.endswith("-v3")


def test_export_of_a_version_it_built_is_the_image_builders(tmp_path):
    b = make(tmp_path)
    docs, notes = b.export_k8s(artifact(), namespace="default", image=None, env={}, secret_keys=[],
                               secrets_file=False)
    assert by_kind(docs)["Deployment"]["metadata"]["name"] == "mcpac-acme-my-app"  # the export's names, unchanged
    assert by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"] == PUSHED


# -- reading a Deployment's state (the dicts the API returns) -----------------------------------------------------


def dep(**status) -> dict:
    return {"metadata": {"name": "d", "generation": 2}, "spec": {"replicas": 1}, "status": status}


def pod(waiting: str | None = None, exit_code: int | None = None) -> dict:
    cs: dict = {"name": "app", "state": {"waiting": {"reason": waiting, "message": "back-off"}} if waiting else {}}
    if exit_code is not None:
        cs["lastState"] = {"terminated": {"exitCode": exit_code}}
    return {"metadata": {"name": "d-123"}, "status": {"containerStatuses": [cs]}}


def test_deployment_state():
    ready = dict(observedGeneration=2, replicas=1, updatedReplicas=1, availableReplicas=1, readyReplicas=1)
    assert deployment_state(dep(**ready), [pod()])[0] == "ready"
    assert deployment_state(dep(**{**ready, "observedGeneration": 1}), [])[0] == "progressing"  # not seen yet
    assert deployment_state(dep(**{**ready, "replicas": 2}), [])[0] == "progressing"  # an old pod still runs
    assert deployment_state(dep(), [])[0] == "progressing"
    state, why = deployment_state(dep(), [pod("ImagePullBackOff")])
    assert state == "failed" and "d-123: ImagePullBackOff: back-off" in why
    assert deployment_state(dep(), [pod("ContainerCreating")])[0] == "progressing"
    stalled = dep(conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                               "message": "ReplicaSet d-1 has timed out progressing."}])
    assert deployment_state(stalled, []) == ("failed", "the rollout stopped: ReplicaSet d-1 has timed out progressing.")
    forbidden = dep(conditions=[{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                 "message": "pods is forbidden: violates PodSecurity"}])
    assert deployment_state(forbidden, [])[0] == "failed"
    assert exit_code([pod("CrashLoopBackOff", exit_code=3)]) == 3 and exit_code([pod()]) == -1
