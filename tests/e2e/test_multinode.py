"""Three platform nodes on loopback ports sharing one real PostgreSQL registry and one real Temporal dev server:
a deploy through node A is called through node B, a SIGKILL of node A moves its deployment to B or C within the
lease time, a race of two deploys of one name has one owner, and no event or workflow run is lost on the way."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import anyio
import psycopg
import pytest

from mcp_agent_cloud.state import write_private
from tests.conftest import PlatformProcess, wait_for
from tests.e2e.workflows_scenarios import FINAL, _call, cli_watching

APP = Path(__file__).resolve().parents[1] / "apps" / "workflows_app"
HELLO = str(Path(__file__).resolve().parents[2] / "examples" / "hello")
LEASE = 3.0
pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.temporal]


@pytest.fixture
def nodes(tmp_path, shared_envs, postgres_dsn, pg_schemas, temporal_server):
    schema = pg_schemas("nodes")
    registry = {"name": "postgres", "dsn": postgres_dsn, "schema": schema}
    executor = {"name": "temporal", "host": temporal_server.address,
                "task_queue": f"mn{uuid.uuid4().hex[:8]}.{{deployment}}"}
    out = []
    for name in ("a", "b", "c"):
        node = {"id": f"node-{name}", "lease_seconds": LEASE}
        # Only B allows a browser origin: a request B forwards must not be refused for it by the owner.
        gateway = 'gateway: {allowed_origins: ["http://b.example"]}\n' if name == "b" else ""
        out.append(PlatformProcess(tmp_path / name, shared_envs, extra_config=(
            f"registry: {json.dumps(registry)}\nexecutor: {json.dumps(executor)}\nnode: {json.dumps(node)}\n"
            + gateway)))
    a, b, c = out
    try:
        a.start(timeout=60)  # the first node makes the org's admin token; the others share the registry's tokens
        for p in (b, c):
            p.start(timeout=60)
            write_private(p.home / "auth.json", {"api_url": p.url, "access_token": a.token, "org": "default"})
        for p in out:
            p.schema, p.dsn = schema, postgres_dsn
        yield a, b, c
    finally:
        for p in out:
            p.stop()


def mcp(p: PlatformProcess, name: str, tool: str, arguments: dict | None = None):
    """A tool call through node ``p``'s gateway; the parsed JSON result."""
    result = anyio.run(_call, f"{p.url}/servers/{name}/mcp", p.token, tool, arguments or {})
    text = "".join(getattr(c, "text", "") for c in result.content)
    assert not result.is_error, (tool, text)
    return json.loads(text)


def status(p: PlatformProcess, name: str) -> dict:
    r = p.api("GET", f"/api/v1/deployments/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def events(p: PlatformProcess, name: str) -> list[dict]:
    return p.api("GET", f"/api/v1/deployments/{name}/events?limit=1000").json()["events"]


def test_any_node_serves_and_a_killed_node_is_taken_over(nodes):
    a, b, c = nodes
    deployed = a.cli_json("deploy", "app", str(APP), "--name", "wf", timeout=900)
    assert deployed["version"] == 1
    # Any node answers for it: the owner is A, wherever the request lands.
    assert {status(p, "wf")["node"] for p in nodes} == {"node-a"}
    browser = b.api("GET", "/api/v1/deployments/wf", headers={"Origin": "http://b.example"})
    assert browser.status_code == 200 and browser.json()["node"] == "node-a", browser.text
    assert a.api("GET", "/api/v1/deployments/wf", headers={"Origin": "http://b.example"}).status_code == 403
    first = mcp(b, "wf", "whoami")
    assert first["deployment"] == "default.wf" and first["executor"] == "temporal"
    # The CLI against node C: status, and the app log (on A's disk), forwarded to A.
    assert c.cli_json("status", "wf")["serving_version"] == 1
    logs = c.cli("logs", "wf", check=True).stdout
    assert "starting version 1" in logs, logs
    # A run started through B waits for a human.
    run = mcp(b, "wf", "workflows-Approve-run", {"run_parameters": {"amount": 3, "reason": "nodes"}})
    wait_for(lambda: mcp(c, "wf", "workflows-get_status", {"run_id": run["run_id"]})["status"] == "paused",
             what="the run to wait for approval")
    before = events(a, "wf")
    assert events(b, "wf") == before  # events come from the shared registry, on every node
    # A follower on C (LISTEN/NOTIFY) sees what the other nodes record, as they record it.
    follower, next_line = cli_watching(c, "events", "wf", "--follow", "--json", "--after", str(before[-1]["id"]))
    nodes_seen = a.cli_json("admin", "nodes")["nodes"]
    assert [(n["id"], n["deployments"]) for n in nodes_seen] == [("node-a", ["default.wf"]), ("node-b", []),
                                                                 ("node-c", [])], nodes_seen

    a.kill()  # SIGKILL: no lease is given back; its app dies with it
    killed = time.monotonic()
    owner = wait_for(lambda: (s := b.api("GET", "/api/v1/deployments/wf")).status_code == 200
                     and s.json().get("serving_version") == 1 and s.json()["node"], timeout=120,
                     what="another node to take wf over")
    moved_after = time.monotonic() - killed
    assert owner in ("node-b", "node-c"), owner
    again = mcp(c, "wf", "whoami")
    assert again["pid"] != first["pid"]
    after = events(c, "wf")
    assert after[:len(before)] == before  # nothing recorded before the kill is lost
    try:
        followed = []
        while not followed or followed[-1]["type"] != "deployment.started":
            line = next_line(60)
            assert line is not None, "the follower ended"
            followed.append(json.loads(line))
    finally:
        follower.kill()
    assert [e["type"] for e in followed][0] == "deployment.takeover", followed
    assert [e["id"] for e in followed] == [e["id"] for e in after[len(before):]][:len(followed)]
    takeover = [e for e in after if e["type"] == "deployment.takeover"]
    assert len(takeover) == 1, takeover
    assert {k: takeover[0]["data"][k] for k in ("from_node", "to_node")} == {"from_node": "node-a", "to_node": owner}
    # It moved once its lease expired (LEASE s) plus a sweep (LEASE/3 s), a rebuild and a health check.
    print(f"taken over by {owner} {moved_after:.1f}s after the SIGKILL")
    # The paused run is still there, and finishes when the human answers through any node.
    held = mcp(b, "wf", "workflows-get_status", {"run_id": run["run_id"]})
    assert held["status"] == "paused" and held["waiting_for"] == "approve", held
    # By run id alone (no deployment named), through the live node that does not run it: it asks the others.
    other = b if owner == "node-c" else c
    by_id = other.api("GET", f"/api/v1/runs/{run['run_id']}")
    assert by_id.status_code == 200 and by_id.json()["status"] == "paused", by_id.text
    assert other.api("GET", "/api/v1/runs/run-that-does-not-exist").status_code == 404
    resumed = other.cli("workflows", "resume", run["run_id"], "--signal", "approve", "--payload", '{"by": "c"}',
                        "--json", check=True)
    assert json.loads(resumed.stdout)["run_id"] == run["run_id"], resumed.stdout
    done = wait_for(lambda: (s := mcp(b, "wf", "workflows-get_status", {"run_id": run["run_id"]}))["status"]
                    in FINAL and s, timeout=120, what="the run to finish")
    assert done["status"] == "completed" and done["result"]["decision"] == {"by": "c"}, done
    # Exactly one node serves it: the other live one forwards.
    assert {status(p, "wf")["node"] for p in (b, c)} == {owner}


def test_racing_deploys_of_one_name_have_one_owner(nodes):
    a, b, c = nodes
    results: dict[str, object] = {}

    def deploy(p: PlatformProcess) -> None:
        r = p.cli("deploy", "app", HELLO, "--name", "race", "--json", timeout=900)
        results[p.url] = json.loads(r.stdout) if r.returncode == 0 else r.stderr

    threads = [threading.Thread(target=deploy, args=(p,)) for p in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The lease has one winner; the other node forwards its deploy there, where the two run one after the other.
    assert all(isinstance(v, dict) for v in results.values()), results
    assert sorted(v["version"] for v in results.values()) == [1, 2]
    with psycopg.connect(a.dsn) as conn:
        rows = conn.execute(f'SELECT org, name FROM "{a.schema}".deployments').fetchall()
        leases = conn.execute(f'SELECT key, node_id FROM "{a.schema}".leases').fetchall()
        serving = conn.execute(f'SELECT count(*) FROM "{a.schema}".versions WHERE status = %s',
                               ("serving",)).fetchone()[0]
    assert rows == [("default", "race")] and len(leases) == 1 and serving == 1, (rows, leases, serving)
    owner = leases[0][1]
    assert {status(p, "race")["node"] for p in nodes} == {owner}
    assert status(c, "race")["serving_version"] == 2
    greeting = anyio.run(_call, f"{c.url}/servers/race/mcp", c.token, "greet", {"name": "race"})
    assert "".join(x.text for x in greeting.content) == "Hello, race!"


def lease_holder(p: PlatformProcess, key: str) -> str | None:
    with psycopg.connect(p.dsn) as conn:
        row = conn.execute(f'SELECT node_id FROM "{p.schema}".leases WHERE key = %s', (key,)).fetchone()
    return row[0] if row else None


def test_a_node_that_hung_stops_what_another_took_over(nodes):
    """SIGSTOP node A past its lease: another node takes the deployment over; when A runs again it finds its lease
    gone at its next renewal and stops its own instance (two nodes never keep serving one deployment)."""
    a, b, c = nodes
    a.cli_json("deploy", "app", HELLO, "--name", "hung")
    old_pid = a.instance("hung")["data"]["pid"]
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        # Read from PostgreSQL, not through B: B forwards to A until A's lease expires, and A does not answer.
        owner = wait_for(lambda: (h := lease_holder(a, "default.hung")) != "node-a" and h, timeout=60,
                         what="another node to take the lease")
        wait_for(lambda: status(b, "hung").get("serving_version") == 1, timeout=120, what="the takeover to serve")
        assert os.path.exists(f"/proc/{old_pid}")  # A's instance still runs while A is stopped
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    wait_for(lambda: not os.path.exists(f"/proc/{old_pid}") or open(f"/proc/{old_pid}/stat").read().split()[2] == "Z",
             timeout=30, what="node A to stop its instance")
    # A records its lease_lost as it stops the instance: the event may land just after the process is gone.
    wanted = {"deployment.takeover", "deployment.lease_lost"}
    wait_for(lambda: wanted <= {e["type"] for e in events(b, "hung")}, timeout=30, what=f"the events {wanted}")
    assert status(a, "hung")["node"] == owner  # A now forwards to the owner
    greeting = anyio.run(_call, f"{a.url}/servers/hung/mcp", a.token, "greet", {"name": "a"})
    assert "".join(x.text for x in greeting.content) == "Hello, a!"
