"""The small, synchronous engine interface the container builders drive (``plugins/container.py``).

Each engine plugin (``docker``, ``podman``) implements it with its own Python SDK; the builder calls it from worker
threads. Everything engine-independent (build contexts, image keys, hardening, adoption, retention) lives in
``container.py``, so an engine adds only how to talk to its daemon.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal


class EngineError(Exception):
    """An engine call failed; ``message`` says what, in the engine's words."""


class EngineBuildError(EngineError):
    """``docker build`` failed: ``step`` is the Dockerfile step that failed (``Step 3/7 : RUN ...``), ``tail`` the
    last lines of its output."""

    def __init__(self, message: str, *, step: str = "", tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.tail = tail or []


@dataclasses.dataclass
class Mount:
    source: str  # a host path (bind) or a volume name (volume)
    target: str
    read_only: bool = True
    type: Literal["bind", "volume"] = "bind"


@dataclasses.dataclass
class RunSpec:
    """One container to create and start. ``port`` is published on ``host_ip``:``host_port`` (the builder picks a
    free one: an engine-picked port could change when the engine restarts the container)."""

    image: str
    name: str
    labels: dict[str, str]
    env: dict[str, str]
    command: list[str]
    port: int
    host_port: int | None = None  # None: the engine picks
    host_ip: str = "127.0.0.1"
    user: str | None = None
    workdir: str | None = None
    read_only: bool = True
    tmpfs: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> mount options
    no_new_privileges: bool = True
    cap_drop: list[str] = dataclasses.field(default_factory=lambda: ["ALL"])
    init: bool = True
    memory_bytes: int | None = None
    nano_cpus: int | None = None
    pids_limit: int | None = None
    network: str | None = None
    mounts: list[Mount] = dataclasses.field(default_factory=list)
    healthcheck: dict[str, Any] | None = None  # Docker API HealthConfig: Test, Interval, Timeout, Retries (ns)
    restart_policy: dict[str, Any] | None = None  # {"Name": "on-failure", "MaximumRetryCount": 3}


@dataclasses.dataclass
class ContainerInfo:
    id: str
    name: str
    status: str  # created, running, restarting, exited, dead, ...
    labels: dict[str, str]
    exit_code: int | None = None
    health: str | None = None  # starting, healthy, unhealthy (None without a health check)
    host_port: int | None = None  # where RunSpec.port is published
    restart_count: int = 0
    oom_killed: bool = False


@dataclasses.dataclass
class ImageInfo:
    id: str
    tags: list[str]
    labels: dict[str, str]


class Engine(abc.ABC):
    """A container engine's daemon. Methods block; the builder runs them in threads."""

    name: str = ""
    # Whether ContainerInfo.oom_killed is reliable: podman 4.3 on cgroup v1 never sets it (the exit code is 137).
    reports_oom: bool = True

    @abc.abstractmethod
    def ping(self) -> dict[str, Any]:
        """Version facts (``version``, ``api_version``); raises :class:`EngineError` when the daemon does not answer."""

    @abc.abstractmethod
    def image(self, ref: str) -> ImageInfo | None: ...

    @abc.abstractmethod
    def images(self, labels: dict[str, str]) -> list[ImageInfo]:
        """Images that carry every label given."""

    @abc.abstractmethod
    def build(self, context: Path, tag: str, *, labels: dict[str, str], on_line: Callable[[str], None],
              network: str | None = None) -> str:
        """Build ``context/Dockerfile`` as ``tag``, calling ``on_line`` for every output line; return the image id.
        Raises :class:`EngineBuildError` with the failing step."""

    @abc.abstractmethod
    def tag(self, image: str, ref: str) -> None: ...

    @abc.abstractmethod
    def push(self, ref: str, *, on_line: Callable[[str], None], tls_verify: bool = True,
             auth: dict[str, str] | None = None) -> None: ...

    @abc.abstractmethod
    def remove_image(self, ref: str) -> None:
        """Untag/remove; missing is fine; in use raises :class:`EngineError`."""

    @abc.abstractmethod
    def ensure_network(self, name: str, labels: dict[str, str]) -> str:
        """Create the bridge network if missing; return its IPv4 subnet (``10.89.0.0/24``), or "" if unknown."""

    @abc.abstractmethod
    def remove_network(self, name: str) -> None: ...

    @abc.abstractmethod
    def run(self, spec: RunSpec) -> str:
        """Create and start the container; return its id."""

    @abc.abstractmethod
    def inspect(self, container: str, port: int | None = None) -> ContainerInfo | None:
        """None when there is no such container."""

    @abc.abstractmethod
    def containers(self, labels: dict[str, str]) -> list[ContainerInfo]:
        """Every container (running or not) that carries every label given."""

    @abc.abstractmethod
    def logs(self, container: str, *, since: float | None = None) -> Iterator[bytes]:
        """Follow stdout and stderr from ``since`` (unix time) until the container stops."""

    @abc.abstractmethod
    def stop(self, container: str, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; missing or stopped is fine."""

    @abc.abstractmethod
    def remove(self, container: str) -> None:
        """Force-remove; missing is fine."""

    @abc.abstractmethod
    def stats(self, container: str) -> dict[str, Any]:
        """One sample: ``cpu_seconds``, ``memory_bytes``, ``memory_limit_bytes``, ``pids``."""

    def health(self, container: str, info: ContainerInfo) -> str | None:
        """The container's health as of now: what the engine's own timed probes last said, by default."""
        return info.health

    @abc.abstractmethod
    def exec(self, container: str, command: list[str]) -> tuple[int, str]:
        """Run ``command`` in the running container; return its exit code and output (for health and tests)."""

    @abc.abstractmethod
    def remove_volume(self, name: str) -> None:
        """Missing is fine."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release the client."""
