"""`mcp-agent logs` against a real platform and a real app: --since, --grep, --json (with --follow), rotation,
bad input, and the log tail a failed deploy prints."""

from __future__ import annotations

import datetime
import json
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import anyio
import pytest

from tests.conftest import CLI, PlatformProcess, call_tool, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.network]

TALK_APP = '''import sys
import time

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("talk")


@mcp.tool()
def say(text: str, stream: str = "stdout") -> str:
    print(text, file=sys.stderr if stream == "stderr" else sys.stdout, flush=True)
    return "ok"


@mcp.tool()
def spam(count: int, pause: float = 0.0) -> str:
    for i in range(count):
        print(f"spam-{i:04d}-" + "x" * 80, flush=True)
        time.sleep(pause)
    return "ok"
'''

BROKEN_APP = '''print("booting the broken app", flush=True)
raise RuntimeError("broken-marker-4711")
mcp = None  # the CLI's check finds the entrypoint; the app dies on import
'''

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def app_dir(tmp_path: Path, name: str, source: str) -> Path:
    src = tmp_path / name
    src.mkdir()
    (src / "main.py").write_text(source)
    (src / "requirements.txt").write_text("mcp>=2.3,<3\n")
    (src / "mcp_agent.config.yaml").write_text("deploy:\n  entrypoint: main:mcp\n")
    return src


def say(platform: PlatformProcess, endpoint: str, text: str, stream: str = "stdout") -> None:
    assert anyio.run(call_tool, endpoint, platform.token, "say", {"text": text, "stream": stream}) == "ok"


def entries(platform: PlatformProcess, *args: str) -> list[dict]:
    out = platform.cli("logs", "talk", "--json", *args, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def lines_of(platform: PlatformProcess, *args: str) -> list[str]:
    return platform.cli("logs", "talk", *args, check=True).stdout.splitlines()


class Follower:
    """`mcp-agent logs ... --follow`, its stdout read on a thread (a bare readline could block the test forever)."""

    def __init__(self, platform: PlatformProcess, *args: str) -> None:
        self.proc = subprocess.Popen([CLI, "logs", *args, "--follow"], env=platform.env, stdout=subprocess.PIPE,
                                     text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()

    def take(self, count: int, timeout: float = 30) -> list[str]:
        """The next ``count`` lines, or fewer if they take longer than ``timeout`` in all."""
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            try:
                out.append(self.lines.get(timeout=max(0.0, deadline - time.monotonic())).rstrip("\n"))
            except queue.Empty:
                break
        return out

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def iso_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_since_grep_and_json(platform, tmp_path):
    # A rotated file from an older platform: a line without a time, and one stamped two hours ago.
    version_dir = platform.root / "data" / "deployments" / "default.talk" / "v1"
    version_dir.mkdir(parents=True)
    two_hours_ago = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z")
    (version_dir / "app.log.1").write_text(f"an old line without a time\n{two_hours_ago} stdout two hours ago\n")
    result = platform.cli_json("deploy", "app", str(app_dir(tmp_path, "talk", TALK_APP)), "--name", "talk")
    endpoint = result["endpoint"]
    say(platform, endpoint, "before-marker")
    wait_for(lambda: "before-marker" in lines_of(platform), timeout=20, what="the first line in the log")

    # --json: one object a line; untimed lines have no ts and no stream.
    everything = entries(platform, "--tail", "1000")
    assert {"ts": None, "stream": None, "line": "an old line without a time"} in everything
    assert {"ts": two_hours_ago, "stream": "stdout", "line": "two hours ago"} in everything
    before = next(e for e in everything if e["line"] == "before-marker")
    assert before["stream"] == "stdout" and STAMP.match(before["ts"] + " ")
    assert any(e["stream"] == "platform" and "starting version 1" in e["line"] for e in everything)
    assert all(set(e) == {"ts", "stream", "line"} for e in everything)

    # Plain output is the app's text, as before; -t adds the time.
    plain = lines_of(platform, "--tail", "1000")
    assert "before-marker" in plain and "an old line without a time" in plain
    assert not any(STAMP.match(line) for line in plain), plain
    assert f"{before['ts']} before-marker" in lines_of(platform, "-t")

    # --since with a duration: the line from two hours ago and the untimed one are left out.
    hour = [e["line"] for e in entries(platform, "--since", "1h")]
    assert "before-marker" in hour and "two hours ago" not in hour and "an old line without a time" not in hour
    assert "two hours ago" in [e["line"] for e in entries(platform, "--since", "3h")]

    # --since with a time: only what came after it.
    boundary = iso_now()
    time.sleep(0.01)  # times have millisecond steps
    say(platform, endpoint, "after-marker", stream="stderr")
    wait_for(lambda: "after-marker" in lines_of(platform), timeout=20, what="the second line in the log")
    after = entries(platform, "--since", boundary)
    texts = [e["line"] for e in after]
    assert "after-marker" in texts and "before-marker" not in texts, texts
    assert all(e["ts"] >= boundary for e in after)
    assert next(e for e in after if e["line"] == "after-marker")["stream"] == "stderr"
    # The same boundary as local time without an offset (the CLI sends its offset).
    local = datetime.datetime.fromisoformat(boundary.replace("Z", "+00:00")).astimezone().replace(tzinfo=None)
    assert "before-marker" not in lines_of(platform, "--since", local.isoformat(timespec="milliseconds"))

    # --grep: a regular expression, applied by the platform (with the other filters).
    assert lines_of(platform, "--grep", r"(before|after)-mark.r") == ["before-marker", "after-marker"]
    assert lines_of(platform, "--grep", "marker", "--since", boundary) == ["after-marker"]
    assert [e["line"] for e in entries(platform, "--grep", "^AFTER", "--tail", "5")] == []
    assert [e["line"] for e in entries(platform, "--grep", "(?i)^AFTER")] == ["after-marker"]
    # -n counts matching lines.
    assert lines_of(platform, "--grep", "marker", "-n", "1") == ["after-marker"]


def test_bad_grep_and_since_are_clear_errors(platform, tmp_path):
    platform.cli_json("deploy", "app", str(app_dir(tmp_path, "talk", TALK_APP)), "--name", "talk")
    r = platform.api("GET", "/api/v1/deployments/talk/logs", params={"grep": "(unclosed"})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_request" and "'grep'" in r.json()["message"], r.json()
    assert "regular expression" in r.json()["message"]
    r = platform.api("GET", "/api/v1/deployments/talk/logs", params={"since": "yesterday"})
    assert r.status_code == 400 and "'since'" in r.json()["message"], r.text
    r = platform.api("GET", "/api/v1/deployments/talk/logs", params={"format": "xml"})
    assert r.status_code == 400 and "'format'" in r.json()["message"], r.text

    cli = platform.cli("logs", "talk", "--grep", "(unclosed")
    assert cli.returncode == 1 and "--grep is not a valid regular expression" in cli.stderr, cli.stderr
    cli = platform.cli("logs", "talk", "--since", "yesterday")
    assert cli.returncode == 1 and "--since must be a duration" in cli.stderr, cli.stderr
    cli = platform.cli("logs", "talk", "--grep", "(unclosed", "--json")
    assert cli.returncode == 1 and json.loads(cli.stdout)["error"] == "invalid_request"


def test_follow_json_prints_matching_lines_as_they_come(platform, tmp_path):
    result = platform.cli_json("deploy", "app", str(app_dir(tmp_path, "talk", TALK_APP)), "--name", "talk")
    say(platform, result["endpoint"], "follow-zero")  # before --since: never shown
    wait_for(lambda: "follow-zero" in lines_of(platform), timeout=20, what="the first line in the log")
    # --since, not a sleep, makes sure the follower misses nothing written after this, however slowly it starts.
    boundary = iso_now()
    time.sleep(0.01)
    follower = Follower(platform, "talk", "--json", "--since", boundary, "--grep", "follow-")
    try:
        say(platform, result["endpoint"], "follow-one")
        say(platform, result["endpoint"], "follow-two", stream="stderr")
        seen = [json.loads(line) for line in follower.take(2)]  # every line is one JSON object
        assert [(e["stream"], e["line"]) for e in seen] == [("stdout", "follow-one"), ("stderr", "follow-two")], seen
        assert all(STAMP.match(e["ts"] + " ") for e in seen)
    finally:
        follower.stop()


def test_follow_goes_on_across_a_rotation(tmp_path, shared_envs):
    limit = 16384
    p = PlatformProcess(tmp_path / "p", shared_envs, extra_config=f"limits: {{log_max_bytes: {limit}}}\n")
    p.start()
    try:
        result = p.cli_json("deploy", "app", str(app_dir(tmp_path, "talk", TALK_APP)), "--name", "talk")
        boundary = iso_now()
        time.sleep(0.01)
        follower = Follower(p, "talk", "--since", boundary, "--grep", "^spam-")
        try:
            say(p, result["endpoint"], "spam-ready")
            assert follower.take(1) == ["spam-ready"]  # the follower is following now
            # About 50 KB, three times the limit, at a pace a follow that polls keeps up with.
            assert anyio.run(call_tool, result["endpoint"], p.token, "spam", {"count": 400, "pause": 0.005}) == "ok"
            seen = [line.split("-")[1] for line in follower.take(400)]
            # Each line once, in order, although the file was replaced several times meanwhile.
            assert seen == [f"{i:04d}" for i in range(400)], seen[:5]
        finally:
            follower.stop()

        # The retention limit: two files at most, neither past the limit; reading spans both.
        version_dir = p.root / "data" / "deployments" / "default.talk" / "v1"
        logs = sorted(f.name for f in version_dir.iterdir() if f.name.startswith("app.log"))
        assert logs == ["app.log", "app.log.1"], logs
        assert all((version_dir / f).stat().st_size <= limit for f in logs)
        kept = p.cli("logs", "talk", "--grep", "^spam-", "--tail", "1000", check=True).stdout.splitlines()
        numbers = [int(line.split("-")[1]) for line in kept]
        assert numbers[-1] == 399 and numbers == list(range(numbers[0], 400)) and numbers[0] > 0, numbers[:3]
        assert len(kept) > len((version_dir / "app.log").read_text().splitlines())
    finally:
        p.stop()


def test_a_failed_deploy_prints_the_app_log_tail(platform, tmp_path):
    broken = app_dir(tmp_path, "broken", BROKEN_APP)
    failed = platform.cli("deploy", "app", str(broken), "--name", "broken")
    assert failed.returncode == 1
    tail = failed.stderr.split("last lines of the log:", 1)
    assert len(tail) == 2, failed.stderr
    lines = [line.strip() for line in tail[1].splitlines() if line.strip()]
    assert "booting the broken app" in lines and "RuntimeError: broken-marker-4711" in lines, lines
    assert lines.index("booting the broken app") < lines.index("RuntimeError: broken-marker-4711")
    assert not any(STAMP.match(line) for line in lines), lines  # the app's text, not the stored format
    assert len(lines) <= 40

    as_json = platform.cli("deploy", "app", str(broken), "--name", "broken", "--json")
    assert as_json.returncode == 1
    error = json.loads(as_json.stdout)
    assert "RuntimeError: broken-marker-4711" in error["log_tail"].splitlines(), error
