"""What every SQL registry shares: which fields callers may set, which columns hold JSON, and the checks on both.

The ``sqlite`` and ``postgres`` registries store the same records in the same tables; only their SQL differs.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mcp_agent_cloud.errors import ValidationFailed

M = TypeVar("M", bound=BaseModel)

# Columns stored as JSON, per table.
JSON_COLUMNS: dict[str, frozenset[str]] = {
    "orgs": frozenset(),
    "deployments": frozenset({"spec"}),
    "versions": frozenset({"manifest", "options", "artifact", "instance"}),
    "events": frozenset({"data"}),
    "tokens": frozenset({"roles", "scopes"}),
    "nodes": frozenset(),
    "leases": frozenset(),
    "audit": frozenset(),
    "users": frozenset({"roles"}),
    "refresh_tokens": frozenset(),
    "oauth_clients": frozenset({"metadata"}),
}
USER_UPDATABLE = frozenset({"roles", "password_hash", "disabled"})

# Fields callers may set after creation; identity and timestamps are managed by the registry.
DEPLOYMENT_UPDATABLE = frozenset({"kind", "builder", "status", "desired_state", "current_version", "spec"})
VERSION_FIELDS = frozenset({"status", "package_sha256", "manifest", "options", "artifact", "instance", "error"})


def check_fields(fields: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValidationFailed(
            f"cannot set {', '.join(unknown)} on a {what}",
            hint=f"settable fields: {', '.join(sorted(allowed))}",
        )


def validate(model: type[M], data: dict[str, Any], what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValidationFailed(f"invalid {what}: {problems}") from exc


def audit_query(mark: str, contains: str, *, org: str, before_id: int | None, limit: int, actor: str | None,
                action: str | None, since: float | None) -> tuple[str, tuple]:
    """``list_audit``'s SELECT, for a driver's placeholder (``?``, ``%s``) and substring test (``instr(action, ?) >
    0``)."""
    where, args = [f"org = {mark}"], [org]
    for clause, value in ((f"id < {mark}", before_id), (f"actor = {mark}", actor), (contains, action),
                          (f"created_at >= {mark}", since)):
        if value is not None:
            where.append(clause)
            args.append(value)
    return f"SELECT * FROM audit WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT {mark}", (*args, max(0, limit))
