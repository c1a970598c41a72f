"""Auth provider ``github``: log in with a GitHub account, through a GitHub OAuth app.

Two ways in, one identity:

- in a browser: "Log in with GitHub" on the platform's login pages (the OAuth web flow, with PKCE);
- in a terminal: ``mcp-agent login --provider github`` runs GitHub's device flow itself, then trades the GitHub
  token for the platform's (RFC 8693 token exchange at ``/oauth/token``).

Either way the platform reads the user, their orgs and their teams from GitHub's REST API. A GitHub org maps to a
platform org (``orgs``), and a team of it (``org/team-slug``) to a role (``teams``). GitHub Enterprise Server works
by setting ``web_url`` and ``api_url``.
"""

from __future__ import annotations

import logging
import os
from typing import Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mcp_agent_cloud.errors import ForbiddenError, MCPAgentCloudError
from mcp_agent_cloud.federation import FederatedProvider, highest_role, https_url
from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import AuthProviderSpec, Identity
from mcp_agent_cloud.names import validate_name

log = logging.getLogger("mcp_agent_cloud.github")

Role = Literal["viewer", "developer", "owner"]
_API_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}


class GitHubConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    client_id: str = Field(description="the OAuth app's client id")
    client_secret_env: str = Field("GITHUB_CLIENT_SECRET", description="environment variable holding the OAuth "
                                   "app's client secret (the browser flow needs it; never put it in the file)")
    web_url: str = Field("https://github.com", description="GitHub's web address (GitHub Enterprise: yours)")
    api_url: str = Field("https://api.github.com", description="GitHub's REST API (GitHub Enterprise: "
                         "https://HOST/api/v3)")
    scopes: list[str] = Field(default_factory=lambda: ["read:user", "user:email", "read:org"])
    orgs: dict[str, str] = Field(description="GitHub org -> platform org; a user must be a member of one (the "
                                 "first, in this order)")
    teams: dict[str, Role] = Field(default_factory=dict, description="GITHUB_ORG/TEAM_SLUG -> role; the highest "
                                   "of the user's teams wins")
    default_role: Role | None = Field(None, description="the role of an org member in no mapped team (unset: "
                                      "they cannot log in)")
    device_flow: bool = Field(True, description="offer `mcp-agent login --provider github` (enable the device "
                              "flow in the OAuth app's settings)")
    label: str = "GitHub"

    @field_validator("web_url", "api_url")
    @classmethod
    def _secure(cls, value: str) -> str:
        return https_url(value)

    @field_validator("orgs")
    @classmethod
    def _valid_orgs(cls, value: dict[str, str]) -> dict[str, str]:
        for org in value.values():
            validate_name(org, what="org name")
        return value


class GitHubAuth(FederatedProvider):
    def __init__(self, config: GitHubConfig, ctx) -> None:
        super().__init__(config, ctx)
        self.label = config.label
        self.login_origin = config.web_url

    def metadata(self) -> dict:
        data: dict = {"kind": "github", "login": "browser"}
        if self.config.device_flow:
            # What `mcp-agent login --provider github` needs to run GitHub's device flow (all public).
            data["device"] = {"client_id": self.config.client_id, "scope": " ".join(self.config.scopes),
                              "device_authorization_endpoint": self.config.web_url + "/login/device/code",
                              "token_endpoint": self.config.web_url + "/login/oauth/access_token"}
        return data

    async def authorization_url(self, *, redirect_uri: str, state: str, code_verifier: str, nonce: str) -> str:
        from authlib.oauth2.rfc7636 import create_s256_code_challenge

        query = {"client_id": self.config.client_id, "redirect_uri": redirect_uri, "state": state,
                 "scope": " ".join(self.config.scopes), "allow_signup": "false",
                 "code_challenge": create_s256_code_challenge(code_verifier), "code_challenge_method": "S256"}
        return f"{self.config.web_url}/login/oauth/authorize?{urlencode(query)}"

    async def identity_from_code(self, *, code: str, redirect_uri: str, code_verifier: str,
                                 nonce: str) -> Identity:
        import httpx

        secret = os.environ.get(self.config.client_secret_env)
        if not secret:
            raise MCPAgentCloudError(f"the github provider has no client secret (${self.config.client_secret_env})",
                                     hint="start the platform with the OAuth app's secret in that variable",
                                     status=500)
        async with httpx.AsyncClient(timeout=15) as http:
            # GitHub answers form-encoded unless asked for JSON, and reports errors with HTTP 200.
            response = await http.post(self.config.web_url + "/login/oauth/access_token",
                                       headers={"Accept": "application/json"},
                                       data={"client_id": self.config.client_id, "client_secret": secret,
                                             "code": code, "redirect_uri": redirect_uri,
                                             "code_verifier": code_verifier})
        token = _json(response)
        if "access_token" not in token:
            raise ForbiddenError(f"GitHub refused the login: {token.get('error_description') or token.get('error')}",
                                 hint="start the login again")
        return await self.identity_from_token(token["access_token"])

    async def identity_from_token(self, access_token: str, token_type: str = "access_token") -> Identity:
        """The platform user a GitHub access token is for (also for the token exchange of a device login)."""
        import httpx

        if token_type != "access_token":
            raise ForbiddenError("the github provider takes GitHub access tokens", hint="send subject_token_type "
                                 "urn:ietf:params:oauth:token-type:access_token")
        headers = {**_API_HEADERS, "Authorization": f"Bearer {access_token}"}
        async with httpx.AsyncClient(base_url=self.config.api_url, headers=headers, timeout=15) as http:
            user = await _get(http, "/user")
            if not isinstance(user, dict) or not user.get("login"):
                raise ForbiddenError("GitHub did not accept the token", hint="log in again")
            orgs = {str(o.get("login", "")).lower() for o in await _pages(http, "/user/orgs")}
            teams = await _pages(http, "/user/teams")
        login = str(user["login"])
        member = next(((gh, org) for gh, org in self.config.orgs.items() if gh.lower() in orgs), None)
        if member is None:
            raise ForbiddenError(f"GitHub user {login} is in none of the GitHub orgs this platform takes "
                                 f"({', '.join(self.config.orgs)})",
                                 hint="ask an org owner to add you, or to grant this app access to the org")
        gh_org, org = member
        mine = {f"{t.get('organization', {}).get('login', '')}/{t.get('slug', '')}".lower() for t in teams}
        role = highest_role(r for key, r in self.config.teams.items()
                            if key.lower() in mine and key.lower().startswith(gh_org.lower() + "/")) \
            or self.config.default_role
        if role is None:
            raise ForbiddenError(f"GitHub user {login} is in no team of {gh_org} that has a role here",
                                 hint="ask an admin to map one of your teams in the github provider's teams")
        return Identity(subject=self.subject(login.lower()), org=org, roles=[role], provider=self.spec_name)


def _json(response) -> dict:
    try:
        data = response.json()
    except ValueError:
        raise MCPAgentCloudError(f"GitHub answered HTTP {response.status_code} with no JSON", status=502) from None
    return data if isinstance(data, dict) else {"error": "unexpected answer"}


def _checked(response, path: str):
    if response.status_code in (401, 403):
        raise ForbiddenError(f"GitHub refused {path} (HTTP {response.status_code})",
                             hint="the token is not valid, lacks a scope (read:org), or the org restricts OAuth apps")
    if response.status_code != 200:
        raise MCPAgentCloudError(f"GitHub answered HTTP {response.status_code} for {path}", status=502)
    return response.json()


async def _get(http, path: str):
    return _checked(await http.get(path), path)


async def _pages(http, path: str, limit: int = 10) -> list[dict]:
    """Every item of a paged list (per_page 100, following the Link header's rel="next")."""
    items: list[dict] = []
    url: str | None = f"{path}?per_page=100"
    for _ in range(limit):
        if url is None:
            break
        response = await http.get(url)
        page = _checked(response, path)
        items += [i for i in page if isinstance(i, dict)] if isinstance(page, list) else []
        url = response.links.get("next", {}).get("url")
    return items


@hookimpl
def mcp_agent_cloud_auth_providers():
    yield AuthProviderSpec(name="github", backend=GitHubAuth, config_model=GitHubConfig,
                           description="log in with GitHub (web or device flow); GitHub orgs and teams give the "
                                       "org and role")
