"""Builder ``kubernetes``: the ``docker`` or ``podman`` builder builds and pushes the image, a cluster runs it.

``start`` turns the version into the manifests of :mod:`mcp_agent_cloud.plugins.kubernetes` (through the image
builder's ``export_k8s``, so the hardening is the container builders' one definition), adds the Secret their
``secretKeyRef``s name, filled from the instance's environment, and applies them all with server-side apply through
the official ``kubernetes`` client (the ``kubernetes`` extra, imported only when this builder is used). The objects
carry the version in their names, so the platform's health-checked switch can run two versions side by side.

What to apply is computed by pure functions (:func:`plan`, :func:`deployment_state`), apart from the client
calls. The client calls are NOT tested against a live cluster: none can run on this project's test machines.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import hashlib
import importlib
import os
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mcp_agent_cloud.errors import BuildError, MCPAgentCloudError, ValidationFailed
from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import (
    Artifact,
    Builder,
    BuilderSpec,
    BuildRequest,
    DeploymentRef,
    Instance,
    LogSink,
    PluginContext,
)
from mcp_agent_cloud.plugins.kubernetes import SECRETS_FILE_KEY, k8s_name

IMAGE_BUILDERS = {"docker": "mcp_agent_cloud.plugins.docker_builder",
                  "podman": "mcp_agent_cloud.plugins.podman_builder"}
FIELD_MANAGER = "mcp-agent-cloud"
LABEL_PLATFORM = "mcp-agent-cloud/platform"
LABEL_DEPLOYMENT = "mcp-agent-cloud/deployment-id"
LABEL_VERSION = "mcp-agent-cloud/version"  # set by manifests()
# A new value at every start rolls the pods, so they read the Secret as it is now (a fresh control token).
ANNOTATION_START = "mcp-agent-cloud/start"
SECRETS_FILE_ENV = "MCP_AGENT_SECRETS_FILE"
# The runtime's keys that carry no credential. Every other key of the instance's env that is not the package's own
# (non-secret) env goes into the Secret: a key the platform adds later is a secret until it is listed here.
PLAIN_RUNTIME_ENV = frozenset({"MCPAC_DEPLOYMENT", "MCPAC_SUSPENDED", "MCPAC_APP_DATA_DIR"})
# What the pods need exists before them; deletion goes the other way round.
APPLY_ORDER = ("ServiceAccount", "Secret", "NetworkPolicy", "Service", "Deployment")
API_VERSIONS = {"ServiceAccount": "v1", "Secret": "v1", "NetworkPolicy": "networking.k8s.io/v1", "Service": "v1",
                "Deployment": "apps/v1"}
# Waiting reasons of a container that will not get better by waiting longer.
STUCK_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                           "CreateContainerError", "CrashLoopBackOff"})
READY_POLL = 2.0
WAIT_POLL = 5.0


class ImageBuilderRef(BaseModel):
    """``image_builder: {name: docker, push: {registry: ...}, ...}``: the container builder and its options."""

    model_config = ConfigDict(extra="allow")
    name: Literal["docker", "podman"] = Field(description="the container builder that builds and pushes the image")

    @model_validator(mode="before")
    @classmethod
    def _from_str(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class KubernetesConfig(BaseModel):
    """Operator options of the ``kubernetes`` builder."""

    model_config = ConfigDict(extra="forbid")
    image_builder: ImageBuilderRef = Field(
        description="the container builder that builds the image, with its options, as `builder:` takes them "
        "(`{name: docker, push: {registry: ...}, base_image: ...}`); `push` is required: the cluster pulls the "
        "image from that registry")
    kubeconfig: Path | None = Field(
        None, description="kubeconfig file (default: the in-cluster service account, then KUBECONFIG or "
        "~/.kube/config)")
    context: str | None = Field(None, description="kubeconfig context (default: the file's current context)")
    namespace: str = Field("default", description="namespace every object is applied in")
    service_url: str = Field(
        "http://{service}.{namespace}.svc.cluster.local:{port}/mcp",
        description="how the platform reaches an instance's Service; placeholders {service}, {namespace}, {port}. "
        "The default works for a platform running as a pod in the same namespace")
    ready_timeout: float = Field(300.0, gt=0, description="seconds a start waits for the Deployment to be available")
    request_timeout: float = Field(30.0, gt=0, description="seconds one Kubernetes API call may take")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if k8s_name(value) != value:
            raise ValueError(f"invalid namespace {value!r}: lowercase letters, digits and '-', at most 63")
        return value

    @field_validator("service_url")
    @classmethod
    def _service_url(cls, value: str) -> str:
        try:
            value.format(service="s", namespace="n", port=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"service_url may use only {{service}}, {{namespace}} and {{port}} (got {exc})") from None
        return value

    @model_validator(mode="after")
    def _image_builder_pushes(self) -> KubernetesConfig:
        spec = image_builder_spec(self.image_builder.name)
        options = spec.config_model.model_validate(self.image_builder.options)
        if getattr(options, "push", None) is None:
            raise ValueError(f"image_builder {self.image_builder.name} needs `push: {{registry: HOST/NAMESPACE}}`: "
                             "the cluster pulls the image from that registry, not from the platform host's engine")
        return self


def image_builder_spec(name: str) -> BuilderSpec:
    module = importlib.import_module(IMAGE_BUILDERS[name])
    (spec,) = module.mcp_agent_cloud_builders()
    return spec


def label_value(value: str) -> str:
    """A valid label value: alphanumerics, '-', '_', '.', at most 63, alphanumeric at both ends."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in value)
    return cleaned[:63].strip("-_.")


def selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def split_env(env: Mapping[str, str], plain_env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The instance's env as (plain, secret). Plain: the package's own env with its own value, and the runtime's
    keys without credentials; everything else is secret. The secrets file path is the platform host's: dropped
    (its content goes into the Secret)."""
    plain, secret = {}, {}
    for key, value in env.items():
        if key == SECRETS_FILE_ENV:
            continue
        if key in PLAIN_RUNTIME_ENV or (key in plain_env and plain_env[key] == value):
            plain[key] = value
        else:
            secret[key] = value
    return plain, secret


def referenced_secret(deployment: dict[str, Any]) -> tuple[str | None, set[str]]:
    """The Secret a Deployment's pod references, and the keys it reads from it (env and volume items)."""
    pod = deployment["spec"]["template"]["spec"]
    names, keys = set(), set()
    for container in pod.get("containers", []):
        for var in container.get("env", []):
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
                keys.add(ref["key"])
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
            keys.update(item["key"] for item in volume["secret"].get("items", []))
    if len(names) > 1:
        raise BuildError(f"the manifests reference several Secrets ({', '.join(sorted(names))})",
                         hint="this is a bug in the kubernetes builder: report it")
    return (names.pop() if names else None), keys


def secret_object(name: str, namespace: str, labels: Mapping[str, str], values: Mapping[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace,
                                                                "labels": dict(labels)},
            "type": "Opaque", "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(values.items())}}


def plan(docs: list[dict[str, Any]], *, env_secrets: Mapping[str, str], secrets_file_text: str | None,
         start_id: str) -> list[dict[str, Any]]:
    """What one start applies: ``docs`` (the export's manifests, not changed) plus the Secret they reference, built
    from ``env_secrets`` and the secrets file, in apply order. Values end up in the Secret only."""
    docs = copy.deepcopy(docs)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    template = deployment["spec"]["template"]["metadata"]
    template["annotations"] = {**template.get("annotations", {}), ANNOTATION_START: start_id}
    name, keys = referenced_secret(deployment)
    if name is not None:
        values = {k: env_secrets[k] for k in keys if k in env_secrets}
        if SECRETS_FILE_KEY in keys and secrets_file_text is not None:
            values[SECRETS_FILE_KEY] = secrets_file_text
        if missing := sorted(keys - set(values)):
            raise BuildError(f"no value for {', '.join(missing)}, which the manifests read from the Secret {name}",
                             hint="set the secret (`mcp-agent secrets set`) and start again")
        docs.append(secret_object(name, deployment["metadata"]["namespace"], deployment["metadata"]["labels"],
                                  values))
    return sorted(docs, key=lambda d: APPLY_ORDER.index(d["kind"]))


def deployment_state(deployment: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[str, str]:
    """``("ready" | "progressing" | "failed", why)`` of a Deployment (its status) and its pods, as the API
    returns them (camelCase dicts)."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    want = spec.get("replicas", 1)
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return "failed", f"the rollout stopped: {cond.get('message') or 'progress deadline exceeded'}"
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return "failed", f"pods cannot be created: {cond.get('message') or cond.get('reason')}"
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                return "failed", f"pod {pod['metadata']['name']}: {waiting['reason']}{detail}"
    current = status.get("observedGeneration", 0) >= (deployment.get("metadata") or {}).get("generation", 1)
    updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
    if current and updated >= want and available >= want and status.get("replicas", 0) == updated:
        return "ready", f"{available}/{want} available"
    return "progressing", f"{available}/{want} available, {updated} updated"


def exit_code(pods: list[dict[str, Any]]) -> int:
    """The last exit code a pod's container reported, or -1."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("lastState") or {}).get("terminated") or (cs.get("state") or {}).get("terminated")
            if term and term.get("exitCode") is not None:
                return int(term["exitCode"])
    return -1


class Cluster:
    """A connected client: the API client, the dynamic client and what was tried (for error messages)."""

    def __init__(self, api: Any, dynamic: Any, where: str) -> None:
        self.api, self.dynamic, self.where = api, dynamic, where
        self._resources: dict[str, Any] = {}

    def resource(self, kind: str) -> Any:
        if kind not in self._resources:
            self._resources[kind] = self.dynamic.resources.get(api_version=API_VERSIONS[kind], kind=kind)
        return self._resources[kind]


class KubernetesBuilder(Builder):
    config: KubernetesConfig

    def __init__(self, config: KubernetesConfig, ctx: PluginContext) -> None:
        super().__init__(config, ctx)
        # Built through a plugin manager as the platform builds any backend: its `requires` checked, its options
        # validated, its spec_name set.
        from mcp_agent_cloud.manager import PluginManager

        ref = config.image_builder
        pm = PluginManager()
        pm.register(importlib.import_module(IMAGE_BUILDERS[ref.name]), name=ref.name, builtin=True)
        self.image_builder = pm.build(pm.get_builder(ref.name), ref.options, ctx)
        self._cluster: Cluster | None = None
        self._connect_lock = anyio.Lock()

    # -- the cluster ---------------------------------------------------------------------------------------------

    def _kubeconfig_path(self) -> Path:
        if self.config.kubeconfig is not None:
            return self.config.kubeconfig.expanduser()
        return Path(os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config").expanduser()

    def _connect_blocking(self) -> Cluster:
        from kubernetes import client
        from kubernetes import config as kconfig
        from kubernetes.config.config_exception import ConfigException
        from kubernetes.dynamic import DynamicClient

        cfg = client.Configuration()
        tried = []
        where = None
        if self.config.kubeconfig is None and self.config.context is None:
            try:
                kconfig.load_incluster_config(client_configuration=cfg)
                where = "the in-cluster service account config"
            except ConfigException as exc:
                tried.append(f"the in-cluster config ({exc})")
        if where is None:
            path = self._kubeconfig_path()
            if not path.is_file():
                tried.append(f"kubeconfig {path} (no such file)")
                raise ValidationFailed(
                    f"no Kubernetes cluster is configured for the {self.spec_name} builder: "
                    f"tried {' and '.join(tried)}",
                    hint="set the builder's `kubeconfig` (and `context`) to a cluster's kubeconfig, or run the "
                         "platform as a pod in the cluster; `kubectl --kubeconfig PATH --context NAME version` "
                         "checks one")
            context = self.config.context
            try:
                if context is None:
                    context = kconfig.list_kube_config_contexts(config_file=str(path))[1]["name"]
                kconfig.load_kube_config(config_file=str(path), context=context, client_configuration=cfg,
                                         persist_config=False)
            except (ConfigException, KeyError, TypeError, ValueError, OSError) as exc:
                raise ValidationFailed(
                    f"the {self.spec_name} builder cannot use kubeconfig {path} (context {context or '(current)'}): "
                    f"{exc}", hint=f"list its contexts with `kubectl config get-contexts --kubeconfig {path}` and set "
                                   "the builder's `context` to one of them") from None
            where = f"kubeconfig {path}, context {context}"
        cfg.retries = 1  # a cluster that is down fails fast; callers retry at their own pace
        api = client.ApiClient(cfg)
        try:
            client.VersionApi(api).get_code(_request_timeout=self.config.request_timeout)
        except Exception as exc:  # refused, TLS, DNS, 401/403: all one answer, with the reason
            api.close()
            reason = getattr(exc, "reason", None) or exc
            raise BuildError(f"the {self.spec_name} builder cannot reach the cluster at {cfg.host} ({where}): "
                             f"{str(reason).splitlines()[0][:300]}",
                             hint="check that the cluster runs and that the kubeconfig and context point at it "
                                  "(`kubectl version`), then restart the platform or deploy again") from None
        host_key = hashlib.sha256(cfg.host.encode()).hexdigest()[:12]
        cache = Path(self.ctx.data_dir) / "kubernetes" / f"discovery-{host_key}.json"
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Cluster(api, DynamicClient(api, cache_file=str(cache)), where)

    async def cluster(self) -> Cluster:
        async with self._connect_lock:
            if self._cluster is None:
                self._cluster = await anyio.to_thread.run_sync(self._connect_blocking)
            return self._cluster

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A blocking client call in a worker thread; API and connection failures become platform errors. A 404
        stays the client's NotFoundError, for callers to handle."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError

        cluster = await self.cluster()
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
        except NotFoundError:
            raise
        except ApiException as exc:  # the dynamic client's DynamicApiError, or the typed client's
            why = exc.summary() if isinstance(exc, DynamicApiError) else f"{exc.status} {exc.reason}"
            raise MCPAgentCloudError(f"the Kubernetes API refused a request ({cluster.where}): {why}",
                                     hint="check the RBAC of the platform's account in the namespace "
                                          f"{self.config.namespace} (see docs/builders.md)") from None
        except Exception as exc:
            if type(exc).__module__.startswith(("urllib3", "socket", "ssl")) or isinstance(exc, OSError):
                raise MCPAgentCloudError(f"the Kubernetes API did not answer ({cluster.where}): {exc}",
                                         hint="check that the cluster is reachable (`kubectl version`)") from None
            raise

    async def resource(self, kind: str) -> Any:
        """The dynamic client's resource for ``kind`` (its discovery may call the API: in a thread too)."""
        cluster = await self.cluster()
        return await self.call(cluster.resource, kind)

    async def setup(self) -> None:
        await self.cluster()  # first: no cluster is the error an operator of this builder needs to see
        await self.image_builder.setup()

    async def aclose(self) -> None:
        await self.image_builder.aclose()
        if self._cluster is not None:
            await anyio.to_thread.run_sync(self._cluster.api.close)
            self._cluster = None

    @property
    def platform_id(self) -> str:
        return self.image_builder.platform_id

    def labels_for(self, ref: DeploymentRef, version: int | None = None) -> dict[str, str]:
        labels = {LABEL_PLATFORM: self.platform_id, LABEL_DEPLOYMENT: label_value(ref.id)}
        if version is not None:
            labels[LABEL_VERSION] = str(version)
        return labels

    # -- build -------------------------------------------------------------------------------------------------

    def check_options(self, options: Mapping[str, Any]) -> BaseModel | None:
        if (options or {}).get("mounts"):
            raise ValidationFailed("the kubernetes builder takes no mounts: a host path of the platform is not on "
                                   "the cluster's nodes", hint="deploy without `mounts`, or with the docker or "
                                                                "podman builder")
        return self.image_builder.check_options(options)

    async def build(self, request: BuildRequest, log: LogSink) -> Artifact:
        self.check_options(request.options)
        inner = await self.image_builder.build(request, log)
        if not inner.data.get("pushed"):
            raise BuildError(f"the image of version {request.version} was not pushed",
                             hint="set `push` in the kubernetes builder's `image_builder` options")
        plain_env = dict(request.manifest.env) if request.manifest else {}
        return Artifact(builder=self.spec_name, deployment=inner.deployment, version=inner.version, kind=inner.kind,
                        data={**inner.data, "image_builder": inner.builder, "plain_env": plain_env})

    async def remove(self, artifact: Artifact) -> None:
        """The image builder's local image; the pushed one stays in the registry."""
        await self.image_builder.remove(artifact)

    def export_k8s(self, artifact: Artifact, **kwargs: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """``mcp-agent export k8s`` of a version this builder built: the image builder's export, as is."""
        return self.image_builder.export_k8s(artifact, **kwargs)

    # -- what to apply -----------------------------------------------------------------------------------------

    def objects_to_apply(self, artifact: Artifact, env: Mapping[str, str], *, secrets_file_text: str | None = None,
                         start_id: str = "") -> tuple[list[dict[str, Any]], list[str]]:
        """Every object a start applies, in order, and the export's notes that still apply. Pure: no cluster."""
        plain, secret = split_env({str(k): str(v) for k, v in env.items()}, artifact.data.get("plain_env") or {})
        docs, notes = self.image_builder.export_k8s(
            artifact, namespace=self.config.namespace, image=artifact.data["pushed"], env=plain,
            secret_keys=sorted(secret), secrets_file=secrets_file_text is not None,
            instance=f"v{artifact.version}", labels=self.labels_for(artifact.deployment, artifact.version))
        objects = plan(docs, env_secrets=secret, secrets_file_text=secrets_file_text, start_id=start_id)
        return objects, [n for n in notes if not n.startswith("create the Secret")]  # this builder creates it

    def service_url(self, objects: list[dict[str, Any]]) -> str:
        service = next(d for d in objects if d["kind"] == "Service")
        return self.config.service_url.format(service=service["metadata"]["name"], namespace=self.config.namespace,
                                              port=service["spec"]["ports"][0]["port"])

    # -- run ---------------------------------------------------------------------------------------------------

    async def start(self, artifact: Artifact, *, env: Mapping[str, str], log_path: Path) -> Instance:
        cluster = await self.cluster()
        if not artifact.data.get("pushed"):
            raise BuildError(f"version {artifact.version} has no pushed image",
                             hint="deploy it again with the kubernetes builder (its image builder pushes)")
        text = None
        if file := (env or {}).get(SECRETS_FILE_ENV):
            text = await anyio.Path(file).read_text()
        start_id = secrets.token_hex(8)
        objects, notes = self.objects_to_apply(artifact, env or {}, secrets_file_text=text, start_id=start_id)
        deployment = next(d for d in objects if d["kind"] == "Deployment")
        name, ns = deployment["metadata"]["name"], self.config.namespace
        labels = self.labels_for(artifact.deployment, artifact.version)
        lines = [f"applying to {ns} ({cluster.where}): " + ", ".join(f"{d['kind']} {d['metadata']['name']}"
                                                                      for d in objects), *notes]
        lines.append(f"the instance runs in the cluster: its output is `kubectl -n {ns} logs deployment/{name}`")
        await self._log(log_path, lines)
        try:
            for doc in objects:
                await self.call(cluster.dynamic.server_side_apply, await self.resource(doc["kind"]), body=doc,
                                namespace=ns, field_manager=FIELD_MANAGER, force_conflicts=True,
                                _request_timeout=self.config.request_timeout)
            state, why = await self._wait_ready(name, labels, start_id)
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self._delete(labels)  # a failed start leaves nothing behind (no Instance to stop)
            raise
        await self._log(log_path, [f"deployment {ns}/{name} is available ({why})"])
        return Instance(builder=self.spec_name, deployment=artifact.deployment, version=artifact.version,
                        url=self.service_url(objects),
                        data={"namespace": ns, "deployment": name, "labels": labels, "start": start_id,
                              "log_path": str(log_path), "where": cluster.where})

    async def _log(self, log_path: Path | str, lines: list[str]) -> None:
        with contextlib.suppress(OSError):
            async with await anyio.open_file(log_path, "a", encoding="utf-8") as f:
                await f.write("".join(f"--- {line} ---\n" for line in lines))

    async def _read(self, name: str, labels: Mapping[str, str], start_id: str | None = None,
                    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The Deployment (None when gone) and its pods, as dicts; with ``start_id``, only that start's pods (an
        earlier start's pod that is going away does not fail this one)."""
        from kubernetes.dynamic.exceptions import NotFoundError

        ns = self.config.namespace
        try:
            dep = await self.call((await self.resource("Deployment")).get, name=name, namespace=ns,
                                  _request_timeout=self.config.request_timeout)
        except NotFoundError:
            return None, []
        pods = [p for p in await self._pods(labels) if start_id is None
                or ((p.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_START) == start_id]
        return dep.to_dict(), pods

    async def _pods(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        from kubernetes import client

        cluster = await self.cluster()
        core = client.CoreV1Api(cluster.api)
        found = await self.call(core.list_namespaced_pod, self.config.namespace, label_selector=selector(labels),
                                _request_timeout=self.config.request_timeout)
        return [cluster.api.sanitize_for_serialization(p) for p in found.items]

    async def _wait_ready(self, name: str, labels: Mapping[str, str], start_id: str) -> tuple[str, str]:
        deadline = time.monotonic() + self.config.ready_timeout
        ns = self.config.namespace
        while True:
            dep, pods = await self._read(name, labels, start_id)
            state, why = deployment_state(dep, pods) if dep else ("failed", "the Deployment vanished")
            if state == "ready":
                return state, why
            if state == "failed" or time.monotonic() > deadline:
                what = why if state == "failed" else f"not available after {self.config.ready_timeout:.0f}s ({why})"
                raise BuildError(f"deployment {ns}/{name}: {what}",
                                 hint=f"see `kubectl -n {ns} describe deployment {name}` and "
                                      f"`kubectl -n {ns} logs deployment/{name}`",
                                 log_tail=await self._pod_log_tail(pods))
            await anyio.sleep(READY_POLL)

    async def _pod_log_tail(self, pods: list[dict[str, Any]]) -> str:
        from kubernetes import client

        if not pods:
            return ""
        cluster = await self.cluster()
        with contextlib.suppress(Exception):
            return await self.call(client.CoreV1Api(cluster.api).read_namespaced_pod_log,
                                   pods[0]["metadata"]["name"], self.config.namespace, container="app",
                                   tail_lines=30, _request_timeout=self.config.request_timeout)
        return ""

    async def wait(self, instance: Instance) -> int:
        """Polls the Deployment until it is gone (-1) or fails (its container's last exit code). Kubernetes restarts
        a crashed container itself; a failure here is one it gave up on (a crash loop, an image it cannot pull). An
        API server that does not answer for a while is not a failure of the instance: it keeps polling."""
        name, labels = instance.data["deployment"], instance.data["labels"]
        while True:
            try:
                dep, pods = await self._read(name, labels, instance.data.get("start"))
            except MCPAgentCloudError:
                await anyio.sleep(WAIT_POLL)
                continue
            if dep is None:
                return -1
            state, why = deployment_state(dep, pods)
            if state == "failed":
                await self._log(instance.data.get("log_path") or os.devnull, [f"deployment {name} failed: {why}"])
                return exit_code(pods)
            await anyio.sleep(WAIT_POLL)

    async def stop(self, instance: Instance, *, timeout: float = 10.0) -> None:
        # Deleting the Deployment lets Kubernetes stop the pods gracefully (terminationGracePeriodSeconds);
        # `timeout` has no per-call equivalent there.
        labels = instance.data.get("labels")
        if labels:
            await self._delete(labels)

    async def _list(self, kind: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """The objects of ``kind`` in the namespace with these labels, as dicts."""
        found = await self.call((await self.resource(kind)).get, namespace=self.config.namespace,
                                label_selector=selector(labels), _request_timeout=self.config.request_timeout)
        items = found.to_dict().get("items") or []
        return [{**item, "kind": kind} for item in items]

    async def _delete(self, labels: Mapping[str, str]) -> list[str]:
        """Delete every object with these labels, the Deployment first. Idempotent."""
        from kubernetes.dynamic.exceptions import NotFoundError

        ns, removed = self.config.namespace, []
        for kind in reversed(APPLY_ORDER):
            resource = await self.resource(kind)
            for item in await self._list(kind, labels):
                name = item["metadata"]["name"]
                with contextlib.suppress(NotFoundError):
                    await self.call(resource.delete, name=name, namespace=ns, body={"propagationPolicy": "Background"},
                                    _request_timeout=self.config.request_timeout)
                    removed.append(f"{kind} {ns}/{name}")
        return removed

    async def is_alive(self, instance: Instance) -> bool:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            dep = await self.call((await self.resource("Deployment")).get, name=instance.data["deployment"],
                                  namespace=self.config.namespace, _request_timeout=self.config.request_timeout)
        except NotFoundError:
            return False
        return ((dep.to_dict().get("status") or {}).get("readyReplicas") or 0) >= 1

    async def stats(self, instance: Instance) -> dict[str, Any]:
        # A pod's CPU and memory come from metrics-server (metrics.k8s.io), which not every cluster runs: not read.
        return {}

    async def adopt_existing(self, instances: list[Instance]) -> list[Instance]:
        """A serving version's objects that are still there and available are taken over; every other object of the
        same deployments (another version's, a failed start's) is deleted."""
        adopted: list[Instance] = []
        for instance in instances:
            labels = self.labels_for(instance.deployment, instance.version)
            found = await self._list("Deployment", labels)
            if len(found) != 1:
                continue
            name = found[0]["metadata"]["name"]
            dep, pods = await self._read(name, labels)
            services = await self._list("Service", labels)
            if dep is not None and deployment_state(dep, pods)[0] == "ready" and len(services) == 1:
                adopted.append(instance.model_copy(update={"url": self.service_url(services), "data": {
                    **instance.data, "namespace": self.config.namespace, "deployment": name, "labels": labels}}))
        keep = {(i.deployment.id, i.version) for i in adopted}
        for ref in {i.deployment.id: i.deployment for i in instances}.values():
            versions = {(d["metadata"].get("labels") or {}).get(LABEL_VERSION, "")
                        for d in await self._list("Deployment", self.labels_for(ref))}
            for version in sorted(v for v in versions if v.isdigit()):
                if (ref.id, int(version)) not in keep:
                    await self._delete(self.labels_for(ref, int(version)))
        return adopted

    async def remove_deployment(self, deployment: DeploymentRef) -> list[str]:
        """The deployment's objects in the cluster, then what the image builder keeps for it (local images)."""
        removed = await self._delete(self.labels_for(deployment))
        return removed + await self.image_builder.remove_deployment(deployment)


@hookimpl
def mcp_agent_cloud_builders():
    yield BuilderSpec(
        name="kubernetes",
        backend=KubernetesBuilder,
        config_model=KubernetesConfig,
        description="builds and pushes an image with the docker or podman builder, and runs it in a Kubernetes "
        "cluster (server-side apply of the hardened manifests; untested against a live cluster here)",
        requires=("kubernetes",),
        extra="kubernetes",
    )
