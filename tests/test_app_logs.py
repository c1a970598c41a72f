"""App logs: the line format, rotation, reading with tail, since and grep, and the writers of the builders."""

from __future__ import annotations

import io
import os
import re
import signal
import sys
import time
from pathlib import Path

import anyio
import pytest

from mcp_agent_cloud.hookspecs.types import Artifact, DeploymentRef, PluginContext
from mcp_agent_cloud.applog import (
    AppLog,
    LineSplitter,
    append_app_log,
    log_timestamp,
    parse_log_line,
    parse_since,
    read_app_log,
    rotated_log,
    tail_file,
)
from mcp_agent_cloud.plugins.container import LogFollower
from mcp_agent_cloud.plugins.process import ProcessBuilder, ProcessConfig, pid_alive

STAMPED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (stdout|stderr|platform) ")


def test_lines_are_stamped_and_old_lines_have_no_time(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("an old line\n")  # a log from before lines had times
    append_app_log(log, "stdout", [b"one", b"two\r", "three\nfour"])
    append_app_log(log, "stderr", [b""])
    raw = log.read_text().splitlines()
    assert raw[0] == "an old line" and all(STAMPED.match(line) for line in raw[1:]), raw
    entries = read_app_log(log, tail=None)
    assert [(e.stream, e.line) for e in entries] == [
        (None, "an old line"), ("stdout", "one"), ("stdout", "two"), ("stdout", "three"), ("stdout", "four"),
        ("stderr", "")]
    assert entries[0].ts is None and entries[1].ts and entries[1].to_dict().keys() == {"ts", "stream", "line"}
    assert read_app_log(log, tail=2)[0].line == "four"
    assert read_app_log(log, tail=0) == []
    # The tail a failed deploy shows: the app's text only.
    assert tail_file(log, 3) == "three\nfour\n"


def test_since_skips_older_and_untimed_lines_and_grep_filters(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    old = log_timestamp(time.time() - 7200)
    log.write_text(f"untimed error line\n{old} stdout error two hours ago\n")
    append_app_log(log, "stderr", ["error now", "fine now"])
    since = parse_since("1h")
    assert [e.line for e in read_app_log(log, tail=None, since=since)] == ["error now", "fine now"]
    grep = re.compile("error")
    assert [e.line for e in read_app_log(log, tail=None, grep=grep)] == [
        "untimed error line", "error two hours ago", "error now"]
    assert [e.line for e in read_app_log(log, tail=None, since=since, grep=grep)] == ["error now"]
    assert [e.line for e in read_app_log(log, tail=None, since=parse_since("3h"))] == [
        "error two hours ago", "error now", "fine now"]


def test_parse_since() -> None:
    now = 1_800_000_000.0
    assert parse_since("10m", now) == log_timestamp(now - 600)
    assert parse_since("1h30m", now) == log_timestamp(now - 5400)
    assert parse_since("1d", now) == log_timestamp(now - 86400)
    assert parse_since("2.5s", now) == log_timestamp(now - 2.5)
    assert parse_since("2027-01-15T08:00:00Z") == "2027-01-15T08:00:00.000Z"
    assert parse_since("2027-01-15T09:00:00+01:00") == "2027-01-15T08:00:00.000Z"
    assert parse_since("2027-01-15T08:00:00") == "2027-01-15T08:00:00.000Z"  # no offset: UTC
    for bad in ("yesterday", "10x", "", "-5m"):
        with pytest.raises(ValueError):
            parse_since(bad, now)


def test_rotation_keeps_one_file_and_reading_spans_both(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    written = [f"line {i:03d} " + "x" * 40 for i in range(200)]
    for line in written:
        append_app_log(log, "stdout", [line], max_bytes=2048)
    burst = [f"burst {i}" for i in range(100)]
    append_app_log(log, "stdout", burst, max_bytes=2048)  # one write of many lines rotates too
    written += burst
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "app.log.1"]
    assert log.stat().st_size <= 2048 and rotated_log(log).stat().st_size <= 2048
    lines = [e.line for e in read_app_log(log, tail=None)]
    assert lines == written[-len(lines):] and written[0] not in lines
    assert len(lines) > len(log.read_text().splitlines())  # the rotated file's lines come first
    assert [e.line for e in read_app_log(log, tail=3)] == ["burst 97", "burst 98", "burst 99"]


def test_writers_of_one_log_share_a_handle_across_rotation(tmp_path: Path) -> None:
    # Two pumps (stdout, stderr) and the platform's own lines write one file; rotation by one of them must not
    # leave another appending to app.log.1.
    log = tmp_path / "app.log"
    out, errs = AppLog.open(log, 2048), AppLog.open(log, 2048)
    assert out is errs
    written = []
    for i in range(120):
        line = f"line {i:03d} " + "y" * 30
        (out if i % 3 == 0 else errs).write("stdout" if i % 3 == 0 else "stderr", [line])
        if i % 10 == 0:
            append_app_log(log, "platform", [f"mark {i}"])
            written.append(f"mark {i}")
        written.insert(len(written) - (1 if i % 10 == 0 else 0), line)
    lines = [e.line for e in read_app_log(log, tail=None)]
    assert lines == written[-len(lines):] and len(lines) > len(log.read_text().splitlines())
    assert log.stat().st_size <= 2048 and rotated_log(log).stat().st_size <= 2048
    out.close()
    assert AppLog._open  # still held by the other writer
    errs.close()
    assert not AppLog._open
    os.remove(log)  # a closed log keeps no handle: the next write makes the file again
    os.remove(rotated_log(log))
    append_app_log(log, "platform", ["again"])
    assert [e.line for e in read_app_log(log, tail=None)] == ["again"]


def test_long_lines_are_cut_and_partial_lines_wait() -> None:
    s = LineSplitter()
    assert s.feed(b"a\nb") == [b"a"]
    assert s.feed(b"c\n\n") == [b"bc", b""]
    big = s.feed(b"x" * (64 * 1024 * 2 + 10))
    assert [len(x) for x in big] == [64 * 1024, 64 * 1024] and s.flush() == [b"x" * 10]
    assert s.flush() == []


def test_parse_log_line_takes_only_the_exact_format() -> None:
    assert parse_log_line("2027-01-15T08:00:00.000Z stderr boom").stream == "stderr"
    assert parse_log_line("2027-01-15 08:00:00 stderr boom").ts is None
    assert parse_log_line("2027-01-15T08:00:00.000Z other boom").ts is None


class FakeEngine:
    def __init__(self, chunks):
        self.chunks = chunks

    def logs(self, container, *, since=None):
        yield from self.chunks


class SplitEngine(FakeEngine):
    def log_frames(self, container, *, since=None):
        yield from self.chunks


def test_log_follower_stamps_container_output(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    follower = LogFollower(SplitEngine([("stdout", b"out 1\nout"), ("stderr", b"err 1\n"), ("stdout", b" 2\n")]),
                           "c1", log, None)
    follower.run()
    assert [(e.stream, e.line) for e in read_app_log(log, tail=None)] == [
        ("stdout", "out 1"), ("stderr", "err 1"), ("stdout", "out 2")]
    # An engine that cannot tell the streams apart: stdout, and an unfinished last line is kept too.
    log2 = tmp_path / "two.log"
    LogFollower(FakeEngine([b"merged\nlast"]), "c2", log2, None, max_bytes=4096).run()
    assert [(e.stream, e.line) for e in read_app_log(log2, tail=None)] == [("stdout", "merged"),
                                                                          ("stdout", "last")]


def test_podman_log_frames_name_the_stream() -> None:
    from mcp_agent_cloud.plugins.podman_builder import PodmanEngine

    def frame(kind: int, data: bytes) -> bytes:
        return bytes([kind, 0, 0, 0]) + len(data).to_bytes(4, "big") + data

    class Response:
        raw = io.BytesIO(frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"") + frame(1, b"more\n"))

    engine = PodmanEngine.__new__(PodmanEngine)
    engine._call = lambda *a, **kw: Response()
    assert list(engine.log_frames("c")) == [("stdout", b"out\n"), ("stderr", b"err\n"), ("stdout", b"more\n")]


def test_process_builder_stamps_both_streams_and_wait_does_not_wait_for_a_grandchild(tmp_path: Path) -> None:
    """The instance's own pipes: a background child that keeps them open must not hold up wait() or stop()."""
    log = tmp_path / "app.log"
    script = ("echo to-stdout; echo to-stderr >&2; sleep 60 & echo grandchild $! ; printf 'no newline'; "
              "sleep 0.8; exit 3")
    builder = ProcessBuilder(ProcessConfig(), PluginContext(data_dir=tmp_path, settings={"log_max_bytes": 4096}))
    builder.command_for = lambda artifact, port: (["sh", "-c", script], tmp_path, None)
    artifact = Artifact(builder="process", deployment=DeploymentRef(id="d", org="acme", name="sh"), version=1,
                        kind="stdio", data={})

    async def main() -> tuple[int, float]:
        instance = await builder.start(artifact, env={}, log_path=log)
        t0 = time.monotonic()
        with anyio.fail_after(10):
            code = await builder.wait(instance)
        return code, time.monotonic() - t0

    code, took = anyio.run(main)
    entries = read_app_log(log, tail=None)
    pairs = [(e.stream, e.line) for e in entries]
    grandchild = int(next(line for _, line in pairs if line.startswith("grandchild")).split()[1])
    try:
        assert code == 3 and took < 5, (code, took)
        assert ("stdout", "to-stdout") in pairs and ("stderr", "to-stderr") in pairs, pairs
        # Written after half a second without a newline, not held until the end.
        assert ("stdout", "no newline") in pairs, pairs
        assert all(e.ts for e in entries)
    finally:
        if pid_alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_a_failing_app_start_leaves_its_traceback_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    builder = ProcessBuilder(ProcessConfig(), PluginContext(data_dir=tmp_path))
    builder.command_for = lambda artifact, port: (
        [sys.executable, "-c", "print('booting'); raise RuntimeError('kaput')"], tmp_path, None)
    artifact = Artifact(builder="process", deployment=DeploymentRef(id="d", org="acme", name="py"), version=1,
                        kind="stdio", data={})

    async def main() -> None:
        instance = await builder.start(artifact, env={}, log_path=log)
        assert await builder.wait(instance) == 1
        await builder.stop(instance, timeout=5)  # the deploy's failure path: stop, then read the tail

    anyio.run(main)
    tail = tail_file(log, 40)
    # stdout and stderr are two pipes, pumped apart: which of them reaches the log first is not fixed.
    lines = tail.splitlines()
    assert "booting" in lines and lines.index("Traceback (most recent call last):") < lines.index(
        "RuntimeError: kaput"), tail


def test_a_follow_misses_nothing_across_two_rotations_between_its_looks(tmp_path: Path) -> None:
    import json

    from mcp_agent_cloud.platform.app import _log_stream

    log = tmp_path / "app.log"
    append_app_log(log, "stdout", ["first"], max_bytes=1024)
    written = [f"line {i:02d} " + "x" * 80 for i in range(20)]

    async def main() -> list[dict]:
        stream = _log_stream(log, tail=10, since=None, grep=re.compile("^(first|line)"), ndjson=True,
                             timestamps=False, follow=True)
        got = [json.loads(line) for line in (await stream.__anext__()).splitlines()]
        assert [e["line"] for e in got] == ["first"]
        append_app_log(log, "stdout", ["noise"], max_bytes=1024)  # grep drops it
        for line in written:  # about 2.4 KB: the file is replaced twice before the follow looks again
            append_app_log(log, "stdout", [line], max_bytes=1024)
        assert len(list(tmp_path.iterdir())) == 2
        with anyio.fail_after(10):
            while len(got) < 1 + len(written):
                got += [json.loads(line) for line in (await stream.__anext__()).splitlines()]
        await stream.aclose()
        return got

    got = anyio.run(main)
    assert [e["line"] for e in got] == ["first", *written]
    assert all(e["stream"] == "stdout" and e["ts"] for e in got)
