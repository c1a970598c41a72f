"""Auth provider ``okta``: log in through any OpenID Connect issuer, with Okta's defaults (the ``groups`` claim and
scope). The platform's login pages get a "Log in with Okta" button. The issuer is found by discovery, and the ID
token is checked against its JWKS (joserfc): the issuer, the audience (our client id), the expiry and the nonce.
Groups map to roles, and users land in one org (or in the org a claim names).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mcp_agent_cloud.errors import ForbiddenError, MCPAgentCloudError
from mcp_agent_cloud.federation import FederatedProvider, highest_role, https_url
from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import AuthProviderSpec, Identity
from mcp_agent_cloud.names import validate_name

log = logging.getLogger("mcp_agent_cloud.okta")

Role = Literal["viewer", "developer", "owner"]
_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


class OktaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    issuer: str = Field(description="the OIDC issuer, e.g. https://dev-123.okta.com/oauth2/default")
    client_id: str = Field(description="the client id of the platform's app at the issuer")
    client_secret_env: str = Field("OKTA_CLIENT_SECRET", description="environment variable holding the client "
                                   "secret (unset: a public client, PKCE only); never put the secret in the file")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile", "groups"])
    label: str = Field("Okta", description="the login button says Log in with LABEL")
    login_claim: str = Field("email", description="the claim that names the user (subject okta:VALUE)")
    groups_claim: str = Field("groups", description="the claim that lists the user's groups")
    roles: dict[str, Role] = Field(default_factory=dict, description="group -> role; the highest of the user's "
                                   "groups wins")
    default_role: Role | None = Field(None, description="the role of users in no mapped group (unset: they "
                                      "cannot log in)")
    org: str = Field("default", description="the org users land in")
    org_claim: str | None = Field(None, description="a claim naming the user's org instead (it must be a valid "
                                  "org name)")
    device_client_id: str | None = Field(None, description="a native (public) app's client id at the issuer, for "
                                         "`mcp-agent login --provider okta` (the issuer's device flow); its ID "
                                         "tokens must carry the groups claim")

    @field_validator("issuer")
    @classmethod
    def _secure(cls, value: str) -> str:
        return https_url(value)


class OktaAuth(FederatedProvider):
    def __init__(self, config: OktaConfig, ctx) -> None:
        super().__init__(config, ctx)
        self.label = config.label
        self.login_origin = config.issuer
        self._discovery: dict | None = None
        self._jwks: dict | None = None
        self._jwks_at = 0.0

    async def setup(self) -> None:
        try:
            await self.discovery()
        except MCPAgentCloudError as exc:  # the issuer may come up later: the first login reads it again
            log.warning("okta: %s", exc.message)

    def metadata(self) -> dict:
        data: dict = {"kind": "oidc", "issuer": self.config.issuer, "login": "browser"}
        meta = self._discovery or {}
        if self.config.device_client_id and meta.get("device_authorization_endpoint"):
            # What `mcp-agent login --provider okta` needs for the issuer's device flow (all public). The CLI
            # trades the ID token, which names the device client as its audience.
            data["device"] = {"client_id": self.config.device_client_id, "scope": " ".join(self.config.scopes),
                              "device_authorization_endpoint": meta["device_authorization_endpoint"],
                              "token_endpoint": meta["token_endpoint"], "subject_token": "id_token"}
        return data

    def _secret(self) -> str | None:
        return os.environ.get(self.config.client_secret_env) or None

    def _client(self, redirect_uri: str):
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        secret = self._secret()
        return AsyncOAuth2Client(client_id=self.config.client_id, client_secret=secret, redirect_uri=redirect_uri,
                                 scope=" ".join(self.config.scopes), code_challenge_method="S256",
                                 token_endpoint_auth_method="client_secret_basic" if secret else "none",
                                 timeout=15)

    async def discovery(self) -> dict:
        if self._discovery is None:
            import httpx

            url = self.config.issuer + "/.well-known/openid-configuration"
            try:
                async with httpx.AsyncClient(timeout=15) as http:
                    response = await http.get(url)
                    response.raise_for_status()
                    data = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise MCPAgentCloudError(f"cannot read the OIDC discovery document at {url}: {exc}",
                                         hint="check auth okta.issuer and that the issuer is reachable",
                                         status=502) from exc
            if str(data.get("issuer", "")).rstrip("/") != self.config.issuer:
                raise MCPAgentCloudError(f"the discovery document at {url} names issuer {data.get('issuer')!r}",
                                         hint="set okta.issuer to exactly the issuer it names", status=502)
            self._discovery = data
        return self._discovery

    async def _keys(self, kid: str | None):
        """The issuer's JWKS; read again (at most every 60 s) when a token names a key it does not hold."""
        import httpx
        from joserfc.jwk import KeySet

        known = self._jwks is not None and any(k.get("kid") == kid for k in self._jwks.get("keys", []))
        if self._jwks is None or (not known and time.monotonic() - self._jwks_at > 60):
            async with httpx.AsyncClient(timeout=15) as http:
                response = await http.get((await self.discovery())["jwks_uri"])
                response.raise_for_status()
                self._jwks, self._jwks_at = response.json(), time.monotonic()
        return KeySet.import_key_set(self._jwks)

    async def authorization_url(self, *, redirect_uri: str, state: str, code_verifier: str, nonce: str) -> str:
        meta = await self.discovery()
        async with self._client(redirect_uri) as client:
            url, _ = client.create_authorization_url(meta["authorization_endpoint"], state=state,
                                                     code_verifier=code_verifier, nonce=nonce)
        return url

    async def identity_from_code(self, *, code: str, redirect_uri: str, code_verifier: str,
                                 nonce: str) -> Identity:
        meta = await self.discovery()
        async with self._client(redirect_uri) as client:
            try:
                token = await client.fetch_token(meta["token_endpoint"], code=code, code_verifier=code_verifier)
            except Exception as exc:  # noqa: BLE001 - authlib's OAuthError or a transport error
                raise ForbiddenError(f"the identity provider refused the login: {exc}",
                                     hint="start the login again") from exc
            id_token = token.get("id_token")
            if not id_token:
                raise ForbiddenError("the identity provider sent no ID token", hint="add the openid scope")
            claims = await self._verified(id_token, self.config.client_id, nonce)
            if meta.get("userinfo_endpoint") and token.get("access_token"):
                # Issuers put scope claims (groups, email) in the userinfo answer rather than the ID token.
                response = await client.get(meta["userinfo_endpoint"])
                if response.status_code == 200:
                    info = response.json()
                    if info.get("sub") == claims["sub"]:
                        claims = {**info, **claims}
        return self._identity(claims)

    async def identity_from_token(self, token: str, token_type: str = "id_token") -> Identity:
        """The token exchange of ``mcp-agent login --provider okta``: an ID token of the device client."""
        if token_type != "id_token" or not self.config.device_client_id:
            raise ForbiddenError("the okta provider takes ID tokens of its device client (device_client_id)",
                                 hint="log in with `mcp-agent login --provider okta`")
        return self._identity(await self._verified(token, self.config.device_client_id, None))

    async def _verified(self, id_token: str, audience: str, nonce: str | None) -> dict:
        """The claims of an ID token of this issuer for ``audience``: signature (the JWKS), iss, aud, exp, nonce."""
        from joserfc import jws, jwt
        from joserfc.errors import JoseError

        checks = {"iss": {"essential": True, "value": self.config.issuer},
                  "aud": {"essential": True, "value": audience}, "exp": {"essential": True},
                  "sub": {"essential": True}}
        if nonce is not None:
            checks["nonce"] = {"essential": True, "value": nonce}
        try:
            kid = jws.extract_compact(id_token.encode()).protected.get("kid")
            decoded = jwt.decode(id_token, await self._keys(kid), algorithms=_ALGORITHMS)
            jwt.JWTClaimsRegistry(leeway=30, **checks).validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            raise ForbiddenError(f"the ID token is not valid: {exc}", hint="start the login again") from exc
        return dict(decoded.claims)

    def _identity(self, claims: dict) -> Identity:
        login = claims.get(self.config.login_claim) or claims["sub"]
        groups = claims.get(self.config.groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        role = highest_role(self.config.roles[g] for g in groups if g in self.config.roles) or \
            self.config.default_role
        if role is None:
            raise ForbiddenError(f"{login} is in no group that has a role here",
                                 hint="ask an admin to map one of your groups in the okta provider's roles")
        org = self.config.org
        if self.config.org_claim:
            org = str(claims.get(self.config.org_claim) or "")
            try:
                validate_name(org, what="org name")
            except MCPAgentCloudError as exc:
                raise ForbiddenError(f"the {self.config.org_claim} claim ({org!r}) names no valid org",
                                     hint="ask an admin to fix the claim at the identity provider") from exc
        return Identity(subject=self.subject(str(login)), org=org, roles=[role], provider=self.spec_name)


@hookimpl
def mcp_agent_cloud_auth_providers():
    yield AuthProviderSpec(name="okta", backend=OktaAuth, config_model=OktaConfig,
                           description="log in through an OpenID Connect issuer (Okta or any other)")
