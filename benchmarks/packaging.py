"""Packaging: our tarball packager against ``tar -c | gzip -1`` on the same synthetic tree, ignore rules included.

The tree is source-like: many small text files and some large ones, half of them text and half incompressible,
plus ignored directories (a build dir, a .git, a node_modules, logs) that neither side may archive. Throughput is
the bytes of the files that end up in the archive per second of wall time; the tree is in the page cache for
both (a warm-up pass reads it first), and the two sides alternate, the median of the runs counting.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import tarfile
import time
from pathlib import Path

from .common import Context, Row, Table

WORDS = ("def class return import self value result async await yield lambda config deploy server tool call "
         "request response token session error status version name path file data json yaml test assert").split()
IGNORE = ["build/", "*.log", "/tmp-cache/"]


def make_tree(root: Path, files: int, total_bytes: int, seed: int = 7) -> tuple[int, int]:
    """Writes the tree; returns (files, bytes) of what is meant to be packaged (the ignored parts excluded)."""
    rng = random.Random(seed)
    text = " ".join(rng.choice(WORDS) for _ in range(400_000)).encode()  # ~2.4 MB of word soup, sliced per file
    noise = rng.randbytes(4 << 20)
    big_count = max(1, files // 400)
    big_size = total_bytes // 2 // big_count  # half the bytes in a few big files
    small_size = max(1, (total_bytes - big_size * big_count) // max(1, files - big_count))
    kept_files = kept_bytes = 0
    for i in range(files):
        d = root / f"pkg{i % 40}" / f"mod{i % 13}"
        d.mkdir(parents=True, exist_ok=True)
        if i < big_count:
            size, source = big_size, noise if i % 2 else text
            path = d / f"blob{i}.bin"
        else:
            size = max(1, int(small_size * rng.uniform(0.2, 1.8)))
            source = text
            path = d / f"file{i}.py"
        with open(path, "wb") as f:
            left = size
            while left > 0:
                start = rng.randrange(0, len(source) - 1)
                chunk = source[start : start + min(left, len(source) - start)]
                f.write(chunk)
                left -= len(chunk)
        kept_files += 1
        kept_bytes += size
    (root / ".gitignore").write_text("\n".join(IGNORE) + "\n")
    kept_files += 1
    kept_bytes += (root / ".gitignore").stat().st_size
    for ignored in ("build", ".git/objects", "node_modules/x", "tmp-cache"):
        (root / ignored).mkdir(parents=True, exist_ok=True)
        for j in range(max(1, files // 100)):
            (root / ignored / f"junk{j}.o").write_bytes(noise[: 4096])
    for j in range(20):
        (root / "pkg0" / f"run{j}.log").write_bytes(text[:2000])
    return kept_files, kept_bytes


def _warm(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            path.read_bytes()


def _tar_gzip(root: Path, out: Path) -> float:
    excludes = ["--exclude=./build", "--exclude=*.log", "--exclude=./tmp-cache", "--exclude=./.git",
                "--exclude=node_modules"]
    t0 = time.perf_counter()
    with open(out, "wb") as f:
        tar = subprocess.Popen(["tar", "-c", "-C", str(root), *excludes, "."], stdout=subprocess.PIPE)
        gz = subprocess.run(["gzip", "-1"], stdin=tar.stdout, stdout=f, check=True)
        tar.stdout.close()
        if tar.wait() != 0 or gz.returncode != 0:
            raise RuntimeError("tar | gzip failed")
    return time.perf_counter() - t0


async def _ours(root: Path, out: Path, files: int):
    from mcp_agent_cloud.hookspecs.types import PackageHints, PluginContext
    from mcp_agent_cloud.plugins.tarball import TarballConfig, TarballPackager

    config = TarballConfig(max_files=files * 2 + 2000, max_bytes=1 << 40, max_unpacked_bytes=1 << 40)
    packager = TarballPackager(config, PluginContext(data_dir=out.parent))
    t0 = time.perf_counter()
    package = await packager.package(root, PackageHints(name="bench", entrypoint="main:app"), out)
    return time.perf_counter() - t0, package


async def run(ctx: Context) -> list[Table]:
    files = ctx.size(20_000, 300)
    total = ctx.size(200 << 20, 3 << 20)
    runs = ctx.size(3, 1)
    root = ctx.workdir / "tree"
    ctx.say(f"writing a tree of {files:,} files, {total >> 20} MB (plus ignored directories)")
    kept_files, kept_bytes = make_tree(root, files, total)
    _warm(root)
    _tar_gzip(root, ctx.workdir / "warm.tar.gz")
    ours_t, tar_t, digests, sizes = [], [], [], {}
    for i in range(runs + 1 if runs > 1 else 2):  # at least two of ours, for the same-sha256 check
        ctx.say(f"run {i + 1}")
        seconds, package = await _ours(root, ctx.workdir / f"ours{i}", files)
        ours_t.append(seconds)
        digests.append(package.sha256)
        sizes["ours"] = package.size
        members = [m for m in tarfile.open(package.path).getmembers() if m.isfile()]
        if len(members) != kept_files + 1:  # + the manifest
            raise AssertionError(f"ours archived {len(members) - 1} files, expected {kept_files}")
        tar_t.append(_tar_gzip(root, ctx.workdir / f"tar{i}.tar.gz"))
        sizes["tar"] = (ctx.workdir / f"tar{i}.tar.gz").stat().st_size
    tar_files = sum(1 for m in tarfile.open(ctx.workdir / "tar0.tar.gz").getmembers() if m.isfile())
    if tar_files != kept_files:
        raise AssertionError(f"tar archived {tar_files} files, expected {kept_files}: the excludes differ")
    mb = kept_bytes / 1e6
    ours_rate = mb / statistics.median(ours_t)
    tar_rate = mb / statistics.median(tar_t)
    same = len(set(digests)) == 1
    table = Table(
        f"packaging {kept_files:,} files, {mb:.0f} MB (ignored dirs excluded)", "ours (tarball)", "tar | gzip -1", [
            Row("throughput", "MB/s", ours_rate, tar_rate, goal=0.8, higher_is_better=True),
            Row("wall time (median)", "s", statistics.median(ours_t), statistics.median(tar_t)),
            Row("archive size", "MB", sizes["ours"] / 1e6, sizes["tar"] / 1e6),
            Row("same sha256 on two runs", "", 1.0 if same else 0.0, goal=1, goal_kind="absolute",
                higher_is_better=True, note="1 = identical archives"),
        ])
    if not same:
        table.notes.append(f"sha256 differed between runs: {digests}")
    return [table]
