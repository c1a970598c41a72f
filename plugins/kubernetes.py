"""Kubernetes manifests for a deployment built by a container builder (``mcp-agent export k8s NAME``).

The manifests come from the same :class:`~mcp_agent_cloud.plugins.engine.RunSpec` the ``docker`` and ``podman``
builders start containers from, so the hardening is one definition: non-root user, read-only root filesystem,
no capabilities, no privilege escalation, memory and CPU limits, a memory-backed ``/tmp``. Secret values never
appear: the Deployment references a Secret by name and key, which the operator creates (the output says how).
Nothing here talks to a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mcp_agent_cloud.plugins.engine import RunSpec

METADATA_V4 = "169.254.169.254/32"
METADATA_V6 = "fd00:ec2::254/128"  # the IPv6 form some clouds serve metadata on
SECRETS_FILE_KEY = "mcp_agent.secrets.yaml"


def k8s_name(*parts: str) -> str:
    """A DNS-1123 label: lowercase alphanumerics and '-', at most 63 characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return name[:63].rstrip("-") or "mcpac"


def _uid_gid(user: str | None) -> tuple[int, int]:
    uid, _, gid = (user or "10001:10001").partition(":")
    return int(uid), int(gid or uid)


def _tmpfs_size(options: str) -> str | None:
    for opt in options.split(","):
        if opt.startswith("size="):
            return opt.removeprefix("size=")
    return None


def manifests(spec: RunSpec, *, org: str, name: str, version: int, namespace: str, image: str,
              secret_keys: list[str], secrets_file: str | None = None, block_metadata: bool = True,
              instance: str | None = None, extra_labels: Mapping[str, str] | None = None,
              ) -> tuple[list[dict[str, Any]], list[str]]:
    """The ServiceAccount, Deployment, Service and NetworkPolicy for one deployment, and notes for the operator
    (what to create, what could not be expressed). ``instance`` (e.g. ``v3``) ends every name and the selector, so
    two versions can run side by side (the kubernetes builder's health-checked switch); ``extra_labels`` are
    added to every object's labels."""
    base = k8s_name("mcpac", org, name)
    if instance:  # the suffix survives the 63-character cut
        base = k8s_name(base[:62 - len(instance)], instance)
    secret_name = k8s_name(base, "secrets")
    labels = {**(extra_labels or {}),
              "app.kubernetes.io/name": base, "app.kubernetes.io/managed-by": "mcp-agent-cloud",
              "mcp-agent-cloud/org": k8s_name(org), "mcp-agent-cloud/name": k8s_name(name),
              "mcp-agent-cloud/version": str(version)}
    selector = {"app.kubernetes.io/name": base}
    meta = {"name": base, "namespace": namespace, "labels": labels}
    uid, gid = _uid_gid(spec.user)
    notes: list[str] = []

    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for path, options in sorted(spec.tmpfs.items()):
        vol = k8s_name("tmp", path) if path != "/tmp" else "tmp"
        empty: dict[str, Any] = {"medium": "Memory"}
        if size := _tmpfs_size(options):
            empty["sizeLimit"] = size
        volumes.append({"name": vol, "emptyDir": empty})
        mounts.append({"name": vol, "mountPath": path})
    for i, m in enumerate(spec.mounts):
        vol = f"data-{i}" if m.type == "volume" else f"host-{i}"
        if m.type == "volume":
            # The engine's named volume: an emptyDir lives as long as the pod; swap in a PersistentVolumeClaim
            # for data that must survive a reschedule.
            volumes.append({"name": vol, "emptyDir": {}})
        else:
            volumes.append({"name": vol, "hostPath": {"path": m.source, "type": "Directory"}})
            notes.append(f"{m.target} is the node's directory {m.source} (hostPath, "
                         f"{'read-only' if m.read_only else 'read-write'}): it must exist on every node the pod "
                         "may run on, or be replaced by a volume")
        mounts.append({"name": vol, "mountPath": m.target, **({"readOnly": True} if m.read_only else {})})
    sources = [f"--from-literal={k}=..." for k in sorted(secret_keys)]
    env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}
            for key in sorted(secret_keys)]
    if secrets_file:
        volumes.append({"name": "secrets", "secret": {"secretName": secret_name, "defaultMode": 0o400,
                                                     "items": [{"key": SECRETS_FILE_KEY, "path": SECRETS_FILE_KEY}]}})
        mounts.append({"name": "secrets", "mountPath": secrets_file.rpartition("/")[0] or "/", "readOnly": True})
        env.append({"name": "MCP_AGENT_SECRETS_FILE", "value": secrets_file})
        sources.append(f"--from-file={SECRETS_FILE_KEY}=PATH  # the secrets YAML, as mcp_agent.secrets.yaml")
    if sources:
        notes.append(f"create the Secret {namespace}/{secret_name} (values never leave the platform): "
                     f"kubectl -n {namespace} create secret generic {secret_name} {' '.join(sources)}")
    if spec.pids_limit:
        notes.append(f"the pids limit ({spec.pids_limit}) has no per-pod field in Kubernetes: it is the kubelet's "
                     "podPidsLimit on each node")

    resources: dict[str, Any] = {"limits": {}, "requests": {}}
    if spec.memory_bytes:
        resources["limits"]["memory"] = str(spec.memory_bytes)
        resources["requests"]["memory"] = str(spec.memory_bytes)  # requests = limits: no overcommit
    if spec.nano_cpus:
        cpu = f"{max(1, spec.nano_cpus // 1_000_000)}m"
        resources["limits"]["cpu"] = cpu
        resources["requests"]["cpu"] = cpu
    probe = {"tcpSocket": {"port": spec.port}, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3}
    container = {
        "name": "app", "image": image, "command": list(spec.command), "env": env,
        "ports": [{"name": "mcp", "containerPort": spec.port, "protocol": "TCP"}],
        "resources": {k: v for k, v in resources.items() if v},
        "securityContext": {
            "runAsNonRoot": uid != 0, "runAsUser": uid, "runAsGroup": gid,
            "readOnlyRootFilesystem": spec.read_only,
            "allowPrivilegeEscalation": not spec.no_new_privileges,
            "capabilities": {"drop": list(spec.cap_drop)} if spec.cap_drop else {},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
        "readinessProbe": probe, "livenessProbe": {**probe, "initialDelaySeconds": 30},
    }
    pod = {
        "serviceAccountName": base, "automountServiceAccountToken": False, "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": uid != 0, "fsGroup": gid, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container], "volumes": volumes,
    }
    egress_except = [METADATA_V4] if block_metadata else []
    egress = [
        {"to": [{"namespaceSelector": {}}], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": egress_except} if egress_except
                 else {"cidr": "0.0.0.0/0"}}]},
        {"to": [{"ipBlock": {"cidr": "::/0", "except": [METADATA_V6]} if block_metadata else {"cidr": "::/0"}}]},
    ]
    docs = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta, "automountServiceAccountToken": False},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
         "spec": {"replicas": 1, "selector": {"matchLabels": selector},
                  "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                  "template": {"metadata": {"labels": labels}, "spec": pod}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"type": "ClusterIP", "selector": selector,
                  "ports": [{"name": "mcp", "port": spec.port, "targetPort": "mcp", "protocol": "TCP"}]}},
        # Ingress: the MCP port only, from pods of the namespace (the gateway, or a client deployed next to it).
        # Egress: everything but the metadata addresses, as the container builders' MCPAC-EGRESS chain does.
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
         "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress", "Egress"],
                  "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": spec.port, "protocol": "TCP"}]}],
                  "egress": egress}},
    ]
    return docs, notes
