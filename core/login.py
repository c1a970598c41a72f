"""The CLI side of the platform's OAuth server: the device login (RFC 8628), refreshing the stored access token
before it expires, and revoking it at logout. Synchronous, like the CLI."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from .errors import AuthError

CLI_CLIENT_ID = "mcp-agent-cli"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPES = {"access_token": "urn:ietf:params:oauth:token-type:access_token",
               "id_token": "urn:ietf:params:oauth:token-type:id_token"}
REFRESH_EARLY = 60  # seconds before expiry at which the CLI refreshes


def discover(auth_url: str, http: httpx.Client) -> dict[str, Any]:
    """The authorization server's metadata (RFC 8414)."""
    try:
        resp = http.get(auth_url.rstrip("/") + "/.well-known/oauth-authorization-server")
    except httpx.HTTPError as exc:
        raise AuthError(f"cannot reach {auth_url} ({exc})", hint="is the platform running? check --api-url") from None
    if resp.status_code != 200:
        raise AuthError(f"{auth_url} has no OAuth login (HTTP {resp.status_code})",
                        hint="log in with a token instead: mcp-agent login --token TOKEN "
                             "(`mcp-agent keys create` or `mcp-agent admin token` make one)")
    return resp.json()


def device_login(auth_url: str, *, show: Callable[[dict], None], scope: str = "api mcp",
                 sleep: Callable[[float], None] = time.sleep, timeout: float = 30.0) -> dict[str, Any]:
    """Ask for a user code, let ``show`` tell the user where to enter it, and poll until they did. Returns the
    token response with ``expires_at`` added."""
    with httpx.Client(timeout=timeout) as http:
        meta = discover(auth_url, http)
        return _stamped(_device_flow(http, meta["device_authorization_endpoint"], meta["token_endpoint"],
                                     CLI_CLIENT_ID, scope, show=show, sleep=sleep, who="the platform"))


def provider_login(auth_url: str, provider: str, *, show: Callable[[dict], None],
                   sleep: Callable[[float], None] = time.sleep, timeout: float = 30.0) -> dict[str, Any]:
    """``mcp-agent login --provider github``: the identity provider's own device flow, then its token traded for
    the platform's (RFC 8693 token exchange). The provider's token is used once and never stored."""
    with httpx.Client(timeout=timeout) as http:
        meta = discover(auth_url, http)
        try:
            providers = http.get(auth_url.rstrip("/") + "/api/v1/auth/providers").json()["providers"]
        except (httpx.HTTPError, ValueError, KeyError):
            providers = []
        found = next((p for p in providers if p.get("name") == provider), None)
        if found is None or "device" not in found:
            names = [p["name"] for p in providers if "device" in p]
            raise AuthError(f"the platform offers no device login through {provider!r}",
                            hint=f"choose one of: {', '.join(names)}" if names else "run `mcp-agent login` without "
                            "--provider: its login page lists the ways to log in")
        device = found["device"]
        upstream = _device_flow(http, device["device_authorization_endpoint"], device["token_endpoint"],
                                device["client_id"], device.get("scope", ""), show=show, sleep=sleep,
                                who=provider)
        kind = device.get("subject_token", "access_token")  # which of the provider's tokens the platform takes
        if kind not in TOKEN_TYPES or not upstream.get(kind):
            raise AuthError(f"{provider} gave no {kind} to trade for the platform's tokens")
        resp = http.post(meta["token_endpoint"], data={
            "grant_type": TOKEN_EXCHANGE, "client_id": CLI_CLIENT_ID, "subject_token": upstream[kind],
            "subject_token_type": TOKEN_TYPES[kind], "subject_issuer": provider, "scope": "api mcp"})
        if resp.status_code != 200:
            raise AuthError(f"the platform refused the {provider} login: {_oauth_error(resp)}")
        return _stamped(resp.json())


def _device_flow(http: httpx.Client, device_endpoint: str, token_endpoint: str, client_id: str, scope: str, *,
                 show: Callable[[dict], None], sleep: Callable[[float], None], who: str) -> dict[str, Any]:
    """RFC 8628 at any authorization server: a user code for ``show``, then polls at the server's interval
    (``slow_down`` adds 5 s). GitHub answers errors with HTTP 200, so the body decides."""
    headers = {"Accept": "application/json"}
    resp = http.post(device_endpoint, data={"client_id": client_id, "scope": scope}, headers=headers)
    if resp.status_code != 200 or "device_code" not in _body(resp):
        raise AuthError(f"{who} refused the login request: {_oauth_error(resp)}")
    device = resp.json()
    show(device)
    interval = float(device.get("interval", 5))
    deadline = time.monotonic() + float(device.get("expires_in", 600))
    while time.monotonic() < deadline:
        sleep(interval)
        resp = http.post(token_endpoint, headers=headers, data={"grant_type": DEVICE_GRANT, "client_id": client_id,
                                                                "device_code": device["device_code"]})
        body = _body(resp)
        if resp.status_code == 200 and "access_token" in body:
            return body
        error = str(body.get("error", ""))
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval = max(interval + 5, float(body.get("interval", 0)))  # RFC 8628 3.5
            continue
        if error == "access_denied":
            raise AuthError("the login was denied in the browser")
        if error == "expired_token":
            break
        raise AuthError(f"the login failed: {_oauth_error(resp)}")
    raise AuthError("the code expired before anyone entered it", hint="run `mcp-agent login` again")


def refresh(auth: dict[str, Any], timeout: float = 30.0) -> dict[str, Any] | None:
    """New tokens for a stored login (the refresh token rotates); None when the login is over (revoked, reused,
    expired or the user disabled): the caller forgets it."""
    with httpx.Client(timeout=timeout) as http:
        meta = discover(auth.get("auth_url") or auth["api_url"], http)
        resp = http.post(meta["token_endpoint"], data={"grant_type": "refresh_token", "client_id": CLI_CLIENT_ID,
                                                       "refresh_token": auth["refresh_token"]})
    if resp.status_code == 200:
        return _stamped(resp.json())
    if resp.status_code in (400, 401):
        return None
    raise AuthError(f"refreshing the login failed: {_oauth_error(resp)}")


def revoke(auth: dict[str, Any], timeout: float = 10.0) -> bool:
    """Revoke a stored login at its server (its refresh tokens, and with them its access tokens)."""
    token = auth.get("refresh_token") or auth.get("access_token")
    if not token:
        return False
    with httpx.Client(timeout=timeout) as http:
        meta = discover(auth.get("auth_url") or auth["api_url"], http)
        resp = http.post(meta["revocation_endpoint"], data={"token": token, "client_id": CLI_CLIENT_ID,
                                                            "token_type_hint": "refresh_token"
                                                            if auth.get("refresh_token") else "access_token"})
    return resp.status_code == 200


def needs_refresh(auth: dict[str, Any], now: float | None = None) -> bool:
    expires = auth.get("expires_at")
    return bool(auth.get("refresh_token")) and expires is not None and \
        float(expires) - REFRESH_EARLY < (time.time() if now is None else now)


def _stamped(token: dict[str, Any]) -> dict[str, Any]:
    return {**token, "expires_at": time.time() + float(token.get("expires_in", 0))}


def _body(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _oauth_error(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}"
    return f"{data.get('error', resp.status_code)}: {data.get('error_description', '')}".rstrip(": ")
