"""The contract every :class:`~mcp_agent_cloud.hookspecs.types.Registry` backend must pass.

Use it by subclassing in a ``Test*`` class that provides a ``registry_factory`` fixture: an async callable
``factory(where: Path) -> Registry`` returning a *started* registry. ``where`` is a fresh per-test directory
(``tmp_path``); each test starts from an empty store, and calling the factory again with the same ``where`` (after
``aclose``) must reopen the same data. A file backend keeps its file there; a server backend (PostgreSQL) can map
``where`` to a fresh schema or database. The suite never looks at files, so it stays backend-neutral.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from mcp_agent_cloud.errors import ConflictError, NotFoundError, ValidationFailed
from mcp_agent_cloud.hookspecs.types import (
    AuditRecord,
    DeploymentRecord,
    EventRecord,
    OAuthClientRecord,
    RefreshTokenRecord,
    Registry,
    TokenRecord,
    UsageDelta,
    UserRecord,
)

from . import async_test

RegistryFactory = Callable[[Path], Awaitable[Registry]]


@contextlib.asynccontextmanager
async def opened(factory: RegistryFactory, where: Path) -> AsyncIterator[Registry]:
    registry = await factory(where)
    try:
        yield registry
    finally:
        await registry.aclose()


def deployment(org: str = "acme", name: str = "hello", **fields) -> DeploymentRecord:
    fields = {"kind": "app", "builder": "process", **fields}
    return DeploymentRecord(id=f"dep_{uuid.uuid4().hex}", org=org, name=name, **fields)


def token(org: str = "acme", **fields) -> TokenRecord:
    fields.setdefault("token_hash", uuid.uuid4().hex)
    return TokenRecord(id=f"tok_{uuid.uuid4().hex[:12]}", org=org, subject="alice", **fields)


class RegistryContract:
    """Backend-neutral behaviour of a registry. Not collected by itself (no ``Test`` prefix)."""

    # -- orgs -------------------------------------------------------------------------------------------------

    @async_test
    async def test_orgs(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            assert await reg.get_org("acme") is None
            first = await reg.ensure_org("acme")
            again = await reg.ensure_org("acme")
            assert first.name == again.name == "acme"
            assert again.created_at == first.created_at  # idempotent: the first row is kept
            await reg.ensure_org("beta")
            assert [o.name for o in await reg.list_orgs()] == ["acme", "beta"]
            assert (await reg.get_org("beta")).name == "beta"

    # -- deployments ------------------------------------------------------------------------------------------

    @async_test
    async def test_create_get_list_deployments(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            spec = {"description": "hi", "public": True, "nested": {"a": [1, 2, {"b": None}]}}
            hello = await reg.create_deployment(deployment("acme", "hello", spec=spec))
            await reg.create_deployment(deployment("acme", "alpha"))
            other = await reg.create_deployment(deployment("beta", "hello", kind="remote"))

            got = await reg.get_deployment("acme", "hello")
            assert got == hello
            assert got.spec == spec and got.status == "pending" and got.current_version is None
            assert await reg.get_deployment_by_id(other.id) == other
            assert (await reg.get_deployment_by_id(other.id)).kind == "remote"
            assert await reg.get_deployment("acme", "nope") is None
            assert await reg.get_deployment_by_id("dep_missing") is None

            assert [(d.org, d.name) for d in await reg.list_deployments()] == [
                ("acme", "alpha"), ("acme", "hello"), ("beta", "hello")]
            assert [d.name for d in await reg.list_deployments("acme")] == ["alpha", "hello"]
            assert await reg.list_deployments("nobody") == []

    @async_test
    async def test_duplicate_deployment_conflicts(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            original = await reg.create_deployment(deployment("acme", "hello"))
            with pytest.raises(ConflictError) as info:
                await reg.create_deployment(deployment("acme", "hello", builder="docker"))
            assert "acme.hello" in info.value.message
            assert await reg.get_deployment("acme", "hello") == original
            await reg.create_deployment(deployment("beta", "hello"))  # the same name in another org is fine

    @async_test
    async def test_update_deployment(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            created = await reg.create_deployment(deployment(created_at=1000.0, updated_at=1000.0))
            updated = await reg.update_deployment(created.id, status="running", current_version=3,
                                                  spec={"url": "http://x"})
            assert (updated.status, updated.current_version, updated.spec) == ("running", 3, {"url": "http://x"})
            assert updated.created_at == 1000.0 and updated.updated_at > 1000.0
            assert await reg.get_deployment_by_id(created.id) == updated
            # untouched fields keep their values
            again = await reg.update_deployment(created.id, desired_state="stopped")
            assert (again.status, again.desired_state, again.current_version) == ("running", "stopped", 3)

    @async_test
    async def test_update_deployment_refuses_unknown_fields(self, registry_factory: RegistryFactory,
                                                            tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            created = await reg.create_deployment(deployment())
            for bad in ({"bogus": 1}, {"name": "renamed"}, {"id": "dep_other"}, {"status": "exploded"}):
                with pytest.raises(ValidationFailed):
                    await reg.update_deployment(created.id, **bad)
            assert await reg.get_deployment_by_id(created.id) == created

    @async_test
    async def test_missing_deployment_errors(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            with pytest.raises(NotFoundError):
                await reg.update_deployment("dep_missing", status="running")
            with pytest.raises(NotFoundError):
                await reg.delete_deployment("dep_missing")
            with pytest.raises(NotFoundError):
                await reg.create_version("dep_missing")
            with pytest.raises(NotFoundError):
                await reg.update_version("dep_missing", 1, status="serving")

    @async_test
    async def test_delete_deployment_keeps_events(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            dep = await reg.create_deployment(deployment())
            keep = await reg.create_deployment(deployment(name="keep"))
            await reg.create_version(dep.id)
            await reg.create_version(keep.id)
            await reg.add_event(EventRecord(org="acme", deployment_id=dep.id, type="deployment.created"))

            await reg.delete_deployment(dep.id)
            assert await reg.get_deployment_by_id(dep.id) is None
            assert await reg.list_versions(dep.id) == []
            assert await reg.get_version(dep.id, 1) is None
            assert [e.type for e in await reg.list_events(deployment_id=dep.id)] == ["deployment.created"]
            assert [v.version for v in await reg.list_versions(keep.id)] == [1]
            # the name is free again, and its version numbers start over
            reborn = await reg.create_deployment(deployment())
            assert (await reg.create_version(reborn.id)).version == 1

    # -- versions ---------------------------------------------------------------------------------------------

    @async_test
    async def test_versions_are_numbered_per_deployment(self, registry_factory: RegistryFactory,
                                                        tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            a = await reg.create_deployment(deployment(name="a"))
            b = await reg.create_deployment(deployment(name="b"))
            v1 = await reg.create_version(a.id, package_sha256="aa", manifest={"name": "a"}, options={"x": 1})
            v2 = await reg.create_version(a.id, status="starting")
            b1 = await reg.create_version(b.id)
            assert (v1.version, v2.version, b1.version) == (1, 2, 1)
            assert (v1.deployment_id, v1.status, v1.package_sha256) == (a.id, "building", "aa")
            assert v1.manifest == {"name": "a"} and v1.options == {"x": 1} and v1.artifact is None
            assert v2.status == "starting"
            assert await reg.get_version(a.id, 1) == v1
            assert await reg.get_version(a.id, 3) is None
            assert [v.version for v in await reg.list_versions(a.id)] == [1, 2]
            with pytest.raises(ValidationFailed):
                await reg.create_version(a.id, bogus=True)
            with pytest.raises(ValidationFailed):
                await reg.create_version(a.id, version=7)  # numbers are allocated, never chosen
            assert [v.version for v in await reg.list_versions(a.id)] == [1, 2]

    @async_test
    async def test_concurrent_create_version(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            dep = await reg.create_deployment(deployment())
            numbers: list[int] = []

            async def make() -> None:
                numbers.append((await reg.create_version(dep.id)).version)

            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(make)
            assert sorted(numbers) == list(range(1, 21))
            assert [v.version for v in await reg.list_versions(dep.id)] == list(range(1, 21))

    @async_test
    async def test_update_version(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            dep = await reg.create_deployment(deployment())
            created = await reg.create_version(dep.id)
            await reg.create_version(dep.id)
            updated = await reg.update_version(dep.id, 1, status="serving", artifact={"venv": "/v"},
                                               instance={"url": "http://127.0.0.1:1"}, error=None)
            assert (updated.status, updated.artifact, updated.instance) == (
                "serving", {"venv": "/v"}, {"url": "http://127.0.0.1:1"})
            assert updated.updated_at >= created.updated_at and updated.created_at == created.created_at
            assert await reg.get_version(dep.id, 1) == updated
            assert (await reg.get_version(dep.id, 2)).status == "building"  # only the named version changed
            failed = await reg.update_version(dep.id, 2, status="failed", error="boom")
            assert (failed.status, failed.error) == ("failed", "boom")
            for bad in ({"bogus": 1}, {"created_at": 1.0}, {"updated_at": 1.0}, {"status": "weird"}):
                with pytest.raises(ValidationFailed):
                    await reg.update_version(dep.id, 1, **bad)
            with pytest.raises(NotFoundError):
                await reg.update_version(dep.id, 3, status="serving")
            assert await reg.get_version(dep.id, 1) == updated

    # -- events -----------------------------------------------------------------------------------------------

    @async_test
    async def test_events_order_and_filters(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            added = []
            for i, (org, dep) in enumerate([("acme", "d1"), ("beta", "d2"), ("acme", "d2"), ("acme", "d1"),
                                            ("acme", None), (None, None)]):
                added.append(await reg.add_event(EventRecord(org=org, deployment_id=dep, type=f"t{i}",
                                                             message=f"m{i}", data={"i": i})))
            ids = [e.id for e in added]
            assert all(isinstance(i, int) for i in ids) and ids == sorted(set(ids))

            everything = await reg.list_events()
            assert [e.type for e in everything] == ["t0", "t1", "t2", "t3", "t4", "t5"]
            assert everything[1] == added[1] and everything[1].data == {"i": 1}
            assert [e.type for e in await reg.list_events(org="acme")] == ["t0", "t2", "t3", "t4"]
            assert [e.type for e in await reg.list_events(deployment_id="d2")] == ["t1", "t2"]
            assert [e.type for e in await reg.list_events(org="acme", deployment_id="d2")] == ["t2"]
            assert [e.type for e in await reg.list_events(after_id=ids[2])] == ["t3", "t4", "t5"]
            assert [e.type for e in await reg.list_events(limit=2)] == ["t0", "t1"]
            assert [e.type for e in await reg.list_events(org="acme", after_id=ids[0], limit=2)] == ["t2", "t3"]
            assert await reg.list_events(after_id=ids[-1]) == []

    # -- tokens -----------------------------------------------------------------------------------------------

    @async_test
    async def test_tokens(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            t1 = await reg.add_token(token(name="ci", roles=["developer"], scopes=["deploy"],
                                           expires_at=time.time() + 60))
            t2 = await reg.add_token(token())
            await reg.add_token(token(org="beta"))
            assert await reg.find_token(t1.token_hash) == t1
            assert await reg.find_token("no-such-hash") is None
            assert sorted(t.id for t in await reg.list_tokens("acme")) == sorted([t1.id, t2.id])
            assert await reg.list_tokens("nobody") == []

            await reg.revoke_token(t1.id)
            revoked = await reg.find_token(t1.token_hash)  # still found: the caller decides what revoked means
            assert revoked is not None and revoked.revoked is True
            assert (await reg.find_token(t2.token_hash)).revoked is False
            await reg.revoke_token(t1.id)  # revoking twice is harmless
            with pytest.raises(NotFoundError):
                await reg.revoke_token("tok_missing")
            with pytest.raises(ConflictError):
                await reg.add_token(token(token_hash=t2.token_hash))

    # -- durability -------------------------------------------------------------------------------------------

    @async_test
    async def test_data_survives_reopen(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            await reg.ensure_org("acme")
            dep = await reg.create_deployment(deployment(spec={"k": "v"}))
            await reg.create_version(dep.id, manifest={"name": "hello"})
            await reg.update_deployment(dep.id, current_version=1, status="running")
            event = await reg.add_event(EventRecord(org="acme", deployment_id=dep.id, type="x"))
            tok = await reg.add_token(token())
            await reg.revoke_token(tok.id)
            before = (await reg.list_orgs(), await reg.list_deployments(), await reg.list_versions(dep.id),
                      await reg.list_events(), await reg.find_token(tok.token_hash))

        async with opened(registry_factory, tmp_path) as reg:
            after = (await reg.list_orgs(), await reg.list_deployments(), await reg.list_versions(dep.id),
                     await reg.list_events(), await reg.find_token(tok.token_hash))
            assert after == before
            assert after[1][0].status == "running" and after[4].revoked is True
            # numbering and ids continue after the reopen
            assert (await reg.create_version(dep.id)).version == 2
            assert (await reg.add_event(EventRecord(type="y"))).id > event.id

    # -- several processes (nodes) on one store ----------------------------------------------------------------

    @async_test
    async def test_two_instances_race_on_one_store(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        # Two instances on the same ``where`` stand in for two platform processes (or nodes).
        async with opened(registry_factory, tmp_path) as a, opened(registry_factory, tmp_path) as b:
            outcomes: list[str] = []

            async def create(reg: Registry, builder: str) -> None:
                try:
                    await reg.create_deployment(deployment("acme", "race", builder=builder))
                    outcomes.append(builder)
                except ConflictError:
                    outcomes.append("conflict")

            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(create, (a, b)[i % 2], f"b{i}")
            winners = [o for o in outcomes if o != "conflict"]
            assert len(winners) == 1 and outcomes.count("conflict") == 5, outcomes
            won = await b.get_deployment("acme", "race")
            assert won is not None and won.builder == winners[0] and await a.get_deployment("acme", "race") == won

            numbers: list[int] = []

            async def versions(reg: Registry) -> None:
                for _ in range(8):
                    numbers.append((await reg.create_version(won.id)).version)

            async with anyio.create_task_group() as tg:
                tg.start_soon(versions, a)
                tg.start_soon(versions, b)
            assert sorted(numbers) == list(range(1, 17))

    @async_test
    async def test_prune_events_drops_only_older_ones(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            now = time.time()
            for i, age in enumerate([90, 40, 5, 0]):  # days
                await reg.add_event(EventRecord(org="acme", deployment_id="d1", type=f"t{i}",
                                                created_at=now - age * 86400))
            assert await reg.prune_events(before=now - 30 * 86400) == 2
            assert [e.type for e in await reg.list_events(org="acme")] == ["t2", "t3"]
            assert await reg.prune_events(before=now - 30 * 86400) == 0
            # New events still get ids after the pruned ones (a follower's `after` stays valid).
            later = await reg.add_event(EventRecord(org="acme", type="t4"))
            assert [e.type for e in await reg.list_events(org="acme")][-1] == "t4" and later.id

    @async_test
    async def test_audit_appends_and_filters_newest_first(self, registry_factory: RegistryFactory,
                                                          tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            now = time.time()
            made = []
            for i, (org, actor, action, age) in enumerate([
                    ("acme", "ann", "POST /api/v1/deployments/{name}/versions", 7200),
                    ("acme", "bob", "DELETE /api/v1/deployments/{name}", 60),
                    ("other", "ann", "POST /api/v1/keys", 30),
                    ("acme", "ann", "POST /api/v1/keys", 0)]):
                made.append(await reg.add_audit(AuditRecord(
                    org=org, actor=actor, action=action, target=f"name=n{i}", source="127.0.0.1", status=200 + i,
                    outcome="denied" if i == 1 else "ok", created_at=now - age)))
            assert all(r.id for r in made) and len({r.id for r in made}) == 4
            rows = await reg.list_audit(org="acme")
            assert [r.target for r in rows] == ["name=n3", "name=n1", "name=n0"]  # newest first, one org only
            assert rows[1].outcome == "denied" and rows[1].status == 201 and rows[1].source == "127.0.0.1"
            assert [r.target for r in await reg.list_audit(org="acme", actor="ann")] == ["name=n3", "name=n0"]
            assert [r.target for r in await reg.list_audit(org="acme", action="/api/v1/deployments")] == \
                ["name=n1", "name=n0"]
            assert [r.target for r in await reg.list_audit(org="acme", since=now - 3600)] == ["name=n3", "name=n1"]
            assert [r.target for r in await reg.list_audit(org="acme", limit=1)] == ["name=n3"]
            page = await reg.list_audit(org="acme", before_id=rows[0].id, limit=1)
            assert [r.target for r in page] == ["name=n1"]
            assert await reg.list_audit(org="nobody") == []

    @async_test
    async def test_users(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            ann = await reg.add_user(UserRecord(username="ann", org="acme", roles=["owner"], password_hash="h1"))
            await reg.add_user(UserRecord(username="bob", org="beta", roles=["viewer"], password_hash="h2"))
            with pytest.raises(ConflictError):
                await reg.add_user(UserRecord(username="ann", org="beta", password_hash="x"))
            assert await reg.get_user("ann") == ann and await reg.get_user("nobody") is None
            assert [u.username for u in await reg.list_users()] == ["ann", "bob"]
            assert [u.username for u in await reg.list_users("beta")] == ["bob"]
            changed = await reg.update_user("ann", roles=["viewer"], disabled=True, password_hash="h3")
            assert changed.roles == ["viewer"] and changed.disabled and (await reg.get_user("ann")) == changed
            with pytest.raises(ValidationFailed):
                await reg.update_user("ann", org="beta")
            with pytest.raises(NotFoundError):
                await reg.update_user("nobody", disabled=True)

    @async_test
    async def test_oauth_clients(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            meta = {"redirect_uris": ["http://127.0.0.1:3000/cb"], "client_name": "VS Code",
                    "grant_types": ["authorization_code", "refresh_token"], "token_endpoint_auth_method": "none"}
            public = await reg.add_oauth_client(OAuthClientRecord(client_id="c1", metadata=meta, source="10.0.0.1"))
            await reg.add_oauth_client(OAuthClientRecord(client_id="c2", secret_hash="abc", metadata={}))
            assert await reg.get_oauth_client("c1") == public
            assert (await reg.get_oauth_client("c1")).metadata["redirect_uris"] == meta["redirect_uris"]
            assert (await reg.get_oauth_client("c2")).secret_hash == "abc"
            assert await reg.get_oauth_client("nobody") is None

    @async_test
    async def test_abandoned_oauth_clients_are_pruned_and_used_ones_kept(self, registry_factory: RegistryFactory,
                                                                         tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            now = time.time()
            for client_id, age in (("old-unused", 48), ("old-used", 48), ("new-unused", 1)):  # hours
                await reg.add_oauth_client(OAuthClientRecord(client_id=client_id, created_at=now - age * 3600))
            assert (await reg.get_oauth_client("old-used")).used_at is None
            await reg.mark_oauth_client_used("old-used")
            first = (await reg.get_oauth_client("old-used")).used_at
            assert first is not None and abs(first - now) < 60
            await reg.mark_oauth_client_used("old-used")  # the first use is what is kept
            assert (await reg.get_oauth_client("old-used")).used_at == first
            await reg.mark_oauth_client_used("nobody")  # no such client: nothing happens
            assert await reg.prune_oauth_clients(before=now - 24 * 3600) == 1
            assert await reg.get_oauth_client("old-unused") is None
            assert await reg.get_oauth_client("old-used") is not None
            assert await reg.get_oauth_client("new-unused") is not None
            assert await reg.prune_oauth_clients(before=now - 24 * 3600) == 0

    @async_test
    async def test_usage_adds_up_counts_callers_once_and_goes_with_the_deployment(
            self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            dep = await reg.create_deployment(deployment("acme", "hello"))
            other = await reg.create_deployment(deployment("acme", "other"))
            h1, h2 = 7200 * 100, 7200 * 100 + 3600
            await reg.add_usage([UsageDelta(deployment_id=dep.id, bucket=h1, calls=3, errors=1, duration_ms=30,
                                            callers=["a", "b"]),
                                 UsageDelta(deployment_id=other.id, bucket=h1, calls=9, callers=["z"])])
            # Another node's counts for the same hour add up; a caller already seen that hour counts once.
            await reg.add_usage([UsageDelta(deployment_id=dep.id, bucket=h1, calls=2, duration_ms=70,
                                            callers=["b", "c"]),
                                 UsageDelta(deployment_id=dep.id, bucket=h2, calls=1, callers=["a"]),
                                 UsageDelta(deployment_id="dep_gone", bucket=h1, calls=5, callers=["x"])])
            usage = await reg.get_usage(dep.id, since=h1 + 10)  # since rounds down to its hour
            assert (usage.calls, usage.errors, usage.callers) == (6, 1, 3)
            assert [(b.bucket, b.calls, b.errors, b.callers) for b in usage.buckets] == [(h1, 5, 1, 3),
                                                                                         (h2, 1, 0, 1)]
            assert [b.avg_ms for b in usage.buckets] == [20.0, 0.0]  # (30 + 70) / 5; none timed in h2
            later = await reg.get_usage(dep.id, since=h2)
            assert (later.calls, later.callers, len(later.buckets)) == (1, 1, 1)
            assert (await reg.get_usage("dep_gone", since=0)).calls == 0
            await reg.delete_deployment(dep.id)
            assert (await reg.get_usage(dep.id, since=0)).buckets == []
            assert (await reg.get_usage(other.id, since=0)).calls == 9

    @async_test
    async def test_refresh_tokens_rotate_once_and_families_revoke(self, registry_factory: RegistryFactory,
                                                                 tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            def rt(i: int, family: str) -> RefreshTokenRecord:
                return RefreshTokenRecord(id=f"rt{i}", family=family, token_hash=f"hash{i}", client_id="cli",
                                          org="acme", subject="ann", scope="api mcp", expires_at=time.time() + 60)
            first = await reg.add_refresh_token(rt(1, "fam1"))
            await reg.add_refresh_token(rt(2, "fam1"))
            await reg.add_refresh_token(rt(3, "fam2"))
            assert await reg.find_refresh_token("hash1") == first and await reg.find_refresh_token("none") is None
            assert await reg.use_refresh_token("rt1") is True
            assert await reg.use_refresh_token("rt1") is False  # the second use is the reuse to detect
            assert (await reg.find_refresh_token("hash1")).used_at is not None
            assert await reg.refresh_family_live("fam1")
            assert await reg.revoke_refresh_family("fam1") == 2
            assert not await reg.refresh_family_live("fam1") and await reg.refresh_family_live("fam2")
            assert await reg.use_refresh_token("rt2") is False  # revoked
            assert (await reg.find_refresh_token("hash2")).revoked
            assert not await reg.refresh_family_live("no-such-family")

    @async_test
    async def test_watch_sees_events_from_another_instance(self, registry_factory: RegistryFactory,
                                                           tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as a, opened(registry_factory, tmp_path) as b:
            old = await a.add_event(EventRecord(org="acme", type="before"))
            seen: list[EventRecord] = []

            async def follow() -> None:
                async for event in a.watch(org="acme", after_id=old.id):
                    seen.append(event)
                    if len(seen) == 3:
                        return

            with anyio.fail_after(20):  # the poll default takes about 0.5 s; postgres' NOTIFY less
                async with anyio.create_task_group() as tg:
                    tg.start_soon(follow)
                    await anyio.sleep(0.2)
                    for i in range(4):
                        await b.add_event(EventRecord(org="acme" if i != 1 else "beta", type=f"e{i}"))
                        await anyio.sleep(0.05)
            assert [e.type for e in seen] == ["e0", "e2", "e3"]  # org filtered, in order, none twice

    # -- nodes and leases -------------------------------------------------------------------------------------

    @async_test
    async def test_nodes_heartbeat(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            first = await reg.heartbeat("node-a", "http://127.0.0.1:1")
            await anyio.sleep(0.05)
            again = await reg.heartbeat("node-a", "http://127.0.0.1:2")
            await reg.heartbeat("node-b", "http://127.0.0.1:3")
            assert again.started_at == first.started_at and again.heartbeat_at > first.heartbeat_at
            nodes = await reg.list_nodes()
            assert [(n.id, n.url) for n in nodes] == [("node-a", "http://127.0.0.1:2"), ("node-b", "http://127.0.0.1:3")]
            assert all(0 <= n.age < 5 for n in nodes)

    @async_test
    async def test_lease_is_exclusive_until_it_expires(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            await reg.heartbeat("a", "http://a")
            got = await reg.acquire_lease("acme.hello", "a", 0.6)
            assert (got.node_id, got.epoch, got.url, got.previous) == ("a", 1, "http://a", None) and got.live
            refused = await reg.acquire_lease("acme.hello", "b", 10)
            assert refused.node_id == "a" and refused.live and refused.epoch == 1
            again = await reg.acquire_lease("acme.hello", "a", 0.6)  # the holder re-acquiring extends it
            assert again.node_id == "a" and again.epoch == 1 and again.expires_at >= got.expires_at
            await anyio.sleep(0.8)
            stale = await reg.get_lease("acme.hello")
            assert stale is not None and not stale.live
            taken = await reg.acquire_lease("acme.hello", "b", 10)
            assert (taken.node_id, taken.epoch, taken.previous) == ("b", 2, "a") and taken.live
            assert await reg.renew_leases("a", 10) == []  # a lost it: renewing tells a so
            assert await reg.get_lease("missing") is None

    @async_test
    async def test_renew_and_release(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as reg:
            for key in ("acme.x", "acme.y"):
                await reg.acquire_lease(key, "a", 0.5)
            await reg.acquire_lease("acme.z", "b", 30)
            assert await reg.renew_leases("a", 30) == ["acme.x", "acme.y"]
            await anyio.sleep(0.7)
            assert all(lease.live for lease in await reg.list_leases())  # the renewal outlived the first ttl
            await reg.release_lease("acme.x", "b")  # not b's: nothing happens
            await reg.release_lease("acme.x", "a")
            assert [(lease.key, lease.node_id) for lease in await reg.list_leases()] == [("acme.y", "a"),
                                                                                       ("acme.z", "b")]

    @async_test
    async def test_lease_race_between_instances(self, registry_factory: RegistryFactory, tmp_path: Path) -> None:
        async with opened(registry_factory, tmp_path) as a, opened(registry_factory, tmp_path) as b:
            holders: list[str] = []

            async def grab(reg: Registry, node: str) -> None:
                holders.append((await reg.acquire_lease("acme.race", node, 30)).node_id)

            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(grab, (a, b)[i % 2], f"n{i}")
            assert len(set(holders)) == 1, holders  # every caller saw the one winner
            assert (await a.get_lease("acme.race")).node_id == holders[0]
