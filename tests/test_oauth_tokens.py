"""Access token checks of the OAuth server (core/platform/oauth.py): only its own, unexpired, right-audience ES256
JWTs of a live login pass. The platform around it is a small in-memory double (the e2e tests in
tests/e2e/test_oauth_login.py run the real one)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import anyio
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey

from mcp_agent_cloud.config import OAuthConfig
from mcp_agent_cloud.platform.oauth import ALG, Client, OAuthServer, User, looks_like_jwt, redirect_uri_problem

ISSUER = "http://127.0.0.1:8765"


class Secrets:
    def __init__(self) -> None:
        self.values: dict[tuple[str, str], str] = {}

    async def put(self, scope: str, key: str, value: str) -> int:
        self.values[(scope, key)] = value
        return 1

    async def get(self, scope: str, key: str) -> str:
        return self.values[(scope, key)]


class Registry:
    def __init__(self) -> None:
        self.live = {"fam_live"}

    async def refresh_family_live(self, family: str) -> bool:
        return family in self.live


def server(config: OAuthConfig | None = None) -> OAuthServer:
    platform = SimpleNamespace(config=SimpleNamespace(base_url=ISSUER), secrets=Secrets(), registry=Registry(),
                               auth_providers=[])
    oauth = OAuthServer(platform, config or OAuthConfig())
    anyio.run(oauth.keys.load)
    return oauth


def issue(oauth: OAuthServer, **overrides) -> str:
    client = oauth.clients["mcp-agent-cli"]
    token = oauth._generate("refresh_token", client, User("ann", "acme", ["developer"], "fam_live", oauth.api_audience),
                             "api mcp")
    if not overrides:
        return token["access_token"]
    claims = {**jwt.decode(token["access_token"], oauth.keys.keyset()).claims, **overrides}
    kid, key = oauth.keys.signer()
    return jwt.encode({"alg": ALG, "typ": "at+jwt", "kid": kid}, claims, key, algorithms=[ALG])


def verify(oauth: OAuthServer, token: str):
    return anyio.run(oauth.verify, token)


def test_a_good_token_gives_the_identity():
    oauth = server()
    token = issue(oauth)
    assert looks_like_jwt(token)
    identity = anyio.run(oauth.authenticate, token)
    assert (identity.subject, identity.org, identity.roles, identity.scopes, identity.provider) == (
        "ann", "acme", ["developer"], ["api", "mcp"], "oauth")


@pytest.mark.parametrize("claims", [
    {"exp": int(time.time()) - 60},  # expired (beyond the 10 s leeway)
    {"aud": "http://127.0.0.1:8765/servers/other/mcp"},  # another resource's token
    {"iss": "http://evil.example"},
    {"sid": "fam_revoked"},  # its login was revoked (logout, refresh token reuse)
])
def test_bad_claims_are_refused(claims):
    oauth = server()
    assert verify(oauth, issue(oauth)) is not None
    assert verify(oauth, issue(oauth, **claims)) is None


def test_other_keys_algorithms_and_types_are_refused():
    oauth = server()
    good = jwt.decode(issue(oauth), oauth.keys.keyset()).claims
    stranger = ECKey.generate_key("P-256", private=True)
    kid = oauth.keys.keys[-1]["kid"]
    forged = jwt.encode({"alg": ALG, "typ": "at+jwt", "kid": kid}, good, stranger, algorithms=[ALG])
    assert verify(oauth, forged) is None  # signed by a key that is not ours, claiming our kid
    secret = OctKey.import_key("k" * 32)
    hs = jwt.encode({"alg": "HS256", "typ": "at+jwt", "kid": kid}, good, secret, algorithms=["HS256"])
    assert verify(oauth, hs) is None
    kid_, key = oauth.keys.signer()
    plain = jwt.encode({"alg": ALG, "typ": "JWT", "kid": kid_}, good, key, algorithms=[ALG])
    assert verify(oauth, plain) is None  # an ID token or other JWT is not an access token
    assert verify(oauth, "a.b.c") is None and verify(oauth, "") is None


def test_keys_rotate_and_old_ones_still_verify():
    oauth = server(OAuthConfig(key_rotation_days=1))
    old = issue(oauth)
    first_kid = oauth.keys.keys[-1]["kid"]
    oauth.keys.keys[-1]["created_at"] -= 2 * 86400  # older than the rotation age
    anyio.run(oauth.platform.secrets.put, "platform/_oauth", "SIGNING_KEYS", json.dumps(oauth.keys.keys))
    anyio.run(oauth.keys.load)
    assert [k["kid"] for k in oauth.keys.keys][0] == first_kid and len(oauth.keys.keys) == 2
    new = issue(oauth)
    assert verify(oauth, old) is not None and verify(oauth, new) is not None
    published = oauth.keys.jwks()["keys"]
    assert {k["kid"] for k in published} == {k["kid"] for k in oauth.keys.keys}
    assert all("d" not in k for k in published)
    # Once the successor is older than a token's lifetime, the old key goes at the next rotation.
    for k in oauth.keys.keys:
        k["created_at"] -= 3 * 86400
    anyio.run(oauth.platform.secrets.put, "platform/_oauth", "SIGNING_KEYS", json.dumps(oauth.keys.keys))
    anyio.run(oauth.keys.load)
    assert first_kid not in {k["kid"] for k in oauth.keys.keys} and len(oauth.keys.keys) == 2
    assert verify(oauth, old) is None


def test_a_deployment_token_is_kept_to_that_deployment():
    oauth = server()
    aud = oauth.audience_for(ISSUER + "/servers/hello/mcp", "acme")
    assert aud == ISSUER + "/servers/acme.hello"
    # The same deployment however the client names it; another org's is not this user's to get.
    assert oauth.audience_for(ISSUER + "/servers/acme.hello", "acme") == aud
    assert oauth.audience_for(ISSUER + "/servers/acme.hello/sse/", "acme") == aud
    assert oauth.audience_for(ISSUER + "/servers/beta.hello/mcp", "acme") is None
    assert oauth.audience_for("http://elsewhere:1/servers/hello/mcp", "acme") is None
    assert oauth.audience_for(ISSUER + "/servers/Bad_Name!/mcp", "acme") is None
    assert oauth.audience_for(ISSUER + "/api", "acme") == oauth.api_audience
    client = oauth.clients["mcp-agent-cli"]
    token = oauth._generate("authorization_code", client, User("ann", "acme", ["viewer"], "fam_live", aud), "mcp")
    identity = anyio.run(oauth.authenticate, token["access_token"])
    assert identity.scopes == ["mcp", "deployment:acme.hello"] and identity.org == "acme"
    assert oauth.audience_for(ISSUER + "/servers/beta.hello/mcp", "acme", any_org=True) == ISSUER + "/servers/beta.hello"
    # A token for another org's deployment (one it got while that was public) stays kept to that one deployment:
    # nothing of its own org, nor the API. Whether it gets into beta.hello is the gateway's call, per request,
    # while beta.hello is public (tests/e2e/test_mcp_oauth.py, tests/e2e/test_catalog.py).
    from mcp_agent_cloud.platform.audit import scope_refusal

    guest = anyio.run(oauth.authenticate, issue(oauth, aud=ISSUER + "/servers/beta.hello"))
    assert guest.org == "acme" and guest.scopes == ["mcp", "deployment:beta.hello"]
    assert scope_refusal(guest, "/servers/hello/mcp") and scope_refusal(guest, "/api/v1/deployments")
    assert scope_refusal(guest, "/servers/beta.hello/mcp") is None
    assert verify(oauth, issue(oauth, aud=ISSUER + "/elsewhere")) is None


@pytest.mark.parametrize("uri, ok", [
    ("https://claude.ai/api/mcp/auth_callback", True),
    ("http://127.0.0.1:33418/callback", True),
    ("http://localhost/cb", True),
    ("http://[::1]:9000/cb", True),
    ("cursor://anysphere.cursor-retrieval/oauth/callback", True),
    ("http://example.com/cb", False),
    ("javascript:alert(1)", False),
    ("data:text/html,hi", False),
    ("file:///etc/passwd", False),
    ("https://example.com/cb#frag", False),
    ("/relative/cb", False),
])
def test_redirect_uris_that_may_be_registered(uri, ok):
    assert (redirect_uri_problem(uri) is None) is ok, redirect_uri_problem(uri)


def test_a_loopback_redirect_may_change_port_but_nothing_else():
    client = Client("c", ("authorization_code",), "mcp", redirect_uris=("http://127.0.0.1:3000/cb",
                                                                        "https://app.example/cb"))
    assert client.check_redirect_uri("http://127.0.0.1:3000/cb")
    assert client.check_redirect_uri("http://127.0.0.1:51234/cb")  # RFC 8252 7.3
    assert not client.check_redirect_uri("http://127.0.0.1:3000/other")
    assert not client.check_redirect_uri("http://localhost:3000/cb")
    assert not client.check_redirect_uri("https://app.example:8443/cb")
    assert not client.check_redirect_uri("https://app.example/cb/")
    assert client.check_response_type("code") and not client.check_response_type("token")
