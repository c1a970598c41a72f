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
