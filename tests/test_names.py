"""Which deployment a request names: the one parser behind node routing, scope checks and per-deployment auth."""

import pytest

from mcp_agent_cloud.names import from_at_path, named_in_path, named_in_request


@pytest.mark.parametrize("path, expected", [
    ("/servers/hello/mcp", ("hello", "mcp")),
    ("/servers/acme.hello/mcp/", ("acme.hello", "mcp/")),
    ("/servers/hello/", ("hello", "")),
    ("/api/v1/deployments/acme.hello", ("acme.hello", "")),
    ("/api/v1/deployments/hello/secrets/KEY", ("hello", "secrets/KEY")),
    ("/api/v1/workflows/flows/Approve/run", ("flows", "Approve/run")),
    ("/api/v1/agents/helper/run", ("helper", "run")),
    ("/api/v1/deployments", None),
    ("/api/v1/keys/abc", None),
    ("/servers/", None),
    ("/healthz", None),
])
def test_the_deployment_a_path_names(path, expected):
    assert named_in_path(path) == expected


def test_runs_name_their_deployment_in_the_query():
    assert named_in_request("/api/v1/runs", b"deployment=acme.flows&status=paused") == ("acme.flows", "")
    assert named_in_request("/api/v1/runs", b"status=paused") is None
    assert named_in_request("/api/v1/runs/r-1") is None
    assert named_in_request("/servers/hello/mcp", b"deployment=other") == ("hello", "mcp")


def test_public_addresses_name_the_qualified_deployment():
    assert named_in_path(from_at_path("/servers/@acme/hello/mcp")) == ("acme.hello", "mcp")
