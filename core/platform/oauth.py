"""The platform's OAuth 2.1 authorization server, for its own API: the device authorization grant (RFC 8628) that
``mcp-agent login`` uses, refresh tokens that rotate (a reused one revokes its whole family), revocation (RFC 7009),
introspection (RFC 7662) and metadata (RFC 8414).

authlib does the protocol work (the grants, client authentication, the endpoints' checks and error answers); its
server is synchronous, so each call runs in a worker thread and reaches the async registry through
``anyio.from_thread``. joserfc signs the access tokens: JWTs (RFC 9068 ``at+jwt``) signed ES256 with keys that
rotate, published at ``/.well-known/jwks.json``. The keys live in the secrets backend (scope ``platform/_oauth``),
never in the registry or on disk in plaintext.

Users log in on a plain server-rendered page, checked by the auth providers that take passwords (``builtin``: the
local users of ``mcp-agent admin users add``). Not here yet: authorization code + PKCE, dynamic client
registration and per-deployment audiences for MCP clients, and the GitHub and OIDC providers.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import secrets
import time
from collections import defaultdict

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..config import OAuthConfig
from ..hookspecs.types import AuditRecord, Identity, RefreshTokenRecord

log = logging.getLogger("mcp_agent_cloud.oauth")

CLI_CLIENT_ID = "mcp-agent-cli"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# No tenant can name this scope: deployment names start with a letter, never "_".
SIGNING_SCOPE, SIGNING_KEY = "platform/_oauth", "SIGNING_KEYS"
SCOPES = ("api", "mcp")
REFRESH_PREFIX = "mcpacr_"
ALG = "ES256"
_LOGIN_FAILURES, _LOCKOUT_SECONDS = 5, 300


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith(("mcpac_", REFRESH_PREFIX))


# -- authlib's models ------------------------------------------------------------------------------------------------

class Client:
    """A registered client. The CLI is public (no secret): it proves nothing but its id, as RFC 8628 expects."""

    def __init__(self, client_id: str, grant_types: tuple[str, ...], scope: str) -> None:
        self.client_id, self.grant_types, self.scope = client_id, grant_types, scope

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        allowed = self.scope.split()
        return " ".join(s for s in (scope or self.scope).split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


class User:
    def __init__(self, subject: str, org: str, roles: list[str], family: str) -> None:
        self.subject, self.org, self.roles, self.family = subject, org, roles, family

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
        self.clients = {CLI_CLIENT_ID: Client(CLI_CLIENT_ID, (DEVICE_GRANT, "refresh_token"), " ".join(SCOPES))}
        self.devices: dict[str, dict] = {}  # device_code -> credential (in memory: minutes-long, this node only)
        self.grants: dict[str, tuple[User, bool]] = {}  # user_code -> (user, approved)
        self._failures: dict[str, list[float]] = defaultdict(list)
        self._family_cache: dict[str, tuple[bool, float]] = {}
        self._server = None

    @property
    def issuer(self) -> str:
        return self.platform.config.base_url.rstrip("/")

    @property
    def api_audience(self) -> str:
        return self.issuer + "/api"

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
        from authlib.oauth2.rfc6749 import OAuth2Request
        from authlib.oauth2.rfc6749.grants import RefreshTokenGrant
        from authlib.oauth2.rfc7009 import RevocationEndpoint
        from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint, DeviceCodeGrant, DeviceCredentialDict

        oauth = self
        run = anyio.from_thread.run

        class Payload:
            def __init__(self, form: dict) -> None:
                self.data, self.datalist = form, {k: [v] for k, v in form.items()}
                self.client_id = form.get("client_id")
                self.grant_type, self.scope = form.get("grant_type"), form.get("scope")
                self.response_type = self.redirect_uri = self.state = None

        class Req(OAuth2Request):
            def __init__(self, method: str, uri: str, headers: dict, form: dict) -> None:
                super().__init__(method, uri, headers=headers)
                self.payload, self._form = Payload(form), form

            @property
            def form(self) -> dict:
                return self._form

            @property
            def args(self) -> dict:
                return {}

        class Server(AuthorizationServer):
            def query_client(self, client_id):
                return oauth.clients.get(client_id)

            def save_token(self, token, request):
                family = request.user.family
                run(oauth._save_refresh, token, request.client.get_client_id(), request.user, family)

            def create_oauth2_request(self, request):
                return Req(*request)

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

        class Refresher(RefreshTokenGrant):
            INCLUDE_NEW_REFRESH_TOKEN = True
            TOKEN_ENDPOINT_AUTH_METHODS = ["none"]

            def authenticate_refresh_token(self, refresh_token):
                return run(oauth._claim_refresh, refresh_token)

            def authenticate_user(self, refresh_token):
                return run(oauth._user_for, refresh_token.record)

            def revoke_old_credential(self, refresh_token):
                pass  # claimed (marked used) in authenticate_refresh_token, before anything was issued

        class Revocation(RevocationEndpoint):
            CLIENT_AUTH_METHODS = ["none"]

            def query_token(self, token_string, token_type_hint):
                return run(oauth._find_for_revocation, token_string)

            def revoke_token(self, token, request):
                family = token.record.family if isinstance(token, Refresh) else token.claims.get("sid")
                if family:
                    run(oauth._revoke_family, family)

        server = Server(scopes_supported=list(SCOPES))
        server.register_token_generator("default", self._generate)
        server.register_grant(DeviceGrant)
        server.register_grant(Refresher)
        server.register_endpoint(DeviceEndpoint)
        server.register_endpoint(Revocation)
        return server

    def _generate(self, grant_type, client, user=None, scope=None, expires_in=None, include_refresh_token=True):
        from joserfc import jwt

        now = int(time.time())
        lifetime = self.config.access_token_seconds
        kid, key = self.keys.signer()
        claims = {"iss": self.issuer, "sub": user.subject, "aud": self.api_audience, "iat": now,
                  "exp": now + lifetime, "jti": secrets.token_hex(12), "client_id": client.get_client_id(),
                  "scope": scope or "", "org": user.org, "roles": user.roles, "sid": user.family}
        token = {"token_type": "Bearer", "access_token": jwt.encode({"alg": ALG, "typ": "at+jwt", "kid": kid},
                                                                    claims, key, algorithms=[ALG]),
                 "expires_in": lifetime, "scope": scope or ""}
        if include_refresh_token:
            token["refresh_token"] = REFRESH_PREFIX + secrets.token_urlsafe(32)
        return token

    # async callbacks (on the event loop) ---------------------------------------------------------------------------

    async def _save_refresh(self, token: dict, client_id: str, user: User, family: str) -> None:
        if "refresh_token" not in token:
            return
        await self.platform.registry.add_refresh_token(RefreshTokenRecord(
            id="rt_" + secrets.token_hex(8), family=family, token_hash=_sha(token["refresh_token"]),
            client_id=client_id, org=user.org, subject=user.subject, scope=token.get("scope", ""),
            audience=self.api_audience, expires_at=time.time() + self.config.refresh_token_days * 86400))

    async def _claim_refresh(self, token_string: str) -> Refresh | None:
        record = await self.platform.registry.find_refresh_token(_sha(token_string))
        if record is None or record.revoked or record.expires_at < time.time():
            return None
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
                return User(found.subject, found.org, found.roles, record.family)
        return None

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
        args = (request.method, str(request.url), dict(request.headers), form)
        status, body, headers = await anyio.to_thread.run_sync(lambda: call(args))
        return JSONResponse(body, status_code=status, headers={**dict(headers), "Cache-Control": "no-store"})

    # access tokens -------------------------------------------------------------------------------------------------

    async def verify(self, token: str, *, check_family: bool = True) -> dict | None:
        """The claims of a valid access token of this issuer, or None."""
        from joserfc import jwt
        from joserfc.errors import JoseError

        try:
            header = json.loads(_b64(token.split(".")[0]))
            if header.get("alg") != ALG or header.get("typ") != "at+jwt":
                return None
            await self.keys.reload_for(str(header.get("kid")))
            decoded = jwt.decode(token, self.keys.keyset(), algorithms=[ALG])
            registry = jwt.JWTClaimsRegistry(iss={"essential": True, "value": self.issuer},
                                             aud={"essential": True, "value": self.api_audience},
                                             exp={"essential": True}, sub={"essential": True}, leeway=10)
            registry.validate(decoded.claims)
        except (JoseError, ValueError, KeyError, IndexError, TypeError):
            return None
        claims = decoded.claims
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
        return Identity(subject=claims["sub"], org=claims["org"], roles=list(claims.get("roles") or []),
                        scopes=[s for s in str(claims.get("scope", "")).split() if s in SCOPES],
                        provider="oauth", token_id=claims.get("jti"))

    # HTTP ----------------------------------------------------------------------------------------------------------

    def metadata(self) -> dict:
        base = self.issuer
        return {"issuer": base, "token_endpoint": base + "/oauth/token",
                "device_authorization_endpoint": base + "/oauth/device_authorization",
                "revocation_endpoint": base + "/oauth/revoke", "introspection_endpoint": base + "/oauth/introspect",
                "jwks_uri": base + "/.well-known/jwks.json", "scopes_supported": list(SCOPES),
                "grant_types_supported": [DEVICE_GRANT, "refresh_token"], "response_types_supported": [],
                "token_endpoint_auth_methods_supported": ["none"],
                "revocation_endpoint_auth_methods_supported": ["none"],
                "code_challenge_methods_supported": ["S256"]}

    def routes(self) -> list[Route]:
        async def metadata(request: Request) -> Response:
            return JSONResponse(self.metadata())

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
        ]

    async def _device_page(self, request: Request) -> Response:
        if request.method == "GET":
            return _page(_device_form(request.query_params.get("user_code", "")))
        form = await request.form()
        user_code = str(form.get("user_code", "")).strip().upper()
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        pending = {c["user_code"]: c for c in self.devices.values() if c["expires_at"] > time.time()}
        if user_code not in pending or user_code in self.grants:
            return _page(_device_form(user_code, "That code is unknown, used or expired. Run the login again."), 400)
        if form.get("action") == "deny":
            self.grants[user_code] = (User("", "", [], ""), False)
            return _page("<h1>Login denied</h1><p>The terminal that asked is told so. You can close this page.</p>")
        now = time.time()
        recent = [t for t in self._failures[username] if now - t < _LOCKOUT_SECONDS]
        self._failures[username] = recent
        if len(recent) >= _LOGIN_FAILURES:
            return _page(_device_form(user_code, "Too many failed logins for this user: wait a few minutes."), 429)
        identity = await self._login(username, password)
        source = request.client.host if request.client else ""
        if identity is None:
            recent.append(now)
            log.warning("failed login for user %r from %s", username[:64], source)
            return _page(_device_form(user_code, "Wrong username or password."), 401)
        await self.platform.audit(AuditRecord(
            org=identity.org, actor=identity.subject, provider=identity.provider, action="oauth device login",
            target=f"client_id={CLI_CLIENT_ID}", source=source,
            user_agent=request.headers.get("user-agent", "")[:200], status=200))
        self._failures.pop(username, None)
        self.grants[user_code] = (User(identity.subject, identity.org, identity.roles, "fam_" + secrets.token_hex(8)),
                                  True)
        return _page(f"<h1>Logged in</h1><p>{html.escape(identity.subject)} (org {html.escape(identity.org)}). "
                     "Go back to your terminal: it has its token now. You can close this page.</p>")

    async def _login(self, username: str, password: str) -> Identity | None:
        for provider in self.platform.auth_providers:
            login = getattr(provider, "login", None)
            if callable(login) and (identity := await login(username, password)) is not None:
                return identity
        return None


def _b64(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


_STYLE = ("body{font:16px/1.5 system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#111}"
          "label{display:block;margin-top:1rem;font-weight:600}input{width:100%;padding:.5rem;font-size:1rem;"
          "border:1px solid #555;border-radius:4px}button{margin-top:1.25rem;margin-right:.5rem;padding:.5rem 1rem;"
          "font-size:1rem}.error{color:#a00000;font-weight:600}")


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
                        f'content="width=device-width,initial-scale=1"><title>mcp-agent-cloud login</title>'
                        f"<style>{_STYLE}</style></head><body>{body}</body></html>", status_code=status,
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                                            "form-action 'self'; frame-ancestors 'none'"})


def _device_form(user_code: str, error: str = "") -> str:
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
            f'<button type="submit" name="action" value="deny" formnovalidate>Deny</button></form>')
