"""`mcp-agent export k8s`'s manifests, validated against the Kubernetes OpenAPI schemas (PyPI kubernetes-validate)
without a cluster: none can run here. They come from the container builder's own run spec."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest

from mcp_agent_cloud.hookspecs.types import Artifact, DeploymentRef, PluginContext
from mcp_agent_cloud.plugins.docker_builder import DockerBuilder, DockerConfig
from mcp_agent_cloud.plugins.kubernetes import k8s_name, manifests

K8S_VERSION = kubernetes_validate.latest_version()


def validate(docs: list[dict]) -> None:
    """Every document against the schema of its kind, strictly (an unknown field is an error)."""
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def artifact(tmp_path: Path, **options) -> Artifact:
    return Artifact(builder="docker", deployment=DeploymentRef(id="dep_1", org="acme", name="My_App"), version=3,
                    kind="app", data={"image": "sha256:abc", "tag": "mcp-agent-cloud/acme.My_App:3",
                                      "command_line": ["/opt/venv/bin/python", "/opt/mcpac/launcher.py"],
                                      "user": "10001:10001", "options": options})


def test_names_are_dns_labels():
    assert k8s_name("mcpac", "acme", "My_App") == "mcpac-acme-my-app"
    long = k8s_name("x" * 80)
    assert len(long) == 63 and not long.endswith("-")
    assert k8s_name("--") == "mcpac"


def test_hardened_manifests_from_the_docker_builders_run_spec(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    b = DockerBuilder(DockerConfig(limits={"memory": "1g", "cpus": 2}, filesystem={"allowed_paths": [
        {"path": str(shared), "mode": "rw"}]}), PluginContext(data_dir=tmp_path))
    b.spec_name = "docker"
    art = artifact(tmp_path, limits={"memory": "256m", "cpus": 0.5},
                   mounts=[{"source": str(shared), "target": "/work", "mode": "rw"}])
    docs, notes = b.export_k8s(art, namespace="agents", image=None, env={"LOG_LEVEL": "debug"},
                               secret_keys=["OPENAI_API_KEY"], secrets_file=False)
    validate(docs)
    kinds = by_kind(docs)
    assert set(kinds) == {"ServiceAccount", "Deployment", "Service", "NetworkPolicy"}
    assert all(d["metadata"]["namespace"] == "agents" and d["metadata"]["name"] == "mcpac-acme-my-app" for d in docs)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "mcp-agent-cloud/acme.My_App:3" and any("only in the platform host" in n for n in notes)
    sc = c["securityContext"]
    assert (sc["runAsNonRoot"], sc["runAsUser"], sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"]) == (
        True, 10001, True, False)
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    assert c["resources"]["limits"] == {"memory": str(256 * 1024 ** 2), "cpu": "500m"}
    env = {e["name"]: e for e in c["env"]}
    assert env["LOG_LEVEL"]["value"] == "debug"
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "mcpac-acme-my-app-secrets",
                                                                  "key": "OPENAI_API_KEY"}
    assert env["MCPAC_APP_DATA_DIR"]["value"] == "/data"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert set(mounts) == {"/tmp", "/data", "/work"} and "readOnly" not in mounts["/work"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols[mounts["/work"]["name"]]["hostPath"]["path"] == str(shared)
    assert vols["tmp"]["emptyDir"]["medium"] == "Memory"
    assert any("create the Secret agents/mcpac-acme-my-app-secrets" in n and "OPENAI_API_KEY" in n for n in notes)
    assert any("pids limit" in n for n in notes)
    egress = kinds["NetworkPolicy"]["spec"]["egress"]
    blocks = [p["ipBlock"] for rule in egress for p in rule["to"] if "ipBlock" in p]
    assert {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]} in blocks
    assert kinds["Service"]["spec"]["type"] == "ClusterIP"


def test_secrets_file_mode_and_a_given_image(tmp_path):
    b = DockerBuilder(DockerConfig(hardening={"block_metadata": False}), PluginContext(data_dir=tmp_path))
    b.spec_name = "docker"
    docs, notes = b.export_k8s(artifact(tmp_path), namespace="default", image="registry.internal/acme/app:3",
                               env={}, secret_keys=[], secrets_file=True)
    validate(docs)
    pod = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "registry.internal/acme/app:3" and not any("only in the platform host" in n for n in notes)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MCP_AGENT_SECRETS_FILE"] == "/run/mcpac/mcp_agent.secrets.yaml"
    assert {"mountPath": "/run/mcpac", "name": "secrets", "readOnly": True} in c["volumeMounts"]
    assert any("--from-file=mcp_agent.secrets.yaml" in n for n in notes)
    egress = by_kind(docs)["NetworkPolicy"]["spec"]["egress"]
    assert "except" not in json.dumps(egress)  # block_metadata off: nothing excepted


def test_the_validator_catches_a_broken_manifest(tmp_path):
    # The schemas do reject what Kubernetes would: the check above can fail.
    b = DockerBuilder(DockerConfig(), PluginContext(data_dir=tmp_path))
    b.spec_name = "docker"
    docs, _ = b.export_k8s(artifact(tmp_path), namespace="default", image="x", env={}, secret_keys=[],
                           secrets_file=False)
    broken = by_kind(docs)["Deployment"]
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUser"] = "root"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    typo = by_kind(docs)["Service"]
    typo["spec"]["prots"] = typo["spec"].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_manifests_without_limits_or_mounts():
    from mcp_agent_cloud.plugins.engine import RunSpec

    docs, notes = manifests(RunSpec(image="i", name="n", labels={}, env={}, command=["x"], port=8000,
                                    memory_bytes=None, nano_cpus=None, pids_limit=None, tmpfs={}),
                            org="o", name="n", version=1, namespace="ns", image="img", secret_keys=[])
    validate(docs)
    assert notes == []
