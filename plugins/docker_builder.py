"""Built-in builder ``docker``: each deployment version is an image, each instance a hardened container.

Talks to the Docker engine through the Python ``docker`` SDK (the ``docker`` extra), imported only when this builder
is used. The shared image and container logic is :mod:`mcp_agent_cloud.plugins.container`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import BuilderSpec
from mcp_agent_cloud.plugins.container import ContainerBuilder, ContainerConfig
from mcp_agent_cloud.plugins.engine import (
    ContainerInfo,
    Engine,
    EngineBuildError,
    EngineError,
    ImageInfo,
    RunSpec,
)

STEP = re.compile(r"^Step \d+/\d+ : ")


def api_error(exc: Exception) -> EngineError:
    explanation = getattr(exc, "explanation", None)
    return EngineError(str(explanation or exc))


def build_stream(chunks: Iterator[dict], on_line: Callable[[str], None]) -> str:
    """Follow the JSON messages of ``POST /build`` (the Docker API; Podman's compat API sends the same): feed each
    output line to ``on_line``, return the image id, raise :class:`EngineBuildError` naming the failing step."""
    step, tail, image_id, pending = "", [], "", ""
    for chunk in chunks:
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail") or {}
            message = (detail.get("message") or chunk.get("error") or "build failed").strip()
            on_line(message)
            raise EngineBuildError(message, step=step, tail=[*tail[-30:], message])
        if isinstance(chunk.get("aux"), dict) and chunk["aux"].get("ID"):
            image_id = chunk["aux"]["ID"]
        text = pending + (chunk.get("stream") or "")
        *lines, pending = text.split("\n")
        for line in lines:
            line = line.rstrip("\r")
            if not line.strip():
                continue
            if STEP.match(line) or line.startswith("STEP "):
                step, tail = line, []
            else:
                tail.append(line)
            if match := re.match(r"Successfully built ([0-9a-f]+)", line):
                image_id = image_id or match.group(1)
            on_line(line)
    if pending.strip():
        on_line(pending.strip())
    return image_id


class DockerEngine(Engine):
    name = "docker"

    def __init__(self, base_url: str | None, timeout: float) -> None:
        import docker  # the `docker` extra; the spec's `requires` checked it is there

        self.docker = docker
        self.errors = docker.errors
        try:
            self.client = (docker.DockerClient(base_url=base_url, timeout=int(timeout)) if base_url
                           else docker.from_env(timeout=int(timeout)))
        except docker.errors.DockerException as exc:
            raise EngineError(str(exc)) from None

    def ping(self) -> dict[str, Any]:
        try:
            v = self.client.version()
        except (self.errors.DockerException, OSError) as exc:
            raise EngineError(str(exc)) from None
        return {"version": v.get("Version"), "api_version": v.get("ApiVersion")}

    @staticmethod
    def _image(img) -> ImageInfo:
        return ImageInfo(id=img.id, tags=list(img.tags), labels=dict(img.labels or {}))

    def image(self, ref: str) -> ImageInfo | None:
        try:
            return self._image(self.client.images.get(ref))
        except self.errors.ImageNotFound:
            return None
        except self.errors.APIError as exc:
            raise api_error(exc) from None

    def images(self, labels: dict[str, str]) -> list[ImageInfo]:
        flt = {"label": [f"{k}={v}" for k, v in labels.items()]}
        return [self._image(i) for i in self.client.images.list(filters=flt)]

    def build(self, context: Path, tag: str, *, labels: dict[str, str], on_line: Callable[[str], None],
              network: str | None = None) -> str:
        try:
            chunks = self.client.api.build(path=str(context), tag=tag, labels=labels, rm=True, forcerm=True,
                                           decode=True, network_mode=network)
            image_id = build_stream(chunks, on_line)
        except self.errors.APIError as exc:
            raise EngineBuildError(str(api_error(exc))) from None
        info = self.image(tag)
        return info.id if info else image_id

    def tag(self, image: str, ref: str) -> None:
        repo, _, tag = ref.rpartition(":")
        self.client.api.tag(image, repo, tag)

    def push(self, ref: str, *, on_line: Callable[[str], None], tls_verify: bool = True,
             auth: dict[str, str] | None = None) -> None:
        repo, _, tag = ref.rpartition(":")
        try:
            for chunk in self.client.api.push(repo, tag=tag, stream=True, decode=True, auth_config=auth):
                if "error" in chunk or "errorDetail" in chunk:
                    raise EngineError((chunk.get("errorDetail") or {}).get("message") or chunk.get("error"))
                if chunk.get("status") and not chunk.get("progressDetail"):
                    on_line(" ".join(str(chunk[k]) for k in ("id", "status") if chunk.get(k)))
        except self.errors.APIError as exc:
            raise api_error(exc) from None

    def remove_image(self, ref: str) -> None:
        try:
            self.client.images.remove(ref, noprune=False)
        except self.errors.ImageNotFound:
            pass
        except self.errors.APIError as exc:
            raise api_error(exc) from None

    def ensure_network(self, name: str, labels: dict[str, str]) -> str:
        try:
            net = self.client.networks.get(name)
        except self.errors.NotFound:
            try:
                net = self.client.networks.create(name, driver="bridge", labels=labels, check_duplicate=True)
            except self.errors.APIError as exc:  # created meanwhile by another platform process
                if exc.status_code != 409:
                    raise api_error(exc) from None
                net = self.client.networks.get(name)
            net.reload()
        configs = ((net.attrs.get("IPAM") or {}).get("Config")) or []
        return next((c["Subnet"] for c in configs if c.get("Subnet") and ":" not in c["Subnet"]), "")

    def remove_network(self, name: str) -> None:
        try:
            self.client.networks.get(name).remove()
        except self.errors.NotFound:
            pass
        except self.errors.APIError as exc:
            raise api_error(exc) from None

    def run(self, spec: RunSpec) -> str:
        types = self.docker.types
        mounts = [types.Mount(target=m.target, source=m.source, type=m.type, read_only=m.read_only)
                  for m in spec.mounts]
        kwargs: dict[str, Any] = dict(
            command=spec.command, name=spec.name, labels=spec.labels, environment=spec.env, detach=True,
            user=spec.user, working_dir=spec.workdir, read_only=spec.read_only, tmpfs=spec.tmpfs or None,
            security_opt=["no-new-privileges:true"] if spec.no_new_privileges else None,
            cap_drop=spec.cap_drop or None, init=spec.init, pids_limit=spec.pids_limit, nano_cpus=spec.nano_cpus,
            ports={f"{spec.port}/tcp": (spec.host_ip, spec.host_port)}, network=spec.network, mounts=mounts,
            healthcheck=spec.healthcheck, restart_policy=spec.restart_policy,
        )
        if spec.memory_bytes:
            kwargs.update(mem_limit=spec.memory_bytes, memswap_limit=spec.memory_bytes)  # no swap beyond the limit
        try:
            return self.client.containers.run(spec.image, **kwargs).id
        except self.errors.ImageNotFound as exc:
            raise EngineError(f"image {spec.image} not found: {api_error(exc)}") from None
        except self.errors.APIError as exc:
            raise api_error(exc) from None

    @staticmethod
    def _info(attrs: dict, port: int | None) -> ContainerInfo:
        state = attrs.get("State") or {}
        host_port = None
        if port is not None:
            bound = ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
            host_port = next((int(b["HostPort"]) for b in bound if b.get("HostPort")), None)
        return ContainerInfo(
            id=attrs["Id"], name=attrs.get("Name", "").lstrip("/"), status=state.get("Status", "unknown"),
            labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
            exit_code=state.get("ExitCode") if state.get("Status") in ("exited", "dead") else None,
            health=(state.get("Health") or {}).get("Status"), host_port=host_port,
            restart_count=int(attrs.get("RestartCount") or 0), oom_killed=bool(state.get("OOMKilled")))

    def inspect(self, container: str, port: int | None = None) -> ContainerInfo | None:
        try:
            return self._info(self.client.api.inspect_container(container), port)
        except self.errors.NotFound:
            return None
        except self.errors.APIError as exc:
            raise api_error(exc) from None

    def containers(self, labels: dict[str, str]) -> list[ContainerInfo]:
        flt = {"label": [f"{k}={v}" for k, v in labels.items()]}
        out = []
        for summary in self.client.api.containers(all=True, filters=flt):
            if (info := self.inspect(summary["Id"])) is not None:
                out.append(info)
        return out

    def logs(self, container: str, *, since: float | None = None) -> Iterator[bytes]:
        try:
            yield from self.client.api.logs(container, stream=True, follow=True, stdout=True, stderr=True,
                                            since=int(since) if since else None)
        except (self.errors.NotFound, self.errors.APIError):
            return

    def log_frames(self, container: str, *, since: float | None = None) -> Iterator[tuple[str, bytes]]:
        """Like :meth:`logs`, as ``(stream, chunk)``: the SDK merges the streams without saying which is which,
        so each stream is followed on its own."""
        import queue
        import threading

        chunks: queue.Queue[tuple[str, bytes] | None] = queue.Queue()

        def follow(stream: str) -> None:
            try:
                for chunk in self.client.api.logs(container, stream=True, follow=True, stdout=stream == "stdout",
                                                  stderr=stream == "stderr", since=int(since) if since else None):
                    chunks.put((stream, chunk))
            except (self.errors.NotFound, self.errors.APIError):
                pass
            finally:
                chunks.put(None)

        for stream in ("stdout", "stderr"):
            threading.Thread(target=follow, args=(stream,), daemon=True, name=f"{stream}-{container[:12]}").start()
        open_streams = 2
        while open_streams:
            item = chunks.get()
            if item is None:
                open_streams -= 1
            else:
                yield item

    def stop(self, container: str, timeout: float) -> None:
        try:
            self.client.api.stop(container, timeout=max(1, int(round(timeout))))
        except self.errors.NotFound:
            pass
        except self.errors.APIError as exc:
            raise api_error(exc) from None

    def remove(self, container: str) -> None:
        try:
            self.client.api.remove_container(container, force=True, v=False)
        except self.errors.NotFound:
            pass
        except self.errors.APIError as exc:
            if exc.status_code != 409:  # removal already in progress
                raise api_error(exc) from None

    def stats(self, container: str) -> dict[str, Any]:
        try:
            raw = self.client.api.stats(container, stream=False, one_shot=True)
        except (self.errors.NotFound, self.errors.APIError):
            return {}
        return stats_from_api(raw)

    def exec(self, container: str, command: list[str]) -> tuple[int, str]:
        try:
            code, output = self.client.containers.get(container).exec_run(command)
        except self.errors.APIError as exc:
            raise api_error(exc) from None
        return int(code if code is not None else -1), (output or b"").decode(errors="replace")

    def remove_volume(self, name: str) -> None:
        try:
            self.client.api.remove_volume(name, force=True)
        except self.errors.NotFound:
            pass
        except self.errors.APIError as exc:
            raise api_error(exc) from None

    def close(self) -> None:
        self.client.close()


def stats_from_api(raw: dict) -> dict[str, Any]:
    """The fields of a Docker-API stats sample that ``mcp-agent status`` shows."""
    if isinstance(raw, (bytes, str)):
        raw = json.loads(raw)
    cpu = ((raw.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0
    memory = raw.get("memory_stats") or {}
    usage = memory.get("usage") or 0
    # What `docker stats` shows: usage minus the page cache the kernel can drop.
    cache = (memory.get("stats") or {}).get("total_inactive_file") or (memory.get("stats") or {}).get("inactive_file") or 0
    out = {"cpu_seconds": round(cpu / 1e9, 3), "memory_bytes": max(0, usage - cache),
           "memory_limit_bytes": memory.get("limit") or None}
    if (pids := (raw.get("pids_stats") or {}).get("current")) is not None:
        out["pids"] = pids
    return out


class DockerConfig(ContainerConfig):
    host: str | None = Field(None, description="the engine's address, e.g. unix:///var/run/docker.sock or "
                             "tcp://127.0.0.1:2375 (default: DOCKER_HOST, then the default socket)")


class DockerBuilder(ContainerBuilder):
    config: DockerConfig
    # Docker deletes foreign jumps from FORWARD when it creates a network; DOCKER-USER is the chain it keeps for
    # its users and evaluates before its own rules.
    egress_parents = ("DOCKER-USER", "FORWARD")

    def make_engine(self) -> Engine:
        return DockerEngine(self.config.host, self.config.engine_timeout)


@hookimpl
def mcp_agent_cloud_builders():
    yield BuilderSpec(
        name="docker",
        backend=DockerBuilder,
        config_model=DockerConfig,
        description="builds an image per version and runs it as a hardened container on the Docker engine "
        "(non-root, read-only, no capabilities, resource limits, loopback-only ports)",
        requires=("docker",),
        extra="docker",
    )
