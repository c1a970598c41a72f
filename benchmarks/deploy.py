"""Deploy latency: ``mcp-agent deploy app`` of examples/hello, from the CLI process's start to its successful exit.

The CLI exits once the platform has run its whole pipeline (unpack, build, start, an MCP ``initialize`` +
``tools/list`` health check straight against the new instance, then the switch of the gateway's route to it), so
the endpoint is healthy and routed when the timer stops; each run is then checked with a tool call through the
gateway, whose answer must come from the code just deployed.

Cases, on one platform (``mcp-agent serve``, its own data dir):

- ``process`` first deploy: a fresh venv cache dir, so it includes creating the venv and ``pip install`` (from
  pip's local cache and wheel dirs: no network download, on this machine as for the baseline);
- ``process`` code-only redeploy: a changed ``main.py``, the venv comes from the cache;
- ``docker`` first deploy: full sizes add a tiny wheel unique to the run to the requirements (``./vendor/*.whl``),
  so neither the dependency image nor any of its layers is in the engine's cache: ``pip wheel`` on the host, then
  the whole image build; smoke sizes use examples/hello's requirements as they are, whose dependency image the
  engine may already have;
- ``docker`` code-only redeploy: the dependency image is cached, only the thin app image is built.

Per-step times come from what the product exposes: the CLI's human output (``✓ validate (0.0s)``, at 0.1 s
resolution, for the steps the CLI runs itself: validate, package, upload) and the platform's ``deploy.step`` events
(``mcp-agent events NAME --json``: ``duration_ms`` and the end time of unpack, build, start, health_check and
route). What neither covers (interpreter start-up and imports, the HTTP requests before the pipeline starts, the
answer and exit after it) is derived from the wall clock and the events' time stamps.

Baselines are the same work done by hand, without the platform, timed the same way (to an MCP answer of
``initialize`` + ``tools/list``, polled like the platform's health check): for ``process``, ``python -m venv
--without-pip`` + ``pip --python VENV install -r requirements.txt`` (the commands the builder runs) + starting
``main.mcp.run("streamable-http")``; for a code-only change, stopping the old server and starting the new one. For
``docker``, ``pip wheel`` on the host + ``docker build`` of an equivalent single-stage Dockerfile (``--no-cache``
for the first, with the dependency layers cached for a code change) + ``docker rm -f`` of the old container +
``docker run -p`` (no hardening options).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mcp_agent_cloud.testing import free_port

from .common import ROOT, Context, Row, Table, copy_app

HELLO = ROOT / "examples" / "hello"
ENGINES_ENV = ROOT / ".tools" / "engines" / "env"
NAME = "hello"
BENCH_LABEL = "org.mcp-agent-cloud.bench"  # on the baseline's images and containers, for the cleanup
DEPS_LABEL = "org.mcp-agent-cloud.deps-key"
PLATFORM_LABEL = "org.mcp-agent-cloud.platform"
CLI_STEP = re.compile(r"^✓ (validate|package|upload) \((\d+(?:\.\d+)?)s\)", re.M)
SERVER_STEPS = ("unpack", "build", "start", "health_check", "route")
STEP_ORDER = ("startup", "validate", "package", "upload", "unpack", "build", "start", "health_check",
              "route", "exit")
STEP_LABEL = {
    "startup": "CLI start-up and requests before the pipeline (derived)",
    "validate": "validate (CLI)",
    "package": "package (CLI)",
    "upload": "upload (CLI)",
    "unpack": "unpack (platform)",
    "build": "build (platform)",
    "start": "start (platform)",
    "health_check": "health_check (platform)",
    "route": "route (platform)",
    "exit": "result to CLI exit (derived)",
}


@dataclasses.dataclass
class Deploy:
    total: float
    steps: dict[str, float]  # seconds, by STEP_ORDER key
    build_detail: str  # what the build log says about the dependency env/image
    version: int
    gateway_call: float  # the first tool call through the gateway afterwards (not part of total)


@dataclasses.dataclass
class ByHand:
    total: float
    steps: dict[str, float]


# -- helpers ------------------------------------------------------------------------------------------------------


def _docker_or_raise() -> tuple[str, str]:
    """(host, base image) of the Docker engine scripts/engines.sh started; raises when it does not answer."""
    from mcp_agent_cloud.testing import engine_answers, read_env_file

    values = read_env_file(ENGINES_ENV)
    host, base = values.get("MCPAC_DOCKER_HOST"), values.get("MCPAC_BASE_IMAGE")
    if not host or not base:
        raise RuntimeError(f"no Docker engine: {ENGINES_ENV} names none; run scripts/engines.sh (as root)")
    if not engine_answers(host):
        raise RuntimeError(f"the Docker engine at {host} does not answer: run scripts/engines.sh")
    if shutil.which("docker") is None:
        raise RuntimeError("the docker CLI is not installed (the by-hand baseline runs it): run scripts/engines.sh")
    inspect = subprocess.run(["docker", "image", "inspect", base], env=_docker_env(host), capture_output=True)
    if inspect.returncode != 0:
        raise RuntimeError(f"the base image {base} is not in the Docker engine: run scripts/engines.sh")
    return host, base


def _docker_env(host: str) -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": host, "DOCKER_CLI_HINTS": "false"}


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-3000:]}")
    return result


async def _answers(url: str, timeout: float = 120) -> None:
    """Poll until MCP initialize + tools/list answer, exactly as the platform's health check does."""
    from mcp_agent_cloud.platform.service import mcp_health_check

    await mcp_health_check(url, timeout=timeout)


async def _greet(url: str, token: str | None) -> str:
    from mcp_agent_cloud.testing import call_tool

    return await call_tool(url, token, "greet", {"name": "bench"})


def _set_greeting(src: Path, marker: str) -> None:
    """A code-only change: greet's answer names ``marker``."""
    main = src / "main.py"
    text = re.sub(r'return f"[^"]*\{name\}!"', f'return f"Hello {marker}, {{name}}!"', main.read_text())
    main.write_text(text)


# -- ours ---------------------------------------------------------------------------------------------------------


async def _deploy(p, src: Path, marker: str, *extra: str) -> Deploy:
    """Time one `mcp-agent deploy app` and break it down into its steps."""
    from mcp_agent_cloud.testing import CLI

    _set_greeting(src, marker)
    last_event = max((e["id"] for e in p.cli_json("events", NAME)), default=0) if _exists(p) else 0
    t0_wall, t0 = time.time(), time.perf_counter()
    result = subprocess.run([CLI, "deploy", "app", str(src), "--name", NAME, *extra], env=p.env, cwd=p.root,
                            capture_output=True, text=True, timeout=900)
    total = time.perf_counter() - t0
    t1_wall = t0_wall + total
    if result.returncode != 0:
        raise RuntimeError(f"mcp-agent deploy failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    # The CLI only prints these in its human output (--json has none): 0.1 s resolution.
    steps = {name: float(sec) for name, sec in CLI_STEP.findall(result.stderr)}
    steps.setdefault("upload", 0.0)  # "upload (already on the platform)": a HEAD request, no time printed
    events = [e for e in p.cli_json("events", NAME, "--after", str(last_event)) if e["type"] == "deploy.step"]
    version = max(e["data"]["version"] for e in events)
    ends = {}
    for e in events:
        d = e["data"]
        if d["version"] == version and d["status"] == "ok":
            steps[d["step"]] = d["duration_ms"] / 1000
            ends[d["step"]] = e["created_at"]
    missing = [s for s in SERVER_STEPS if s not in steps]
    if missing:
        raise RuntimeError(f"no deploy.step events for {missing} of version {version}: {events}")
    pipeline_start = ends["unpack"] - steps["unpack"]
    steps["startup"] = (pipeline_start - t0_wall) - steps["validate"] - steps["package"] - steps["upload"]
    steps["exit"] = t1_wall - ends["route"]
    log = (p.root / "data" / "deployments" / f"default.{NAME}" / f"v{version}" / "build.log").read_text()
    detail = next((line for line in log.splitlines() if re.search(
        r"environment (ready|cached)|dependency image (ready|cached)", line)), "")
    # The endpoint is healthy and routed when the CLI exits: the first call through the gateway gets the new code.
    g0 = time.perf_counter()
    text = await _greet(f"{p.url}/servers/{NAME}/mcp", p.token)
    gateway_call = time.perf_counter() - g0
    if text != f"Hello {marker}, bench!":
        raise AssertionError(f"the gateway served {text!r} right after deploy {marker} exited, not the new code")
    return Deploy(total, steps, detail, version, gateway_call)


def _exists(p) -> bool:
    return p.api("GET", f"/api/v1/deployments/{NAME}").status_code == 200


# -- by hand: process ---------------------------------------------------------------------------------------------


class HandProcess:
    """examples/hello run by hand: a venv, pip, and the server started with ``main.mcp.run``."""

    def __init__(self, root: Path, src: Path) -> None:
        self.root, self.src = root, src
        self.venv = root / "venv"
        self.proc: subprocess.Popen | None = None

    async def first(self) -> ByHand:
        t0 = time.perf_counter()
        _run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)])
        _run([sys.executable, "-m", "pip", "--python", str(self.venv / "bin" / "python"), "install",
              "--disable-pip-version-check", "--no-input", "-r", str(self.src / "requirements.txt")])
        t1 = time.perf_counter()
        await self._start()
        t2 = time.perf_counter()
        return ByHand(t2 - t0, {"build": t1 - t0, "start_health": t2 - t1})

    async def restart(self) -> ByHand:
        t0 = time.perf_counter()
        self.stop()
        t1 = time.perf_counter()
        await self._start()
        t2 = time.perf_counter()
        return ByHand(t2 - t0, {"route": t1 - t0, "start_health": t2 - t1})

    async def _start(self) -> None:
        port = free_port()
        code = f"import main; main.mcp.run('streamable-http', host='127.0.0.1', port={port})"
        self.proc = subprocess.Popen([str(self.venv / "bin" / "python"), "-c", code], cwd=self.src,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        await _answers(f"http://127.0.0.1:{port}/mcp")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# -- by hand: docker ----------------------------------------------------------------------------------------------


class HandDocker:
    """examples/hello in a container by hand: wheels resolved on the host, a single-stage Dockerfile, docker run."""

    def __init__(self, root: Path, src: Path, host: str, base: str, run_id: str) -> None:
        self.root, self.src, self.base, self.run_id = root, src, base, run_id
        self.env = _docker_env(host)
        self.ctx = root / "context"
        self.builds = 0
        self.container: str | None = None

    def _write_context(self) -> None:
        shutil.rmtree(self.ctx / "app", ignore_errors=True)
        shutil.copytree(self.src, self.ctx / "app")
        run = "import main; main.mcp.run('streamable-http', host='0.0.0.0', port=8000)"
        (self.ctx / "Dockerfile").write_text("\n".join([
            f"FROM {self.base}",
            "COPY wheels /tmp/wheels",
            "RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-index --no-cache-dir "
            "--disable-pip-version-check /tmp/wheels/*.whl",
            "COPY app /opt/app",
            "WORKDIR /opt/app",
            "ENV PYTHONUNBUFFERED=1",
            "EXPOSE 8000",
            f"CMD {json.dumps(['/opt/venv/bin/python', '-c', run])}",
        ]) + "\n")

    async def first(self) -> ByHand:
        t0 = time.perf_counter()
        self.ctx.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-input", "--wheel-dir",
              str(self.ctx / "wheels"), "-r", str(self.src / "requirements.txt")], cwd=self.src)
        self._write_context()
        self._build(no_cache=True)
        t1 = time.perf_counter()
        await self._run_container()
        t2 = time.perf_counter()
        return ByHand(t2 - t0, {"build": t1 - t0, "start_health": t2 - t1})

    async def redeploy(self) -> ByHand:
        t0 = time.perf_counter()
        self._write_context()
        self._build(no_cache=False)
        t1 = time.perf_counter()
        self._remove_container()
        t2 = time.perf_counter()
        await self._run_container()
        t3 = time.perf_counter()
        return ByHand(t3 - t0, {"build": t1 - t0, "route": t2 - t1, "start_health": t3 - t2})

    def _build(self, *, no_cache: bool) -> None:
        self.builds += 1
        _run(["docker", "build", *(["--no-cache"] if no_cache else []), "--label", f"{BENCH_LABEL}={self.run_id}",
              "-t", f"mcpac-bench-byhand-{self.run_id}:{self.builds}", str(self.ctx)], env=self.env, timeout=900)

    async def _run_container(self) -> None:
        port = free_port()
        out = _run(["docker", "run", "-d", "--label", f"{BENCH_LABEL}={self.run_id}", "-p", f"127.0.0.1:{port}:8000",
                    f"mcpac-bench-byhand-{self.run_id}:{self.builds}"], env=self.env)
        self.container = out.stdout.strip()
        await _answers(f"http://127.0.0.1:{port}/mcp")

    def _remove_container(self) -> None:
        if self.container:
            _run(["docker", "rm", "-f", self.container], env=self.env)
            self.container = None

    def cleanup(self) -> None:
        """Every container and image this baseline made (by its label)."""
        flt = ["--filter", f"label={BENCH_LABEL}={self.run_id}"]
        ids = subprocess.run(["docker", "ps", "-aq", *flt], env=self.env, capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], env=self.env, capture_output=True)
        images = subprocess.run(["docker", "images", "-q", *flt], env=self.env, capture_output=True,
                                text=True).stdout.split()
        if images:
            subprocess.run(["docker", "rmi", "-f", *sorted(set(images))], env=self.env, capture_output=True)


def _nonce_wheel(directory: Path, nonce: str) -> str:
    """A tiny pure-Python wheel unique to this run, written into ``directory``; returns its file name.

    Required next to examples/hello's own requirements for a docker first deploy: the dependency image key changes
    with any requirement, but the engine's layer cache is keyed by the wheels' bytes, so only a wheel of new bytes
    makes the dependency image build from scratch (and the by-hand side installs the same set)."""
    import base64
    import hashlib
    import zipfile

    name, version = "mcpac_bench_nonce", "0.0.1"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f"NONCE = {nonce!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: benchmarks/deploy.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    filename = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(directory / filename, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return filename


def _remove_our_deps_images(env: dict[str, str], platform_id: str) -> list[str]:
    """The dependency images our platform built (labelled with its id): a cache the deployment's delete keeps."""
    out = subprocess.run(["docker", "images", "-q", "--filter", f"label={PLATFORM_LABEL}={platform_id}",
                          "--filter", f"label={DEPS_LABEL}"], env=env, capture_output=True, text=True).stdout.split()
    removed = []
    for image in sorted(set(out)):
        r = subprocess.run(["docker", "rmi", image], env=env, capture_output=True, text=True)
        if r.returncode == 0:  # refused while something else (another platform's image) builds on it
            removed.append(image)
    return removed


# -- tables -------------------------------------------------------------------------------------------------------


def _median_deploy(runs: list[Deploy]) -> Deploy:
    steps = {k: statistics.median(r.steps[k] for r in runs) for k in runs[0].steps}
    return Deploy(statistics.median(r.total for r in runs), steps, runs[-1].build_detail, runs[-1].version,
                  statistics.median(r.gateway_call for r in runs))


def _median_hand(runs: list[ByHand]) -> ByHand | None:
    if not runs:
        return None
    return ByHand(statistics.median(r.total for r in runs),
                  {k: statistics.median(r.steps[k] for r in runs) for k in runs[0].steps})


def _steps_table(title: str, ours: Deploy, hand: ByHand | None, hand_label: str, notes: list[str]) -> Table:
    hs = hand.steps if hand else {}
    rows = []
    for key in STEP_ORDER:
        if key not in ours.steps:
            continue
        baseline = hs.get(key) if key in ("build", "route") else None
        rows.append(Row(STEP_LABEL[key], "s", ours.steps[key], baseline))
    rows.insert(next(i for i, r in enumerate(rows) if r.metric.startswith("route")),
                Row("start + health_check", "s", ours.steps["start"] + ours.steps["health_check"],
                    hs.get("start_health")))
    rows.append(Row("total (CLI start to exit)", "s", ours.total, hand.total if hand else None))
    rows.append(Row("first tool call through the gateway after exit (not in total)", "s", ours.gateway_call))
    if ours.build_detail:
        notes = notes + [f"build log: {ours.build_detail.strip()}"]
    return Table(title, "mcp-agent deploy", hand_label, rows, notes)


async def run(ctx: Context) -> list[Table]:
    from mcp_agent_cloud.testing import PlatformProcess

    repeats = ctx.size(3, 1)
    fresh_deps = not ctx.smoke
    run_id = secrets.token_hex(4)
    docker_host, base_image = _docker_or_raise()  # before anything starts: no docker, no benchmark
    denv = _docker_env(docker_host)
    src = ctx.workdir / "hello"
    copy_app(HELLO, src)
    builders = json.dumps({"docker": {"host": docker_host, "base_image": base_image}})
    p = PlatformProcess(ctx.workdir / "platform", ctx.workdir / "envs", extra_config=f"builders: {builders}\n")
    hand_p = HandProcess(ctx.workdir / "byhand-process", ctx.workdir / "byhand-src")
    hand_d = HandDocker(ctx.workdir / "byhand-docker", ctx.workdir / "byhand-src", docker_host, base_image, run_id)
    copy_app(HELLO, hand_d.src)
    tables: list[Table] = []
    marker = iter(range(1, 1000))
    p.start()
    try:
        # -- process --------------------------------------------------------------------------------------------
        ctx.say("process: first deploy (fresh venv cache)")
        first_p = await _deploy(p, src, f"v{next(marker)}")
        ctx.say(f"process: first deploy took {first_p.total:.1f}s; {repeats} code-only redeploy(s)")
        redeploys_p = [await _deploy(p, src, f"v{next(marker)}") for _ in range(repeats)]
        ctx.say("process: by hand (venv + pip + start, then restarts)")
        hand_first_p = await hand_p.first()
        hand_re_p = []
        for i in range(repeats):
            _set_greeting(hand_p.src, f"h{i}")
            hand_re_p.append(await hand_p.restart())
        hand_p.stop()
        p.cli("delete", NAME, "--yes", check=True)

        # -- docker ---------------------------------------------------------------------------------------------
        src_d = ctx.workdir / "hello-docker"
        copy_app(HELLO, src_d)
        if fresh_deps:  # a dependency set no engine has seen: no cached dependency image, no cached layers
            for tree in (src_d, hand_d.src):
                wheel = _nonce_wheel(tree / "vendor", run_id)
                reqs = tree / "requirements.txt"
                reqs.write_text(reqs.read_text() + f"./vendor/{wheel}\n")
        ctx.say("docker: first deploy" + (" (dependency image not cached)" if fresh_deps else ""))
        first_d = await _deploy(p, src_d, f"v{next(marker)}", "--builder", "docker")
        if fresh_deps and "dependency image ready" not in first_d.build_detail:
            raise AssertionError(f"the first docker deploy did not build its dependency image: {first_d.build_detail}")
        ctx.say(f"docker: first deploy took {first_d.total:.1f}s; {repeats} code-only redeploy(s)")
        redeploys_d = [await _deploy(p, src_d, f"v{next(marker)}", "--builder", "docker") for _ in range(repeats)]
        for r in redeploys_d:
            if "dependency image cached" not in r.build_detail:
                raise AssertionError(f"a code-only docker redeploy rebuilt its dependency image: {r.build_detail}")
        ctx.say("docker: by hand (pip wheel + docker build + docker run, then code-only rebuilds)")
        hand_first_d = await hand_d.first()
        hand_re_d = []
        for i in range(repeats):
            _set_greeting(hand_d.src, f"h{i}")
            hand_re_d.append(await hand_d.redeploy())
        p.cli("delete", NAME, "--yes", check=True)
    finally:
        hand_p.stop()
        try:
            hand_d.cleanup()
        finally:
            if p.proc is not None and p.proc.poll() is None and _exists(p):
                p.cli("delete", NAME, "--yes")
            platform_id = _platform_id(p.root / "data")
            p.stop()
            _remove_our_deps_images(denv, platform_id)

    re_p, re_d = _median_deploy(redeploys_p), _median_deploy(redeploys_d)
    h_re_p, h_re_d = _median_hand(hand_re_p), _median_hand(hand_re_d)
    med = f"median of {repeats}" if repeats > 1 else "1 run"
    docker_first = ("first deploy, dependency image built" if fresh_deps
                    else "first deploy of the deployment (smoke: dependency image may be cached)")
    summary = Table(
        "deploy latency of examples/hello: `mcp-agent deploy app` from CLI start to exit (endpoint healthy and routed)",
        "mcp-agent deploy", "by hand, without the platform", [
            Row("process: first deploy (fresh venv cache: venv + pip install)", "s", first_p.total,
                hand_first_p.total),
            Row(f"process: code-only redeploy ({med})", "s", re_p.total, h_re_p.total, goal=3, goal_kind="absolute"),
            Row(f"docker: {docker_first}", "s", first_d.total, hand_first_d.total),
            Row(f"docker: code-only redeploy, dependency image cached ({med})", "s", re_d.total, h_re_d.total,
                goal=10, goal_kind="absolute"),
        ], [
            "ours: wall clock of `mcp-agent deploy app DIR --name hello [--builder docker]` from process start to its "
            "exit 0, which comes after the platform's health check (MCP initialize + tools/list on the new instance) "
            "and the route switch; a tool call through the gateway then must answer with the new code",
            "process baseline: `python -m venv --without-pip` + `pip --python VENV install -r requirements.txt` "
            "(the builder's own commands) + starting `main.mcp.run('streamable-http')` until MCP answers; "
            "code-only: SIGTERM the old server, start the new one until it answers",
            "docker baseline: `pip wheel -r requirements.txt` on the host + `docker build --no-cache` of a "
            "single-stage Dockerfile (venv + pip install --no-index of those wheels, then COPY app) + `docker run "
            "-d -p 127.0.0.1:PORT:8000` until MCP answers; code-only: `docker build` with the dependency layers "
            "cached + `docker rm -f` of the old container + `docker run`. No hardening options, default network",
            "the platform starts the new instance before it stops the old one (no downtime); the baselines stop "
            "first. pip installs from its local cache and wheel dirs on this machine (no network download), "
            "for both sides",
        ] + ([
            "docker first deploy: both sides add a tiny wheel unique to the run (./vendor/*.whl) to the "
            "requirements, so that no dependency image and no cached layer of one exists (the engine's layer cache "
            "is keyed by the wheels' bytes, which examples/hello's requirements alone share with earlier runs)",
        ] if fresh_deps else []))
    step_note = ("per-step times: validate, package and upload as the CLI prints them (human output only, 0.1 s "
                 "resolution; a package already on the platform prints no upload time); unpack to route from the "
                 "platform's deploy.step events (duration_ms); the derived rows are the wall clock minus those")
    tables.append(summary)
    tables.append(_steps_table("process builder, first deploy: per step", first_p, hand_first_p,
                               "by hand (venv + pip, start)", [step_note]))
    tables.append(_steps_table(f"process builder, code-only redeploy: per step ({med}, step by step)", re_p, h_re_p,
                               "by hand (stop old, start new)", [
                                   "by-hand `route` is stopping the old server; the platform's route step switches "
                                   "the gateway to the new instance and retires the old one"]))
    tables.append(_steps_table(f"docker builder, {docker_first}: per step", first_d, hand_first_d,
                               "by hand (pip wheel + docker build, docker run)", []))
    tables.append(_steps_table(f"docker builder, code-only redeploy: per step ({med}, step by step)", re_d, h_re_d,
                               "by hand (docker build cached, rm -f, run)", [
                                   "by-hand `route` is `docker rm -f` of the old container"]))
    return tables


def _platform_id(data_dir: Path) -> str:
    from mcp_agent_cloud.plugins.container import _platform_id as pid

    return pid(data_dir)

