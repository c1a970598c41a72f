"""Built-in auth provider ``builtin``: opaque bearer tokens, stored only as SHA-256 hashes in the registry.

Tokens carry 256 random bits, so a fast hash is enough: nothing can be brute-forced from the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import AuthProvider, AuthProviderSpec, Identity, TokenRecord

TOKEN_PREFIX = "mcpac_"


class BuiltinAuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bootstrap_admin: bool = True  # create an owner token for the default org on first start
    # How long a looked-up token is trusted without asking the registry again. A revocation made elsewhere (the
    # admin CLI, another platform node) takes up to this long to apply; expiry applies at once. 0: no cache.
    cache_seconds: float = Field(default=2.0, ge=0, le=300)
    cache_size: int = Field(default=10_000, ge=1)


# scrypt (RFC 7914): memory-hard, in the standard library. N=2**15, r=8 costs 32 MiB and ~0.1 s per check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


def hash_password(password: str) -> str:
    import base64

    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt)}${b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    import base64

    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=128 << 20, dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


# Checked when a user is unknown, so an unknown name costs what a wrong password does (no user enumeration by time).
_DUMMY_HASH = None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(headers: Any) -> str | None:
    value = headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class BuiltinAuth(AuthProvider):
    def __init__(self, config: BuiltinAuthConfig, ctx) -> None:
        super().__init__(config, ctx)
        # token hash -> (its record, when it was read). Only found tokens are kept: a token just issued on
        # another node works at once, and unknown tokens cannot fill the cache.
        self._cache: dict[str, tuple[TokenRecord, float]] = {}

    async def authenticate(self, request) -> Identity | None:
        token = bearer_token(request.headers)
        if token is None or not token.startswith(TOKEN_PREFIX) or self.ctx.registry is None:
            return None
        digest = hash_token(token)
        record = await self._find(digest)
        if record is None or not hmac.compare_digest(record.token_hash, digest):
            return None
        if record.revoked or (record.expires_at is not None and record.expires_at < time.time()):
            return None
        return Identity(subject=record.subject, org=record.org, roles=record.roles, scopes=record.scopes,
                        provider="builtin", token_id=record.id)

    async def _find(self, digest: str) -> TokenRecord | None:
        """The token's record, from the registry at most once per ``cache_seconds`` (every request carries it)."""
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[1] < self.config.cache_seconds:
            return hit[0]
        record = await self.ctx.registry.find_token(digest)
        if record is None or self.config.cache_seconds == 0:
            self._cache.pop(digest, None)
            return record
        if len(self._cache) >= self.config.cache_size:
            self._cache.pop(next(iter(self._cache)))  # the oldest entry (dicts keep insertion order)
        self._cache.pop(digest, None)
        self._cache[digest] = (record, now)
        return record

    def forget(self, token_id: str) -> None:
        """Drop a token from the cache (it was just revoked on this node)."""
        for digest in [d for d, (record, _) in self._cache.items() if record.id == token_id]:
            self._cache.pop(digest, None)

    async def login(self, username: str, password: str) -> Identity | None:
        """A local user's identity when the password is right (``mcp-agent admin users add``)."""
        import anyio

        global _DUMMY_HASH
        if self.ctx.registry is None:
            return None
        try:
            user = await self.ctx.registry.get_user(username)
        except NotImplementedError:
            return None
        if _DUMMY_HASH is None:
            _DUMMY_HASH = await anyio.to_thread.run_sync(hash_password, secrets.token_hex(8))
        stored = user.password_hash if user is not None and not user.disabled else _DUMMY_HASH
        ok = await anyio.to_thread.run_sync(check_password, password, stored)
        if not ok or user is None or user.disabled:
            return None
        return Identity(subject=user.username, org=user.org, roles=user.roles, provider="builtin")

    async def user(self, username: str) -> Identity | None:
        """A local user that may still get tokens (refresh): None when unknown or disabled."""
        if self.ctx.registry is None:
            return None
        user = await self.ctx.registry.get_user(username)
        if user is None or user.disabled:
            return None
        return Identity(subject=user.username, org=user.org, roles=user.roles, provider="builtin")

    async def issue_token(
        self, *, org: str, subject: str, roles: list[str], name: str = "", scopes: list[str] | None = None,
        expires_in: float | None = None,
    ) -> tuple[str, TokenRecord]:
        """Create a token; the plaintext is returned once and never stored."""
        assert self.ctx.registry is not None
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(
            id="tok_" + secrets.token_hex(8), org=org, subject=subject, name=name, token_hash=hash_token(token),
            roles=roles, scopes=scopes or [], expires_at=(time.time() + expires_in) if expires_in else None,
        )
        await self.ctx.registry.add_token(record)
        return token, record

    def metadata(self) -> dict[str, Any]:
        return {"type": "bearer", "token_prefix": TOKEN_PREFIX}


@hookimpl
def mcp_agent_cloud_auth_providers():
    yield AuthProviderSpec(name="builtin", backend=BuiltinAuth, config_model=BuiltinAuthConfig,
                           description="bearer tokens stored hashed in the registry")
