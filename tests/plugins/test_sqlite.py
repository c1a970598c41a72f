"""The sqlite registry: the registry contract, plus what only a file backend has (modes, schema, two processes)."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from mcp_agent_cloud.errors import MCPAgentCloudError
from mcp_agent_cloud.hookspecs.types import PluginContext, RegistrySpec
from mcp_agent_cloud.plugins import sqlite as sqlite_plugin
from mcp_agent_cloud.plugins.sqlite import MIGRATIONS, SqliteConfig, SqliteRegistry
from tests.contracts import assert_registers, async_test
from tests.contracts.registry_contract import RegistryContract, opened


async def open_sqlite(where: Path, **options) -> SqliteRegistry:
    registry = SqliteRegistry(SqliteConfig(**options), PluginContext(data_dir=where / "data"))
    await registry.setup()
    return registry


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestSqliteRegistry(RegistryContract):
    @pytest.fixture
    def registry_factory(self):
        return open_sqlite


def test_hook_registers_sqlite() -> None:
    assert_registers(sqlite_plugin.mcp_agent_cloud_registries, RegistrySpec, "sqlite", SqliteRegistry, SqliteConfig)


@async_test
async def test_default_path_and_file_modes(tmp_path: Path) -> None:
    async with opened(open_sqlite, tmp_path) as reg:
        await reg.ensure_org("acme")  # a write, so the WAL file exists
        db = tmp_path / "data" / "registry.db"
        assert reg.path == db
        assert mode(db.parent) == 0o700
        assert mode(db) == 0o600
        wal = db.with_name("registry.db-wal")
        assert wal.exists() and mode(wal) == 0o600


@async_test
async def test_existing_file_is_tightened_and_relative_path_is_under_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    loose = data / "reg.sqlite"
    loose.touch(mode=0o644)
    loose.chmod(0o644)
    registry = await open_sqlite(tmp_path, path="reg.sqlite")
    try:
        assert registry.path == loose
        assert mode(loose) == 0o600
    finally:
        await registry.aclose()


@async_test
async def test_wal_foreign_keys_and_schema_version(tmp_path: Path) -> None:
    async with opened(open_sqlite, tmp_path) as reg:
        def pragmas(conn: sqlite3.Connection):
            return (conn.execute("PRAGMA journal_mode").fetchone()[0],
                    conn.execute("PRAGMA foreign_keys").fetchone()[0],
                    conn.execute("PRAGMA busy_timeout").fetchone()[0],
                    [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")])

        journal, fks, busy, versions = await reg._run(pragmas)
        assert (journal, fks, busy) == ("wal", 1, 5000)
        assert versions == list(range(1, len(MIGRATIONS) + 1))
    # reopening does not apply migrations again
    async with opened(open_sqlite, tmp_path) as reg:
        assert (await reg._run(pragmas))[3] == list(range(1, len(MIGRATIONS) + 1))


@async_test
async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    async with opened(open_sqlite, tmp_path):
        pass
    db = tmp_path / "data" / "registry.db"
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, 0)", (len(MIGRATIONS) + 1,))
    conn.close()
    with pytest.raises(MCPAgentCloudError, match="newer than this mcp-agent-cloud"):
        await open_sqlite(tmp_path)


@async_test
async def test_closed_registry_says_so(tmp_path: Path) -> None:
    registry = await open_sqlite(tmp_path)
    await registry.aclose()
    with pytest.raises(MCPAgentCloudError, match="not open"):
        await registry.list_orgs()
