"""Deployment secrets on the platform side: declarations, handles, and resolution at every (re)start.

A deployment declares the keys it needs (:class:`SecretRef`); the values live only in the secrets backend, under
the scope ``{org}/{deployment}``. The registry keeps the declarations and their handles
(``secret://{org}/{deployment}/{KEY}``), never a value. At start the platform fetches a value of every
declared key (the version pinned by the last healthy start, or the latest for a deploy or a rotation) and hands
them to the instance as environment variables, or as a resolved ``mcp_agent.secrets.yaml`` on a tmpfs
(:class:`SecretFiles`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets as _random
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import BuildError, ConflictError, NotFoundError, ValidationFailed

log = logging.getLogger("mcp_agent_cloud.platform")

KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HANDLE_RE = re.compile(r"secret://([a-z][a-z0-9-]*)/([a-z][a-z0-9-]*)/([A-Za-z_][A-Za-z0-9_]*)")
MAX_KEY = 128
MAX_VALUE = 64 * 1024
SECRETS_FILENAME = "mcp_agent.secrets.yaml"
# Our own variable: the mcp-agent framework reads no variable for its secrets file (it looks next to its config
# file), so apps of kind `app` also get a link to the file in their directory; see docs/secrets.md.
SECRETS_FILE_ENV = "MCP_AGENT_SECRETS_FILE"


def validate_key(key: str, *, internal_ok: bool = False) -> str:
    """A secret key is an environment variable name. Keys starting with ``_`` belong to the platform."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key) or len(key) > MAX_KEY:
        raise ValidationFailed(f"invalid secret key {key!r}: use letters, digits and '_', not starting with a digit "
                               f"(at most {MAX_KEY} characters)", hint="e.g. OPENAI_API_KEY or OPENAI__API_KEY")
    if key.startswith("_") and not internal_ok:
        raise ValidationFailed(f"secret key {key!r} is reserved: keys starting with '_' are the platform's own",
                               hint="pick a name that starts with a letter")
    return key


def key_to_path(key: str) -> str:
    """``OPENAI__API_KEY`` -> ``openai.api_key``: the nesting pydantic-settings reads from ``__``."""
    return ".".join(part.lower() for part in key.split("__"))


class SecretRef(BaseModel):
    """One secret a deployment declares. The platform adds the handle; a request cannot name another scope."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="environment variable name, e.g. OPENAI__API_KEY")
    kind: Literal["developer", "user"] = Field("developer", description="developer: known at deploy; user: set "
                                                                        "later with `mcp-agent secrets set`")
    path: str | None = Field(None, description="dotted path in mcp_agent.secrets.yaml (default: from the key, "
                                               "OPENAI__API_KEY -> openai.api_key)")

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        try:
            return validate_key(v)
        except ValidationFailed as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _path(self) -> SecretRef:
        if self.path is None:
            self.path = key_to_path(self.key)
        parts = self.path.split(".")
        if len(self.path) > 512 or any(not p or p != p.strip() or any(ord(c) < 32 for c in p) for p in parts):
            raise ValueError(f"invalid path {self.path!r} for {self.key}: use dotted names such as openai.api_key")
        return self

    @classmethod
    def stored(cls, raw: dict) -> SecretRef:
        """A declaration read back from a version's options (which also hold its handle)."""
        return cls.model_validate({k: v for k, v in raw.items() if k != "handle"})


def make_handle(org: str, deployment: str, key: str) -> str:
    return f"secret://{org}/{deployment}/{key}"


def parse_handle(handle: str) -> tuple[str, str, str]:
    m = HANDLE_RE.fullmatch(handle or "")
    if m is None:
        raise ValidationFailed(f"invalid secret handle {handle!r}", hint="expected secret://ORG/DEPLOYMENT/KEY")
    return m.group(1), m.group(2), m.group(3)


def scope_of(org: str, deployment: str) -> str:
    return f"{org}/{deployment}"


def check_refs(refs: list[SecretRef]) -> None:
    """Keys are unique, and no path sits inside another (the file could not hold both)."""
    seen: dict[str, SecretRef] = {}
    paths: dict[tuple[str, ...], str] = {}
    for ref in refs:
        if ref.key in seen:
            raise ValidationFailed(f"secret {ref.key} is declared twice", hint="declare each key once")
        seen[ref.key] = ref
        parts = tuple(ref.path.split("."))
        for other, key in paths.items():
            n = min(len(other), len(parts))
            if other[:n] == parts[:n]:
                raise ValidationFailed(f"secrets {key} ({'.'.join(other)}) and {ref.key} ({ref.path}) overlap: one "
                                       "path holds the other", hint="give each secret its own leaf path")
        paths[parts] = ref.key


class MissingSecretsError(ConflictError):
    """Declared secrets without a value: nothing is started until they are set."""

    code = "missing_secrets"

    def __init__(self, name: str, keys: Iterable[str]) -> None:
        self.keys = sorted(keys)
        commands = "; ".join(f"mcp-agent secrets set {name} {k}" for k in self.keys)
        super().__init__(f"{name} needs secret(s) that have no value: {', '.join(self.keys)}",
                         hint=f"set them, then deploy or start again: {commands}")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "missing": self.keys}


class RestartFailed(BuildError):
    """A secret was stored, but the instance that should serve it failed; the old one keeps serving."""

    code = "restart_failed"

    def __init__(self, message: str, *, hint: str | None = None, log_tail: str = "", **details) -> None:
        super().__init__(message, hint=hint, log_tail=log_tail)
        self.details = details  # key, secret_version, serving_version, reason: no value

    def to_dict(self) -> dict:
        return {**super().to_dict(), **self.details, "log_tail": self.log_tail}


async def missing_keys(backend, scope: str, refs: Iterable[SecretRef], supplied: Iterable[str] = ()) -> list[str]:
    have = {info.key for info in await backend.list(scope)} | set(supplied)
    return sorted({ref.key for ref in refs} - have)


async def resolve(backend, scope: str, refs: list[SecretRef], *, name: str, pins: dict[str, int] | None = None,
                  latest: Iterable[str] = ()) -> tuple[dict[str, str], dict[str, int]]:
    """The value of every declared key, and the version of each: the pinned version (``pins``, what the last
    healthy instance ran with) unless the key is in ``latest`` or has no pin, else the latest one. Raises
    :class:`MissingSecretsError` naming every key that has no value (or whose pinned version is gone)."""
    pins, latest = pins or {}, set(latest)
    current = {info.key: info.version for info in await backend.list(scope)}
    values: dict[str, str] = {}
    versions: dict[str, int] = {}
    missing: list[str] = []
    for ref in refs:
        if ref.key not in current:  # removed (`secrets rm`): a pin must not bring it back
            missing.append(ref.key)
            continue
        number = current[ref.key] if ref.key in latest or ref.key not in pins else int(pins[ref.key])
        try:
            # An explicit version even for the latest: a concurrent put cannot make the number and value disagree.
            values[ref.key] = await backend.get(scope, ref.key, version=number)
        except NotFoundError:
            if number != current[ref.key]:
                log.warning("secret %s of %s: pinned version %s is gone from the backend", ref.key, scope, number)
            missing.append(ref.key)
            continue
        versions[ref.key] = number
    if missing:
        raise MissingSecretsError(name, missing)
    return values, versions


def nest(refs: list[SecretRef], values: dict[str, str]) -> dict:
    """The secrets file's content: each value at its declared path."""
    out: dict = {}
    for ref in refs:
        node = out
        *parents, leaf = ref.path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = values[ref.key]
    return out


class SecretFiles:
    """Per-instance directories holding a resolved ``mcp_agent.secrets.yaml``.

    They live on a tmpfs (``/dev/shm``) so values never reach a disk; without one, under ``DATA/run/secrets``
    (docs/secrets.md warns about that). Each platform uses its own root (named by a hash of its data dir), so
    leftovers of a crash can be removed at start without touching another platform's files.
    """

    def __init__(self, data_dir: Path, shm: Path = Path("/dev/shm")) -> None:
        tag = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
        if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
            self.root, self.on_tmpfs = shm / f"mcp-agent-cloud-{os.getuid()}-{tag}", True
        else:
            self.root, self.on_tmpfs = Path(data_dir) / "run" / "secrets", False

    def _ensure_root(self) -> None:
        try:
            os.mkdir(self.root, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(self.root)
        # /dev/shm is shared by every user: never write into a directory someone else made or linked.
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise BuildError(f"{self.root} is not a directory owned by this user",
                             hint="remove it; the platform creates it with mode 0700")
        os.chmod(self.root, 0o700)

    def write(self, refs: list[SecretRef], values: dict[str, str]) -> Path:
        """A new directory (0700) with the file (0600); returns the file's path."""
        self._ensure_root()
        directory = self.root / f"i-{_random.token_hex(8)}"
        os.mkdir(directory, 0o700)
        path = directory / SECRETS_FILENAME
        data = yaml.safe_dump(nest(refs, values), default_flow_style=False, sort_keys=True).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        return path

    def owns(self, directory: str | Path | None) -> bool:
        if not directory:
            return False
        p = Path(directory)
        return p.parent == self.root and p.name.startswith("i-")

    def remove(self, directory: str | Path | None, link: Path | None = None) -> None:
        """Remove an instance's directory, and ``link`` when it points into it."""
        if not self.owns(directory):
            return
        if link is not None and link.is_symlink():
            with contextlib.suppress(OSError):
                if Path(os.readlink(link)).parent == Path(directory):
                    link.unlink()
        shutil.rmtree(directory, ignore_errors=True)

    def cleanup(self, keep: Iterable[str] = ()) -> int:
        """Remove every instance directory but ``keep`` (after a crash nothing else still uses them)."""
        keep = {str(k) for k in keep}
        removed = 0
        if not self.root.is_dir() or self.root.is_symlink():
            return 0
        for child in self.root.iterdir():
            if child.name.startswith("i-") and str(child) not in keep:
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
        return removed

    def link(self, source_dir: Path, path: Path) -> Path | None:
        """Point ``source_dir/mcp_agent.secrets.yaml`` at ``path``: the mcp-agent framework reads the secrets file
        that sits next to its config file. Replaced atomically; a real file there is left alone."""
        target = source_dir / SECRETS_FILENAME
        if target.exists() and not target.is_symlink():
            log.warning("%s exists and is not the platform's link; the app reads it, not the resolved secrets",
                        target)
            return None
        tmp = source_dir / f".{SECRETS_FILENAME}.{_random.token_hex(4)}"
        os.symlink(path, tmp)
        os.replace(tmp, target)
        return target
