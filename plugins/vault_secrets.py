"""Secrets backend ``vault``: HashiCorp Vault or OpenBao, KV version 2, through ``hvac`` (extra ``vault``).

Each secret is one KV v2 entry at ``{mount}/data/{prefix}/{org}/{deployment}/{key}``, so Vault keeps its versions,
soft deletes and destroys them, and a policy on ``{prefix}/*`` confines the platform. With ``transit`` set, values
are encrypted by Vault's transit engine before they are written, and the KV entry holds only the ciphertext.

hvac is synchronous: every call runs in a worker thread, bounded by ``timeout``. hvac is imported lazily so this
module loads without it; the plugin manager turns a missing hvac into the install hint for the extra.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import functools
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Literal

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from mcp_agent_cloud.errors import MCPAgentCloudError, NotFoundError, ValidationFailed
from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import Event, SecretInfo, SecretsBackend, SecretsSpec
from mcp_agent_cloud.plugins.local_secrets import validate_key, validate_scope

log = logging.getLogger(__name__)

SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")
RENEW_AT = 2 / 3  # renew a token when this share of its TTL has passed (what Vault Agent does)
RETRY_MAX = 30.0  # longest wait between renewal attempts while Vault is unreachable
_RAISE = object()


# -- config -----------------------------------------------------------------------------------------------------


class VaultAuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["token", "approle"] = Field("token", description="how the platform logs in to Vault")
    token: SecretStr | None = Field(None, description="method token: the Vault token (prefer token_file or VAULT_TOKEN)")
    token_file: Path | None = Field(None, description="method token: a file holding the token (e.g. a Vault Agent "
                                    "sink); read again when the token stops working")
    role_id: str | None = Field(None, description="method approle: the role's role_id")
    secret_id: SecretStr | None = Field(None, description="method approle: the secret_id")
    secret_id_file: Path | None = Field(None, description="method approle: a file holding the secret_id")
    mount: str = Field("approle", description="method approle: where the AppRole auth method is mounted")

    @model_validator(mode="after")
    def _consistent(self) -> VaultAuthConfig:
        token_opts = [n for n in ("token", "token_file") if getattr(self, n) is not None]
        role_opts = [n for n in ("role_id", "secret_id", "secret_id_file") if getattr(self, n) is not None]
        if self.method == "token":
            if role_opts:
                raise ValueError(f"{', '.join(role_opts)} belong to method approle (set method: approle)")
            if len(token_opts) > 1:
                raise ValueError("set token or token_file, not both")
        else:
            if token_opts:
                raise ValueError(f"{', '.join(token_opts)} belong to method token")
            if not self.role_id:
                raise ValueError("method approle needs role_id")
            if (self.secret_id is None) == (self.secret_id_file is None):
                raise ValueError("method approle needs one of secret_id or secret_id_file")
        return self


class VaultTransitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mount: str = Field("transit", description="where the transit secrets engine is mounted")
    key: str = Field("mcp-agent-cloud", description="the transit key; created (derived) on first start if missing")


class VaultSecretsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(None, description="Vault address, e.g. https://vault.example.com:8200 (default: VAULT_ADDR)")
    namespace: str | None = Field(None, description="Vault Enterprise / OpenBao namespace (default: none)")
    mount: str = Field("secret", description="where the KV version 2 engine is mounted")
    prefix: str = Field("mcp-agent-cloud", description="path under the mount that holds every secret of the platform")
    auth: VaultAuthConfig = Field(default_factory=VaultAuthConfig, description="how to log in")
    verify: bool = Field(True, description="verify Vault's TLS certificate")
    ca_cert: Path | None = Field(None, description="CA bundle that signs Vault's certificate (implies verify)")
    timeout: float = Field(10.0, gt=0, description="seconds each Vault request may take")
    renew: bool = Field(True, description="renew the token before it expires (AppRole logs in again when it cannot)")
    transit: VaultTransitConfig | None = Field(None, description="encrypt values with this transit key before they "
                                               "are written to KV (KV then holds only ciphertext)")

    @model_validator(mode="after")
    def _paths(self) -> VaultSecretsConfig:
        for name, value in (("mount", self.mount), ("prefix", self.prefix), ("auth.mount", self.auth.mount),
                            ("transit.mount", self.transit and self.transit.mount),
                            ("transit.key", self.transit and self.transit.key)):
            if value is not None and not SEGMENT_RE.fullmatch(value):
                raise ValueError(f"{name} {value!r} is not a Vault path (letters, digits, '_', '.', '-' and '/')")
        return self


# -- errors ------------------------------------------------------------------------------------------------------


class VaultError(MCPAgentCloudError):
    """Vault answered with an error the platform cannot fix by itself (a misconfiguration, usually)."""

    status = 500
    code = "secrets_backend_error"


class VaultUnavailable(VaultError):
    """Vault is sealed, down or unreachable: retry once it is back."""

    status = 503
    code = "secrets_unavailable"


class VaultSealed(VaultUnavailable):
    code = "secrets_sealed"


class VaultPermissionDenied(VaultError):
    code = "secrets_permission_denied"


# -- helpers -----------------------------------------------------------------------------------------------------


def _parse_time(value: str | None) -> float:
    """RFC 3339 with nanoseconds (Vault's format) -> epoch seconds; Python parses at most microseconds."""
    if not value:
        return 0.0
    value = re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00")
    return dt.datetime.fromisoformat(value).timestamp()


def _live(meta: dict[str, Any]) -> list[int]:
    """Version numbers that are neither soft-deleted nor destroyed."""
    return sorted(int(n) for n, v in (meta.get("versions") or {}).items()
                  if not v.get("deletion_time") and not v.get("destroyed"))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class VaultSecrets(SecretsBackend):
    def __init__(self, config: VaultSecretsConfig, ctx) -> None:
        super().__init__(config, ctx)
        self.url = config.url or os.environ.get("VAULT_ADDR") or ""
        self._client: Any = None
        self._renewer: asyncio.Task | None = None
        self._ttl = 0  # seconds the token had left at the last login, renewal or look-up (0: never expires)
        self._renewable = False
        self._derived = False  # the transit key takes a per-entry context

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _policy_hint(self) -> str:
        c = self.config
        paths = ", ".join(f"{c.mount}/{kind}/{c.prefix}/*" for kind in ("data", "metadata", "delete"))
        if c.transit:
            paths += f", {c.transit.mount}/encrypt/{c.transit.key} and {c.transit.mount}/decrypt/{c.transit.key}"
        return f"check that the token's policy allows {paths} (see docs/config.md, secrets vault)"

    def _translate(self, exc: Exception, what: str) -> Exception:
        """An hvac or requests error -> an error that says what happened and what to do. Never echoes values."""
        import hvac.exceptions as hx
        import requests

        where = f"Vault at {self.url}"
        if isinstance(exc, hx.VaultDown):
            if "sealed" in str(exc).lower():
                return VaultSealed(f"{where} is sealed: cannot {what}",
                                   hint="unseal it: bao operator unseal (vault operator unseal with HashiCorp Vault)")
            return VaultUnavailable(f"{where} is unavailable (503): cannot {what}", hint="check Vault's status and logs")
        if isinstance(exc, requests.exceptions.SSLError):
            return VaultUnavailable(f"TLS to {where} failed: cannot {what}",
                                    hint="set ca_cert to the CA that signed Vault's certificate (or verify: false "
                                         "for a test server)")
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return VaultUnavailable(f"cannot reach {where} ({type(exc).__name__}): cannot {what}",
                                    hint="check `url` in the secrets config and that Vault is running")
        if what.startswith("log in") and isinstance(exc, (hx.Forbidden, hx.Unauthorized, hx.InvalidRequest)):
            detail = "; ".join(exc.errors or []) or "permission denied"
            return VaultPermissionDenied(f"{where} refused to let the platform {what}: {detail}",
                                         hint="check auth in the secrets config: the token (is it expired or "
                                              "revoked?), or the AppRole's role_id, secret_id and mount")
        if isinstance(exc, hx.Forbidden):
            return VaultPermissionDenied(f"{where} denied permission to {what}", hint=self._policy_hint())
        if isinstance(exc, hx.Unauthorized):
            return VaultPermissionDenied(f"{where} refused the credentials: cannot {what}",
                                         hint="check auth in the secrets config")
        if isinstance(exc, hx.InvalidPath):
            return VaultError(f"{where}: no such path while trying to {what}",
                              hint=f"check that a KV version 2 engine is mounted at {self.config.mount!r} "
                                   f"(bao secrets enable -path={self.config.mount} kv-v2)")
        if isinstance(exc, hx.VaultError):
            detail = "; ".join(exc.errors or []) or type(exc).__name__
            return VaultError(f"{where} refused to {what}: {detail}", hint="see Vault's logs for details")
        return exc

    async def _run(self, what: str, fn: Callable[..., Any], *args: Any, on_missing: Any = _RAISE,
                   retry_auth: bool = True, **kw: Any) -> Any:
        """Run one hvac call in a thread; errors become :class:`VaultError` subclasses naming ``what``.

        ``on_missing``: what a 404 means here - an exception to raise, or a value to return (default: an error).
        """
        import hvac.exceptions as hx

        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kw))
        except hx.InvalidPath as exc:
            if isinstance(on_missing, BaseException):
                raise on_missing from None
            if on_missing is not _RAISE:
                return on_missing
            raise self._translate(exc, what) from None
        except hx.Forbidden as exc:
            # A token that expired (machine asleep, renewal missed) looks like a policy denial: log in again once.
            if retry_auth and await self._reauthenticate_if_expired():
                return await self._run(what, fn, *args, on_missing=on_missing, retry_auth=False, **kw)
            raise self._translate(exc, what) from None
        except MCPAgentCloudError:
            raise
        except Exception as exc:
            translated = self._translate(exc, what)
            if translated is exc:
                raise
            raise translated from None

    def _path(self, scope: str, key: str | None = None) -> str:
        return f"{self.config.prefix}/{scope}" + (f"/{key}" if key else "")

    # -- authentication ----------------------------------------------------------------------------------------

    def _read_file(self, path: Path, what: str) -> str:
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise VaultError(f"cannot read the {what} file {path}: {exc.strerror}") from None
        if not text:
            raise VaultError(f"the {what} file {path} is empty")
        return text

    def _login(self) -> None:
        """(Thread) Set a working token on the client: the configured one, or a fresh AppRole login."""
        auth = self.config.auth
        if auth.method == "approle":
            secret_id = (auth.secret_id.get_secret_value() if auth.secret_id is not None
                         else self._read_file(auth.secret_id_file, "secret_id"))
            result = self._client.auth.approle.login(role_id=auth.role_id, secret_id=secret_id,
                                                     mount_point=auth.mount, use_token=True)
            self._ttl = int(result["auth"].get("lease_duration") or 0)
            self._renewable = bool(result["auth"].get("renewable"))
            return
        if auth.token is not None:
            token = auth.token.get_secret_value()
        elif auth.token_file is not None:
            token = self._read_file(auth.token_file, "token")
        else:
            token = os.environ.get("VAULT_TOKEN", "")
        if not token:
            raise VaultError("no Vault token: set auth.token_file or auth.token in the secrets config, or VAULT_TOKEN",
                             hint="or log in with AppRole: auth: {method: approle, role_id: ..., secret_id_file: ...}")
        self._client.token = token
        info = self._client.auth.token.lookup_self()["data"]
        self._ttl = int(info.get("ttl") or 0)
        self._renewable = bool(info.get("renewable"))

    async def _reauthenticate_if_expired(self) -> bool:
        """When the token no longer works and a fresh one can be had (AppRole, token file), get it."""
        if not self._can_login_again:
            return False
        try:
            await anyio.to_thread.run_sync(self._client.auth.token.lookup_self)
            return False  # the token is fine: the denial is the policy's
        except Exception:
            pass
        try:
            await anyio.to_thread.run_sync(self._login)
        except Exception as exc:
            log.warning("vault: logging in again failed: %s", self._translate(exc, "log in"))
            return False
        log.info("vault: the token had stopped working; logged in again")
        return True

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        import hvac

        c = self.config
        if not self.url:
            raise VaultError("the vault secrets backend needs a url", hint="set url in the secrets config, or VAULT_ADDR")
        verify: bool | str = str(c.ca_cert) if c.ca_cert else c.verify
        # token="" keeps hvac from reading VAULT_TOKEN or ~/.vault-token behind our back
        self._client = hvac.Client(url=self.url, token="", namespace=c.namespace, verify=verify, timeout=c.timeout)
        await self._run("log in", self._login, retry_auth=False)
        if c.transit:
            await self._setup_transit()
        if self._ttl > 0 and c.renew and (self._renewable or self._can_login_again):
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop(), name="vault-token-renewal")
        elif self._ttl > 0:
            why = "renewal is off" if not c.renew else "it is not renewable"
            log.warning("vault: the token expires in %ss and %s: secrets stop working then", self._ttl, why)

    @property
    def _can_login_again(self) -> bool:
        """AppRole logs in again with its secret_id; a token file may hold a newer token (Vault Agent)."""
        return self.config.auth.method == "approle" or self.config.auth.token_file is not None

    async def _setup_transit(self) -> None:
        import hvac.exceptions as hx

        t = self.config.transit
        transit = self._client.secrets.transit
        try:
            key = await anyio.to_thread.run_sync(functools.partial(transit.read_key, t.key, mount_point=t.mount))
        except hx.InvalidPath:
            # derived: each value is encrypted under its own path as context, so a ciphertext moved to another
            # entry does not decrypt there
            await self._run(f"create transit key {t.mount}/keys/{t.key}", transit.create_key, t.key, derived=True,
                            mount_point=t.mount)
            key = await self._run(f"read transit key {t.mount}/keys/{t.key}", transit.read_key, t.key,
                                  mount_point=t.mount)
        except Exception as exc:
            raise self._translate(exc, f"read transit key {t.mount}/keys/{t.key}") from None
        self._derived = bool(key["data"].get("derived"))

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(BaseException):
                await self._renewer
            self._renewer = None
        if self._client is not None:
            self._client.adapter.close()
            self._client = None

    async def _renew_loop(self) -> None:
        """Renew the token at 2/3 of its TTL; log in again (AppRole, token file) when renewal stops working."""
        delay = self._ttl * RENEW_AT
        failures = 0
        while True:
            await asyncio.sleep(max(delay, 0.5))
            try:
                await self._renew_once()
                failures = 0
                delay = self._ttl * RENEW_AT
            except Exception as exc:  # keep trying: Vault may come back before the token expires
                failures += 1
                delay = min(RETRY_MAX, 2 ** failures)
                log.warning("vault: token renewal failed (retrying in %.0fs): %s", delay, exc)
                self.ctx.emit(Event(type="secrets.vault.renewal_failed", status="failed",
                                    message=f"Vault token renewal failed: {exc}"))

    async def _renew_once(self) -> None:
        previous = self._ttl
        if self._renewable:
            try:
                result = await self._run("renew the token", self._client.auth.token.renew_self, retry_auth=False)
                self._ttl = int(result["auth"].get("lease_duration") or 0)
                # A TTL cut short by the token's max TTL: log in again (when we can) before it runs out.
                if not self._can_login_again or self._ttl >= previous * RENEW_AT:
                    return
            except VaultPermissionDenied:
                if not self._can_login_again:
                    raise
        await self._run("log in again", self._login, retry_auth=False)

    # -- transit -----------------------------------------------------------------------------------------------

    def _context(self, path: str) -> dict[str, str]:
        return {"context": _b64(path)} if self._derived else {}

    async def _encrypt(self, path: str, value: str) -> str:
        t = self.config.transit
        result = await self._run(f"encrypt with transit key {t.mount}/{t.key}", self._client.secrets.transit.encrypt_data,
                                 t.key, plaintext=_b64(value), mount_point=t.mount, **self._context(path))
        return result["data"]["ciphertext"]

    async def _decrypt(self, path: str, ciphertext: str) -> str:
        t = self.config.transit
        if t is None:
            raise VaultError(f"secret {path} was stored encrypted with Vault transit, which is not configured",
                             hint="set transit in the secrets config to the key it was written with")
        result = await self._run(f"decrypt with transit key {t.mount}/{t.key}", self._client.secrets.transit.decrypt_data,
                                 t.key, ciphertext=ciphertext, mount_point=t.mount, **self._context(path))
        return base64.b64decode(result["data"]["plaintext"]).decode()

    # -- the interface -----------------------------------------------------------------------------------------

    async def put(self, scope: str, key: str, value: str) -> int:
        validate_scope(scope)
        validate_key(key)
        if not isinstance(value, str):
            raise ValidationFailed(f"the value of secret {key!r} must be a string")
        path = self._path(scope, key)
        data = {"ciphertext": await self._encrypt(path, value)} if self.config.transit else {"value": value}
        result = await self._run(f"write secret {key!r} of {scope!r}", self._client.secrets.kv.v2.create_or_update_secret,
                                 path, data, mount_point=self.config.mount)
        return int(result["data"]["version"])

    async def _read(self, scope: str, key: str, version: int | None) -> dict[str, Any]:
        which = f"secret {key!r}" if version is None else f"version {version} of secret {key!r}"
        missing = NotFoundError(f"{which} not found in scope {scope!r}",
                                hint=f"set it with: mcp-agent secrets set {scope.split('/', 1)[-1]} {key}")
        # a soft-deleted or destroyed version answers 404 too: for us it is gone
        return await self._run(f"read secret {key!r} of {scope!r}", self._client.secrets.kv.v2.read_secret_version,
                               self._path(scope, key), version=version, mount_point=self.config.mount,
                               raise_on_deleted_version=True, on_missing=missing)

    async def get(self, scope: str, key: str, *, version: int | None = None) -> str:
        validate_scope(scope)
        validate_key(key)
        data = (await self._read(scope, key, version))["data"]["data"] or {}
        if "ciphertext" in data:
            return await self._decrypt(self._path(scope, key), data["ciphertext"])
        if "value" not in data:
            raise VaultError(f"{self.config.mount}/data/{self._path(scope, key)} does not hold a value written by "
                             "mcp-agent-cloud", hint="write it with: mcp-agent secrets set")
        return data["value"]

    async def _metadata(self, scope: str, key: str, what: str) -> dict[str, Any] | None:
        result = await self._run(what, self._client.secrets.kv.v2.read_secret_metadata, self._path(scope, key),
                                 mount_point=self.config.mount, on_missing=None)
        return result["data"] if result else None

    async def list(self, scope: str) -> list[SecretInfo]:
        validate_scope(scope)
        kv = self._client.secrets.kv.v2
        what = f"list the secrets of {scope!r}"
        # 404: nothing was ever written in this scope
        listed = await self._run(what, kv.list_secrets, self._path(scope), mount_point=self.config.mount,
                                 on_missing={"data": {"keys": []}})
        rows = []
        for name in sorted(listed["data"]["keys"]):
            if name.endswith("/"):
                continue  # a sub-folder: not a key of this scope
            meta = await self._metadata(scope, name, what)
            if meta is None:
                continue  # destroyed between the listing and now
            current = int(meta.get("current_version") or 0)
            if current not in _live(meta):
                continue  # soft-deleted (get fails), or only older versions left
            created = meta["versions"][str(current)].get("created_time")
            rows.append(SecretInfo(key=name, version=current, updated_at=_parse_time(created)))
        return rows

    async def delete(self, scope: str, key: str, *, destroy: bool = False) -> None:
        """Soft delete: every live version is marked deleted, so ``get`` fails, and an operator can still bring them
        back (``bao kv undelete``). ``destroy``: the metadata and every version are removed for good."""
        validate_scope(scope)
        validate_key(key)
        kv = self._client.secrets.kv.v2
        what = f"delete secret {key!r} of {scope!r}"
        meta = await self._metadata(scope, key, what)
        live = _live(meta) if meta else []
        if meta is None or (not destroy and not live):
            raise NotFoundError(f"secret {key!r} not found in scope {scope!r}")
        path = self._path(scope, key)
        if destroy:
            await self._run(what, kv.delete_metadata_and_all_versions, path, mount_point=self.config.mount)
        else:
            await self._run(what, kv.delete_secret_versions, path, live, mount_point=self.config.mount)

    async def rotate(self) -> None:
        """With transit: rotate the transit key, then re-wrap the latest version of every secret under the prefix.

        KV versions cannot change in place, so each re-wrapped value is written as a new version (same value, new
        ciphertext), with check-and-set so a concurrent ``put`` is never overwritten. Older versions keep their old
        ciphertext, which still decrypts until an operator raises the key's ``min_decryption_version``.
        Without transit the values are protected by Vault's own keys, which only Vault's operator can rotate.
        """
        t = self.config.transit
        if t is None:
            raise VaultError("the vault secrets backend has no key of its own to rotate: Vault protects the values "
                             "with its barrier keys", hint="rotate them in Vault (bao operator rotate), or set transit "
                                                           "in the secrets config to encrypt values with a transit key")
        transit = self._client.secrets.transit
        await self._run(f"rotate transit key {t.mount}/{t.key}", transit.rotate_key, t.key, mount_point=t.mount)
        for scope, key in await self._all_keys():
            await self._rewrap(scope, key)

    async def _all_keys(self) -> list[tuple[str, str]]:
        """Every (scope, key) under the prefix: folders are walked down, leaves below two levels are keys."""
        kv = self._client.secrets.kv.v2
        found, pending = [], [""]
        while pending:
            rel = pending.pop()
            path = self.config.prefix + (f"/{rel}" if rel else "")
            listed = await self._run(f"list {self.config.mount}/metadata/{path}", kv.list_secrets, path,
                                     mount_point=self.config.mount, on_missing={"data": {"keys": []}})
            for name in listed["data"]["keys"]:
                if name.endswith("/"):
                    pending.append(rel + name)
                elif rel.count("/") >= 2:  # "org/deployment/" at least
                    found.append((rel.rstrip("/"), name))
        return found

    async def _rewrap(self, scope: str, key: str) -> None:
        import hvac.exceptions as hx

        t = self.config.transit
        kv = self._client.secrets.kv.v2
        path = self._path(scope, key)
        meta = await self._metadata(scope, key, f"read secret {key!r} of {scope!r}")
        current = int(meta.get("current_version") or 0) if meta else 0
        if not current or current not in _live(meta):
            return
        try:
            data = (await self._read(scope, key, current))["data"]["data"] or {}
        except NotFoundError:
            return
        if "ciphertext" not in data:
            return  # written before transit was configured: left as it is
        wrapped = await self._run(f"re-wrap secret {key!r} of {scope!r}", self._client.secrets.transit.rewrap_data,
                                  t.key, data["ciphertext"], mount_point=t.mount, **self._context(path))
        new = wrapped["data"]["ciphertext"]
        if new == data["ciphertext"]:
            return
        try:
            await anyio.to_thread.run_sync(functools.partial(
                kv.create_or_update_secret, path, {"ciphertext": new}, cas=current, mount_point=self.config.mount))
        except hx.InvalidRequest:
            pass  # check-and-set lost: a newer version was written meanwhile, already under the new key
        except Exception as exc:
            raise self._translate(exc, f"write re-wrapped secret {key!r} of {scope!r}") from None


@hookimpl
def mcp_agent_cloud_secrets_backends():
    yield SecretsSpec(name="vault", backend=VaultSecrets, config_model=VaultSecretsConfig,
                      description="HashiCorp Vault / OpenBao KV v2 (optionally transit-encrypted)",
                      requires=("hvac",), extra="vault")
