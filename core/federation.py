"""Logins through another identity provider (an OIDC issuer such as Okta, or GitHub), for auth provider plugins.

A :class:`FederatedProvider` takes no bearer tokens itself. It adds a "Log in with ..." button to the platform's
login pages (the device page of ``mcp-agent login`` and the authorization page of MCP clients). The platform's
OAuth server (core/platform/oauth.py) keeps the pending login and its PKCE verifier. It sends the browser to
:meth:`authorization_url`, takes the callback at ``/oauth/callback/{provider}``, and hands the code to
:meth:`complete`. Then it issues its own tokens, as for a password login.

:meth:`complete` provisions the user in the registry's users table on first login ("just in time": subject
``{provider}:{login}``, no password) and updates their roles at each login. So ``mcp-agent admin users list``
shows them, ``admin users set --disable`` ends their access (their refresh is refused), and a refresh needs no
call to the identity provider.
"""

from __future__ import annotations

import abc
import logging
import time

from .errors import ForbiddenError
from .hookspecs.types import ROLE_RANK, AuthProvider, Identity, UserRecord

log = logging.getLogger("mcp_agent_cloud.federation")

FEDERATED_HASH = "!"  # a password hash that no password matches: "!okta" marks a user that logs in through okta


def https_url(value: str) -> str:
    """An identity provider's URL, for a config validator: https, or plain http on loopback (tests)."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme != "https" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("must be https (plain http only on loopback, for tests)")
    return value.rstrip("/")


def highest_role(roles) -> str | None:
    ranked = sorted((r for r in roles if r in ROLE_RANK), key=ROLE_RANK.__getitem__)
    return ranked[-1] if ranked else None


class FederatedProvider(AuthProvider):
    """Base of providers whose users log in at another identity provider."""

    federated = True
    label = "another provider"  # the button says "Log in with {label}"
    login_origin = ""  # where the button's form may redirect to (the login pages' CSP form-action)

    async def authenticate(self, request) -> Identity | None:
        return None  # the platform's own tokens carry these users (their provider is "oauth")

    @abc.abstractmethod
    async def authorization_url(self, *, redirect_uri: str, state: str, code_verifier: str, nonce: str) -> str:
        """Where to send the browser (authorization code + PKCE S256 at the identity provider)."""

    @abc.abstractmethod
    async def identity_from_code(self, *, code: str, redirect_uri: str, code_verifier: str,
                                 nonce: str) -> Identity:
        """The user the code is for, with their org and role. Raise :class:`ForbiddenError` (its message is shown
        on the page) for a user who may not log in."""

    async def complete(self, *, code: str, redirect_uri: str, code_verifier: str, nonce: str) -> Identity:
        identity = await self.identity_from_code(code=code, redirect_uri=redirect_uri, code_verifier=code_verifier,
                                                 nonce=nonce)
        await self.provision(identity)
        return identity

    def subject(self, login: str) -> str:
        return f"{self.spec_name}:{login}"

    async def user(self, username: str) -> Identity | None:
        """A provisioned user that may still get tokens (a refresh): None when unknown, disabled or not ours."""
        if self.ctx.registry is None or not username.startswith(f"{self.spec_name}:"):
            return None
        user = await self.ctx.registry.get_user(username)
        if user is None or user.disabled or user.password_hash != FEDERATED_HASH + self.spec_name:
            return None
        return Identity(subject=user.username, org=user.org, roles=user.roles, provider=self.spec_name)

    async def provision(self, identity: Identity) -> None:
        """Make or update the user's record; refuse a disabled user, or one of another provider or org."""
        registry = self.ctx.registry
        if registry is None:
            return
        marker = FEDERATED_HASH + self.spec_name
        user = await registry.get_user(identity.subject)
        if user is None:
            await registry.add_user(UserRecord(username=identity.subject, org=identity.org, roles=identity.roles,
                                               password_hash=marker, created_at=time.time()))
            log.info("user %s of org %s provisioned at their first %s login", identity.subject, identity.org,
                     self.spec_name)
            return
        if user.password_hash != marker:
            raise ForbiddenError(f"{identity.subject} is a user of another provider",
                                 hint="log in the way that user was made")
        if user.disabled:
            raise ForbiddenError(f"{identity.subject} is disabled on this platform",
                                 hint="ask an admin: `mcp-agent admin users set NAME --enable`")
        if user.org != identity.org:
            raise ForbiddenError(f"{identity.subject} belongs to org {user.org}, and the identity provider now "
                                 f"says {identity.org}", hint="ask an admin to sort out the user's org")
        if user.roles != identity.roles:
            await registry.update_user(identity.subject, roles=identity.roles)
