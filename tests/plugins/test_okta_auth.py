"""The okta provider's mapping of an issuer's claims to an identity (the login itself runs against a real OIDC
issuer in tests/e2e/test_okta_oidc.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mcp_agent_cloud.errors import ForbiddenError
from mcp_agent_cloud.hookspecs.types import PluginContext
from mcp_agent_cloud.plugins.okta_auth import OktaAuth, OktaConfig


def provider(**options) -> OktaAuth:
    config = OktaConfig(issuer="https://example.okta.com/oauth2/default", client_id="c", **options)
    made = OktaAuth(config, PluginContext(data_dir=Path("/nonexistent")))
    made.spec_name = "okta"
    return made


def test_the_highest_mapped_group_wins_and_others_are_ignored():
    okta = provider(roles={"devs": "developer", "admins": "owner", "readers": "viewer"})
    identity = okta._identity({"sub": "u1", "email": "a@x.io", "groups": ["readers", "admins", "other"]})
    assert (identity.subject, identity.org, identity.roles) == ("okta:a@x.io", "default", ["owner"])
    assert okta._identity({"sub": "u2", "groups": "devs"}).roles == ["developer"]  # a lone group as a string
    assert okta._identity({"sub": "u3", "groups": ["devs"]}).subject == "okta:u3"  # no email: the sub


def test_no_mapped_group_is_refused_unless_there_is_a_default_role():
    with pytest.raises(ForbiddenError, match="in no group"):
        provider(roles={"devs": "developer"})._identity({"sub": "u", "groups": ["other"]})
    assert provider(default_role="viewer")._identity({"sub": "u"}).roles == ["viewer"]


def test_the_org_may_come_from_a_claim_which_must_be_a_valid_name():
    okta = provider(default_role="viewer", org_claim="tenant")
    assert okta._identity({"sub": "u", "tenant": "beta"}).org == "beta"
    for bad in ("", "Not Valid!", None):
        with pytest.raises(ForbiddenError, match="names no valid org"):
            okta._identity({"sub": "u", "tenant": bad})


def test_the_issuer_must_be_https_except_on_loopback():
    with pytest.raises(ValidationError, match="https"):
        OktaConfig(issuer="http://idp.example.com", client_id="c")
    assert OktaConfig(issuer="http://127.0.0.1:9000/", client_id="c").issuer == "http://127.0.0.1:9000"
    with pytest.raises(ValidationError):
        OktaConfig(issuer="https://x", client_id="c", client_secret="inline")  # secrets come from the environment


def test_the_exchange_takes_only_signed_id_tokens_of_the_device_client():
    import time

    import anyio
    from joserfc import jwt
    from joserfc.jwk import ECKey, KeySet

    okta = provider(device_client_id="cli-app", default_role="viewer")
    key, other = ECKey.generate_key("P-256"), ECKey.generate_key("P-256")
    okta._jwks = KeySet([key]).as_dict(private=False)
    okta._jwks["keys"][0]["kid"] = "k1"
    okta._jwks_at = time.monotonic()

    def token(signer=key, **claims) -> str:
        now = int(time.time())
        body = {"iss": okta.config.issuer, "aud": "cli-app", "sub": "u1", "email": "a@x.io", "iat": now,
                "exp": now + 300, **claims}
        return jwt.encode({"alg": "ES256", "kid": "k1"}, body, signer)

    assert anyio.run(okta.identity_from_token, token(), "id_token").subject == "okta:a@x.io"
    for bad in (token(aud="c"), token(iss="https://evil.example"), token(exp=int(time.time()) - 100),
                token(signer=other)):
        with pytest.raises(ForbiddenError, match="not valid"):
            anyio.run(okta.identity_from_token, bad, "id_token")
    with pytest.raises(ForbiddenError, match="ID tokens"):
        anyio.run(okta.identity_from_token, token(), "access_token")
