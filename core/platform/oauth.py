"""The platform's OAuth 2.1 authorization server, for its own API and its deployments: the device authorization
grant (RFC 8628) that ``mcp-agent login`` uses; authorization code + PKCE (S256 only) with dynamic client
registration (RFC 7591) for MCP clients, whose tokens are bound to one deployment (RFC 8707 ``resource``, announced
by each deployment's protected-resource metadata, RFC 9728); refresh tokens that rotate (a reused one revokes its
whole family), revocation (RFC 7009), introspection (RFC 7662) and metadata (RFC 8414).

authlib does the protocol work (the grants, client authentication, the endpoints' checks and error answers); its
server is synchronous, so each call runs in a worker thread and reaches the async registry through
``anyio.from_thread``. joserfc signs the access tokens: JWTs (RFC 9068 ``at+jwt``) signed ES256 with keys that
rotate, published at ``/.well-known/jwks.json``. The keys live in the secrets backend (scope ``platform/_oauth``),
never in the registry or on disk in plaintext.

Users log in on a plain server-rendered page, checked by the auth providers that take passwords (``builtin``: the
local users of ``mcp-agent admin users add``). Not here yet: the GitHub and OIDC providers.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import html
import json
import logging
import re
import secrets
import time
from collections import defaultdict
from urllib.parse import urlsplit

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..config import OAuthConfig
from ..errors import MCPAgentCloudError
from ..hookspecs.types import AuditRecord, Identity, OAuthClientRecord, RefreshTokenRecord
from ..names import auth_provider, from_at_path, split_qualified

log = logging.getLogger("mcp_agent_cloud.oauth")

CLI_CLIENT_ID = "mcp-agent-cli"
CONSOLE_CLIENT_ID = "mcp-agent-console"  # the web console: first-party, code + PKCE, a token for the API
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
CODE_GRANT = "authorization_code"
CLIENT_AUTH_METHODS = ("none", "client_secret_post", "client_secret_basic")
MCP_SCOPE = "mcp"  # all a registered client may ask for: it calls one deployment, never the management API
# No tenant can name this scope: deployment names start with a letter, never "_".
SIGNING_SCOPE, SIGNING_KEY = "platform/_oauth", "SIGNING_KEYS"
SCOPES = ("api", "mcp")
REFRESH_PREFIX = "mcpacr_"
ALG = "ES256"
_LOGIN_FAILURES, _LOCKOUT_SECONDS = 5, 300
_CODE_SECONDS = 120
_UPSTREAM_SECONDS = 600
_BINDING_COOKIE = "mcpac_login"
_MAX_CLIENT_METADATA = 16384
# Redirect URIs that could run script in the browser, or read local files, never get a code.
_BAD_SCHEMES = frozenset({"javascript", "data", "file", "vbscript", "about", "blob", "ftp", "ws", "wss"})


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith(("mcpac_", REFRESH_PREFIX))


def _loopback(host: str | None) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def redirect_uri_problem(uri: str) -> str | None:
    """Why a client may not register ``uri`` as a redirect URI (OAuth 2.1 and RFC 8252), or None."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return f"{uri!r} is not a URI"
    scheme = parts.scheme.lower()
    if not scheme or parts.fragment:
        return f"{uri!r} must be an absolute URI without a fragment"
    if scheme == "https":
        return None if parts.hostname else f"{uri!r} has no host"
    if scheme == "http":
        return None if _loopback(parts.hostname) else (
            f"{uri!r}: plain http is allowed only to a loopback address (127.0.0.1, [::1], localhost); use https")
    if scheme in _BAD_SCHEMES or not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        return f"{uri!r}: the scheme {scheme!r} cannot be a redirect URI"
    return None  # a native app's private-use scheme (RFC 8252 7.1)


# -- authlib's models ------------------------------------------------------------------------------------------------

class Client:
    """A client: the CLI (built in, public: it proves nothing but its id, as RFC 8628 expects), or one an MCP client
    registered itself (public, or confidential with a secret kept as its SHA-256)."""

    def __init__(self, client_id: str, grant_types: tuple[str, ...], scope: str, *,
                 redirect_uris: tuple[str, ...] = (), auth_method: str = "none", secret_hash: str = "",
                 name: str = "") -> None:
        self.client_id, self.grant_types, self.scope = client_id, grant_types, scope
        self.redirect_uris, self.auth_method, self.secret_hash = redirect_uris, auth_method, secret_hash
        self.name = name or client_id

    @classmethod
    def registered(cls, record: OAuthClientRecord) -> Client:
        meta = record.metadata
        return cls(record.client_id, tuple(meta.get("grant_types") or (CODE_GRANT,)), MCP_SCOPE,
                   redirect_uris=tuple(meta.get("redirect_uris") or ()),
                   auth_method=meta.get("token_endpoint_auth_method") or "client_secret_basic",
                   secret_hash=record.secret_hash, name=str(meta.get("client_name") or ""))

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        allowed = self.scope.split()
        return " ".join(s for s in (scope or self.scope).split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        if redirect_uri in self.redirect_uris:
            return True
        got = urlsplit(redirect_uri)
        if got.scheme != "http" or not _loopback(got.hostname):
            return False
        # RFC 8252 7.3: a native app listens on whatever loopback port is free, so the port may differ.
        return any(want.scheme == "http" and want.hostname == got.hostname and want.path == got.path
                   and want.query == got.query for want in map(urlsplit, self.redirect_uris))

    def check_client_secret(self, client_secret: str) -> bool:
        return bool(self.secret_hash) and hmac.compare_digest(_sha(client_secret), self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and CODE_GRANT in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


class User:
    """Who a grant is for, and the audience its tokens get (the API's, or one deployment's)."""

    def __init__(self, subject: str, org: str, roles: list[str], family: str, audience: str, idp: str = "") -> None:
        self.subject, self.org, self.roles, self.family, self.audience = subject, org, roles, family, audience
        self.idp = idp  # the auth provider they logged in through

    @classmethod
    def logged_in(cls, identity: Identity, audience: str) -> User:
        """A new login (a new refresh token family)."""
        return cls(identity.subject, identity.org, identity.roles, "fam_" + secrets.token_hex(8), audience,
                   identity.provider)

    def get_user_id(self) -> str:
        return self.subject


class Refresh:
    """A refresh token as authlib sees it."""

    def __init__(self, record: RefreshTokenRecord) -> None:
        self.record = record

    def check_client(self, client: Client) -> bool:
        return client.get_client_id() == self.record.client_id

    def get_scope(self) -> str:
        return self.record.scope

    def get_expires_in(self) -> int:
        return max(0, int(self.record.expires_at - time.time()))

    def is_expired(self) -> bool:
        return self.record.expires_at < time.time()

    def is_revoked(self) -> bool:
        return self.record.revoked


class Code:
    """An authorization code (in memory: it lives two minutes, on the node that issued it). A used one is kept
    until it expires, so that a second use is seen (and revokes what the first gave, RFC 6749 4.1.2)."""

    def __init__(self, client_id: str, redirect_uri: str, scope: str, user: User, challenge: str,
                 method: str) -> None:
        self.client_id, self.redirect_uri, self.scope, self.user = client_id, redirect_uri, scope, user
        self.challenge, self.method = challenge, method
        self.expires_at, self.used = time.time() + _CODE_SECONDS, False

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


class Access:
    """An access token presented for revocation: revoking it revokes its family (its refresh tokens)."""

    def __init__(self, claims: dict) -> None:
        self.claims = claims

    def check_client(self, client: Client) -> bool:
        return client.get_client_id() == self.claims.get("client_id")


# -- signing keys ----------------------------------------------------------------------------------------------------

class SigningKeys:
    """ES256 keys in the secrets backend. The newest signs; the others verify until the tokens they signed expire.
    A key older than ``key_rotation_days`` gets a successor at start or on the hourly check."""

    def __init__(self, platform, config: OAuthConfig) -> None:
        self.platform, self.config = platform, config
        self.keys: list[dict] = []  # {"kid", "jwk" (private), "created_at"}, oldest first
        self._loaded_at = 0.0

    async def load(self) -> None:
        from joserfc.jwk import ECKey

        stored = await self._read()
        now = time.time()
        if not stored or now - stored[-1]["created_at"] > self.config.key_rotation_days * 86400:
            key = ECKey.generate_key("P-256", private=True)
            kid = secrets.token_hex(8)
            # A key signs until its successor exists, so it must verify for one token lifetime after that.
            cutoff = now - self.config.access_token_seconds - 60
            stored = [k for i, k in enumerate(stored)
                      if i == len(stored) - 1 or stored[i + 1]["created_at"] > cutoff] + [
                {"kid": kid, "jwk": key.as_dict(private=True), "created_at": now}]
            await self.platform.secrets.put(SIGNING_SCOPE, SIGNING_KEY, json.dumps(stored))
            stored = await self._read() or stored  # another node may have written at the same time: theirs wins
            log.info("OAuth signing key %s made (%d kept for verifying)", kid, len(stored))
        self.keys, self._loaded_at = stored, time.monotonic()

    async def _read(self) -> list[dict]:
        try:
            raw = await self.platform.secrets.get(SIGNING_SCOPE, SIGNING_KEY)
        except Exception:  # noqa: BLE001 - none stored yet (the backend's NotFound)
            return []
        data = json.loads(raw)
        return data if isinstance(data, list) else []

    async def reload_for(self, kid: str) -> None:
        """A kid this node does not know: another node rotated. Read again, at most every 10 s."""
        if time.monotonic() - self._loaded_at > 10 and not any(k["kid"] == kid for k in self.keys):
            self.keys, self._loaded_at = await self._read() or self.keys, time.monotonic()

    def signer(self):
        from joserfc.jwk import ECKey

        newest = self.keys[-1]
        return newest["kid"], ECKey.import_key(newest["jwk"])

    def keyset(self):
        from joserfc.jwk import KeySet

        return KeySet.import_key_set({"keys": [{**k["jwk"], "kid": k["kid"]} for k in self.keys]})

    def jwks(self) -> dict:
        from joserfc.jwk import ECKey

        return {"keys": [{**ECKey.import_key(k["jwk"]).as_dict(private=False), "kid": k["kid"], "use": "sig",
                          "alg": ALG} for k in self.keys]}


# -- the server ------------------------------------------------------------------------------------------------------

class OAuthServer:
    def __init__(self, platform, config: OAuthConfig) -> None:
        self.platform, self.config = platform, config
        self.keys = SigningKeys(platform, config)
        self.clients = {CLI_CLIENT_ID: Client(CLI_CLIENT_ID, (DEVICE_GRANT, TOKEN_EXCHANGE, "refresh_token"),
                                              " ".join(SCOPES))}
        self.clients[CONSOLE_CLIENT_ID] = Client(
            CONSOLE_CLIENT_ID, (CODE_GRANT, "refresh_token"), " ".join(SCOPES), name="the mcp-agent-cloud console",
            redirect_uris=(f"{self.issuer}/console/callback",))
        self.devices: dict[str, dict] = {}  # device_code -> credential (in memory: minutes-long, this node only)
        self.grants: dict[str, tuple[User, bool]] = {}  # user_code -> (user, approved)
        self.codes: dict[str, Code] = {}
        self.upstream: dict[str, dict] = {}  # state -> a login at another identity provider, under way
        self._registered: dict[str, Client] = {}  # registered clients never change: cached once read
        self._registrations: dict[str, list[float]] = defaultdict(list)  # source address -> times
        self._used: set[str] = set()  # registered clients this node saw get a token (marked in the registry)
        self._failures: dict[str, list[float]] = defaultdict(list)
        self._family_cache: dict[str, tuple[bool, float]] = {}
        self._server = None

    @property
    def issuer(self) -> str:
        return self.platform.config.base_url.rstrip("/")

    @property
    def api_audience(self) -> str:
        return self.issuer + "/api"

    @property
    def servers_prefix(self) -> str:
        return self.issuer + "/servers/"

    def audience_for(self, resource: str | None, org: str, *, any_org: bool = False) -> str | None:
        """RFC 8707: the audience of a token for ``resource``, asked by a user of ``org``. A deployment's is
        ``{platform}/servers/{org}.{name}`` whatever URL under it the client names (short or qualified name,
        ``/mcp`` or ``/sse``); the API's is ``{platform}/api``. None: not this platform's, or another org's
        (unless ``any_org``: a public deployment's token, checked when it was issued and again on each call)."""
        if (resource or "").rstrip("/") == self.api_audience:
            return self.api_audience
        if (name := self._deployment_named(resource)) is None:
            return None
        owner, short = split_qualified(name, org)
        return f"{self.servers_prefix}{owner}.{short}" if owner == org or any_org else None

    def resource_metadata_url(self, path: str) -> str | None:
        """Where the protected-resource metadata (RFC 9728) of the deployment at ``path`` is, or None."""
        if not path.startswith("/servers/") or len(path.split("/")) < 3 or not path.split("/")[2]:
            return None
        return f"{self.issuer}/.well-known/oauth-protected-resource{path.rstrip('/')}"

    def challenge(self, path: str, error: str = "", description: str = "") -> str:
        """The ``WWW-Authenticate`` of a 401: on a deployment's endpoint it names that deployment's metadata, which
        is how an MCP client finds where to get a token."""
        parts = ['Bearer realm="mcp-agent-cloud"']
        if url := self.resource_metadata_url(path):
            parts.append(f'resource_metadata="{url}"')
        if error:
            parts.append(f'error="{error}"')
        if description:
            parts.append(f'error_description="{description}"')
        return ", ".join(parts)

    async def start(self) -> None:
        await self.keys.load()
        self._server = self._build()

    async def rotate_loop(self) -> None:
        while True:
            await anyio.sleep(3600)
            try:
                await self.keys.load()  # makes a successor once the newest key is old enough
            except Exception as exc:  # noqa: BLE001 - the current keys keep working; next hour again
                log.warning("checking the OAuth signing keys failed: %s", exc)

    # authlib, synchronous, in a worker thread --------------------------------------------------------------------

    def _build(self):
        from authlib.oauth2 import AuthorizationServer
        from authlib.oauth2.rfc6749 import (
            InvalidGrantError,
            InvalidRequestError,
            JsonRequest,
            OAuth2Error,
            OAuth2Request,
            UnauthorizedClientError,
        )
        from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, BaseGrant, RefreshTokenGrant
        from authlib.oauth2.rfc6749.grants.base import TokenEndpointMixin
        from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
        from authlib.oauth2.rfc7009 import RevocationEndpoint
        from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint
        from authlib.oauth2.rfc7636 import CodeChallenge
        from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint, DeviceCodeGrant, DeviceCredentialDict

        oauth = self
        run = anyio.from_thread.run

        def invalid_target(description: str) -> OAuth2Error:  # RFC 8707 2: authlib has no class for it
            return OAuth2Error(description, status_code=400, error="invalid_target")

        class Req(OAuth2Request):
            def __init__(self, method: str, uri: str, headers: dict, form: dict) -> None:
                super().__init__(method, uri, headers=headers)
                self.payload, self._form = BasicOAuth2Payload(form), form

            @property
            def form(self) -> dict:
                return self._form

            @property
            def args(self) -> dict:
                return {}

        class Server(AuthorizationServer):
            def query_client(self, client_id):
                return oauth.clients.get(client_id) or run(oauth._registered_client, client_id)

            def save_token(self, token, request):
                family = request.user.family
                run(oauth._save_token, token, request.client.get_client_id(), request.user, family)

            def create_oauth2_request(self, request):
                return request if isinstance(request, OAuth2Request) else Req(*request)

            def create_json_request(self, request):
                method, uri, headers, data = request
                made = JsonRequest(method, uri, headers=headers)
                made.payload = BasicOAuth2Payload(data)
                return made

            def handle_response(self, status, body, headers):
                return status, body, headers

            def send_signal(self, name, *args, **kwargs):
                pass

        class DeviceEndpoint(DeviceAuthorizationEndpoint):
            EXPIRES_IN = oauth.config.device_code_seconds
            INTERVAL = oauth.config.poll_interval

            def get_verification_uri(self):
                return oauth.issuer + "/oauth/device"

            def save_device_credential(self, client_id, scope, data):
                oauth.devices[data["device_code"]] = DeviceCredentialDict(
                    {**data, "client_id": client_id, "scope": scope or " ".join(SCOPES),
                     "expires_at": time.time() + self.EXPIRES_IN, "last_poll": 0.0})

        class DeviceGrant(DeviceCodeGrant):
            def query_device_credential(self, device_code):
                return oauth.devices.get(device_code)

            def query_user_grant(self, user_code):
                return oauth.grants.get(user_code)

            def should_slow_down(self, credential):
                now, last = time.time(), credential["last_poll"]
                credential["last_poll"] = now
                if last and now - last < credential["interval"]:
                    credential["interval"] += 5  # RFC 8628 3.5: this and every later request
                    return True
                return False

            def create_token_response(self):
                status, body, headers = super().create_token_response()
                oauth.devices.pop(self.request.payload.data.get("device_code"), None)  # a device code works once
                return status, body, headers

        class Pkce(CodeChallenge):
            DEFAULT_CODE_CHALLENGE_METHOD = "S256"
            SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # plain is no protection (OAuth 2.1)

            def validate_code_challenge(self, grant, redirect_uri):
                if not grant.request.payload.data.get("code_challenge"):
                    raise InvalidRequestError("code_challenge is required: PKCE with S256")
                super().validate_code_challenge(grant, redirect_uri)

            def get_authorization_code_challenge(self, authorization_code):
                return authorization_code.challenge

            def get_authorization_code_challenge_method(self, authorization_code):
                return authorization_code.method

        class CodeGrant(AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = list(CLIENT_AUTH_METHODS)

            def save_authorization_code(self, code, request):
                now = time.time()
                for old in [c for c, item in oauth.codes.items() if item.expires_at < now]:
                    del oauth.codes[old]
                data = request.payload.data
                oauth.codes[code] = Code(request.client.get_client_id(), request.payload.redirect_uri,
                                         request.scope or MCP_SCOPE, request.user, data["code_challenge"],
                                         data.get("code_challenge_method") or "S256")

            def query_authorization_code(self, code, client):
                item = oauth.codes.get(code)
                if item is None or item.client_id != client.get_client_id() or item.expires_at < time.time():
                    return None
                if item.used:
                    log.warning("authorization code of %s used twice: its login is revoked", item.user.subject)
                    run(oauth._revoke_family, item.user.family)
                    return None
                return item

            def delete_authorization_code(self, authorization_code):
                authorization_code.used = True

            def authenticate_user(self, authorization_code):
                return authorization_code.user

            def validate_token_request(self):
                super().validate_token_request()
                code = self.request.authorization_code
                resource = self.request.form.get("resource")
                if resource and oauth.audience_for(resource, code.user.org, any_org=True) != code.user.audience:
                    raise invalid_target("resource is not the one this code was issued for")

        class Refresher(RefreshTokenGrant):
            INCLUDE_NEW_REFRESH_TOKEN = True
            TOKEN_ENDPOINT_AUTH_METHODS = list(CLIENT_AUTH_METHODS)

            def authenticate_refresh_token(self, refresh_token):
                found = run(oauth._claim_refresh, refresh_token, self.request.form.get("resource"))
                if found == "target":
                    raise invalid_target("resource is not the one this login was for")
                return found

            def authenticate_user(self, refresh_token):
                return run(oauth._user_for, refresh_token.record)

            def revoke_old_credential(self, refresh_token):
                pass  # claimed (marked used) in authenticate_refresh_token, before anything was issued

        class Exchange(BaseGrant, TokenEndpointMixin):
            """RFC 8693: a token of an identity provider (GitHub's, from its device flow) for the platform's."""

            GRANT_TYPE = TOKEN_EXCHANGE
            TOKEN_ENDPOINT_AUTH_METHODS = ["none"]

            def validate_token_request(self):
                client = self.authenticate_token_endpoint_client()
                if not client.check_grant_type(TOKEN_EXCHANGE):
                    raise UnauthorizedClientError(f"the client may not use {TOKEN_EXCHANGE}")
                form = self.request.form
                kind = form.get("subject_token_type")
                if kind not in (ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE) or not form.get("subject_token"):
                    raise InvalidRequestError(f"send subject_token, with subject_token_type {ACCESS_TOKEN_TYPE} "
                                              f"or {ID_TOKEN_TYPE}")
                found = run(oauth._exchange, str(form.get("subject_issuer", "")), form["subject_token"],
                            kind.rsplit(":", 1)[-1])
                if isinstance(found, str):
                    raise InvalidGrantError(found)
                self.request.client, self.request.user = client, found

            def create_token_response(self):
                scope = self.request.client.get_allowed_scope(self.request.form.get("scope"))
                token = self.generate_token(user=self.request.user, scope=scope, include_refresh_token=True)
                self.save_token(token)
                return 200, {**token, "issued_token_type": ACCESS_TOKEN_TYPE}, self.TOKEN_RESPONSE_HEADER

        class Registration(ClientRegistrationEndpoint):
            def authenticate_token(self, request):
                return True  # open, as the MCP spec expects; limited per address in _register

            def get_server_metadata(self):
                return {**oauth.metadata(), "grant_types_supported": [CODE_GRANT, "refresh_token"],
                        "scopes_supported": [MCP_SCOPE], "response_types_supported": ["code"]}

            def generate_client_secret(self, request):
                method = request.payload.data.get("token_endpoint_auth_method") or "client_secret_basic"
                return None if method == "none" else secrets.token_urlsafe(32)

            def save_client(self, client_info, client_metadata, request):
                return run(oauth._save_client, client_info, client_metadata,
                           request.headers.get("x-mcpac-source", ""))

        class Revocation(RevocationEndpoint):
            CLIENT_AUTH_METHODS = list(CLIENT_AUTH_METHODS)

            def query_token(self, token_string, token_type_hint):
                return run(oauth._find_for_revocation, token_string)

            def revoke_token(self, token, request):
                family = token.record.family if isinstance(token, Refresh) else token.claims.get("sid")
                if family:
                    run(oauth._revoke_family, family)

        server = Server(scopes_supported=list(SCOPES))
        server.register_token_generator("default", self._generate)
        server.register_grant(DeviceGrant)
        server.register_grant(CodeGrant, [Pkce(required=True)])
        server.register_grant(Refresher)
        server.register_grant(Exchange)
        server.register_endpoint(DeviceEndpoint)
        server.register_endpoint(Revocation)
        server.register_endpoint(Registration)
        return server

    def _generate(self, grant_type, client, user=None, scope=None, expires_in=None, include_refresh_token=True):
        from joserfc import jwt

        now = int(time.time())
        lifetime = self.config.access_token_seconds
        kid, key = self.keys.signer()
        claims = {"iss": self.issuer, "sub": user.subject, "aud": user.audience, "iat": now,
                  "exp": now + lifetime, "jti": secrets.token_hex(12), "client_id": client.get_client_id(),
                  "scope": scope or "", "org": user.org, "roles": user.roles, "sid": user.family}
        if user.idp:
            claims["idp"] = user.idp
        token = {"token_type": "Bearer", "access_token": jwt.encode({"alg": ALG, "typ": "at+jwt", "kid": kid},
                                                                    claims, key, algorithms=[ALG]),
                 "expires_in": lifetime, "scope": scope or ""}
        if include_refresh_token:
            token["refresh_token"] = REFRESH_PREFIX + secrets.token_urlsafe(32)
        return token

    # async callbacks (on the event loop) ---------------------------------------------------------------------------

    async def _save_token(self, token: dict, client_id: str, user: User, family: str) -> None:
        if client_id not in self.clients and client_id not in self._used:  # a registered client: not abandoned
            if len(self._used) > 10_000:
                self._used.clear()
            self._used.add(client_id)
            await self.platform.registry.mark_oauth_client_used(client_id)
        if "refresh_token" not in token:
            return
        await self.platform.registry.add_refresh_token(RefreshTokenRecord(
            id="rt_" + secrets.token_hex(8), family=family, token_hash=_sha(token["refresh_token"]),
            client_id=client_id, org=user.org, subject=user.subject, scope=token.get("scope", ""),
            audience=user.audience, expires_at=time.time() + self.config.refresh_token_days * 86400))

    async def _claim_refresh(self, token_string: str, resource: str | None = None) -> Refresh | str | None:
        record = await self.platform.registry.find_refresh_token(_sha(token_string))
        if record is None or record.revoked or record.expires_at < time.time():
            return None
        if resource and (self.audience_for(resource, record.org, any_org=True)
                         != (record.audience or self.api_audience)):
            return "target"  # before the claim: a client that named the wrong resource keeps its token
        if not await self.platform.registry.use_refresh_token(record.id):
            # Used before: someone holds a copy. Everything of the family goes (RFC 9700 4.14.2).
            revoked = await self.platform.registry.revoke_refresh_family(record.family)
            self._family_cache.pop(record.family, None)
            log.warning("refresh token reuse for %s in org %s: revoked its family (%d live tokens)",
                        record.subject, record.org, revoked)
            await self.platform.audit(AuditRecord(
                org=record.org, actor=record.subject, provider="oauth", action="oauth refresh token reused",
                target=f"family={record.family}", status=400, outcome="denied",
                message=f"the login was revoked ({revoked} live tokens)"))
            return None
        return Refresh(record)

    async def _user_for(self, record: RefreshTokenRecord) -> User | None:
        """The user again (roles may have changed; a disabled user gets no new tokens)."""
        for provider in self.platform.auth_providers:
            lookup = getattr(provider, "user", None)
            if callable(lookup) and (found := await lookup(record.subject)) is not None:
                if found.org != record.org:
                    return None
                return User(found.subject, found.org, found.roles, record.family,
                            record.audience or self.api_audience, found.provider)
        return None

    async def _registered_client(self, client_id: str | None) -> Client | None:
        if not client_id or len(client_id) > 128:
            return None
        if (client := self._registered.get(client_id)) is not None:
            return client
        record = await self.platform.registry.get_oauth_client(client_id)
        if record is None:
            return None
        if len(self._registered) > 10_000:
            self._registered.clear()
        client = self._registered[client_id] = Client.registered(record)
        return client

    async def prune_abandoned_clients(self) -> int:
        """Registrations that never got a token within ``oauth.abandoned_client_hours``: a client that registers
        and walks away (or a flood of them) does not stay in the registry for ever."""
        hours = self.config.abandoned_client_hours
        if hours <= 0:
            return 0
        removed = await self.platform.registry.prune_oauth_clients(before=time.time() - hours * 3600)
        if removed:
            self._registered.clear()
        return removed

    async def _save_client(self, client_info: dict, client_metadata: dict, source: str) -> Client:
        secret = client_info.get("client_secret")
        record = await self.platform.registry.add_oauth_client(OAuthClientRecord(
            client_id=client_info["client_id"], secret_hash=_sha(secret) if secret else "",
            metadata=client_metadata, source=source))
        log.info("OAuth client %s registered (%s) from %s", record.client_id,
                 str(client_metadata.get("client_name", ""))[:80], source)
        return Client.registered(record)

    async def _find_for_revocation(self, token_string: str):
        if looks_like_jwt(token_string):
            claims = await self.verify(token_string, check_family=False)
            return Access(claims) if claims else None
        record = await self.platform.registry.find_refresh_token(_sha(token_string))
        return Refresh(record) if record else None

    async def _revoke_family(self, family: str) -> None:
        await self.platform.registry.revoke_refresh_family(family)
        self._family_cache.pop(family, None)

    async def _call(self, request: Request, call) -> Response:
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        # The headers as they are (case-insensitive): authlib reads "Authorization".
        args = (request.method, str(request.url), request.headers, form)
        status, body, headers = await anyio.to_thread.run_sync(lambda: call(args))
        return JSONResponse(body, status_code=status, headers={**dict(headers), "Cache-Control": "no-store"})

    async def token_request(self, form: dict[str, str]) -> tuple[int, dict]:
        """The token endpoint, called in-process by a first-party client (the console): the same grants and
        checks as over HTTP."""
        args = ("POST", f"{self.issuer}/oauth/token", {}, form)
        status, body, _ = await anyio.to_thread.run_sync(lambda: self._server.create_token_response(args))
        return status, body

    async def revoke(self, token: str, client_id: str) -> None:
        args = ("POST", f"{self.issuer}/oauth/revoke", {}, {"token": token, "client_id": client_id})
        await anyio.to_thread.run_sync(lambda: self._server.create_endpoint_response("revocation", args))

    # access tokens -------------------------------------------------------------------------------------------------

    async def verify(self, token: str, *, check_family: bool = True) -> dict | None:
        """The claims of a valid access token of this issuer, or None."""
        from joserfc import jws, jwt
        from joserfc.errors import JoseError

        try:
            header = jws.extract_compact(token.encode()).protected
            if header.get("alg") != ALG or header.get("typ") != "at+jwt":
                return None
            await self.keys.reload_for(str(header.get("kid")))
            decoded = jwt.decode(token, self.keys.keyset(), algorithms=[ALG])
            registry = jwt.JWTClaimsRegistry(iss={"essential": True, "value": self.issuer},
                                             aud={"essential": True}, exp={"essential": True},
                                             sub={"essential": True}, leeway=10)
            registry.validate(decoded.claims)
        except (JoseError, ValueError, KeyError, IndexError, TypeError):
            return None
        claims = decoded.claims
        aud = claims.get("aud")
        # The API's, or exactly one deployment (as audience_for writes it). Another org's is a public one's; the
        # gateway lets it in only while that deployment is public (Platform.caller_for).
        if aud != self.api_audience and (not isinstance(aud, str) or
                                         self.audience_for(aud, str(claims.get("org", "")), any_org=True) != aud):
            return None
        if check_family and not await self._family_live(str(claims.get("sid", ""))):
            return None
        return claims

    async def _family_live(self, family: str) -> bool:
        hit = self._family_cache.get(family)
        if hit is not None and time.monotonic() - hit[1] < 2.0:
            return hit[0]
        live = bool(family) and await self.platform.registry.refresh_family_live(family)
        if len(self._family_cache) > 10_000:
            self._family_cache.clear()
        self._family_cache[family] = (live, time.monotonic())
        return live

    async def authenticate(self, token: str) -> Identity | None:
        claims = await self.verify(token)
        if claims is None:
            return None
        scopes = [s for s in str(claims.get("scope", "")).split() if s in SCOPES]
        if claims["aud"] != self.api_audience:
            # One deployment's token: the scope guard keeps it to that deployment's MCP endpoints.
            scopes = [MCP_SCOPE, f"deployment:{claims['aud'][len(self.servers_prefix):]}"]
        return Identity(subject=claims["sub"], org=claims["org"], roles=list(claims.get("roles") or []),
                        scopes=scopes, provider="oauth", token_id=claims.get("jti"), via=claims.get("idp"))

    # HTTP ----------------------------------------------------------------------------------------------------------

    def metadata(self) -> dict:
        base = self.issuer
        data = {"issuer": base, "authorization_endpoint": base + "/oauth/authorize", "token_endpoint": base +
                "/oauth/token", "device_authorization_endpoint": base + "/oauth/device_authorization",
                "revocation_endpoint": base + "/oauth/revoke", "introspection_endpoint": base + "/oauth/introspect",
                "jwks_uri": base + "/.well-known/jwks.json", "scopes_supported": list(SCOPES),
                "grant_types_supported": [CODE_GRANT, DEVICE_GRANT, TOKEN_EXCHANGE, "refresh_token"],
                "response_types_supported": ["code"], "response_modes_supported": ["query"],
                "token_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
                "revocation_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
                "code_challenge_methods_supported": ["S256"]}
        if self.config.dynamic_registration:
            data["registration_endpoint"] = base + "/oauth/register"
        return data

    def resource_metadata(self, name: str) -> dict:
        """RFC 9728, for the deployment addressed as ``name``: the resource is the deployment (any of its endpoints),
        its authorization server this platform. Answered for any name: it tells nobody what exists."""
        return {"resource": f"{self.servers_prefix}{name}", "authorization_servers": [self.issuer],
                "scopes_supported": [MCP_SCOPE], "bearer_methods_supported": ["header"],
                "resource_name": f"mcp-agent-cloud deployment {name}"}

    def routes(self) -> list[Route]:
        async def metadata(request: Request) -> Response:
            return JSONResponse(self.metadata())

        async def resource(request: Request) -> Response:
            name = request.path_params["name"]
            if name.startswith("@"):  # @{org}/{name}: the resource is the address the client used
                name = f"{name}/{request.path_params.get('rest', '').split('/', 1)[0]}"
            return JSONResponse(self.resource_metadata(name), headers={"Cache-Control": "max-age=300"})

        async def jwks(request: Request) -> Response:
            return JSONResponse(self.keys.jwks(), headers={"Cache-Control": "max-age=300"})

        async def device_authorization(request: Request) -> Response:
            return await self._call(request, lambda a: self._server.create_endpoint_response("device_authorization",
                                                                                             a))

        async def token(request: Request) -> Response:
            return await self._call(request, lambda a: self._server.create_token_response(a))

        async def revoke(request: Request) -> Response:
            return await self._call(request, lambda a: self._server.create_endpoint_response("revocation", a))

        async def introspect(request: Request) -> Response:
            caller = await self.platform.authenticate(request)
            if caller is None:
                return JSONResponse({"error": "invalid_client", "error_description": "send a bearer token"},
                                    status_code=401, headers={"WWW-Authenticate": 'Bearer realm="mcp-agent-cloud"'})
            form = await request.form()
            claims = await self.verify(str(form.get("token", "")))
            if claims is None or claims.get("org") != caller.org:  # another org's token is not for it to see
                return JSONResponse({"active": False})
            return JSONResponse({"active": True, "token_type": "Bearer", **{k: claims[k] for k in (
                "iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope", "org", "roles") if k in claims}})

        return [
            Route("/.well-known/oauth-authorization-server", metadata, methods=["GET"]),
            Route("/.well-known/jwks.json", jwks, methods=["GET"]),
            Route("/oauth/device_authorization", device_authorization, methods=["POST"]),
            Route("/oauth/token", token, methods=["POST"]),
            Route("/oauth/revoke", revoke, methods=["POST"]),
            Route("/oauth/introspect", introspect, methods=["POST"]),
            Route("/oauth/device", self._device_page, methods=["GET", "POST"]),
            Route("/oauth/authorize", self._authorize_page, methods=["GET", "POST"]),
            Route("/oauth/register", self._register, methods=["POST"]),
            Route("/oauth/callback/{provider}", self._upstream_callback, methods=["GET"]),
            Route("/.well-known/oauth-protected-resource/servers/{name}", resource, methods=["GET"]),
            Route("/.well-known/oauth-protected-resource/servers/{name}/{rest:path}", resource, methods=["GET"]),
        ]

    # the login pages --------------------------------------------------------------------------------------------

    @property
    def federated(self) -> list:
        """The providers whose users log in elsewhere (a "Log in with ..." button each)."""
        return [p for p in self.platform.auth_providers if getattr(p, "federated", False)]

    def _buttons(self) -> list[tuple[str, str]]:
        return [(p.spec_name, p.label) for p in self.federated]

    def _login_origins(self) -> tuple[str, ...]:
        return tuple(p.login_origin for p in self.federated if getattr(p, "login_origin", ""))

    def _pending_device(self, user_code: str) -> bool:
        now = time.time()
        return user_code not in self.grants and any(
            c["user_code"] == user_code and c["expires_at"] > now for c in self.devices.values())

    async def _device_page(self, request: Request) -> Response:
        buttons = self._buttons()
        page = functools.partial(_page, redirect_to=self._login_origins())
        if request.method == "GET":
            return page(_device_form(request.query_params.get("user_code", ""), buttons=buttons))
        form = await request.form()
        user_code = str(form.get("user_code", "")).strip().upper()
        action = str(form.get("action", ""))
        if not self._pending_device(user_code):
            return page(_device_form(user_code, "That code is unknown, used or expired. Run the login again.",
                                     buttons=buttons), 400)
        if action == "deny":
            self.grants[user_code] = (User("", "", [], "", ""), False)
            return _page("<h1>Login denied</h1><p>The terminal that asked is told so. You can close this page.</p>")
        if (provider := auth_provider(action)) is not None:
            return await self._upstream_start(provider, {"kind": "device", "user_code": user_code})
        identity, error, status = await self._checked_login(request, str(form.get("username", "")),
                                                            str(form.get("password", "")))
        if identity is None:
            return page(_device_form(user_code, error, buttons=buttons), status)
        return await self._finish_device(request, user_code, identity)

    async def _finish_device(self, request: Request, user_code: str, identity: Identity) -> Response:
        await self._audit_login(request, identity, "oauth device login", f"client_id={CLI_CLIENT_ID}")
        self.grants[user_code] = (User.logged_in(identity, self.api_audience), True)
        return _page(f"<h1>Logged in</h1><p>{html.escape(identity.subject)} (org {html.escape(identity.org)}). "
                     "Go back to your terminal: it has its token now. You can close this page.</p>")

    async def _consent(self, request: Request, params: dict):
        """authlib's checks of an authorization request: (the grant, None), or (None, the error's answer)."""
        from authlib.oauth2.rfc6749 import OAuth2Error

        args = ("GET", str(request.url), dict(request.headers), params)
        try:
            grant = await anyio.to_thread.run_sync(lambda: self._server.get_consent_grant(args))
        except OAuth2Error as error:
            return None, (_oauth_redirect(*error()) if error.redirect_uri else _page(
                _error_page(error.description or error.error), 400))
        console = grant.request.client.client_id == CONSOLE_CLIENT_ID
        if console and (params.get("resource") or "").rstrip("/") != self.api_audience:
            return None, self._refuse(grant, params, "invalid_target", f"the console's resource is {self.api_audience}")
        if not console and self._deployment_named(params.get("resource")) is None:
            return None, self._refuse(grant, params, "invalid_target", "resource must be a deployment of this "
                                      f"platform: {self.servers_prefix}NAME (RFC 8707)")
        return grant, None

    def _refuse(self, grant, params: dict, error: str, description: str) -> Response:
        from authlib.oauth2.rfc6749 import OAuth2Error

        return _oauth_redirect(*OAuth2Error(description, error=error, redirect_uri=grant.redirect_uri,
                                            state=params.get("state"))())

    async def _authorize_page(self, request: Request) -> Response:
        """The authorization endpoint: an MCP client sends the user here; the user logs in and allows it to call
        one deployment as them. The code goes back to the client's registered redirect URI."""
        source = await request.form() if request.method == "POST" else request.query_params
        params = {k: str(source[k]) for k in _AUTHORIZE_PARAMS if k in source}  # nothing else reaches authlib
        grant, answer = await self._consent(request, params)
        if grant is None:
            return answer
        client, name = grant.request.client, self._deployment_named(params["resource"])
        page = functools.partial(_page, redirect_to=(grant.redirect_uri, *self._login_origins()))
        only = await self._only_provider(name) if name else None
        buttons = [b for b in self._buttons() if only is None or b[0] == only]
        form = functools.partial(_console_form if name is None else _authorize_form, params, client.name,
                                 grant.redirect_uri, name, buttons=buttons, password=only is None)
        if request.method == "GET":
            return page(form())
        action = str(source.get("action", ""))
        if (provider := auth_provider(action)) is not None:
            return await self._upstream_start(provider, {"kind": "authorize", "params": params})
        if action != "approve":
            response = await anyio.to_thread.run_sync(
                lambda: self._server.create_authorization_response(grant.request, grant_user=None, grant=grant))
            return _oauth_redirect(*response)
        identity, error, status = await self._checked_login(request, str(source.get("username", "")),
                                                            str(source.get("password", "")))
        if identity is None:
            return page(form(error), status)
        return await self._finish_authorize(request, grant, params, identity)

    async def _only_provider(self, name: str) -> str | None:
        """The one auth provider whose users may call deployment ``name`` (``auth: provider:NAME``), or None."""
        found = await self.platform.deployment_auth(f"/servers/{name}/")
        return auth_provider(found[1]) if found else None

    async def _finish_authorize(self, request: Request, grant, params: dict, identity: Identity) -> Response:
        audience = self.audience_for(params["resource"], identity.org, any_org=True)
        name = audience[len(self.servers_prefix):] if audience and audience != self.api_audience else None
        found = await self.platform.deployment_auth(f"/servers/{name}/") if name else None
        if audience is None or (name and not name.startswith(f"{identity.org}.") and not (found and found[2])):
            return self._refuse(grant, params, "invalid_target", f"deployment "
                                f"{self._deployment_named(params['resource'])} is not one of org {identity.org}'s")
        only = auth_provider(found[1]) if found else None
        if only is not None and identity.provider != only:
            return self._refuse(grant, params, "access_denied", f"this deployment takes only users who log in "
                                                                f"through {only}")
        user = User.logged_in(identity, audience)
        response = await anyio.to_thread.run_sync(
            lambda: self._server.create_authorization_response(grant.request, grant_user=user, grant=grant))
        await self._audit_login(request, identity, "oauth authorize", f"client_id={grant.request.client.client_id} "
                                f"resource={audience[len(self.servers_prefix):]}")
        return _oauth_redirect(*response)

    # logins at another identity provider (core/federation.py) ----------------------------------------------------

    async def _exchange(self, name: str, subject_token: str, token_type: str) -> User | str:
        """The user of another identity provider's token (the ``subject_issuer`` names the provider; the type is
        ``access_token`` or ``id_token``), or why not."""
        takers = [p for p in self.federated if hasattr(p, "identity_from_token")]
        provider = next((p for p in takers if p.spec_name == name), None)
        if provider is None:
            return (f"subject_issuer {name!r} is no provider whose tokens this platform takes; use one of: "
                    f"{', '.join(p.spec_name for p in takers) or '(none configured)'}")
        try:
            identity = await provider.identity_from_token(subject_token, token_type)
            await provider.provision(identity)
        except MCPAgentCloudError as exc:
            log.warning("token exchange through %s refused: %s", name, exc.message)
            return exc.message
        await self.platform.audit(AuditRecord(
            org=identity.org, actor=identity.subject, provider=identity.provider, action="oauth device login",
            target=f"client_id={CLI_CLIENT_ID} via={name}", status=200))
        return User.logged_in(identity, self.api_audience)

    async def _upstream_start(self, name: str, flow: dict) -> Response:
        provider = next((p for p in self.federated if p.spec_name == name), None)
        if provider is None:
            return _page(_error_page(f"There is no login through {name!r} here."), 400)
        now = time.time()
        for old in [s for s, f in self.upstream.items() if f["expires_at"] < now]:
            del self.upstream[old]
        state, binding = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        flow = {**flow, "provider": name, "verifier": secrets.token_urlsafe(48), "nonce": secrets.token_urlsafe(16),
                "binding": _sha(binding), "expires_at": now + _UPSTREAM_SECONDS}
        try:
            url = await provider.authorization_url(redirect_uri=self._callback_url(name), state=state,
                                                   code_verifier=flow["verifier"], nonce=flow["nonce"])
        except MCPAgentCloudError as exc:
            log.warning("login through %s cannot start: %s", name, exc.message)
            return _page(_error_page(f"The login through {provider.label} cannot start: {exc.message}"), 502)
        self.upstream[state] = flow
        response = RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})
        # The callback must come back to the browser that started the login: a link to the identity provider
        # sent to someone else would otherwise log them in to the sender's pending login.
        response.set_cookie(_BINDING_COOKIE, binding, max_age=_UPSTREAM_SECONDS, path="/oauth/callback/",
                            httponly=True, samesite="lax", secure=self.issuer.startswith("https://"))
        return response

    def _callback_url(self, name: str) -> str:
        return f"{self.issuer}/oauth/callback/{name}"

    async def _upstream_callback(self, request: Request) -> Response:
        name = request.path_params["provider"]
        query = request.query_params
        flow = self.upstream.pop(str(query.get("state", "")), None)
        if flow is None or flow["provider"] != name or flow["expires_at"] < time.time():
            return _page(_error_page("This login is unknown, used or expired: start it again."), 400)
        if not hmac.compare_digest(_sha(request.cookies.get(_BINDING_COOKIE, "")), flow["binding"]):
            return _page(_error_page("This login was started in another browser: start it again here."), 400)
        provider = next(p for p in self.federated if p.spec_name == name)
        if query.get("error"):
            return _page(_error_page(f"{provider.label} said: {query.get('error_description') or query['error']}"),
                         403)
        try:
            identity = await provider.complete(code=str(query.get("code", "")), redirect_uri=self._callback_url(name),
                                               code_verifier=flow["verifier"], nonce=flow["nonce"])
        except MCPAgentCloudError as exc:
            log.warning("login through %s refused: %s", name, exc.message)
            return _page(_error_page(f"{exc.message}. {exc.hint or ''}".strip()), exc.status)
        if flow["kind"] == "device":
            if not self._pending_device(flow["user_code"]):
                return _page(_error_page("That code is used or expired. Run the login again."), 400)
            return await self._finish_device(request, flow["user_code"], identity)
        grant, answer = await self._consent(request, flow["params"])
        if grant is None:
            return answer
        return await self._finish_authorize(request, grant, flow["params"], identity)

    def _deployment_named(self, resource: str | None) -> str | None:
        """The deployment name in a resource URL under /servers/, if it is one (``@org/name`` as ``org.name``)."""
        resource = (resource or "").rstrip("/")
        if not resource.startswith(self.servers_prefix):
            return None
        path = "/servers/" + resource[len(self.servers_prefix):]
        name = (from_at_path(path) or path).split("/")[2]  # @org/name is org.name
        try:
            split_qualified(name, "org")
        except Exception:  # noqa: BLE001 - not a deployment name
            return None
        return name

    async def _register(self, request: Request) -> Response:
        """Dynamic client registration (RFC 7591), open as the MCP spec expects, limited per address. A client
        gets scope mcp only, and only the authorization code grant (with refresh)."""
        def refuse(error: str, description: str, status: int = 400) -> Response:
            return JSONResponse({"error": error, "error_description": description}, status_code=status,
                                headers={"Cache-Control": "no-store"})

        if not self.config.dynamic_registration:
            return refuse("access_denied", "dynamic client registration is off here (oauth.dynamic_registration)",
                          403)
        source, now = _source(request), time.time()
        recent = [t for t in self._registrations[source] if now - t < 3600]
        self._registrations[source] = recent
        if len(recent) >= self.config.registrations_per_hour:
            return refuse("access_denied", "too many registrations from this address: try again in an hour", 429)
        body = await request.body()
        if len(body) > _MAX_CLIENT_METADATA:
            return refuse("invalid_client_metadata", f"the metadata is over {_MAX_CLIENT_METADATA} bytes", 413)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return refuse("invalid_client_metadata", "send the client metadata as a JSON object (RFC 7591 2)")
        uris = data.get("redirect_uris")
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
            return refuse("invalid_redirect_uri", "redirect_uris must be a non-empty list of URIs")
        for uri in uris:
            if problem := redirect_uri_problem(uri):
                return refuse("invalid_redirect_uri", problem)
        # RFC 7591's defaults, made explicit so the client reads back what the server will hold it to.
        data.setdefault("grant_types", [CODE_GRANT])
        data.setdefault("response_types", ["code"])
        data.setdefault("token_endpoint_auth_method", "client_secret_basic")
        recent.append(now)
        args = ("POST", str(request.url), {**dict(request.headers), "x-mcpac-source": source}, data)
        status, answer, _ = await anyio.to_thread.run_sync(
            lambda: self._server.create_endpoint_response("client_registration", args))
        return JSONResponse({k: v for k, v in answer.items() if v is not None}, status_code=status,
                            headers={"Cache-Control": "no-store"})

    async def _checked_login(self, request: Request, username: str,
                             password: str) -> tuple[Identity | None, str, int]:
        """A password login on one of the pages: five failures lock the user out for five minutes."""
        now = time.time()
        recent = [t for t in self._failures[username] if now - t < _LOCKOUT_SECONDS]
        self._failures[username] = recent
        if len(recent) >= _LOGIN_FAILURES:
            return None, "Too many failed logins for this user: wait a few minutes.", 429
        identity = await self._login(username, password)
        if identity is None:
            recent.append(now)
            log.warning("failed login for user %r from %s", username[:64], _source(request))
            return None, "Wrong username or password.", 401
        self._failures.pop(username, None)
        return identity, "", 200

    async def _audit_login(self, request: Request, identity: Identity, action: str, target: str) -> None:
        await self.platform.audit(AuditRecord(
            org=identity.org, actor=identity.subject, provider=identity.provider, action=action, target=target,
            source=_source(request), user_agent=request.headers.get("user-agent", "")[:200], status=200))

    async def _login(self, username: str, password: str) -> Identity | None:
        for provider in self.platform.auth_providers:
            login = getattr(provider, "login", None)
            if callable(login) and (identity := await login(username, password)) is not None:
                return identity
        return None


_AUTHORIZE_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge",
                     "code_challenge_method", "resource")


def _oauth_redirect(status: int, body, headers) -> Response:
    location = dict(headers).get("Location")
    if status == 302 and location:
        return RedirectResponse(location, status_code=302, headers={"Cache-Control": "no-store"})
    message = body.get("error_description") or body.get("error") if isinstance(body, dict) else str(body)
    return _page(_error_page(str(message)), status)


def _source(request: Request) -> str:
    return request.client.host if request.client else ""


_STYLE = ("body{font:16px/1.5 system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#111}"
          "label{display:block;margin-top:1rem;font-weight:600}input{width:100%;padding:.5rem;font-size:1rem;"
          "border:1px solid #555;border-radius:4px}button{margin-top:1.25rem;margin-right:.5rem;padding:.5rem 1rem;"
          "font-size:1rem}.error{color:#a00000;font-weight:600}")


def _page(body: str, status: int = 200, redirect_to: tuple[str, ...] = ()) -> HTMLResponse:
    # A form's answer may redirect only where form-action allows: to the client (the authorize page) or to an
    # identity provider (a "Log in with" button).
    extra = ""
    for url in redirect_to:
        target = urlsplit(url)
        host = target.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{target.port}" if target.port else ""
        extra += f" {target.scheme}://{host}{port}" if host else f" {target.scheme}:"
    return HTMLResponse(f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
                        f'content="width=device-width,initial-scale=1"><title>mcp-agent-cloud login</title>'
                        f"<style>{_STYLE}</style></head><body>{body}</body></html>", status_code=status,
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                                            f"form-action 'self'{extra}; frame-ancestors 'none'"})


def _provider_buttons(buttons: list[tuple[str, str]]) -> str:
    if not buttons:
        return ""
    return "<p>Or:</p>" + "".join(
        f'<button type="submit" name="action" value="provider:{html.escape(name)}" formnovalidate>Log in with '
        f'{html.escape(label)}</button>' for name, label in buttons)


def _device_form(user_code: str, error: str = "", buttons: list[tuple[str, str]] = ()) -> str:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return (f"<h1>Log in to mcp-agent-cloud</h1><p>Check that the code matches the one your terminal shows.</p>"
            f"{message}<form method=\"post\" action=\"/oauth/device\">"
            f'<label for="user_code">Code</label><input id="user_code" name="user_code" required '
            f'autocomplete="off" value="{html.escape(user_code)}">'
            f'<label for="username">Username</label><input id="username" name="username" required '
            f'autocomplete="username">'
            f'<label for="password">Password</label><input id="password" name="password" type="password" required '
            f'autocomplete="current-password">'
            f'<button type="submit" name="action" value="approve">Log in and allow</button>'
            f'<button type="submit" name="action" value="deny" formnovalidate>Deny</button>'
            f'{_provider_buttons(list(buttons))}</form>')


def _error_page(message: str) -> str:
    return (f"<h1>This login cannot go on</h1><p class=\"error\" role=\"alert\">{html.escape(message)}</p>"
            "<p>Go back to the app that sent you here and connect again.</p>")


def _console_form(params: dict, client_name: str, redirect_uri: str, deployment: None, error: str = "",
                  buttons: list[tuple[str, str]] = (), password: bool = True) -> str:
    """The console's login: the same form and providers as every login here, with nothing to allow."""
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in params.items())
    return ("<h1>Sign in to the console</h1>" + message + f'<form method="post" action="/oauth/authorize">{hidden}'
            '<label for="username">Username</label><input id="username" name="username" required '
            'autocomplete="username">'
            '<label for="password">Password</label><input id="password" name="password" type="password" '
            'required autocomplete="current-password">'
            '<button type="submit" name="action" value="approve">Sign in</button>'
            f'{_provider_buttons(list(buttons))}</form>')


def _authorize_form(params: dict, client_name: str, redirect_uri: str, deployment: str, error: str = "",
                    buttons: list[tuple[str, str]] = (), password: bool = True) -> str:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in params.items())
    where = urlsplit(redirect_uri)
    return (f"<h1>Allow {html.escape(client_name)}?</h1>"
            f"<p><strong>{html.escape(client_name)}</strong> asks to call the deployment "
            f"<strong>{html.escape(deployment)}</strong> as you. It will get a token for that deployment only, "
            f"sent to <strong>{html.escape(where.scheme + '://' + (where.netloc or where.path))}</strong>.</p>"
            f"<p>Allow it only if you just connected this app.</p>{message}"
            f'<form method="post" action="/oauth/authorize">{hidden}'
            + ('<label for="username">Username</label><input id="username" name="username" required '
               'autocomplete="username">'
               '<label for="password">Password</label><input id="password" name="password" type="password" '
               'required autocomplete="current-password">'
               '<button type="submit" name="action" value="approve">Log in and allow</button>' if password else "")
            + '<button type="submit" name="action" value="deny" formnovalidate>Deny</button>'
            + f'{_provider_buttons(list(buttons))}</form>')
