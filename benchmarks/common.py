"""What every benchmark shares: result tables with ratios, percentiles, CPU and memory of process trees read from
/proc, a concurrent call driver, and the facts of the machine a run was made on."""

from __future__ import annotations

import dataclasses
import os
import platform as _platform
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools" / "bench"  # baselines installed by the benchmarks (gitignored with .tools/)
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Context:
    """What a benchmark gets: ``smoke`` (tiny sizes, for CI), a scratch dir of its own, and ``say`` for progress."""

    smoke: bool
    workdir: Path

    def say(self, message: str) -> None:
        print(f"  .. {message}", file=sys.stderr, flush=True)

    def size(self, full, smoke):
        return smoke if self.smoke else full


@dataclasses.dataclass
class Row:
    """One measured figure: ours against the baseline's, and the goal, if the issue sets one.

    ``goal`` is the bound on ``ours / baseline`` (``ratio`` goals) or on ``ours`` itself (``absolute`` goals);
    ``higher_is_better`` says which side of the bound meets it.
    """

    metric: str
    unit: str
    ours: float | None
    baseline: float | None = None
    goal: float | None = None
    goal_kind: str = "ratio"  # or "absolute"
    higher_is_better: bool = False
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.baseline:
            return None
        return self.ours / self.baseline

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        value = self.ratio if self.goal_kind == "ratio" else self.ours
        if value is None:
            return None
        return value >= self.goal if self.higher_is_better else value <= self.goal

    def goal_text(self) -> str:
        if self.goal is None:
            return ""
        op = "≥" if self.higher_is_better else "≤"
        return f"{op} {self.goal:g}×" if self.goal_kind == "ratio" else f"{op} {fmt(self.goal)} {self.unit}"

    def as_dict(self) -> dict:
        return {"metric": self.metric, "unit": self.unit, "ours": self.ours, "baseline": self.baseline,
                "ratio": self.ratio, "goal": self.goal_text() or None, "met": self.met, "note": self.note or None}


@dataclasses.dataclass
class Table:
    title: str
    ours: str  # what "ours" is, e.g. "gateway (auth)"
    baseline: str  # what the baseline is, e.g. "direct"
    rows: list[Row]
    notes: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        return {"title": self.title, "ours": self.ours, "baseline": self.baseline,
                "rows": [r.as_dict() for r in self.rows], "notes": self.notes}

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        head = ["metric", self.ours, self.baseline, "ratio", "goal", "met"]
        body = []
        for r in self.rows:
            met = {True: "yes", False: "NO", None: ""}[r.met]
            body.append([r.metric, fmt(r.ours, r.unit), fmt(r.baseline, r.unit),
                         "" if r.ratio is None else f"{r.ratio:.2f}×", r.goal_text(), met])
        return head, body

    def text(self) -> str:
        head, body = self._cells()
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [self.title, line(head), line(["-" * w for w in widths]), *map(line, body)]
        out += [f"  note: {n}" for n in self.notes + [f"{r.metric}: {r.note}" for r in self.rows if r.note]]
        return "\n".join(out)

    def markdown(self) -> str:
        head, body = self._cells()
        cells = lambda row: "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"  # noqa: E731
        out = [f"**{self.title}**", "", cells(head), "|" + "---|" * len(head), *map(cells, body)]
        notes = self.notes + [f"{r.metric}: {r.note}" for r in self.rows if r.note]
        if notes:
            out += [""] + [f"- {n}" for n in notes]
        return "\n".join(out)


def copy_app(src: Path, dest: Path) -> Path:
    """A scratch copy of an example app, so a benchmark may edit it (and no cached data dir comes along)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", ".mcpac-data"), dirs_exist_ok=True)
    return dest


def instance(p, name: str) -> tuple[str, int]:
    """The own URL and the pid of the process instance serving deployment ``name`` on platform ``p``."""
    record = p.instance(name)
    return record["url"], int(record["data"]["pid"])


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) or (abs(value) >= 100 and float(value).is_integer()):
        text = f"{int(value):,}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation between the closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# -- process trees from /proc ----------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces


def tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(roots: Iterable[int]) -> float:
    """CPU time (user + system) of each root's process tree, reaped children included (cutime/cstime)."""
    total = 0
    for root in roots:
        for pid in tree(root):
            if (f := _stat(pid)) is not None:
                total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK_TCK


def rss_bytes(roots: Iterable[int], *, pss: bool = True) -> int:
    """Memory of each root's process tree: PSS (shared pages split between the processes that map them) by
    default, so a tree of forked children isn't counted once per child; RSS with ``pss=False``."""
    total = 0
    for root in roots:
        for pid in tree(root):
            try:
                if pss:
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                        if line.startswith("Pss:"):
                            total += int(line.split()[1]) * 1024
                            break
                else:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
                            break
            except OSError:
                pass
    return total


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on 127.0.0.1:``port`` (from /proc/net/tcp and the fds), for servers
    started by something else (the platform's app instances)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                link = os.readlink(f"/proc/{entry}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(entry)
        except OSError:
            continue
    return None


# -- load -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Load:
    latencies: list[float]  # seconds, one per call
    elapsed: float
    errors: int

    @property
    def calls(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed if self.elapsed else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000  # ms


async def drive(call: Callable[[], Awaitable[object]], *, sessions: int = 1, calls: int) -> Load:
    """``calls`` calls in all, spread over ``sessions`` concurrent loops that all await the same ``call``."""
    return await drive_sessions([call] * sessions, calls=calls)


async def drive_sessions(calls_by_session: list[Callable[[], Awaitable[object]]], *, calls: int) -> Load:
    """``calls`` calls in all, one concurrent loop per entry (e.g. one bound ``call_tool`` per client session)."""
    import anyio

    latencies: list[float] = []
    errors = 0
    left = calls

    async def loop(call) -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            try:
                await call()
            except Exception:  # counted, not fatal: a benchmark reports errors
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for call in calls_by_session:
            tg.start_soon(loop, call)
    return Load(latencies, time.perf_counter() - start, errors)


# -- the machine --------------------------------------------------------------------------------------------------


def _version(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def machine() -> dict:
    from importlib.metadata import version

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), _platform.machine())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    return {
        "cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": _platform.release(), "python": _platform.python_version(),
        "mcp": version("mcp"), "mcp-agent-cloud": version("mcp-agent-cloud"),
        "node": _version(["node", "--version"]), "docker": _version(["docker", "--version"]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
