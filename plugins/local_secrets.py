"""Built-in secrets backend ``local``: an AES-256-GCM encrypted JSON store in the data dir.

Key hierarchy: a random master key in ``key_file`` wraps one random data key per org; each value is sealed with its
org's data key, with ``[scope, key, version]`` as associated data so a ciphertext moved to another entry fails to
decrypt. The store file holds only ciphertexts and wrapped keys, plus ``key_id``: a hash naming the master key it
needs, so a wrong key file is reported as such instead of as a decryption failure.

One process owns the store; an anyio lock serialises its operations. Every write replaces the whole file atomically
(temp file, fsync, rename, fsync of the directory), so a crash leaves the last committed store.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field

from mcp_agent_cloud.errors import MCPAgentCloudError, NotFoundError, ValidationFailed
from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import SecretInfo, SecretsBackend, SecretsSpec

STORE_FORMAT = 1
KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# "{org}/{deployment}": the org is a platform name; later segments allow what deployment and app names use.
SCOPE_RE = re.compile(r"[a-z][a-z0-9-]{0,62}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})+")


class LocalSecretsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path | None = Field(None, description="encrypted store (default DATA/secrets/store.json)")
    key_file: Path | None = Field(None, description="master key (default DATA/keys/master.key); back it up")


class SecretsStoreError(MCPAgentCloudError):
    """The master key cannot open the store (wrong, missing or damaged key file, or an altered store)."""

    status = 500
    code = "secrets_store_error"


def validate_scope(scope: str) -> str:
    if not isinstance(scope, str) or not SCOPE_RE.fullmatch(scope):
        raise ValidationFailed(f"invalid secret scope {scope!r}: expected 'org/deployment'",
                               hint="e.g. 'default/my-app'")
    return scope


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ValidationFailed(f"invalid secret name {key!r}: use letters, digits and '_', not starting with a digit",
                               hint="e.g. OPENAI_API_KEY")
    return key


def _check(scope: str, key: str) -> None:
    validate_scope(scope)
    validate_key(key)


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"mcp-agent-cloud/local-secrets/key-id\0" + key).hexdigest()[:16]


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> str:
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plaintext, aad)).decode()


def _unseal(key: bytes, sealed: str, aad: bytes) -> bytes:
    raw = base64.b64decode(sealed)
    return AESGCM(key).decrypt(raw[:12], raw[12:], aad)


def _value_aad(scope: str, key: str, version: int) -> bytes:
    return json.dumps(["secret", scope, key, version]).encode()


def _wrap_aad(org: str, master_id: str) -> bytes:
    return json.dumps(["data-key", org, master_id]).encode()


def _empty_store() -> dict[str, Any]:
    return {"format": STORE_FORMAT, "key_id": None, "orgs": {}, "scopes": {}}


def _private_dir(path: Path) -> None:
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600) so that readers see the old or the new bytes, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover temp file may carry another mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class LocalSecrets(SecretsBackend):
    def __init__(self, config: LocalSecretsConfig, ctx) -> None:
        super().__init__(config, ctx)
        data_dir = Path(ctx.data_dir)
        self.path = Path(config.path) if config.path else data_dir / "secrets" / "store.json"
        self.key_file = Path(config.key_file) if config.key_file else data_dir / "keys" / "master.key"
        self.next_key_file = self.key_file.with_name(self.key_file.name + ".next")
        self._lock = anyio.Lock()
        self._store: dict[str, Any] = _empty_store()
        self._stamp: tuple[int, int, int] | None = None
        self._master: bytes | None = None

    # -- lifecycle and files ----------------------------------------------------------------------------------

    async def setup(self) -> None:
        async with self._lock:
            await anyio.to_thread.run_sync(self._load, True)

    async def aclose(self) -> None:
        async with self._lock:
            self._master = None
            self._stamp = None

    def _load(self, force: bool = False) -> None:
        """(Re)read the store and its master key when the file changed since we last read or wrote it."""
        stamp = _stamp(self.path)
        if not force and self._master is not None and stamp == self._stamp:
            return
        _private_dir(self.path.parent)
        _private_dir(self.key_file.parent)
        if stamp is None:
            store = _empty_store()
        else:
            try:
                store = json.loads(self.path.read_bytes())
            except (OSError, ValueError) as exc:
                raise SecretsStoreError(f"the secrets store {self.path} is unreadable: {type(exc).__name__}",
                                      hint="restore it from a backup") from None
            if store.get("format") != STORE_FORMAT:
                raise SecretsStoreError(f"the secrets store {self.path} has unknown format {store.get('format')!r}",
                                      hint="upgrade mcp-agent-cloud")
        self._master = self._load_master(store.get("key_id"))
        self._store, self._stamp = store, stamp

    def _load_master(self, wanted: str | None) -> bytes:
        current = self._read_key(self.key_file)
        if wanted is None:  # no store yet: use the key file, or make one
            if current is None:
                current = os.urandom(32)
                atomic_write(self.key_file, base64.b64encode(current) + b"\n")
            return current
        if current is not None and key_id(current) == wanted:
            if self.next_key_file.exists():  # left by a rotation that died before its commit point
                self.next_key_file.unlink()
            return current
        pending = self._read_key(self.next_key_file)
        if pending is not None and key_id(pending) == wanted:
            self._promote_key()  # a rotation committed the store but died before installing its key
            return pending
        found = "is missing" if current is None else f"holds key {key_id(current)}"
        raise SecretsStoreError(
            f"wrong master key: the secrets store {self.path} needs key {wanted}, but {self.key_file} {found}",
            hint="restore the key file that belongs to this store (or the store that belongs to this key)",
        )

    def _read_key(self, path: Path) -> bytes | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            key = base64.b64decode(raw.strip(), validate=True)
        except ValueError:
            key = b""
        if len(key) != 32:  # never echo the file: it may hold a real key in the wrong encoding
            raise SecretsStoreError(f"{path} is not a master key (expected 32 bytes in base64)")
        return key

    def _promote_key(self) -> None:
        os.replace(self.next_key_file, self.key_file)
        _fsync_dir(self.key_file.parent)

    def _commit(self, store: dict[str, Any]) -> None:
        atomic_write(self.path, json.dumps(store, indent=1, sort_keys=True).encode())
        self._store, self._stamp = store, _stamp(self.path)

    async def _read(self) -> dict[str, Any]:
        await anyio.to_thread.run_sync(self._load)
        return self._store

    # -- keys -------------------------------------------------------------------------------------------------

    def _data_key(self, store: dict[str, Any], org: str, *, create: bool = False) -> bytes | None:
        entry = store["orgs"].get(org)
        if entry is None:
            if not create:
                return None
            data_key = os.urandom(32)
            store["orgs"][org] = {"wrapped_key": _seal(self._master, data_key, _wrap_aad(org, store["key_id"])),
                                  "created_at": time.time()}
            return data_key
        try:
            return _unseal(self._master, entry["wrapped_key"], _wrap_aad(org, store["key_id"]))
        except (InvalidTag, ValueError, KeyError):
            raise SecretsStoreError(f"the data key of org {org!r} cannot be unwrapped with the master key",
                                  hint="the store was altered, or belongs to another key file") from None

    # -- the interface ----------------------------------------------------------------------------------------

    async def put(self, scope: str, key: str, value: str) -> int:
        _check(scope, key)
        if not isinstance(value, str):
            raise ValidationFailed(f"the value of secret {key!r} must be a string")
        async with self._lock:
            store = copy.deepcopy(await self._read())  # edit a copy: a failed write leaves memory as on disk
            store["key_id"] = key_id(self._master)
            data_key = self._data_key(store, scope.split("/", 1)[0], create=True)
            versions = store["scopes"].setdefault(scope, {}).setdefault(key, [])
            number = versions[-1]["version"] + 1 if versions else 1
            versions.append({"version": number, "updated_at": time.time(),
                             "value": _seal(data_key, value.encode(), _value_aad(scope, key, number))})
            await anyio.to_thread.run_sync(self._commit, store)
            return number

    async def get(self, scope: str, key: str, *, version: int | None = None) -> str:
        _check(scope, key)
        async with self._lock:
            store = await self._read()
            versions = store["scopes"].get(scope, {}).get(key, [])
            entry = versions[-1] if versions and version is None else next(
                (v for v in versions if v["version"] == version), None)
            if entry is None:
                which = f"secret {key!r}" if version is None else f"version {version} of secret {key!r}"
                raise NotFoundError(f"{which} not found in scope {scope!r}",
                                    hint=f"set it with: mcp-agent secrets set {key}")
            data_key = self._data_key(store, scope.split("/", 1)[0])
            try:
                return _unseal(data_key, entry["value"], _value_aad(scope, key, entry["version"])).decode()
            except (InvalidTag, ValueError, TypeError):
                raise SecretsStoreError(f"secret {key!r} in scope {scope!r} cannot be decrypted",
                                      hint="the store was altered; restore it from a backup") from None

    async def list(self, scope: str) -> list[SecretInfo]:
        validate_scope(scope)
        async with self._lock:
            store = await self._read()
            return [SecretInfo(key=k, version=v[-1]["version"], updated_at=v[-1]["updated_at"])
                    for k, v in sorted(store["scopes"].get(scope, {}).items()) if v]

    async def delete(self, scope: str, key: str, *, destroy: bool = False) -> None:
        """Removes every version. There is no soft delete here: ``destroy`` changes nothing (the store's backups
        are the way back)."""
        _check(scope, key)
        async with self._lock:
            store = copy.deepcopy(await self._read())
            keys = store["scopes"].get(scope, {})
            if key not in keys:
                raise NotFoundError(f"secret {key!r} not found in scope {scope!r}")
            del keys[key]
            if not keys:
                del store["scopes"][scope]
            await anyio.to_thread.run_sync(self._commit, store)

    async def rotate(self) -> None:
        """New master key; every org's data key is re-wrapped (values stay sealed by their data keys).

        Crash-safe order: (1) the new key goes to ``master.key.next``; (2) the store, re-wrapped and naming the new
        ``key_id``, is committed - the switch point; (3) ``.next`` is renamed over ``master.key``. Until (2) the old
        key still opens the store; after it, the store names the new key, which ``_load`` finds in ``.next`` and
        installs if (3) never ran. No moment exists where no key file on disk opens the committed store.
        """
        async with self._lock:
            store = copy.deepcopy(await self._read())
            new_key = os.urandom(32)
            data_keys = {org: self._data_key(store, org) for org in store["orgs"]}
            store["key_id"] = key_id(new_key)
            for org, data_key in data_keys.items():
                store["orgs"][org]["wrapped_key"] = _seal(new_key, data_key, _wrap_aad(org, store["key_id"]))

            def switch() -> None:
                atomic_write(self.next_key_file, base64.b64encode(new_key) + b"\n")
                self._commit(store)
                self._master = new_key
                self._promote_key()

            await anyio.to_thread.run_sync(switch)


@hookimpl
def mcp_agent_cloud_secrets_backends():
    yield SecretsSpec(name="local", backend=LocalSecrets, config_model=LocalSecretsConfig,
                      description="AES-256-GCM encrypted file in the data dir")
