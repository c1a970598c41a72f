"""Built-in builder ``podman``: the same images and hardened containers as ``docker``, on Podman.

Talks to Podman's API service through the Python ``podman`` SDK (the ``podman`` extra), imported only when this
builder is used. Builds and containers go through the libpod endpoints directly (``client.api``): podman-py's
high-level ``containers.create`` drops tmpfs mounts and CPU limits, and its ``images.push`` does not read the push
stream, so a failed push would look like a success.
"""

from __future__ import annotations

import json
import re
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import BuilderSpec
from mcp_agent_cloud.plugins.container import ContainerBuilder, ContainerConfig
from mcp_agent_cloud.plugins.docker_builder import build_stream
from mcp_agent_cloud.plugins.engine import (
    ContainerInfo,
    Engine,
    EngineBuildError,
    EngineError,
    ImageInfo,
    RunSpec,
)

DEFAULT_HOST = "unix:///run/podman/podman.sock"
READ_RETRIES = 4
BUILD_RETRIES = 2
STORAGE_RACE = re.compile(r"(image|layer) not known")
CPU_PERIOD = 100_000  # microseconds; quota = nano_cpus * period / 1e9


def _quote(ref: str) -> str:
    return urllib.parse.quote(ref, safe="")


def _filters(labels: dict[str, str]) -> str:
    # podman 4.3 matches nothing when given two label filters: the service filters by one, _has_labels by all
    first = next(iter(labels.items()), None)
    return json.dumps({"label": [f"{first[0]}={first[1]}"]} if first else {})


def _has_labels(have: dict[str, str] | None, want: dict[str, str]) -> bool:
    return all((have or {}).get(k) == v for k, v in want.items())


class PodmanEngine(Engine):
    name = "podman"
    reports_oom = False

    def __init__(self, base_url: str | None, timeout: float) -> None:
        import podman  # the `podman` extra; the spec's `requires` checked it is there

        self.errors = podman.errors
        self.tar = podman.api.create_tar
        url = base_url or os.environ.get("CONTAINER_HOST") or DEFAULT_HOST
        try:
            self.client = podman.PodmanClient(base_url=url, timeout=timeout)
        except (self.errors.PodmanError, ValueError) as exc:
            raise EngineError(f"cannot use the Podman service at {url}: {exc}") from None
        self.api = self.client.api

    # -- raw libpod calls -------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, ok: tuple[int, ...] = (), missing_ok: bool = False,
              repeatable: bool = False, **kwargs):
        """One libpod request; its APIResponse, or None when the object is missing and that is fine. A
        ``repeatable`` write (one that changes nothing when it fails) is retried like a read."""
        for attempt in range(READ_RETRIES + 1):
            try:
                response = getattr(self.api, method)(path, **kwargs)
            except self.errors.APIError as exc:  # the socket does not answer
                raise EngineError(f"{exc}: {getattr(exc, 'explanation', '') or 'the Podman service does not answer'}"
                                  ) from None
            # Podman's storage gives no consistent snapshot: a read that meets an image being removed elsewhere
            # fails with 500 "image not known" (containers/podman#24800). Reads are safe to repeat.
            if not ((method == "get" or repeatable) and response.status_code == 500 and attempt < READ_RETRIES
                    and "not known" in self._message(response)):
                break
            time.sleep(0.1 * (attempt + 1))
        if response.status_code in ok:
            return response
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 400:
            raise EngineError(self._message(response))
        return response

    @staticmethod
    def _message(response) -> str:
        try:
            body = response.json()
            return str(body.get("message") or body.get("cause") or body)
        except ValueError:
            return response.text.strip() or f"HTTP {response.status_code}"

    # -- engine ---------------------------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        v = self._call("get", "/version").json()
        return {"version": v.get("Version"), "api_version": v.get("ApiVersion")}

    @staticmethod
    def _image(attrs: dict) -> ImageInfo:
        labels = attrs.get("Labels") or (attrs.get("Config") or {}).get("Labels") or {}
        return ImageInfo(id=attrs["Id"], tags=list(attrs.get("RepoTags") or []), labels=dict(labels))

    def image(self, ref: str) -> ImageInfo | None:
        response = self._call("get", f"/images/{_quote(ref)}/json", missing_ok=True)
        return self._image(response.json()) if response is not None else None

    def images(self, labels: dict[str, str]) -> list[ImageInfo]:
        listed = self._call("get", "/images/json", params={"filters": _filters(labels)}).json() or []
        return [info for info in map(self._image, listed) if _has_labels(info.labels, labels)]

    def build(self, context: Path, tag: str, *, labels: dict[str, str], on_line: Callable[[str], None],
              network: str | None = None) -> str:
        params: dict[str, Any] = {"t": tag, "dockerfile": "Dockerfile", "labels": json.dumps(labels), "rm": True,
                                  "forcerm": True, "layers": True}
        if network:
            params["networkmode"] = network
        for attempt in range(BUILD_RETRIES + 1):
            body = self.tar(anchor=str(context))
            try:
                response = self._call("post", "/build", params=params, data=body, stream=True,
                                      headers={"Content-type": "application/x-tar"}, timeout=None)
                image_id = build_stream(self._json_lines(response), on_line)
                break
            except EngineBuildError as exc:
                # Concurrent builds share cached layers, and one's forcerm can remove a layer while another reads
                # it: that is no fault of the Dockerfile, and a second build redoes the missing layer.
                if attempt == BUILD_RETRIES or not STORAGE_RACE.search(str(exc)):
                    raise
                on_line(f"podman storage changed under the build ({exc}); building again")
            except EngineError as exc:
                raise EngineBuildError(str(exc)) from None
            finally:
                body.close()
        info = self.image(tag)
        if info is None:  # podman reports some failures only by not producing the image
            raise EngineBuildError(f"the build ended without producing {tag}")
        return info.id or image_id

    @staticmethod
    def _json_lines(response) -> Iterator[dict]:
        # libpod streams one JSON object per line; a line that does not decode is build output as it is
        for raw in response.iter_lines():
            if not raw:
                continue
            try:
                chunk = json.loads(raw)
            except ValueError:
                chunk = {"stream": raw.decode(errors="replace") + "\n"}
            if isinstance(chunk, dict):
                yield chunk

    def tag(self, image: str, ref: str) -> None:
        repo, _, tag = ref.rpartition(":")
        self._call("post", f"/images/{_quote(image)}/tag", params={"repo": repo, "tag": tag}, ok=(201,))

    def push(self, ref: str, *, on_line: Callable[[str], None], tls_verify: bool = True,
             auth: dict[str, str] | None = None) -> None:
        headers = {"X-Registry-Auth": self._auth_header(auth)} if auth else {}
        response = self._call("post", f"/images/{_quote(ref)}/push", params={"tlsVerify": tls_verify},
                              headers=headers, stream=True, timeout=None)
        for chunk in self._json_lines(response):
            if chunk.get("error") or chunk.get("errorDetail"):
                raise EngineError((chunk.get("errorDetail") or {}).get("message") or chunk["error"])
            if line := (chunk.get("stream") or chunk.get("status") or "").strip():
                on_line(line)

    @staticmethod
    def _auth_header(auth: dict[str, str]) -> str:
        import base64

        return base64.urlsafe_b64encode(json.dumps(auth).encode()).decode()

    def remove_image(self, ref: str) -> None:
        response = self._call("delete", f"/images/{_quote(ref)}", missing_ok=True, ok=(409,))
        if response is not None and response.status_code == 409:
            raise EngineError(self._message(response))

    def ensure_network(self, name: str, labels: dict[str, str]) -> str:
        response = self._call("get", f"/networks/{_quote(name)}/json", missing_ok=True)
        if response is None:
            created = self._call("post", "/networks/create", ok=(409,),
                                 data=json.dumps({"name": name, "driver": "bridge", "labels": labels}),
                                 headers={"Content-Type": "application/json"})
            if created.status_code == 409:  # created meanwhile by another platform process
                created = self._call("get", f"/networks/{_quote(name)}/json")
            response = created
        net = response.json()
        subnets = [s.get("subnet", "") for s in net.get("subnets") or []]
        return next((s for s in subnets if s and ":" not in s), "")

    def remove_network(self, name: str) -> None:
        self._call("delete", f"/networks/{_quote(name)}", missing_ok=True)

    @staticmethod
    def spec_generator(spec: RunSpec) -> dict[str, Any]:
        """The libpod SpecGenerator for a :class:`RunSpec` (the same hardening the docker builder applies)."""
        limits: dict[str, Any] = {}
        if spec.memory_bytes:
            limits["memory"] = {"limit": spec.memory_bytes, "swap": spec.memory_bytes}  # no swap beyond the limit
        if spec.nano_cpus:
            limits["cpu"] = {"quota": int(spec.nano_cpus * CPU_PERIOD / 1e9), "period": CPU_PERIOD}
        if spec.pids_limit:
            limits["pids"] = {"limit": spec.pids_limit}
        mounts = [{"destination": path, "source": "tmpfs", "type": "tmpfs",
                   "options": [o for o in options.split(",") if o]} for path, options in spec.tmpfs.items()]
        volumes = []
        for m in spec.mounts:
            mode = "ro" if m.read_only else "rw"
            if m.type == "volume":
                volumes.append({"Name": m.source, "Dest": m.target, "Options": [mode]})
            else:
                mounts.append({"destination": m.target, "source": m.source, "type": "bind",
                               "options": ["rbind", mode]})
        body: dict[str, Any] = {
            "name": spec.name, "image": spec.image, "command": spec.command, "env": spec.env,
            "labels": spec.labels, "read_only_filesystem": spec.read_only, "no_new_privileges": spec.no_new_privileges,
            "cap_drop": spec.cap_drop, "init": spec.init, "resource_limits": limits, "mounts": mounts,
            "volumes": volumes,
            "portmappings": [{"host_ip": spec.host_ip, "host_port": spec.host_port or 0,
                              "container_port": spec.port, "protocol": "tcp"}],
        }
        if spec.user:
            body["user"] = spec.user
        if spec.workdir:
            body["work_dir"] = spec.workdir
        if spec.network:
            body["netns"] = {"nsmode": "bridge"}
            body["Networks"] = {spec.network: {}}
        if spec.healthcheck:
            hc = spec.healthcheck
            body["healthconfig"] = {"Test": hc.get("Test") or hc.get("test"), "Interval": hc.get("Interval", 0),
                                    "Timeout": hc.get("Timeout", 0), "Retries": hc.get("Retries", 0),
                                    "StartPeriod": hc.get("StartPeriod", 0)}
        if spec.restart_policy and spec.restart_policy.get("Name"):
            body["restart_policy"] = spec.restart_policy["Name"]
            if spec.restart_policy.get("MaximumRetryCount"):
                body["restart_tries"] = spec.restart_policy["MaximumRetryCount"]
        return body

    def run(self, spec: RunSpec) -> str:
        try:
            # A create that fails creates nothing; it meets the same storage race when another build's cleanup
            # removes a layer the image shares.
            created = self._call("post", "/containers/create", data=json.dumps(self.spec_generator(spec)),
                                 headers={"Content-Type": "application/json"}, ok=(404,), repeatable=True)
        except EngineError as exc:
            raise EngineError(f"creating the container: {exc}") from None
        if created.status_code == 404:
            raise EngineError(f"image {spec.image} not found: {self._message(created)}")
        container = created.json()["Id"]
        try:
            self._call("post", f"/containers/{container}/start", ok=(304,))
        except EngineError as exc:
            self.remove(container)
            raise EngineError(f"starting the container: {exc}") from None
        return container

    @staticmethod
    def _info(attrs: dict, port: int | None) -> ContainerInfo:
        state = attrs.get("State") or {}
        host_port = None
        if port is not None:
            bound = ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
            host_port = next((int(b["HostPort"]) for b in bound if b.get("HostPort")), None)
        status = state.get("Status", "unknown")
        if status == "stopped":  # libpod's word for a container that ran and ended
            status = "exited"
        health = (state.get("Health") or state.get("Healthcheck") or {}).get("Status") or None
        return ContainerInfo(
            id=attrs["Id"], name=attrs.get("Name", "").lstrip("/"), status=status,
            labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
            exit_code=state.get("ExitCode") if status in ("exited", "dead") else None,
            health=health, host_port=host_port,
            restart_count=int(attrs.get("RestartCount") or 0), oom_killed=bool(state.get("OOMKilled")))

    def inspect(self, container: str, port: int | None = None) -> ContainerInfo | None:
        response = self._call("get", f"/containers/{_quote(container)}/json", missing_ok=True)
        return self._info(response.json(), port) if response is not None else None

    def containers(self, labels: dict[str, str]) -> list[ContainerInfo]:
        listed = self._call("get", "/containers/json", params={"all": True, "filters": _filters(labels)}).json()
        out = []
        for summary in listed or []:
            if not _has_labels(summary.get("Labels"), labels):
                continue
            if (info := self.inspect(summary["Id"])) is not None:
                out.append(info)
        return out

    def health(self, container: str, info: ContainerInfo) -> str | None:
        # Podman times its health probes with systemd timers; without systemd they never run and the status
        # stays "starting". Asking runs the probe once, now.
        if info.health is None:
            return None
        try:
            response = self._call("get", f"/containers/{_quote(container)}/healthcheck", missing_ok=True)
            if response is None:
                return None
            return (response.json() or {}).get("Status") or info.health
        except (EngineError, ValueError):
            return info.health

    def logs(self, container: str, *, since: float | None = None) -> Iterator[bytes]:
        for _, chunk in self.log_frames(container, since=since):
            yield chunk

    def log_frames(self, container: str, *, since: float | None = None) -> Iterator[tuple[str, bytes]]:
        """Like :meth:`logs`, as ``(stream, chunk)``, from the stream byte of each frame's 8-byte header."""
        params: dict[str, Any] = {"follow": True, "stdout": True, "stderr": True}
        if since:
            params["since"] = int(since)
        try:
            response = self._call("get", f"/containers/{_quote(container)}/logs", params=params, stream=True,
                                  timeout=None, missing_ok=True)
            if response is None:
                return
            while len(header := response.raw.read(8)) == 8:
                size = int.from_bytes(header[4:8], "big")
                data = response.raw.read(size) if size else b""
                if size and not data:
                    return
                if data:
                    yield ("stderr" if header[0] == 2 else "stdout"), data
        except (EngineError, OSError):
            return

    def stop(self, container: str, timeout: float) -> None:
        self._call("post", f"/containers/{_quote(container)}/stop", params={"timeout": max(1, int(round(timeout)))},
                   ok=(304,), missing_ok=True, timeout=timeout + 30)

    def remove(self, container: str) -> None:
        self._call("delete", f"/containers/{_quote(container)}", params={"force": True}, ok=(409,),
                   missing_ok=True)

    def stats(self, container: str) -> dict[str, Any]:
        try:
            response = self._call("get", "/containers/stats", params={"containers": container, "stream": False})
            sample = (response.json().get("Stats") or [{}])[0]
        except (EngineError, ValueError, IndexError):
            return {}
        out: dict[str, Any] = {"cpu_seconds": round((sample.get("CPUNano") or 0) / 1e9, 3),
                               "memory_bytes": sample.get("MemUsage") or 0,
                               "memory_limit_bytes": sample.get("MemLimit") or None}
        if sample.get("PIDs") is not None:
            out["pids"] = sample["PIDs"]
        return out

    def exec(self, container: str, command: list[str]) -> tuple[int, str]:
        try:
            code, output = self.client.containers.get(container).exec_run(command)
        except self.errors.APIError as exc:
            raise EngineError(str(getattr(exc, "explanation", None) or exc)) from None
        return int(code if code is not None else -1), (output or b"").decode(errors="replace")

    def remove_volume(self, name: str) -> None:
        self._call("delete", f"/volumes/{_quote(name)}", params={"force": True}, missing_ok=True)

    def close(self) -> None:
        self.client.close()


class PodmanConfig(ContainerConfig):
    host: str | None = Field(None, description="the Podman API service's address, e.g. "
                             "unix:///run/podman/podman.sock (default: CONTAINER_HOST, then that socket)")


class PodmanBuilder(ContainerBuilder):
    config: PodmanConfig
    image_prefix = "localhost/"  # podman names unqualified local images localhost/NAME

    def make_engine(self) -> Engine:
        return PodmanEngine(self.config.host, self.config.engine_timeout)


@hookimpl
def mcp_agent_cloud_builders():
    yield BuilderSpec(
        name="podman",
        backend=PodmanBuilder,
        config_model=PodmanConfig,
        description="builds an image per version and runs it as a hardened container on Podman "
        "(non-root, read-only, no capabilities, resource limits, loopback-only ports)",
        requires=("podman",),
        extra="podman",
    )
