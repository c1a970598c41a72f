"""CLI state in ``~/.mcp-agent-cloud/``: ``auth.json`` (0600: api_url, access_token, org) and ``session.json``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .config import ENV_PREFIX, home_dir

DEFAULT_API_URL = "http://127.0.0.1:8765"


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically with mode 0600 from the first byte (never world-readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def auth_path() -> Path:
    return home_dir() / "auth.json"


def session_path() -> Path:
    return home_dir() / "session.json"


def load_auth() -> dict[str, Any]:
    return _read(auth_path())


def save_auth(*, api_url: str, access_token: str, org: str | None = None, **extra: Any) -> Path:
    data = {"api_url": api_url.rstrip("/"), "access_token": access_token}
    if org:
        data["org"] = org
    data.update(extra)
    write_private(auth_path(), data)
    return auth_path()


def clear_auth() -> bool:
    """Forget the token, but remember which platform it was for (session.json), so later commands still
    talk to it and can say "log in" rather than "cannot connect"."""
    api_url = load_auth().get("api_url")
    try:
        auth_path().unlink()
    except FileNotFoundError:
        return False
    if api_url:
        save_session(api_url=api_url)
    return True


def load_session() -> dict[str, Any]:
    return _read(session_path())


def save_session(**values: Any) -> None:
    data = load_session()
    data.update({k: v for k, v in values.items() if v is not None})
    write_private(session_path(), data)


def resolve_api_url(explicit: str | None = None) -> str:
    """``--api-url``, then ``$MCP_AGENT_CLOUD_API_URL``, then auth.json, then session.json, then the local default."""
    return (explicit or os.environ.get(ENV_PREFIX + "API_URL") or load_auth().get("api_url")
            or load_session().get("api_url") or DEFAULT_API_URL).rstrip("/")


def resolve_auth_url(api_url: str) -> str:
    """Where login flows live: ``$MCP_AGENT_CLOUD_AUTH_URL``, then auth.json, else the API URL itself."""
    return (os.environ.get(ENV_PREFIX + "AUTH_URL") or load_auth().get("auth_url") or api_url).rstrip("/")


def resolve_token(api_url: str, explicit: str | None = None) -> str | None:
    """A token applies only to the platform it was issued for."""
    if explicit:
        return explicit
    env = os.environ.get(ENV_PREFIX + "TOKEN")
    if env:
        return env
    auth = load_auth()
    if auth.get("access_token") and auth.get("api_url", "").rstrip("/") == api_url.rstrip("/"):
        if auth.get("refresh_token"):
            return _fresh_access_token(auth)
        return auth["access_token"]
    return None


def _fresh_access_token(auth: dict[str, Any]) -> str:
    """The stored OAuth access token, refreshed first when it is about to expire. Under a lock: two CLI commands
    refreshing at once would present one refresh token twice, which the server takes for theft (it revokes)."""
    import fcntl

    from .login import needs_refresh, refresh

    if not needs_refresh(auth):
        return auth["access_token"]
    lock_path = auth_path().with_name(".auth.lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        auth = load_auth()  # another command may have refreshed while this one waited
        if not auth.get("refresh_token") or not needs_refresh(auth):
            return auth.get("access_token", "")
        fresh = refresh(auth)
        if fresh is None:
            clear_auth()
            from .errors import AuthError

            raise AuthError("your login has ended (logged out, expired, or its refresh token was used twice)",
                            hint="log in again: mcp-agent login")
        auth.update(access_token=fresh["access_token"], refresh_token=fresh.get("refresh_token",
                    auth["refresh_token"]), expires_at=fresh["expires_at"], scope=fresh.get("scope", ""))
        write_private(auth_path(), auth)
        return auth["access_token"]
