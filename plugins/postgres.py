"""Registry ``postgres`` (extra ``postgres``): the ``sqlite`` registry's records and behaviour in PostgreSQL.

psycopg 3, not asyncpg: it is async natively, receives LISTEN/NOTIFY on the connection it already has (``watch``
needs no second driver), speaks libpq conninfo strings and ``PG*`` environment variables as every PostgreSQL tool
does, and its pool is maintained with it. asyncpg is faster on raw row decoding, which a registry that reads a few
rows per request does not need.

Every table lives in one schema (``schema``, default ``mcp_agent_cloud``), so one database can hold several
platforms, or a test per schema. Migrations are numbered, append-only, run in one transaction under an advisory
lock (two nodes starting at once apply them once), on start (``migrate_on_start``) or by ``mcp-agent admin
migrate``. ``add_event`` sends a NOTIFY in its transaction; ``watch`` LISTENs and reads only when told.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.parse
import zlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

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
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Append only: a released migration never changes. They mirror the sqlite registry's steps, in PostgreSQL types
# (JSONB for JSON, DOUBLE PRECISION for the epoch-seconds timestamps the records carry).
MIGRATIONS: list[tuple[str, ...]] = [
    (  # 1: initial schema
        """CREATE TABLE orgs (
            name TEXT PRIMARY KEY,
            created_at DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE deployments (
            id TEXT PRIMARY KEY,
            org TEXT NOT NULL,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            builder TEXT NOT NULL,
            status TEXT NOT NULL,
            desired_state TEXT NOT NULL,
            current_version INTEGER,
            spec JSONB NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            UNIQUE (org, name))""",
        """CREATE TABLE versions (
            deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            status TEXT NOT NULL,
            package_sha256 TEXT,
            manifest JSONB,
            options JSONB NOT NULL,
            artifact JSONB,
            instance JSONB,
            error TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (deployment_id, version))""",
        # no foreign key on deployment_id: events outlive the deployment they describe
        """CREATE TABLE events (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            org TEXT,
            deployment_id TEXT,
            type TEXT NOT NULL,
            message TEXT NOT NULL,
            data JSONB NOT NULL,
            created_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX events_org ON events (org, id)",
        "CREATE INDEX events_deployment ON events (deployment_id, id)",
        """CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            org TEXT NOT NULL,
            subject TEXT NOT NULL,
            name TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            roles JSONB NOT NULL,
            scopes JSONB NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            revoked BOOLEAN NOT NULL DEFAULT FALSE)""",
        "CREATE INDEX tokens_org ON tokens (org)",
    ),
    (  # 2: nodes, leases, and the uploaded packages (so any node can build any deployment)
        """CREATE TABLE nodes (
            id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            heartbeat_at DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE leases (
            key TEXT PRIMARY KEY,
            node_id TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            epoch INTEGER NOT NULL)""",
        "CREATE INDEX leases_node ON leases (node_id)",
        """CREATE TABLE packages (
            org TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            format TEXT,
            size BIGINT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (org, sha256))""",
        """CREATE TABLE package_chunks (
            org TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            seq INTEGER NOT NULL,
            data BYTEA NOT NULL,
            PRIMARY KEY (org, sha256, seq),
            FOREIGN KEY (org, sha256) REFERENCES packages (org, sha256) ON DELETE CASCADE)""",
    ),
    (  # 3: the audit log (append only)
        """CREATE TABLE audit (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
            created_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX audit_org ON audit (org, id)",
    ),
    (  # 4: local users and OAuth refresh tokens
        """CREATE TABLE users (
            username TEXT PRIMARY KEY,
            org TEXT NOT NULL,
            roles JSONB NOT NULL,
            password_hash TEXT NOT NULL,
            disabled BOOLEAN NOT NULL DEFAULT FALSE,
            created_at DOUBLE PRECISION NOT NULL)""",
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
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            used_at DOUBLE PRECISION,
            revoked BOOLEAN NOT NULL DEFAULT FALSE)""",
        "CREATE INDEX refresh_tokens_family ON refresh_tokens (family)",
    ),
    (  # 5: OAuth clients (dynamic registration)
        """CREATE TABLE oauth_clients (
            client_id TEXT PRIMARY KEY,
            secret_hash TEXT NOT NULL,
            metadata JSONB NOT NULL,
            source TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL)""",
    ),
    (  # 6: usage of deployments per hour (the catalog's metrics)
        """CREATE TABLE usage (
            deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
            bucket BIGINT NOT NULL,
            calls BIGINT NOT NULL DEFAULT 0,
            errors BIGINT NOT NULL DEFAULT 0,
            duration_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
            PRIMARY KEY (deployment_id, bucket))""",
        """CREATE TABLE usage_callers (
            deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
            bucket BIGINT NOT NULL,
            caller TEXT NOT NULL,
            PRIMARY KEY (deployment_id, bucket, caller))""",
    ),
    (  # 7: when an OAuth client first got a token (as sqlite's 7)
        "ALTER TABLE oauth_clients ADD COLUMN used_at DOUBLE PRECISION",
        "UPDATE oauth_clients SET used_at = created_at",
    ),
]

# Lease times come from the server's clock, never a node's: nodes whose clocks disagree still agree on expiry.
NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
_LEASE_SELECT = (f"SELECT l.key, l.node_id, l.expires_at, l.epoch, l.expires_at - {NOW} AS remaining, n.url "
                 "FROM leases l LEFT JOIN nodes n ON n.id = l.node_id")
CHUNK = 4 << 20  # package bytes per row: bounded memory on both sides

ORDER_C = 'COLLATE "C"'  # byte order, as sqlite sorts: the order must not depend on the server's locale


class PostgresConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dsn: SecretStr = Field(SecretStr(""), description="libpq connection string or URL, e.g. "
                           "postgresql://mcpac@db.internal/mcpac (empty: the PG* environment variables); "
                           "its password is never logged")
    schema_: str = Field("mcp_agent_cloud", alias="schema", description="the schema that holds the tables "
                         "(created if missing): several platforms can share one database")
    pool_size: int = Field(10, ge=1, le=200, description="connections the platform keeps at most")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to wait for the server at start")
    migrate_on_start: bool = Field(True, description="apply pending schema migrations at start (otherwise "
                                   "`mcp-agent admin migrate` does it, and start fails while any is pending)")


def _redacted(dsn: str) -> str:
    """The DSN without its password, for error messages."""
    if "://" in dsn:
        parts = urllib.parse.urlsplit(dsn)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        return dsn
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)


def _row(record: BaseModel, table: str, *, exclude: set[str] | None = None) -> dict[str, Any]:
    from psycopg.types.json import Jsonb

    row = record.model_dump(mode="json", exclude=exclude)
    for col in JSON_COLUMNS[table] & row.keys():
        row[col] = None if row[col] is None else Jsonb(row[col])
    return row


def _record(model: type[M], row: dict[str, Any] | None) -> M | None:
    return None if row is None else model.model_validate(row)  # JSONB comes back decoded


class PostgresRegistry(Registry):
    def __init__(self, config: PostgresConfig, ctx) -> None:
        super().__init__(config, ctx)
        import psycopg  # the `postgres` extra; the spec's `requires` checked it is there

        self.pg = psycopg
        if not SCHEMA_NAME.match(config.schema_):
            raise MCPAgentCloudError(f"invalid registry schema name {config.schema_!r}",
                                     hint="use lowercase letters, digits and _ (at most 63), not starting "
                                     "with a digit")
        self.schema = config.schema_
        self.dsn = config.dsn.get_secret_value()
        self.channel = f"mcpac_events_{zlib.crc32(self.schema.encode()):08x}"
        self._pool = None

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _kwargs(self) -> dict[str, Any]:
        return {"options": f"-c search_path={self.schema}", "autocommit": True,
                "connect_timeout": max(1, int(self.config.connect_timeout))}

    async def _connect(self):
        try:
            return await self.pg.AsyncConnection.connect(self.dsn, **self._kwargs())
        except self.pg.OperationalError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: Exception) -> MCPAgentCloudError:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return MCPAgentCloudError(f"cannot reach the postgres registry at {_redacted(self.dsn) or '(PG* env)'}: "
                                  f"{first}", hint="check registry.dsn and that PostgreSQL runs "
                                  "(scripts/postgres.sh starts one on a Debian machine)")

    async def setup(self) -> None:
        from psycopg_pool import AsyncConnectionPool

        if self.config.migrate_on_start:
            await self.migrate()
        else:
            current, latest = await self.schema_status()
            if current < latest:
                raise MCPAgentCloudError(
                    f"the postgres registry's schema {self.schema} is at version {current}, this mcp-agent-cloud "
                    f"needs {latest}", hint="run `mcp-agent admin migrate`, or set registry.migrate_on_start")
        pool = AsyncConnectionPool(self.dsn, min_size=1, max_size=self.config.pool_size, kwargs=self._kwargs(),
                                   open=False, name=f"mcpac-{self.schema}")
        try:
            await pool.open(wait=True, timeout=self.config.connect_timeout)
        except Exception as exc:  # PoolTimeout: the server went away since migrate
            await pool.close()
            raise self._unreachable(exc) from None
        self._pool = pool

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def schema_status(self) -> tuple[int, int]:
        """(applied, known) schema versions."""
        async with await self._connect() as conn:
            return await self._applied(conn), len(MIGRATIONS)

    async def _applied(self, conn) -> int:
        cur = await conn.execute("SELECT to_regclass(%s)", (f"{self.schema}.schema_version",))
        if (await cur.fetchone())[0] is None:
            return 0
        cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        return (await cur.fetchone())[0]

    async def migrate(self) -> tuple[int, int]:
        """Apply the pending migrations; returns (before, after). Two nodes at once: one applies, one waits."""
        async with await self._connect() as conn:
            async with conn.transaction():
                # A transaction-level advisory lock, keyed by schema: released at COMMIT, even if the process dies.
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(f"mcpac:{self.schema}".encode()),))
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_version "
                                   "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
                before = await self._applied(conn)
                if before > len(MIGRATIONS):
                    raise MCPAgentCloudError(
                        f"the postgres registry's schema {self.schema} has version {before}, newer than this "
                        f"mcp-agent-cloud understands ({len(MIGRATIONS)})",
                        hint="upgrade mcp-agent-cloud, or point registry.schema at another schema")
                for number, statements in enumerate(MIGRATIONS[before:], start=before + 1):
                    for statement in statements:
                        await conn.execute(statement)
                    await conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
                                       (number, time.time()))
        return before, max(before, len(MIGRATIONS))

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[Any]:
        """A cursor in a transaction, rows as dicts."""
        if self._pool is None:
            raise MCPAgentCloudError("the postgres registry is not open", hint="call start() first")
        from psycopg.rows import dict_row

        try:
            async with self._pool.connection() as conn, conn.transaction():
                async with conn.cursor(row_factory=dict_row) as cur:
                    yield cur
        except self.pg.OperationalError as exc:
            raise self._unreachable(exc) from None

    async def _one(self, model: type[M], sql: str, args: tuple = ()) -> M | None:
        async with self._tx() as cur:
            await cur.execute(sql, args)
            return _record(model, await cur.fetchone())

    async def _all(self, model: type[M], sql: str, args: tuple = ()) -> list[M]:
        async with self._tx() as cur:
            await cur.execute(sql, args)
            return [_record(model, r) for r in await cur.fetchall()]

    @staticmethod
    async def _insert(cur, table: str, row: dict[str, Any], returning: str | None = None) -> Any:
        cols = ", ".join(row)
        marks = ", ".join(f"%({k})s" for k in row)
        tail = f" RETURNING {returning}" if returning else ""
        await cur.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks}){tail}", row)
        return (await cur.fetchone())[returning] if returning else None

    @staticmethod
    async def _update(cur, table: str, row: dict[str, Any], where: str, args: tuple) -> None:
        sets = ", ".join(f"{k} = %s" for k in row)
        await cur.execute(f"UPDATE {table} SET {sets} WHERE {where}", (*row.values(), *args))

    @staticmethod
    async def _deployment(cur, deployment_id: str, *, lock: bool = False) -> DeploymentRecord:
        await cur.execute("SELECT * FROM deployments WHERE id = %s" + (" FOR UPDATE" if lock else ""),
                          (deployment_id,))
        record = _record(DeploymentRecord, await cur.fetchone())
        if record is None:
            raise NotFoundError(f"deployment {deployment_id} not found")
        return record

    # -- orgs -------------------------------------------------------------------------------------------------

    async def ensure_org(self, name: str) -> OrgRecord:
        async with self._tx() as cur:
            await cur.execute("INSERT INTO orgs (name, created_at) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                              (name, time.time()))
            await cur.execute("SELECT * FROM orgs WHERE name = %s", (name,))
            return _record(OrgRecord, await cur.fetchone())

    async def get_org(self, name: str) -> OrgRecord | None:
        return await self._one(OrgRecord, "SELECT * FROM orgs WHERE name = %s", (name,))

    async def list_orgs(self) -> list[OrgRecord]:
        return await self._all(OrgRecord, f"SELECT * FROM orgs ORDER BY name {ORDER_C}")

    # -- deployments ------------------------------------------------------------------------------------------

    async def create_deployment(self, record: DeploymentRecord) -> DeploymentRecord:
        try:
            async with self._tx() as cur:
                await self._insert(cur, "deployments", _row(record, "deployments"))
                return await self._deployment(cur, record.id)
        except self.pg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "deployments_pkey":
                raise ConflictError(f"a deployment with id {record.id} already exists") from None
            raise ConflictError(f"deployment {record.org}.{record.name} already exists",
                                hint="pick another name, or update the existing deployment") from None

    async def get_deployment(self, org: str, name: str) -> DeploymentRecord | None:
        return await self._one(DeploymentRecord, "SELECT * FROM deployments WHERE org = %s AND name = %s",
                               (org, name))

    async def get_deployment_by_id(self, deployment_id: str) -> DeploymentRecord | None:
        return await self._one(DeploymentRecord, "SELECT * FROM deployments WHERE id = %s", (deployment_id,))

    async def list_deployments(self, org: str | None = None) -> list[DeploymentRecord]:
        if org is None:
            return await self._all(DeploymentRecord,
                                   f"SELECT * FROM deployments ORDER BY org {ORDER_C}, name {ORDER_C}")
        return await self._all(DeploymentRecord,
                               f"SELECT * FROM deployments WHERE org = %s ORDER BY name {ORDER_C}", (org,))

    async def update_deployment(self, deployment_id: str, **fields: Any) -> DeploymentRecord:
        check_fields(fields, DEPLOYMENT_UPDATABLE, "deployment")
        async with self._tx() as cur:
            current = await self._deployment(cur, deployment_id, lock=True)
            updated = validate(DeploymentRecord, {**current.model_dump(), **fields, "updated_at": time.time()},
                               "deployment update")
            await self._update(cur, "deployments", _row(updated, "deployments", exclude={"id"}), "id = %s",
                               (deployment_id,))
            return updated

    async def delete_deployment(self, deployment_id: str) -> None:
        async with self._tx() as cur:
            # versions go with it (ON DELETE CASCADE); events have no foreign key and stay
            await cur.execute("DELETE FROM deployments WHERE id = %s", (deployment_id,))
            if cur.rowcount == 0:
                raise NotFoundError(f"deployment {deployment_id} not found")

    # -- versions ---------------------------------------------------------------------------------------------

    async def create_version(self, deployment_id: str, **fields: Any) -> VersionRecord:
        check_fields(fields, VERSION_FIELDS, "version")
        async with self._tx() as cur:
            # The deployment's row lock serializes numbering: max+1 cannot be taken twice.
            await self._deployment(cur, deployment_id, lock=True)
            await cur.execute("SELECT COALESCE(MAX(version), 0) + 1 AS n FROM versions WHERE deployment_id = %s",
                              (deployment_id,))
            number = (await cur.fetchone())["n"]
            record = validate(VersionRecord, {**fields, "deployment_id": deployment_id, "version": number},
                              "version")
            await self._insert(cur, "versions", _row(record, "versions"))
            return record

    async def get_version(self, deployment_id: str, version: int) -> VersionRecord | None:
        return await self._one(VersionRecord, "SELECT * FROM versions WHERE deployment_id = %s AND version = %s",
                               (deployment_id, version))

    async def list_versions(self, deployment_id: str) -> list[VersionRecord]:
        return await self._all(VersionRecord, "SELECT * FROM versions WHERE deployment_id = %s ORDER BY version",
                               (deployment_id,))

    async def update_version(self, deployment_id: str, version: int, **fields: Any) -> VersionRecord:
        check_fields(fields, VERSION_FIELDS, "version")
        async with self._tx() as cur:
            await cur.execute("SELECT * FROM versions WHERE deployment_id = %s AND version = %s FOR UPDATE",
                              (deployment_id, version))
            current = _record(VersionRecord, await cur.fetchone())
            if current is None:
                raise NotFoundError(f"version {version} of deployment {deployment_id} not found")
            updated = validate(VersionRecord, {**current.model_dump(), **fields, "updated_at": time.time()},
                               "version update")
            await self._update(cur, "versions", _row(updated, "versions", exclude={"deployment_id", "version"}),
                               "deployment_id = %s AND version = %s", (deployment_id, version))
            return updated

    # -- events -----------------------------------------------------------------------------------------------

    async def add_event(self, record: EventRecord) -> EventRecord:
        async with self._tx() as cur:
            event_id = await self._insert(cur, "events", _row(record, "events", exclude={"id"}), returning="id")
            # Delivered at COMMIT, to every node's watch: the payload only wakes them, they read the rows.
            await cur.execute("SELECT pg_notify(%s, %s)", (self.channel, json.dumps({"id": event_id,
                                                                                      "org": record.org})))
            return record.model_copy(update={"id": event_id})

    async def list_events(
        self, *, org: str | None = None, deployment_id: str | None = None, after_id: int = 0, limit: int = 100
    ) -> list[EventRecord]:
        where, args = ["id > %s"], [after_id]
        if org is not None:
            where.append("org = %s")
            args.append(org)
        if deployment_id is not None:
            where.append("deployment_id = %s")
            args.append(deployment_id)
        sql = f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY id LIMIT %s"
        return await self._all(EventRecord, sql, (*args, max(0, limit)))

    # -- audit ------------------------------------------------------------------------------------------------

    async def add_audit(self, record: AuditRecord) -> AuditRecord:
        async with self._tx() as cur:
            audit_id = await self._insert(cur, "audit", _row(record, "audit", exclude={"id"}), returning="id")
            return record.model_copy(update={"id": audit_id})

    async def list_audit(self, *, org: str, before_id: int | None = None, limit: int = 100, actor: str | None = None,
                         action: str | None = None, since: float | None = None) -> list[AuditRecord]:
        sql, args = audit_query("%s", "strpos(action, %s) > 0", org=org, before_id=before_id, limit=limit,
                                actor=actor, action=action, since=since)
        return await self._all(AuditRecord, sql, args)

    async def prune_events(self, *, before: float) -> int:
        async with self._tx() as cur:
            await cur.execute("DELETE FROM events WHERE created_at < %s", (before,))
            return cur.rowcount

    async def watch(self, *, org: str | None = None, after_id: int = 0) -> AsyncIterator[EventRecord]:
        """Events as they are added by any node: LISTEN, then read what a NOTIFY announces. Listening starts
        before the first read, so an event committed in between is not missed."""
        conn = await self._connect()
        try:
            await conn.execute(f'LISTEN "{self.channel}"')
            while True:
                while batch := await self.list_events(org=org, after_id=after_id, limit=500):
                    for event in batch:
                        after_id = max(after_id, event.id or after_id)
                        yield event
                # One wake-up per burst: drain what queued, then read. The timeout is a backstop for a NOTIFY
                # lost with a dropped connection, not the delivery path.
                async for _ in conn.notifies(timeout=30.0, stop_after=1):
                    pass
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    # -- tokens -----------------------------------------------------------------------------------------------

    async def add_token(self, record: TokenRecord) -> TokenRecord:
        try:
            async with self._tx() as cur:
                await self._insert(cur, "tokens", _row(record, "tokens"))
                return record
        except self.pg.errors.UniqueViolation:
            raise ConflictError(f"token {record.id} (or one with the same hash) already exists") from None

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        # revoked and expired tokens are returned too: the auth provider decides what they mean
        return await self._one(TokenRecord, "SELECT * FROM tokens WHERE token_hash = %s", (token_hash,))

    async def list_tokens(self, org: str) -> list[TokenRecord]:
        return await self._all(TokenRecord, f"SELECT * FROM tokens WHERE org = %s ORDER BY created_at, id {ORDER_C}",
                               (org,))

    async def revoke_token(self, token_id: str) -> None:
        async with self._tx() as cur:
            await cur.execute("UPDATE tokens SET revoked = TRUE WHERE id = %s", (token_id,))
            if cur.rowcount == 0:
                raise NotFoundError(f"token {token_id} not found")

    # -- users and refresh tokens -----------------------------------------------------------------------------

    async def add_user(self, record: UserRecord) -> UserRecord:
        async with self._tx() as cur:
            await cur.execute("SELECT 1 FROM users WHERE username = %s", (record.username,))
            if await cur.fetchone():
                raise ConflictError(f"user {record.username} already exists")
            await self._insert(cur, "users", _row(record, "users"))
            return record

    async def get_user(self, username: str) -> UserRecord | None:
        return await self._one(UserRecord, "SELECT * FROM users WHERE username = %s", (username,))

    async def list_users(self, org: str | None = None) -> list[UserRecord]:
        if org is None:
            return await self._all(UserRecord, f"SELECT * FROM users ORDER BY username {ORDER_C}")
        return await self._all(UserRecord, f"SELECT * FROM users WHERE org = %s ORDER BY username {ORDER_C}", (org,))

    async def update_user(self, username: str, **fields: Any) -> UserRecord:
        check_fields(fields, USER_UPDATABLE, "user")
        async with self._tx() as cur:
            await cur.execute("SELECT * FROM users WHERE username = %s FOR UPDATE", (username,))
            current = _record(UserRecord, await cur.fetchone())
            if current is None:
                raise NotFoundError(f"no user {username}")
            updated = validate(UserRecord, {**current.model_dump(), **fields}, "user update")
            await self._update(cur, "users", _row(updated, "users", exclude={"username"}), "username = %s",
                               (username,))
            return updated

    async def add_oauth_client(self, record: OAuthClientRecord) -> OAuthClientRecord:
        async with self._tx() as cur:
            await self._insert(cur, "oauth_clients", _row(record, "oauth_clients"))
            return record

    async def get_oauth_client(self, client_id: str) -> OAuthClientRecord | None:
        return await self._one(OAuthClientRecord, "SELECT * FROM oauth_clients WHERE client_id = %s", (client_id,))

    async def mark_oauth_client_used(self, client_id: str) -> None:
        async with self._tx() as cur:
            await cur.execute(f"UPDATE oauth_clients SET used_at = {NOW} WHERE client_id = %s AND used_at IS NULL",
                              (client_id,))

    async def prune_oauth_clients(self, *, before: float) -> int:
        async with self._tx() as cur:
            await cur.execute("DELETE FROM oauth_clients WHERE used_at IS NULL AND created_at < %s", (before,))
            return cur.rowcount

    async def add_usage(self, deltas: list[UsageDelta]) -> None:
        async with self._tx() as cur:
            for d in deltas:  # a deployment deleted since the calls were counted takes nothing
                await cur.execute(
                    "INSERT INTO usage (deployment_id, bucket, calls, errors, duration_ms) SELECT %s, %s, %s, %s, %s "
                    "WHERE EXISTS (SELECT 1 FROM deployments WHERE id = %s) ON CONFLICT (deployment_id, bucket) "
                    "DO UPDATE SET calls = usage.calls + EXCLUDED.calls, errors = usage.errors + EXCLUDED.errors, "
                    "duration_ms = usage.duration_ms + EXCLUDED.duration_ms",
                    (d.deployment_id, d.bucket, d.calls, d.errors, d.duration_ms, d.deployment_id))
                if d.callers:
                    await cur.executemany(
                        "INSERT INTO usage_callers (deployment_id, bucket, caller) SELECT %s, %s, %s WHERE EXISTS "
                        "(SELECT 1 FROM deployments WHERE id = %s) ON CONFLICT DO NOTHING",
                        [(d.deployment_id, d.bucket, caller, d.deployment_id) for caller in d.callers])

    async def get_usage(self, deployment_id: str, since: float) -> UsageSummary:
        start = int(since) // 3600 * 3600
        async with self._tx() as cur:
            await cur.execute("SELECT u.bucket, u.calls, u.errors, u.duration_ms, (SELECT COUNT(*) FROM usage_callers k WHERE "
                              "k.deployment_id = u.deployment_id AND k.bucket = u.bucket) AS callers FROM usage u "
                              "WHERE u.deployment_id = %s AND u.bucket >= %s ORDER BY u.bucket", (deployment_id, start))
            buckets = [UsageBucket(bucket=r["bucket"], calls=r["calls"], errors=r["errors"], callers=r["callers"],
                                   avg_ms=round(r["duration_ms"] / r["calls"], 2) if r["calls"] else None)
                       for r in await cur.fetchall()]
            await cur.execute("SELECT COUNT(DISTINCT caller) AS n FROM usage_callers WHERE deployment_id = %s AND "
                              "bucket >= %s", (deployment_id, start))
            callers = (await cur.fetchone())["n"]
        return UsageSummary(since=since, calls=sum(b.calls for b in buckets), errors=sum(b.errors for b in buckets),
                            callers=callers, buckets=buckets)

    async def add_refresh_token(self, record: RefreshTokenRecord) -> RefreshTokenRecord:
        async with self._tx() as cur:
            await self._insert(cur, "refresh_tokens", _row(record, "refresh_tokens"))
            return record

    async def find_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None:
        return await self._one(RefreshTokenRecord, "SELECT * FROM refresh_tokens WHERE token_hash = %s",
                               (token_hash,))

    async def use_refresh_token(self, token_id: str) -> bool:
        async with self._tx() as cur:
            await cur.execute(f"UPDATE refresh_tokens SET used_at = {NOW} WHERE id = %s AND used_at IS NULL "
                              "AND NOT revoked", (token_id,))
            return cur.rowcount == 1

    async def revoke_refresh_family(self, family: str) -> int:
        async with self._tx() as cur:
            await cur.execute("UPDATE refresh_tokens SET revoked = TRUE WHERE family = %s AND NOT revoked", (family,))
            return cur.rowcount

    async def refresh_family_live(self, family: str) -> bool:
        async with self._tx() as cur:
            await cur.execute("SELECT 1 FROM refresh_tokens WHERE family = %s AND NOT revoked LIMIT 1", (family,))
            return await cur.fetchone() is not None

    # -- nodes and leases -------------------------------------------------------------------------------------

    async def heartbeat(self, node_id: str, url: str) -> NodeRecord:
        return await self._one(NodeRecord, f"INSERT INTO nodes (id, url, started_at, heartbeat_at) "
                               f"VALUES (%s, %s, {NOW}, {NOW}) ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, "
                               f"heartbeat_at = EXCLUDED.heartbeat_at RETURNING *, 0.0::double precision AS age",
                               (node_id, url))

    async def list_nodes(self) -> list[NodeRecord]:
        return await self._all(NodeRecord, f"SELECT *, {NOW} - heartbeat_at AS age FROM nodes ORDER BY id {ORDER_C}")

    async def acquire_lease(self, key: str, node_id: str, ttl: float) -> LeaseRecord:
        async with self._tx() as cur:
            # The row lock serialises two nodes racing for one key; the insert covers a key nobody held yet
            # (and ON CONFLICT the one another node inserted meanwhile, which the locked re-read then sees).
            await cur.execute(f"INSERT INTO leases (key, node_id, expires_at, epoch) VALUES (%s, %s, {NOW} + %s, 1) "
                              "ON CONFLICT (key) DO NOTHING RETURNING key", (key, node_id, ttl))
            previous = None
            if await cur.fetchone() is None:
                await cur.execute(f"SELECT node_id, expires_at <= {NOW} AS expired FROM leases WHERE key = %s "
                                  "FOR UPDATE", (key,))
                row = await cur.fetchone()
                if row["node_id"] == node_id:
                    await cur.execute(f"UPDATE leases SET expires_at = {NOW} + %s WHERE key = %s", (ttl, key))
                elif row["expired"]:
                    previous = row["node_id"]
                    await cur.execute(f"UPDATE leases SET node_id = %s, expires_at = {NOW} + %s, epoch = epoch + 1 "
                                      "WHERE key = %s", (node_id, ttl, key))
            await cur.execute(f"{_LEASE_SELECT} WHERE l.key = %s", (key,))
            return _record(LeaseRecord, await cur.fetchone()).model_copy(update={"previous": previous})

    async def renew_leases(self, node_id: str, ttl: float) -> list[str]:
        async with self._tx() as cur:
            await cur.execute(f"UPDATE leases SET expires_at = {NOW} + %s WHERE node_id = %s RETURNING key",
                              (ttl, node_id))
            return sorted(r["key"] for r in await cur.fetchall())

    async def get_lease(self, key: str) -> LeaseRecord | None:
        return await self._one(LeaseRecord, f"{_LEASE_SELECT} WHERE l.key = %s", (key,))

    async def list_leases(self) -> list[LeaseRecord]:
        return await self._all(LeaseRecord, f"{_LEASE_SELECT} ORDER BY l.key {ORDER_C}")

    async def release_lease(self, key: str, node_id: str) -> None:
        async with self._tx() as cur:
            await cur.execute("DELETE FROM leases WHERE key = %s AND node_id = %s", (key, node_id))

    # -- packages ---------------------------------------------------------------------------------------------

    shares_packages = True

    async def has_package(self, org: str, sha256: str) -> bool:
        async with self._tx() as cur:
            await cur.execute("SELECT 1 FROM packages WHERE org = %s AND sha256 = %s", (org, sha256))
            return await cur.fetchone() is not None

    async def put_package(self, org: str, sha256: str, fmt: str | None, path) -> None:
        async with self._tx() as cur:
            await cur.execute("INSERT INTO packages (org, sha256, format, size, created_at) VALUES "
                              "(%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING sha256",
                              (org, sha256, fmt, path.stat().st_size, time.time()))
            if await cur.fetchone() is None:
                return  # stored already (content-addressed: same bytes)
            with open(path, "rb") as f:
                seq = 0
                while chunk := f.read(CHUNK):
                    await cur.execute("INSERT INTO package_chunks (org, sha256, seq, data) VALUES (%s, %s, %s, %s)",
                                      (org, sha256, seq, chunk))
                    seq += 1

    async def get_package(self, org: str, sha256: str, dest) -> tuple[bool, str | None]:
        async with self._tx() as cur:
            await cur.execute("SELECT format FROM packages WHERE org = %s AND sha256 = %s", (org, sha256))
            row = await cur.fetchone()
            if row is None:
                return False, None
            await cur.execute("SELECT count(*) AS n FROM package_chunks WHERE org = %s AND sha256 = %s",
                              (org, sha256))
            count = (await cur.fetchone())["n"]
            with open(dest, "wb") as f:
                for seq in range(count):  # a row at a time: a package is never whole in memory
                    await cur.execute("SELECT data FROM package_chunks WHERE org = %s AND sha256 = %s AND seq = %s",
                                      (org, sha256, seq))
                    f.write((await cur.fetchone())["data"])
            return True, row["format"]


@hookimpl
def mcp_agent_cloud_registries():
    yield RegistrySpec(name="postgres", backend=PostgresRegistry, config_model=PostgresConfig,
                       description="PostgreSQL (psycopg 3): one schema per platform, LISTEN/NOTIFY event streams",
                       requires=("psycopg", "psycopg_pool"), extra="postgres")
