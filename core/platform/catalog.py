"""The catalog: deployments made public as ``@{org}/{name}``, what they say about themselves, and the dependency
graph between deployments (which apps use which servers).

What a deployment publishes lives in its record's spec, next to what it was deployed with:

- ``public``: listed here, and callable by users of every org of the platform (as viewers of that one deployment);
- ``listing``: ``{description, icon, example, published_at, by}``, set by ``mcp-agent publish``;
- ``uses``: the qualified names (``org.name``) of the deployments it calls, declared in the app's config.

The graph is read from those specs, so it follows deploys and deletes with nothing else to keep in step.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator

from ..hookspecs.types import DeploymentRecord, Event, Identity
from ..errors import ConflictError, ForbiddenError, NotFoundError, ValidationFailed
from ..names import split_qualified

if TYPE_CHECKING:
    from .service import Platform

MAX_USES = 50
USAGE_WINDOW = 7 * 86400  # what the catalog shows by default
MAX_ICON_BYTES = 64 * 1024
ICON_DATA = re.compile(r"^data:image/(png|jpeg|gif|webp|svg\+xml);base64,([A-Za-z0-9+/=]+)$")


class PublishBody(BaseModel):
    description: str | None = Field(None, max_length=1000, description="what it does, one paragraph")
    icon: str | None = Field(None, description="an https URL, or a data: URI of a PNG, JPEG, GIF, WebP or SVG image "
                                               f"of at most {MAX_ICON_BYTES // 1024} KB")
    example: str | None = Field(None, max_length=20_000, description="an example of its use, shown as text")

    @field_validator("icon")
    @classmethod
    def _icon(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return value or None
        if value.startswith("https://") and len(value) <= 2000 and not any(c.isspace() for c in value):
            return value
        match = ICON_DATA.match(value)
        if match is None:
            raise ValueError("the icon must be an https URL or a data:image/...;base64 URI")
        if len(base64.b64decode(match.group(2), validate=False)) > MAX_ICON_BYTES:
            raise ValueError(f"the icon is larger than {MAX_ICON_BYTES // 1024} KB")
        return value


class UnpublishBody(BaseModel):
    force: bool = Field(False, description="unpublish even though deployments of other orgs use it (owners only)")


def auth_of(record: DeploymentRecord) -> str:
    """Who may call a deployment: ``platform`` (a token of its org; of any org when it is public), ``none``
    (anyone) or ``provider:NAME`` (users who logged in through that auth provider)."""
    return str(record.spec.get("auth") or "platform")


def usage_bucket(ts: float) -> int:
    return int(ts) // 3600 * 3600


def caller_id(identity: Identity | None) -> str | None:
    """Who called, as usage counts distinct callers: a hash, so the registry keeps no other org's user names."""
    if identity is None:
        return None
    return hashlib.sha256(f"{identity.org}/{identity.subject}".encode()).hexdigest()[:16]


def is_public(record: DeploymentRecord) -> bool:
    return bool(record.spec.get("public"))


def uses_of(record: DeploymentRecord) -> list[str]:
    return list(record.spec.get("uses") or [])


def address(record: DeploymentRecord) -> str:
    return f"@{record.org}/{record.name}"


def resolve_uses(names: list[str], org: str, short: str) -> list[str]:
    """The declared dependencies as qualified names, in order, once each; a deployment may not use itself."""
    if len(names) > MAX_USES:
        raise ValidationFailed(f"an app may declare at most {MAX_USES} deployments it uses, not {len(names)}")
    out: list[str] = []
    for name in names:
        try:
            used = "%s.%s" % split_qualified(name.strip(), org)
        except ValidationFailed as exc:
            raise ValidationFailed(f"uses: {exc.message}", hint="name a deployment: NAME (of your org), ORG.NAME "
                                   "or @ORG/NAME") from None
        if used == f"{org}.{short}":
            raise ValidationFailed(f"uses: {org}.{short} cannot use itself")
        if used not in out:
            out.append(used)
    return out


class Catalog:
    """Publishing, the catalog's listing and search, and the dependency checks of delete and unpublish."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    @property
    def registry(self):
        return self.platform.registry

    # -- the dependency graph -------------------------------------------------------------------------------

    async def check_uses(self, identity: Identity, names: list[str], org: str, short: str) -> list[str]:
        """``names`` resolved; each must exist, and be of the deploying org or public."""
        uses = resolve_uses(names, org, short)
        for key in uses:
            owner, name = key.split(".", 1)
            record = await self.registry.get_deployment(owner, name)
            if record is None or (owner != org and not is_public(record)):
                # Another org's private deployment is reported as missing: its existence is not ours to tell.
                raise NotFoundError(f"uses: no deployment {key}" + ("" if owner == org else " in the catalog"),
                                    hint="deploy it first, or name one from `mcp-agent catalog`")
        return uses

    async def dependents(self, record: DeploymentRecord) -> list[DeploymentRecord]:
        key = f"{record.org}.{record.name}"
        return [r for r in await self.registry.list_deployments(None) if key in uses_of(r) and r.id != record.id]

    def shown(self, dependents: list[DeploymentRecord], identity: Identity) -> list[str]:
        """Dependents as the caller may see them: another org's by org only (their names are that org's)."""
        mine = sorted(f"{r.org}.{r.name}" for r in dependents if r.org == identity.org)
        others: dict[str, int] = {}
        for r in dependents:
            if r.org != identity.org:
                others[r.org] = others.get(r.org, 0) + 1
        return mine + [f"{n} deployment{'s' if n > 1 else ''} of org {o}" for o, n in sorted(others.items())]

    async def check_removal(self, identity: Identity, record: DeploymentRecord, *, force: bool,
                            action: str) -> list[DeploymentRecord]:
        """The deployments that use it (for unpublishing, those of other orgs: its own org keeps its access).
        Refuses to delete or unpublish a public deployment that others use, unless an owner forces it."""
        found = await self.dependents(record)
        if action == "unpublish":
            found = [r for r in found if r.org != record.org]
        if not found or not is_public(record):
            return found
        listed = "; ".join(self.shown(found, identity))
        if not force:
            raise ConflictError(f"{address(record)} is public and in use: {listed}",
                                hint=f"they would lose it; an owner may {action} anyway with --force")
        if not identity.can("admin"):
            raise ForbiddenError(f"only an owner may {action} {address(record)} while others use it ({listed})",
                                 hint="ask an owner of the org")
        return found

    # -- publishing -----------------------------------------------------------------------------------------

    async def publish(self, identity: Identity, name: str, body: PublishBody) -> dict:
        platform = self.platform
        async with platform.locked(identity, name) as record:
            listing = dict(record.spec.get("listing") or {})
            for key, value in body.model_dump(exclude_unset=True).items():
                listing[key] = value
            if not listing.get("description") and record.spec.get("description"):
                listing["description"] = record.spec["description"]
            listing.setdefault("published_at", time.time())
            listing["by"] = identity.subject
            record = await self.registry.update_deployment(
                record.id, spec={**record.spec, "public": True, "listing": listing})
            platform.forget_auth(record)
        await platform.record(Event(type="deployment.published", org=record.org, deployment=record.name,
                                    message=f"published as {address(record)}"), record.id)
        return await self.entry(record)

    async def unpublish(self, identity: Identity, name: str, *, force: bool) -> dict:
        platform = self.platform
        async with platform.locked(identity, name) as record:
            cut = await self.check_removal(identity, record, force=force, action="unpublish") \
                if is_public(record) else []
            record = await self.registry.update_deployment(record.id, spec={**record.spec, "public": False})
            platform.forget_auth(record)
        note = f" (forced: {len(cut)} deployment(s) of other orgs used it)" if cut else ""
        await platform.record(Event(type="deployment.unpublished", org=record.org, deployment=record.name,
                                    message=f"{address(record)} is private again{note}"), record.id)
        return {"name": f"{record.org}.{record.name}", "public": False, "forced_dependents": len(cut)}

    # -- the listing ----------------------------------------------------------------------------------------

    async def entry(self, record: DeploymentRecord, *, detail: bool = False,
                    since: float | None = None) -> dict[str, Any]:
        platform = self.platform
        listing = record.spec.get("listing") or {}
        versions = await self.registry.list_versions(record.id)
        serving = next((v for v in versions if v.version == record.current_version), None)
        out: dict[str, Any] = {
            "address": address(record), "name": f"{record.org}.{record.name}", "org": record.org,
            "kind": record.kind, "description": listing.get("description") or record.spec.get("description") or "",
            "icon": listing.get("icon"), "endpoint": f"{platform.config.base_url}/servers/{address(record)}/mcp",
            "auth": auth_of(record), "status": record.status, "version": record.current_version,
            # What a caller can check the serving code against: the sha256 of the package it was built from.
            "package_sha256": serving.package_sha256 if serving else None,
            "published_at": listing.get("published_at"), "updated_at": record.updated_at,
        }
        usage = await platform.usage_of(record, since if since is not None else time.time() - USAGE_WINDOW)
        out["usage"] = usage.model_dump(exclude=set() if detail else {"buckets"})
        if detail:
            out["example"] = listing.get("example")
            out["versions"] = [v.model_dump(mode="json", include={"version", "status", "package_sha256",
                                                                  "created_at"}) for v in versions]
            out["uses"] = [key for key in uses_of(record) if await self._listed(key)]
            out["used_by"] = len(await self.dependents(record))
        return out

    async def _listed(self, key: str) -> bool:
        owner, name = key.split(".", 1)
        record = await self.registry.get_deployment(owner, name)
        return record is not None and is_public(record)

    async def search(self, query: str = "", kind: str | None = None, limit: int = 100) -> list[dict]:
        words = [w for w in query.lower().split() if w]
        found = []
        for record in await self.registry.list_deployments(None):
            if not is_public(record) or (kind and record.kind != kind):
                continue
            listing = record.spec.get("listing") or {}
            text = " ".join([record.org, record.name, address(record), listing.get("description") or "",
                             record.spec.get("description") or ""]).lower()
            if all(w in text for w in words):
                found.append(record)
        found.sort(key=lambda r: (r.org, r.name))
        return [await self.entry(r) for r in found[:limit]]

    async def get(self, name: str, since: float | None = None) -> dict:
        try:
            org, short = split_qualified(name, "")
        except ValidationFailed:
            org = short = ""
        record = await self.registry.get_deployment(org, short) if org else None
        if record is None or not is_public(record):
            raise NotFoundError(f"nothing public is called {name}", hint="search with `mcp-agent catalog QUERY`")
        return await self.entry(record, detail=True, since=since)
