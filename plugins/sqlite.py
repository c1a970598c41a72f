"""Built-in registry ``sqlite``: orgs, deployments, versions, events and tokens in one SQLite file.

One connection, guarded by a thread lock, is driven through ``anyio.to_thread`` so the event loop never blocks on
disk. Writes run in ``BEGIN IMMEDIATE`` transactions, so a second process on the same file waits (``busy_timeout``)
instead of interleaving.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field

from mcp_agent_cloud.errors import ConflictError, MCPAgentCloudError, NotFoundError
from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import (
    AuditRecord,
    OAuthClientRecord,
    RefreshTokenRecord,
    UserRecord,
    DeploymentRecord,
    EventRecord,
    LeaseRecord,
    NodeRecord,
    OrgRecord,
    Registry,
    RegistrySpec,
    TokenRecord,
    UsageBucket,
    UsageDelta,
    UsageSummary,
    VersionRecord,
)
from mcp_agent_cloud.plugins.records import (
    audit_query,
    DEPLOYMENT_UPDATABLE,
    JSON_COLUMNS,
    USER_UPDATABLE,
    VERSION_FIELDS,
    check_fields,
    validate,
)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class SqliteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path | None = Field(None, description="database file (default DATA/registry.db; relative to DATA)")
    busy_timeout_ms: int = Field(5000, ge=0, description="how long a write waits for another process's lock")


# Schema migrations, applied in order; the row count of ``schema_version`` is how many have run. Append only:
# a released migration never changes. A PostgreSQL registry mirrors these steps with its own types.
MIGRATIONS: list[tuple[str, ...]] = [
    (  # 1: initial schema
        """CREATE TABLE orgs (
            name TEXT PRIMARY KEY,
            created_at REAL NOT NULL)""",
        """CREATE TABLE deployments (
            id TEXT PRIMARY KEY,
            org TEXT NOT NULL,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            builder TEXT NOT NULL,
            status TEXT NOT NULL,
            desired_state TEXT NOT NULL,
            current_version INTEGER,
            spec TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (org, name))""",
        """CREATE TABLE versions (
            deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            status TEXT NOT NULL,
            package_sha256 TEXT,
            manifest TEXT,
            options TEXT NOT NULL,
            artifact TEXT,
            instance TEXT,
            error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (deployment_id, version))""",
        # no foreign key on deployment_id: events outlive the deployment they describe
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            org TEXT,
            deployment_id TEXT,
            type TEXT NOT NULL,
            message TEXT NOT NULL,
            data TEXT NOT NULL,
            created_at REAL NOT NULL)""",
        "CREATE INDEX events_org ON events (org, id)",
        "CREATE INDEX events_deployment ON events (deployment_id, id)",
        """CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            org TEXT NOT NULL,
            subject TEXT NOT NULL,
            name TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            roles TEXT NOT NULL,
            scopes TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            revoked INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX tokens_org ON tokens (org)",
    ),
    (  # 2: nodes and the leases that say which node runs which deployment
        """CREATE TABLE nodes (
            id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL)""",
        """CREATE TABLE leases (
            key TEXT PRIMARY KEY,
            node_id TEXT NOT NULL,
            expires_at REAL NOT NULL,
            epoch INTEGER NOT NULL)""",
        "CREATE INDEX leases_node ON leases (node_id)",
    ),
    (  # 3: the audit log (append only)
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            org TEXT NOT NULL,
            actor TEXT NOT NULL,
            provider TEXT,
            token_id TEXT,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            source TEXT NOT NULL,
            user_agent TEXT NOT NULL,
            status INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            message TEXT NOT NULL,
            created_at REAL NOT NULL)""",
        "CREATE INDEX audit_org ON audit (org, id)",
    ),
    (  # 4: local users and OAuth refresh tokens
        """CREATE TABLE users (
            username TEXT PRIMARY KEY,
            org TEXT NOT NULL,
            roles TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL)""",
        "CREATE INDEX users_org ON users (org)",
        """CREATE TABLE refresh_tokens (
            id TEXT PRIMARY KEY,
            family TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            client_id TEXT NOT NULL,
            org TEXT NOT NULL,
            subject TEXT NOT NULL,
            scope TEXT NOT NULL,
            audience TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            used_at REAL,
            revoked INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX refresh_tokens_family ON refresh_tokens (family)",
    ),
    (  # 5: OAuth clients (dynamic registration)
        """CREATE TABLE oauth_clients (
            client_id TEXT PRIMARY KEY,
            secret_hash TEXT NOT NULL,
            metadata TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at REAL NOT NULL)""",
    ),
    (  # 6: usage of deployments per hour (the catalog's metrics)
        """CREATE TABLE usage (
            deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
            bucket INTEGER NOT NULL,
            calls INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            duration_ms REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (deployment_id, bucket))""",
        """CREATE TABLE usage_callers (
            deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
            bucket INTEGER NOT NULL,
            caller TEXT NOT NULL,
            PRIMARY KEY (deployment_id, bucket, caller))""",
    ),
    (  # 7: when an OAuth client first got a token (unset: an abandoned registration). Clients from before count
        # as used: nothing says they were not.
        "ALTER TABLE oauth_clients ADD COLUMN used_at REAL",
        "UPDATE oauth_clients SET used_at = created_at",
    ),
]

_LEASE_SELECT = ("SELECT l.key, l.node_id, l.expires_at, l.epoch, l.expires_at - ? AS remaining, n.url "
                 "FROM leases l LEFT JOIN nodes n ON n.id = l.node_id")

def _to_row(record: BaseModel, table: str, *, exclude: set[str] | None = None) -> dict[str, Any]:
    row = record.model_dump(mode="json", exclude=exclude)
    for col in JSON_COLUMNS[table] & row.keys():
        row[col] = None if row[col] is None else json.dumps(row[col])
    return row


def _from_row(model: type[M], table: str, row: sqlite3.Row | None) -> M | None:
    if row is None:
        return None
    data = dict(row)
    for col in JSON_COLUMNS[table]:
        if data.get(col) is not None:
            data[col] = json.loads(data[col])
    return model.model_validate(data)


def _private_dir(path: Path) -> None:
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


class SqliteRegistry(Registry):
    def __init__(self, config: SqliteConfig, ctx) -> None:
        super().__init__(config, ctx)
        path = Path(config.path) if config.path else Path("registry.db")
        self.path = path if path.is_absolute() else Path(ctx.data_dir) / path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.migrated = (0, 0)  # schema versions before and after the last open

    # -- plumbing ---------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        await anyio.to_thread.run_sync(self._open)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._close)

    def _open(self) -> None:
        _private_dir(self.path.parent)
        # Create the file ourselves so it is 0600 from the first byte; SQLite gives -wal/-shm the same mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(self.path, 0o600)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self.config.busy_timeout_ms / 1000)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version "
                     "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
        with _transaction(conn):
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            if current > len(MIGRATIONS):
                raise MCPAgentCloudError(
                    f"registry {self.path} has schema version {current}, newer than this mcp-agent-cloud "
                    f"understands ({len(MIGRATIONS)})",
                    hint="upgrade mcp-agent-cloud, or point registry.path at another file",
                )
            for number, statements in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (number, time.time()))
        self.migrated = (current, len(MIGRATIONS))

    async def migrate(self) -> tuple[int, int]:
        # Opening the file migrates it (a file has one writer at a time, under BEGIN IMMEDIATE).
        await self.setup()
        await self.aclose()
        return self.migrated

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._locked, fn)

    def _locked(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._conn is None:
                raise MCPAgentCloudError("the sqlite registry is not open", hint="call start() first")
            return fn(self._conn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def tx(conn: sqlite3.Connection) -> T:
            with _transaction(conn):
                return fn(conn)
        return await self._run(tx)

    async def _one(self, model: type[M], table: str, sql: str, args: tuple = ()) -> M | None:
        return await self._run(lambda c: _from_row(model, table, c.execute(sql, args).fetchone()))

    async def _all(self, model: type[M], table: str, sql: str, args: tuple = ()) -> list[M]:
        return await self._run(lambda c: [_from_row(model, table, r) for r in c.execute(sql, args).fetchall()])

    # -- orgs -------------------------------------------------------------------------------------------------

    async def ensure_org(self, name: str) -> OrgRecord:
        def op(c: sqlite3.Connection) -> OrgRecord:
            c.execute("INSERT OR IGNORE INTO orgs (name, created_at) VALUES (?, ?)", (name, time.time()))
            return _from_row(OrgRecord, "orgs", c.execute("SELECT * FROM orgs WHERE name = ?", (name,)).fetchone())
        return await self._write(op)

    async def get_org(self, name: str) -> OrgRecord | None:
        return await self._one(OrgRecord, "orgs", "SELECT * FROM orgs WHERE name = ?", (name,))

    async def list_orgs(self) -> list[OrgRecord]:
        return await self._all(OrgRecord, "orgs", "SELECT * FROM orgs ORDER BY name")

    # -- deployments ------------------------------------------------------------------------------------------

    async def create_deployment(self, record: DeploymentRecord) -> DeploymentRecord:
        def op(c: sqlite3.Connection) -> DeploymentRecord:
            if c.execute("SELECT 1 FROM deployments WHERE org = ? AND name = ?", (record.org, record.name)).fetchone():
                raise ConflictError(f"deployment {record.org}.{record.name} already exists",
                                    hint="pick another name, or update the existing deployment")
            if c.execute("SELECT 1 FROM deployments WHERE id = ?", (record.id,)).fetchone():
                raise ConflictError(f"a deployment with id {record.id} already exists")
            _insert(c, "deployments", _to_row(record, "deployments"))
            return _get_deployment(c, record.id)
        return await self._write(op)

    async def get_deployment(self, org: str, name: str) -> DeploymentRecord | None:
        return await self._one(DeploymentRecord, "deployments",
                               "SELECT * FROM deployments WHERE org = ? AND name = ?", (org, name))

    async def get_deployment_by_id(self, deployment_id: str) -> DeploymentRecord | None:
        return await self._one(DeploymentRecord, "deployments", "SELECT * FROM deployments WHERE id = ?",
                               (deployment_id,))

    async def list_deployments(self, org: str | None = None) -> list[DeploymentRecord]:
        if org is None:
            return await self._all(DeploymentRecord, "deployments", "SELECT * FROM deployments ORDER BY org, name")
        return await self._all(DeploymentRecord, "deployments",
                               "SELECT * FROM deployments WHERE org = ? ORDER BY name", (org,))

    async def update_deployment(self, deployment_id: str, **fields: Any) -> DeploymentRecord:
        check_fields(fields, DEPLOYMENT_UPDATABLE, "deployment")

        def op(c: sqlite3.Connection) -> DeploymentRecord:
            current = _get_deployment(c, deployment_id)
            updated = validate(DeploymentRecord, {**current.model_dump(), **fields, "updated_at": time.time()},
                                "deployment update")
            _update(c, "deployments", _to_row(updated, "deployments", exclude={"id"}), "id = ?", (deployment_id,))
            return updated
        return await self._write(op)

    async def delete_deployment(self, deployment_id: str) -> None:
        def op(c: sqlite3.Connection) -> None:
            # versions go with it (ON DELETE CASCADE); events have no foreign key and stay
            if c.execute("DELETE FROM deployments WHERE id = ?", (deployment_id,)).rowcount == 0:
                raise NotFoundError(f"deployment {deployment_id} not found")
        await self._write(op)

    # -- versions ---------------------------------------------------------------------------------------------

    async def create_version(self, deployment_id: str, **fields: Any) -> VersionRecord:
        check_fields(fields, VERSION_FIELDS, "version")

        def op(c: sqlite3.Connection) -> VersionRecord:
            _get_deployment(c, deployment_id)
            # max+1 inside the write transaction: no other writer can take the same number
            number = c.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE deployment_id = ?",
                               (deployment_id,)).fetchone()[0]
            record = validate(VersionRecord, {**fields, "deployment_id": deployment_id, "version": number},
                               "version")
            _insert(c, "versions", _to_row(record, "versions"))
            return record
        return await self._write(op)

    async def get_version(self, deployment_id: str, version: int) -> VersionRecord | None:
        return await self._one(VersionRecord, "versions",
                               "SELECT * FROM versions WHERE deployment_id = ? AND version = ?",
                               (deployment_id, version))

    async def list_versions(self, deployment_id: str) -> list[VersionRecord]:
        return await self._all(VersionRecord, "versions",
                               "SELECT * FROM versions WHERE deployment_id = ? ORDER BY version", (deployment_id,))

    async def update_version(self, deployment_id: str, version: int, **fields: Any) -> VersionRecord:
        check_fields(fields, VERSION_FIELDS, "version")

        def op(c: sqlite3.Connection) -> VersionRecord:
            row = c.execute("SELECT * FROM versions WHERE deployment_id = ? AND version = ?",
                            (deployment_id, version)).fetchone()
            current = _from_row(VersionRecord, "versions", row)
            if current is None:
                raise NotFoundError(f"version {version} of deployment {deployment_id} not found")
            updated = validate(VersionRecord, {**current.model_dump(), **fields, "updated_at": time.time()},
                                "version update")
            _update(c, "versions", _to_row(updated, "versions", exclude={"deployment_id", "version"}),
                    "deployment_id = ? AND version = ?", (deployment_id, version))
            return updated
        return await self._write(op)

    # -- events -----------------------------------------------------------------------------------------------

    async def add_event(self, record: EventRecord) -> EventRecord:
        def op(c: sqlite3.Connection) -> EventRecord:
            event_id = _insert(c, "events", _to_row(record, "events", exclude={"id"}))
            return record.model_copy(update={"id": event_id})
        return await self._write(op)

    async def list_events(
        self, *, org: str | None = None, deployment_id: str | None = None, after_id: int = 0, limit: int = 100
    ) -> list[EventRecord]:
        where, args = ["id > ?"], [after_id]
        if org is not None:
            where.append("org = ?")
            args.append(org)
        if deployment_id is not None:
            where.append("deployment_id = ?")
            args.append(deployment_id)
        sql = f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        return await self._all(EventRecord, "events", sql, (*args, max(0, limit)))

    # -- audit ------------------------------------------------------------------------------------------------

    async def add_audit(self, record: AuditRecord) -> AuditRecord:
        def op(c: sqlite3.Connection) -> AuditRecord:
            return record.model_copy(update={"id": _insert(c, "audit", _to_row(record, "audit", exclude={"id"}))})
        return await self._write(op)

    async def list_audit(self, *, org: str, before_id: int | None = None, limit: int = 100, actor: str | None = None,
                         action: str | None = None, since: float | None = None) -> list[AuditRecord]:
        sql, args = audit_query("?", "instr(action, ?) > 0", org=org, before_id=before_id, limit=limit, actor=actor,
                                action=action, since=since)
        return await self._all(AuditRecord, "audit", sql, args)

    async def prune_events(self, *, before: float) -> int:
        # AUTOINCREMENT: ids of deleted events are never handed out again, so a follower's `after` stays valid.
        return await self._write(lambda c: c.execute("DELETE FROM events WHERE created_at < ?", (before,)).rowcount)

    # -- tokens -----------------------------------------------------------------------------------------------

    async def add_token(self, record: TokenRecord) -> TokenRecord:
        def op(c: sqlite3.Connection) -> TokenRecord:
            if c.execute("SELECT 1 FROM tokens WHERE id = ? OR token_hash = ?",
                         (record.id, record.token_hash)).fetchone():
                raise ConflictError(f"token {record.id} (or one with the same hash) already exists")
            _insert(c, "tokens", _to_row(record, "tokens"))
            return record
        return await self._write(op)

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        # revoked and expired tokens are returned too: the auth provider decides what they mean
        return await self._one(TokenRecord, "tokens", "SELECT * FROM tokens WHERE token_hash = ?", (token_hash,))

    async def list_tokens(self, org: str) -> list[TokenRecord]:
        return await self._all(TokenRecord, "tokens", "SELECT * FROM tokens WHERE org = ? ORDER BY created_at, id",
                               (org,))

    async def revoke_token(self, token_id: str) -> None:
        def op(c: sqlite3.Connection) -> None:
            if c.execute("UPDATE tokens SET revoked = 1 WHERE id = ?", (token_id,)).rowcount == 0:
                raise NotFoundError(f"token {token_id} not found")
        await self._write(op)


    # -- users and refresh tokens -----------------------------------------------------------------------------

    async def add_user(self, record: UserRecord) -> UserRecord:
        def op(c: sqlite3.Connection) -> UserRecord:
            if c.execute("SELECT 1 FROM users WHERE username = ?", (record.username,)).fetchone():
                raise ConflictError(f"user {record.username} already exists")
            _insert(c, "users", _to_row(record, "users"))
            return record
        return await self._write(op)

    async def get_user(self, username: str) -> UserRecord | None:
        return await self._one(UserRecord, "users", "SELECT * FROM users WHERE username = ?", (username,))

    async def list_users(self, org: str | None = None) -> list[UserRecord]:
        if org is None:
            return await self._all(UserRecord, "users", "SELECT * FROM users ORDER BY username")
        return await self._all(UserRecord, "users", "SELECT * FROM users WHERE org = ? ORDER BY username", (org,))

    async def update_user(self, username: str, **fields: Any) -> UserRecord:
        check_fields(fields, USER_UPDATABLE, "user")

        def op(c: sqlite3.Connection) -> UserRecord:
            current = _from_row(UserRecord, "users", c.execute("SELECT * FROM users WHERE username = ?",
                                                               (username,)).fetchone())
            if current is None:
                raise NotFoundError(f"no user {username}")
            updated = validate(UserRecord, {**current.model_dump(), **fields}, "user update")
            _update(c, "users", _to_row(updated, "users", exclude={"username"}), "username = ?", (username,))
            return updated
        return await self._write(op)

    async def add_oauth_client(self, record: OAuthClientRecord) -> OAuthClientRecord:
        def op(c: sqlite3.Connection) -> OAuthClientRecord:
            _insert(c, "oauth_clients", _to_row(record, "oauth_clients"))
            return record
        return await self._write(op)

    async def get_oauth_client(self, client_id: str) -> OAuthClientRecord | None:
        return await self._one(OAuthClientRecord, "oauth_clients", "SELECT * FROM oauth_clients WHERE client_id = ?",
                               (client_id,))

    async def mark_oauth_client_used(self, client_id: str) -> None:
        await self._write(lambda c: c.execute("UPDATE oauth_clients SET used_at = ? WHERE client_id = ? AND used_at "
                                              "IS NULL", (time.time(), client_id)))

    async def prune_oauth_clients(self, *, before: float) -> int:
        return await self._write(lambda c: c.execute("DELETE FROM oauth_clients WHERE used_at IS NULL AND "
                                                     "created_at < ?", (before,)).rowcount)

    async def add_usage(self, deltas: list[UsageDelta]) -> None:
        def op(c: sqlite3.Connection) -> None:
            for d in deltas:  # a deployment deleted since the calls were counted takes nothing
                c.execute("INSERT INTO usage (deployment_id, bucket, calls, errors, duration_ms) SELECT ?, ?, ?, ?, ? "
                          "WHERE EXISTS (SELECT 1 FROM deployments WHERE id = ?) ON CONFLICT (deployment_id, bucket) "
                          "DO UPDATE SET calls = calls + excluded.calls, errors = errors + excluded.errors, "
                          "duration_ms = duration_ms + excluded.duration_ms",
                          (d.deployment_id, d.bucket, d.calls, d.errors, d.duration_ms, d.deployment_id))
                c.executemany("INSERT OR IGNORE INTO usage_callers (deployment_id, bucket, caller) SELECT ?, ?, ? "
                              "WHERE EXISTS (SELECT 1 FROM deployments WHERE id = ?)",
                              [(d.deployment_id, d.bucket, caller, d.deployment_id) for caller in d.callers])
        await self._write(op)

    async def get_usage(self, deployment_id: str, since: float) -> UsageSummary:
        start = int(since) // 3600 * 3600

        def op(c: sqlite3.Connection) -> UsageSummary:
            rows = c.execute("SELECT u.bucket, u.calls, u.errors, u.duration_ms, (SELECT COUNT(*) FROM usage_callers k WHERE "
                             "k.deployment_id = u.deployment_id AND k.bucket = u.bucket) FROM usage u "
                             "WHERE u.deployment_id = ? AND u.bucket >= ? ORDER BY u.bucket",
                             (deployment_id, start)).fetchall()
            callers = c.execute("SELECT COUNT(DISTINCT caller) FROM usage_callers WHERE deployment_id = ? AND "
                                "bucket >= ?", (deployment_id, start)).fetchone()[0]
            buckets = [UsageBucket(bucket=r[0], calls=r[1], errors=r[2], callers=r[4],
                                   avg_ms=round(r[3] / r[1], 2) if r[1] else None) for r in rows]
            return UsageSummary(since=since, calls=sum(b.calls for b in buckets),
                                errors=sum(b.errors for b in buckets), callers=callers, buckets=buckets)
        return await self._run(op)

    async def add_refresh_token(self, record: RefreshTokenRecord) -> RefreshTokenRecord:
        def op(c: sqlite3.Connection) -> RefreshTokenRecord:
            _insert(c, "refresh_tokens", _to_row(record, "refresh_tokens"))
            return record
        return await self._write(op)

    async def find_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None:
        return await self._one(RefreshTokenRecord, "refresh_tokens",
                               "SELECT * FROM refresh_tokens WHERE token_hash = ?", (token_hash,))

    async def use_refresh_token(self, token_id: str) -> bool:
        return await self._write(lambda c: c.execute(
            "UPDATE refresh_tokens SET used_at = ? WHERE id = ? AND used_at IS NULL AND revoked = 0",
            (time.time(), token_id)).rowcount == 1)

    async def revoke_refresh_family(self, family: str) -> int:
        return await self._write(lambda c: c.execute(
            "UPDATE refresh_tokens SET revoked = 1 WHERE family = ? AND revoked = 0", (family,)).rowcount)

    async def refresh_family_live(self, family: str) -> bool:
        return await self._run(lambda c: c.execute("SELECT 1 FROM refresh_tokens WHERE family = ? AND revoked = 0 "
                                                   "LIMIT 1", (family,)).fetchone() is not None)

    # -- nodes and leases -------------------------------------------------------------------------------------

    async def heartbeat(self, node_id: str, url: str) -> NodeRecord:
        def op(c: sqlite3.Connection) -> NodeRecord:
            now = time.time()
            c.execute("INSERT INTO nodes (id, url, started_at, heartbeat_at) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT (id) DO UPDATE SET url = excluded.url, heartbeat_at = excluded.heartbeat_at",
                      (node_id, url, now, now))
            row = c.execute("SELECT *, 0.0 AS age FROM nodes WHERE id = ?", (node_id,)).fetchone()
            return _from_row(NodeRecord, "nodes", row)
        return await self._write(op)

    async def list_nodes(self) -> list[NodeRecord]:
        return await self._all(NodeRecord, "nodes", "SELECT *, ? - heartbeat_at AS age FROM nodes ORDER BY id",
                               (time.time(),))

    async def acquire_lease(self, key: str, node_id: str, ttl: float) -> LeaseRecord:
        def op(c: sqlite3.Connection) -> LeaseRecord:
            now = time.time()
            row = c.execute("SELECT node_id, expires_at, epoch FROM leases WHERE key = ?", (key,)).fetchone()
            previous = None
            if row is None:
                c.execute("INSERT INTO leases (key, node_id, expires_at, epoch) VALUES (?, ?, ?, 1)",
                          (key, node_id, now + ttl))
            elif row["node_id"] == node_id:
                c.execute("UPDATE leases SET expires_at = ? WHERE key = ?", (now + ttl, key))
            elif row["expires_at"] <= now:
                previous = row["node_id"]
                c.execute("UPDATE leases SET node_id = ?, expires_at = ?, epoch = epoch + 1 WHERE key = ?",
                          (node_id, now + ttl, key))
            lease = _from_row(LeaseRecord, "leases", c.execute(f"{_LEASE_SELECT} WHERE l.key = ?",
                                                                (now, key)).fetchone())
            return lease.model_copy(update={"previous": previous})
        return await self._write(op)

    async def renew_leases(self, node_id: str, ttl: float) -> list[str]:
        def op(c: sqlite3.Connection) -> list[str]:
            c.execute("UPDATE leases SET expires_at = ? WHERE node_id = ?", (time.time() + ttl, node_id))
            return [r[0] for r in c.execute("SELECT key FROM leases WHERE node_id = ? ORDER BY key", (node_id,))]
        return await self._write(op)

    async def get_lease(self, key: str) -> LeaseRecord | None:
        return await self._one(LeaseRecord, "leases", f"{_LEASE_SELECT} WHERE l.key = ?", (time.time(), key))

    async def list_leases(self) -> list[LeaseRecord]:
        return await self._all(LeaseRecord, "leases", f"{_LEASE_SELECT} ORDER BY l.key", (time.time(),))

    async def release_lease(self, key: str, node_id: str) -> None:
        await self._write(lambda c: c.execute("DELETE FROM leases WHERE key = ? AND node_id = ?", (key, node_id)))


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # some errors already rolled SQLite back
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> int:
    cols = ", ".join(row)
    marks = ", ".join(f":{k}" for k in row)
    return conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", row).lastrowid


def _update(conn: sqlite3.Connection, table: str, row: dict[str, Any], where: str, args: tuple) -> None:
    sets = ", ".join(f"{k} = ?" for k in row)
    conn.execute(f"UPDATE {table} SET {sets} WHERE {where}", (*row.values(), *args))


def _get_deployment(conn: sqlite3.Connection, deployment_id: str) -> DeploymentRecord:
    row = conn.execute("SELECT * FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
    record = _from_row(DeploymentRecord, "deployments", row)
    if record is None:
        raise NotFoundError(f"deployment {deployment_id} not found")
    return record


@hookimpl
def mcp_agent_cloud_registries():
    yield RegistrySpec(name="sqlite", backend=SqliteRegistry, config_model=SqliteConfig,
                       description="SQLite file in the data dir")
