"""Which requests a key's scopes cover (core/platform/audit.py), and how audit outcomes are named."""

from __future__ import annotations

import pytest

from mcp_agent_cloud.hookspecs.types import Identity
from mcp_agent_cloud.platform.audit import check_scopes, outcome_of, scope_refusal


def who(*scopes: str) -> Identity:
    return Identity(subject="ann", org="acme", roles=["developer"], scopes=list(scopes), provider="builtin")


@pytest.mark.parametrize("scopes,path,query,allowed", [
    ((), "/api/v1/deployments", b"", True),
    (("mcp",), "/servers/hello/mcp", b"", True),
    (("mcp",), "/servers/hello/sse", b"", True),
    (("mcp",), "/api/v1/deployments", b"", False),
    (("mcp",), "/metrics", b"", False),
    (("api",), "/servers/hello/mcp", b"", False),
    (("api",), "/api/v1/keys", b"", True),
    (("deployment:hello",), "/api/v1/deployments/hello/logs", b"", True),
    (("deployment:hello",), "/api/v1/deployments/acme.hello", b"", True),
    (("deployment:acme.hello",), "/servers/hello/mcp", b"", True),
    (("deployment:hello",), "/api/v1/deployments/other", b"", False),
    (("deployment:hello",), "/api/v1/workflows/other", b"", False),
    (("deployment:hello",), "/api/v1/deployments/other.hello", b"", False),  # same short name, another org
    (("deployment:hello",), "/api/v1/deployments", b"", False),
    (("deployment:hello",), "/api/v1/runs", b"deployment=hello", True),
    (("deployment:hello",), "/api/v1/runs", b"deployment=other", False),
    (("deployment:hello",), "/api/v1/runs/run_1", b"", False),  # a run id names no deployment
    (("deployment:hello",), "/api/v1/packages", b"", True),
    (("deployment:hello",), "/api/v1/packages/" + "0" * 64, b"", True),
    (("deployment:hello",), "/api/v1/whoami", b"", True),
    (("deployment:hello", "mcp"), "/api/v1/deployments/hello", b"", False),
    (("deployment:hello", "deployment:other"), "/servers/other/mcp", b"", True),
])
def test_scope_refusal(scopes, path, query, allowed):
    why = scope_refusal(who(*scopes), path, query)
    assert (why is None) == allowed, why
    if not allowed:
        assert "limited to" in why


def test_check_scopes_validates_and_dedupes():
    assert check_scopes(["mcp", " api", "mcp", "deployment:hello"]) == ["mcp", "api", "deployment:hello"]
    for bad in ("admin", "deployment:", "", "API"):
        with pytest.raises(ValueError, match="unknown scope"):
            check_scopes([bad])


def test_outcomes():
    assert [outcome_of(s) for s in (200, 201, 302, 400, 401, 403, 404, 409, 500, 503)] == \
        ["ok", "ok", "ok", "failed", "denied", "denied", "failed", "failed", "error", "error"]
