"""Several platform nodes on one registry: who runs which deployment, and how traffic finds it.

Each deployment (``org.name``) is owned by one node through a lease in the registry. The owner renews its leases
every third of ``node.lease_seconds``; a node that stops renewing (killed, hung, cut off) loses them when they
expire, and the first other node to sweep takes each one over: it rebuilds the version from the package in the
shared registry when it was built elsewhere, starts it, and records ``deployment.takeover``. A node that finds a
lease of its own taken over stops its instance (fencing: two nodes never keep serving one deployment).

Any node accepts API and MCP requests for any deployment: a request for a deployment another node owns is
forwarded there (``FORWARDED_HEADER`` marks it, so a forwarded request is never forwarded again). The lease times
come from the registry's clock, so nodes whose clocks disagree still agree on who owns what.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2

from ..config import NodeConfig
from ..hookspecs.types import LeaseRecord

if TYPE_CHECKING:
    from .service import Platform

log = logging.getLogger("mcp_agent_cloud.cluster")

FORWARDED_HEADER = "x-mcp-agent-cloud-node"
_FORWARDED = FORWARDED_HEADER.encode()
OWNER_CACHE_SECONDS = 1.0
ORPHAN_SECONDS = 60.0  # how long a node trusts what it read about another node's lease
# Origin was checked by the node that took the request (its TransportGuard runs first); the owner, reached at
# its own address, would refuse a browser origin that only the first node allows.
_NOT_PASSED = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailers", b"upgrade",
               b"proxy-authorization", b"proxy-authenticate", b"content-length", b"origin", _FORWARDED}


@dataclass(frozen=True)
class Owner:
    """Another live node that runs a deployment."""

    node_id: str
    url: str


def node_id_from(data_dir: Path) -> str:
    """The node's id kept in DATA/node-id, made on first start: a restarted node must find its own leases."""
    path = data_dir / "node-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        node = f"node-{secrets.token_hex(4)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(node + "\n")
        return node


def forwarded(scope) -> bool:
    return any(k == _FORWARDED for k, _ in scope.get("headers", ()))


class Cluster:
    def __init__(self, platform: Platform, config: NodeConfig) -> None:
        self.platform = platform
        self.ttl = config.lease_seconds
        self.url = (config.url or platform.config.base_url).rstrip("/")
        self.node_id = config.id or node_id_from(platform.data_dir)
        self.held: set[str] = set()
        self._claimed_at: dict[str, float] = {}
        self._owners: dict[str, tuple[float, Owner | None]] = {}
        self._task: asyncio.Task | None = None
        self._http: httpx2.AsyncClient | None = None

    @property
    def registry(self):
        return self.platform.registry

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.registry.heartbeat(self.node_id, self.url)
        # What this node held before a restart is still its own while the leases last.
        self.held = set(await self.registry.renew_leases(self.node_id, self.ttl))
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Cancel renewing and give the leases back, so another node takes the deployments over at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        for key in list(self.held):
            with contextlib.suppress(Exception):
                await self.release(key)
        if self._http is not None:
            await self._http.aclose()

    # -- leases ----------------------------------------------------------------------------------------------

    def mine(self, lease: LeaseRecord) -> bool:
        return lease.node_id == self.node_id

    async def claim(self, key: str) -> LeaseRecord:
        """Take ``key``'s lease unless another live node holds it; the lease as it stands after."""
        lease = await self.registry.acquire_lease(key, self.node_id, self.ttl)
        if self.mine(lease):
            self.held.add(key)
            self._claimed_at[key] = time.monotonic()
            self._owners.pop(key, None)
        return lease

    async def release(self, key: str) -> None:
        self.held.discard(key)
        self._claimed_at.pop(key, None)
        await self.registry.release_lease(key, self.node_id)

    def owner_of(self, lease: LeaseRecord | None) -> Owner | None:
        if lease is None or self.mine(lease) or not lease.live or not lease.url:
            return None
        return Owner(lease.node_id, lease.url.rstrip("/"))

    async def owner(self, key: str) -> Owner | None:
        """The other live node that runs ``key``, or None (this node, or nobody). Read at most once a second."""
        if key in self.held:
            return None
        cached = self._owners.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        owner = self.owner_of(await self.registry.get_lease(key))
        self._owners[key] = (time.monotonic() + OWNER_CACHE_SECONDS, owner)
        return owner

    def known_owner(self, key: str) -> Owner | None:
        """What :meth:`owner` read last, without reading again (the gateway's reaper is synchronous)."""
        cached = self._owners.get(key)
        return cached[1] if cached is not None else None

    # -- the renewal and takeover loop -----------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.tick()
            except Exception as exc:  # the registry may be briefly away: keep trying; the leases say the rest
                log.warning("node %s: renewing leases failed: %s", self.node_id, exc)

    async def tick(self) -> None:
        started = time.monotonic()
        await self.registry.heartbeat(self.node_id, self.url)
        kept = set(await self.registry.renew_leases(self.node_id, self.ttl))
        # A key claimed while the renewal ran is not in its answer, and is not lost.
        lost = {k for k in self.held - kept if self._claimed_at.get(k, 0.0) < started}
        self.held -= lost
        for key in sorted(lost):
            self._claimed_at.pop(key, None)
            await self.platform.lease_lost(key)
        await self.sweep()

    async def sweep(self) -> None:
        """Take over the deployments that should run and whose owner's lease expired."""
        leases = {lease.key: lease for lease in await self.registry.list_leases()}
        records = await self.registry.list_deployments()
        named = {f"{r.org}.{r.name}" for r in records}
        for key in list(self.held):
            # Claimed for a deploy that never made a record (a refused request): let the name go again.
            if key not in named and time.monotonic() - self._claimed_at.get(key, 0.0) > ORPHAN_SECONDS:
                await self.release(key)
        for record in records:
            key = f"{record.org}.{record.name}"
            lease = leases.get(key)
            if record.desired_state != "running" or record.current_version is None or key in self.held:
                continue
            if lease is not None and lease.live:
                continue
            claimed = await self.claim(key)
            if self.mine(claimed):
                self.platform.take_over(record, previous=claimed.previous or (lease.node_id if lease else None))

    # -- forwarding ------------------------------------------------------------------------------------------

    def http(self) -> httpx2.AsyncClient:
        if self._http is None:
            # No read timeout: a forwarded deploy streams its progress, a forwarded log follow stays open.
            self._http = httpx2.AsyncClient(timeout=httpx2.Timeout(10.0, read=None))
        return self._http

    async def forward(self, owner: Owner, scope, receive, send) -> None:
        """Relay one HTTP request to the node that owns its deployment, and its answer back, streaming both ways.
        The caller's credentials go with it: the owner authenticates the request again."""

        async def body():
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    return

        try:
            resp = await self.send_to(owner, scope, body())
        except httpx2.HTTPError as exc:
            from starlette.responses import JSONResponse

            answer = JSONResponse({"error": "node_unreachable",
                                   "message": f"node {owner.node_id} ({owner.url}), which runs this deployment, "
                                              f"did not answer: {type(exc).__name__}: {exc}",
                                   "hint": "retry in a moment: if that node is down, another takes the deployment "
                                           "over once its lease expires (node.lease_seconds)"}, status_code=502)
            return await answer(scope, receive, send)
        await self.relay(resp, send)

    async def send_to(self, owner: Owner, scope, content) -> httpx2.Response:
        """The request of ``scope`` sent to ``owner`` with ``content`` (bytes or an async iterator) as its body;
        the answer's body not read yet."""
        headers = [(k, v) for k, v in scope["headers"] if k not in _NOT_PASSED]
        headers.append((_FORWARDED, self.node_id.encode()))
        query = scope.get("query_string", b"").decode("latin-1")
        url = owner.url + scope["path"] + (f"?{query}" if query else "")
        method = scope["method"]
        request = self.http().build_request(method, url, headers=headers,
                                            content=content if method in ("POST", "PUT", "PATCH") else None)
        return await self.http().send(request, stream=True)

    @staticmethod
    async def relay(resp: httpx2.Response, send) -> None:
        try:
            out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.multi_items()
                   if k.lower().encode() not in _NOT_PASSED]
            await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await resp.aclose()

    async def live_nodes(self) -> list[Owner]:
        """The other nodes that renewed within a lease time."""
        return [Owner(n.id, n.url.rstrip("/")) for n in await self.registry.list_nodes()
                if n.id != self.node_id and n.age < self.ttl]
