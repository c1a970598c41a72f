"""Deployment names, qualified names and hashing helpers shared by the CLI, the packager and the platform."""

from __future__ import annotations

import hashlib
import re

from .errors import ValidationFailed

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
ORG_RE = NAME_RE
# A deployment's public address, @{org}/{name}: in a URL, /servers/@acme/hello/mcp is /servers/acme.hello/mcp.
AT_NAME = re.compile(r"^@([^/.]+)/([^/.]+)$")
AT_PATH = re.compile(r"^/servers/@([^/]+)/([^/]+)(/.*)?$")
# A request about one deployment, by where its name is in the path (as the client wrote it: qualified or short).
_NAMED_PATH = re.compile(r"^/(?:api/v1/(?:deployments|workflows|agents)|servers)/([^/]+)(?:/(.*))?$")
# Who may call a deployment (its `auth`): platform, none, or provider:NAME.
AUTH_RE = re.compile(r"^(platform|none|provider:[a-z][a-z0-9_-]{0,62})$")
PROVIDER_AUTH = "provider:"


def auth_provider(mode: str | None) -> str | None:
    """The provider of ``provider:NAME`` (an auth mode, or a login page button's action); None otherwise."""
    return mode[len(PROVIDER_AUTH):] if mode and mode.startswith(PROVIDER_AUTH) else None


def from_at_name(name: str) -> str:
    """``@acme/hello`` -> ``acme.hello``; any other name as it is."""
    match = AT_NAME.match(name)
    return f"{match.group(1)}.{match.group(2)}" if match else name


def from_at_path(path: str) -> str | None:
    """``/servers/@acme/hello/mcp`` -> ``/servers/acme.hello/mcp``; None for a path that is not one."""
    match = AT_PATH.match(path)
    return f"/servers/{match.group(1)}.{match.group(2)}{match.group(3) or ''}" if match else None


def named_in_path(path: str) -> tuple[str, str] | None:
    """The deployment a request path names and the rest of the path: ``/servers/hello/mcp`` -> ``("hello",
    "mcp")``, ``/api/v1/deployments/acme.hello`` -> ``("acme.hello", "")``. None for paths that name none."""
    match = _NAMED_PATH.match(path)
    return (match.group(1), match.group(2) or "") if match else None


def named_in_request(path: str, query_string: bytes = b"") -> tuple[str, str] | None:
    """As ``named_in_path``, and ``/api/v1/runs?deployment=NAME`` (the runs of one deployment) too."""
    if path == "/api/v1/runs":
        from urllib.parse import parse_qs

        name = parse_qs(query_string.decode("latin-1")).get("deployment", [None])[0]
        return (name, "") if name else None
    return named_in_path(path)


def validate_name(name: str, *, what: str = "deployment name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or name.endswith("-") or "--" in name:
        raise ValidationFailed(
            f"invalid {what} {name!r}: use 1-63 lowercase letters, digits and single '-', starting with a letter",
            hint="pick another name with --name, e.g. --name my-app",
        )
    return name


def suggest_name(raw: str) -> str:
    """Turn a directory name into a valid deployment name when possible (``My_App`` -> ``my-app``)."""
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if name and not name[0].isalpha():
        name = "app-" + name
    return name[:63].rstrip("-")


def split_qualified(name: str, default_org: str) -> tuple[str, str]:
    """``acme.hello`` or ``@acme/hello`` -> (``acme``, ``hello``); ``hello`` -> (default_org, ``hello``). Both parts
    are validated."""
    org, sep, short = from_at_name(name).rpartition(".")
    if not sep:
        org = default_org
    validate_name(org, what="org name")
    validate_name(short)
    return org, short


def requirements_hash(requirements: list[str]) -> str:
    """The cache key of an environment: the same requirement lines in any order give the same hash."""
    lines = sorted({" ".join(r.split()) for r in requirements if r.strip() and not r.strip().startswith("#")})
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
