"""The postgres registry on the real PostgreSQL that scripts/postgres.sh found or started: the registry contract
(one fresh schema per test), plus migrations under concurrency, NOTIFY delivery and error messages."""

from __future__ import annotations

from pathlib import Path

import anyio
import psycopg
import pytest

from mcp_agent_cloud.errors import MCPAgentCloudError
from mcp_agent_cloud.hookspecs.types import EventRecord, PluginContext, RegistrySpec
from mcp_agent_cloud.plugins import postgres as postgres_plugin
from mcp_agent_cloud.plugins.postgres import MIGRATIONS, PostgresConfig, PostgresRegistry
from tests.contracts import assert_registers, async_test
from tests.contracts.registry_contract import RegistryContract, opened

pytestmark = pytest.mark.postgres


def make(dsn: str, schema: str, where: Path, **options) -> PostgresRegistry:
    return PostgresRegistry(PostgresConfig(dsn=dsn, schema=schema, **options), PluginContext(data_dir=where / "data"))


@pytest.fixture
def schema(pg_schemas) -> str:
    return pg_schemas()


@pytest.fixture
def factory(postgres_dsn, schema):
    async def open_pg(where: Path, **options) -> PostgresRegistry:
        registry = make(postgres_dsn, schema, where, **options)
        await registry.setup()
        return registry
    return open_pg


class TestPostgresRegistry(RegistryContract):
    @pytest.fixture
    def registry_factory(self, factory):
        return factory  # one schema per test: reopening the same `where` finds the same data


def test_hook_registers_postgres() -> None:
    assert_registers(postgres_plugin.mcp_agent_cloud_registries, RegistrySpec, "postgres", PostgresRegistry,
                     PostgresConfig)


def test_config_keeps_the_dsn_secret_and_checks_the_schema_name(tmp_path: Path) -> None:
    cfg = PostgresConfig(dsn="postgresql://mcpac:hunter2@db/x", schema="plat_1")
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.model_dump())
    for bad in ("Bad", "a;drop", "1abc", "x" * 64, ""):
        with pytest.raises(MCPAgentCloudError, match="invalid registry schema name"):
            make("", bad, tmp_path)


def versions_table(dsn: str, schema: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(f'SELECT version FROM "{schema}".schema_version ORDER BY version')]


@async_test
async def test_migrations_run_once_when_nodes_start_together(postgres_dsn, schema, tmp_path: Path) -> None:
    results: list[tuple[int, int]] = []

    async def migrate() -> None:
        results.append(await make(postgres_dsn, schema, tmp_path).migrate())

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(migrate)
    latest = len(MIGRATIONS)
    assert sorted(results) == [(0, latest)] + [(latest, latest)] * 3, results
    assert versions_table(postgres_dsn, schema) == list(range(1, latest + 1))
    assert await make(postgres_dsn, schema, tmp_path).schema_status() == (latest, latest)


@async_test
async def test_migrate_on_start_false_waits_for_admin_migrate(postgres_dsn, schema, tmp_path: Path) -> None:
    registry = make(postgres_dsn, schema, tmp_path, migrate_on_start=False)
    with pytest.raises(MCPAgentCloudError) as info:
        await registry.setup()
    assert "version 0" in info.value.message and "mcp-agent admin migrate" in info.value.hint
    assert await registry.migrate() == (0, len(MIGRATIONS))
    await registry.setup()
    try:
        assert await registry.ensure_org("acme")
    finally:
        await registry.aclose()


@async_test
async def test_newer_schema_is_refused(postgres_dsn, schema, factory, tmp_path: Path) -> None:
    async with opened(factory, tmp_path):
        pass
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(f'INSERT INTO "{schema}".schema_version VALUES (%s, 0)', (len(MIGRATIONS) + 1,))
    with pytest.raises(MCPAgentCloudError, match="newer than this mcp-agent-cloud"):
        await factory(tmp_path)


@async_test
async def test_unreachable_server_error_hides_the_password(tmp_path: Path) -> None:
    registry = make("postgresql://mcpac:hunter2@127.0.0.1:1/x", "mcpac_x", tmp_path, connect_timeout=2)
    with pytest.raises(MCPAgentCloudError) as info:
        await registry.setup()
    assert "cannot reach the postgres registry at postgresql://mcpac:***@127.0.0.1:1/x" in info.value.message
    assert "hunter2" not in info.value.message + (info.value.hint or "")
    kv = make("host=127.0.0.1 port=1 password=hunter2 dbname=x", "mcpac_x", tmp_path, connect_timeout=2)
    with pytest.raises(MCPAgentCloudError) as info:
        await kv.setup()
    assert "password=***" in info.value.message and "hunter2" not in info.value.message


@async_test
async def test_watch_is_woken_by_notify_not_by_its_backstop(factory, tmp_path: Path) -> None:
    # The watch re-reads on a NOTIFY; its timeout (30 s) is only a backstop for a lost one. Ten events from
    # another node inside 10 s can only arrive through NOTIFY.
    async with opened(factory, tmp_path) as a, opened(factory, tmp_path) as b:
        seen: list[int] = []

        async def follow() -> None:
            async for event in a.watch():
                seen.append(event.data["i"])
                if len(seen) == 10:
                    return

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await anyio.sleep(0.3)  # the watch is listening
                for i in range(10):
                    await b.add_event(EventRecord(type="tick", data={"i": i}))
                    await anyio.sleep(0.3)
        assert seen == list(range(10))


@async_test
async def test_schemas_isolate_platforms(postgres_dsn, pg_schemas, tmp_path: Path) -> None:
    one, two = make(postgres_dsn, pg_schemas(), tmp_path), make(postgres_dsn, pg_schemas(), tmp_path)
    await one.setup()
    await two.setup()
    try:
        await one.ensure_org("acme")
        assert await two.list_orgs() == []
        assert one.channel != two.channel  # and their event streams
    finally:
        await one.aclose()
        await two.aclose()


@async_test
async def test_packages_round_trip_in_chunks(factory, tmp_path: Path, monkeypatch) -> None:
    import hashlib
    import os

    monkeypatch.setattr(postgres_plugin, "CHUNK", 1000)  # several rows for a small file
    data = os.urandom(4321)
    src = tmp_path / "pkg.tar.gz"
    src.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    async with opened(factory, tmp_path) as a, opened(factory, tmp_path) as b:
        assert a.shares_packages and not await b.has_package("acme", sha)
        assert await b.get_package("acme", sha, tmp_path / "none") == (False, None)
        await a.put_package("acme", sha, "tar.gz", src)
        await a.put_package("acme", sha, "tar.gz", src)  # stored once
        assert await b.has_package("acme", sha) and not await b.has_package("other", sha)
        assert await b.get_package("acme", sha, tmp_path / "out") == (True, "tar.gz")
        assert (tmp_path / "out").read_bytes() == data
