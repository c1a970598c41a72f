"""Built-in auth provider ``builtin``: opaque bearer tokens, stored only as SHA-256 hashes in the registry.

Tokens carry 256 random bits, so a fast hash is enough: nothing can be brute-forced from the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import AuthProvider, AuthProviderSpec, Identity, TokenRecord

TOKEN_PREFIX = "mcpac_"


class BuiltinAuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bootstrap_admin: bool = True  # create an owner token for the default org on first start


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(headers: Any) -> str | None:
    value = headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class BuiltinAuth(AuthProvider):
    async def authenticate(self, request) -> Identity | None:
        token = bearer_token(request.headers)
        if token is None or not token.startswith(TOKEN_PREFIX) or self.ctx.registry is None:
            return None
        digest = hash_token(token)
        record = await self.ctx.registry.find_token(digest)
        if record is None or not hmac.compare_digest(record.token_hash, digest):
            return None
        if record.revoked or (record.expires_at is not None and record.expires_at < time.time()):
            return None
        return Identity(subject=record.subject, org=record.org, roles=record.roles, scopes=record.scopes,
                        provider="builtin", token_id=record.id)

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
