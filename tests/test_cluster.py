"""The node logic of core/platform/cluster.py on a real SQLite registry shared by two nodes in one process: claims,
the sweep that takes an expired lease over, the renewal that finds a lease taken, and the node id kept on disk.
The platform around each node is a recorder (what the cluster asks it to do); the multi-node e2e tests run the
real platform processes on PostgreSQL."""

from __future__ import annotations

import os
import stat
import types
import uuid

import anyio

from mcp_agent_cloud.config import NodeConfig
from mcp_agent_cloud.hookspecs.types import DeploymentRecord, PluginContext
from mcp_agent_cloud.platform.cluster import Cluster, node_id_from
from mcp_agent_cloud.plugins.sqlite import SqliteConfig, SqliteRegistry
from tests.contracts import async_test


class Recorder:
    """Stands in for the Platform: the cluster's calls back into it are recorded."""

    def __init__(self, registry, data_dir) -> None:
        self.registry = registry
        self.data_dir = data_dir
        self.config = types.SimpleNamespace(base_url="http://127.0.0.1:1")
        self.taken: list[tuple[str, str | None]] = []
        self.lost: list[str] = []

    def take_over(self, record, previous) -> None:
        self.taken.append((f"{record.org}.{record.name}", previous))

    async def lease_lost(self, key: str) -> None:
        self.lost.append(key)


async def node(tmp_path, name: str, ttl: float = 0.5) -> Cluster:
    data = tmp_path / name
    data.mkdir()
    registry = SqliteRegistry(SqliteConfig(path=tmp_path / "shared.db"), PluginContext(data_dir=data))
    await registry.setup()
    return Cluster(Recorder(registry, data), NodeConfig(id=name, url=f"http://{name}", lease_seconds=max(ttl, 1.0)))


@async_test
async def test_takeover_and_fencing(tmp_path) -> None:
    a, b = await node(tmp_path, "a"), await node(tmp_path, "b")
    a.ttl = b.ttl = 0.4  # below the config's minimum, to keep the test short
    await a.registry.heartbeat("a", a.url)
    await a.registry.heartbeat("b", b.url)
    record = await a.registry.create_deployment(DeploymentRecord(
        id=f"dep_{uuid.uuid4().hex}", org="acme", name="app", kind="app", builder="process", current_version=1,
        status="running"))
    assert a.mine(await a.claim("acme.app")) and "acme.app" in a.held
    assert not b.mine(await b.claim("acme.app"))
    assert (await b.owner("acme.app")).node_id == "a" and b.known_owner("acme.app").url == "http://a"
    await b.sweep()
    assert b.platform.taken == []  # a's lease is live
    await anyio.sleep(0.6)  # a stops renewing: hung, or dead
    await b.sweep()
    assert b.platform.taken == [("acme.app", "a")] and "acme.app" in b.held
    await b.sweep()
    assert b.platform.taken == [("acme.app", "a")]  # once
    await a.tick()  # a runs again: its renewal finds the lease gone
    assert a.platform.lost == ["acme.app"] and "acme.app" not in a.held
    # A stopped deployment is never taken over.
    await a.registry.update_deployment(record.id, desired_state="stopped")
    await anyio.sleep(0.6)
    await a.sweep()
    assert a.platform.taken == []
    for c in (a, b):
        await c.registry.aclose()


@async_test
async def test_a_fresh_claim_is_not_lost_to_a_renewal_in_flight(tmp_path) -> None:
    a = await node(tmp_path, "a")
    await a.registry.heartbeat("a", a.url)
    real = a.registry.renew_leases

    async def slow_renew(node_id, ttl):
        keys = await real(node_id, ttl)
        await a.claim("acme.late")  # claimed after the renewal read its keys
        return keys

    a.registry.renew_leases = slow_renew
    await a.tick()
    assert "acme.late" in a.held and a.platform.lost == []
    await a.registry.aclose()


@async_test
async def test_orphan_claims_are_released(tmp_path, monkeypatch) -> None:
    from mcp_agent_cloud.platform import cluster as cluster_module

    a = await node(tmp_path, "a")
    await a.claim("acme.never")  # a deploy that was refused before it made a record
    monkeypatch.setattr(cluster_module, "ORPHAN_SECONDS", 0.0)
    await a.sweep()
    assert "acme.never" not in a.held and await a.registry.get_lease("acme.never") is None
    await a.registry.aclose()


def test_node_id_is_made_once_and_kept_private(tmp_path) -> None:
    first = node_id_from(tmp_path)
    assert first.startswith("node-") and node_id_from(tmp_path) == first
    assert stat.S_IMODE(os.stat(tmp_path / "node-id").st_mode) == 0o600
