"""A platform on the postgres registry, end to end on the real PostgreSQL: `admin migrate`, deploy, call, and the
state (deployments, versions, events, tokens) surviving a platform restart."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import psycopg
import pytest

from mcp_agent_cloud.plugins.postgres import MIGRATIONS
from tests.conftest import CLI, PlatformProcess, call_tool, wait_for

HELLO = str(Path(__file__).resolve().parents[2] / "examples" / "hello")
pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def test_platform_on_postgres(tmp_path, shared_envs, postgres_dsn, pg_schemas):
    schema = pg_schemas("e2e")
    registry = {"name": "postgres", "dsn": postgres_dsn, "schema": schema, "migrate_on_start": False}
    p = PlatformProcess(tmp_path, shared_envs, extra_config=f"registry: {json.dumps(registry)}\n")

    # migrate_on_start false: serve refuses a schema that is behind, and says what to run.
    r = subprocess.run([CLI, "serve"], env=p.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "mcp-agent admin migrate" in r.stderr, r.stderr
    migrated = p.cli_json("admin", "migrate")
    assert migrated == {"registry": "postgres", "migrated": True, "from_version": 0,
                        "to_version": len(MIGRATIONS)}, migrated
    assert p.cli_json("admin", "migrate")["migrated"] is False
    assert "nothing to do" in p.cli("admin", "migrate", check=True).stdout

    p.start()
    try:
        result = p.cli_json("deploy", "app", HELLO, "--name", "hello")
        assert anyio.run(call_tool, result["endpoint"], p.token, "greet", {"name": "pg"}) == "Hello, pg!"
        with psycopg.connect(postgres_dsn) as conn:
            rows = conn.execute(f'SELECT org, name, status FROM "{schema}".deployments').fetchall()
            assert rows == [("default", "hello", "running")], rows
            events = [r[0] for r in conn.execute(f'SELECT type FROM "{schema}".events ORDER BY id')]
            assert events, "the platform wrote no events to PostgreSQL"
            # tokens are stored as hashes only
            hashes = [r[0] for r in conn.execute(f'SELECT token_hash FROM "{schema}".tokens')]
            assert hashes and p.token not in hashes
        before = p.cli_json("events", "hello")

        p.stop()
        p.start()
        # serving_version is what this platform process serves once it restored the deployment from PostgreSQL
        wait_for(lambda: p.cli_json("status", "hello").get("serving_version") == 1, timeout=60, what="restore")
        status = p.cli_json("status", "hello")
        assert status["status"] == "running" and status["current_version"] == 1, status
        assert anyio.run(call_tool, result["endpoint"], p.token, "greet", {"name": "again"}) == "Hello, again!"
        after = p.cli_json("events", "hello")
        assert [e["id"] for e in after[:len(before)]] == [e["id"] for e in before]  # no event lost
    finally:
        p.stop()
