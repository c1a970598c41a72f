"""Deployment names, qualified names and hashing helpers shared by the CLI, the packager and the platform."""

from __future__ import annotations

import hashlib
import re

from .errors import ValidationFailed

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
ORG_RE = NAME_RE


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
    """``acme.hello`` -> (``acme``, ``hello``); ``hello`` -> (default_org, ``hello``). Both parts are validated."""
    org, sep, short = name.rpartition(".")
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
