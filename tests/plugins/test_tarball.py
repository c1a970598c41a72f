"""The tarball packager on real trees and real archives, including hand-built hostile ones."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import anyio
import pytest

from mcp_agent_cloud.errors import PackageError, TooLargeError
from mcp_agent_cloud.hookspecs.types import FileEntry, Manifest, PackageHints, PluginContext
from mcp_agent_cloud.names import requirements_hash
from mcp_agent_cloud.plugins import tarball
from mcp_agent_cloud.plugins.tarball import (
    MANIFEST_PATH,
    IgnoreRules,
    TarballConfig,
    TarballPackager,
    mcp_agent_cloud_packagers,
)

HINTS = PackageHints(name="demo", entrypoint="main:server", requirements=["mcp>=1", "httpx"],
                     description="a demo", env={"MODE": "prod"})


def make_packager(tmp_path: Path, **config) -> TarballPackager:
    return TarballPackager(TarballConfig(**config), PluginContext(data_dir=tmp_path))


@pytest.fixture
def packager(tmp_path):
    return make_packager(tmp_path)


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def package(packager, src, out, hints=HINTS, **kw):
    return anyio.run(functools.partial(packager.package, src, hints, out, **kw))


def unpack(packager, archive, dest, **kw):
    return anyio.run(functools.partial(packager.unpack, archive, dest, **kw))


def member_names(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def packaged_files(packager, src, out) -> set[str]:
    return {f.path for f in package(packager, src, out).manifest.files}


@pytest.fixture
def app(tmp_path) -> Path:
    root = write(tmp_path / "app", {
        "main.py": "server = MCPServer('x')\n",
        "pkg/__init__.py": "",
        "pkg/util.py": "VALUE = 1\n",
        "data/blob.bin": bytes(range(256)) * 4,
        "run.sh": "#!/bin/sh\necho hi\n",
    })
    (root / "run.sh").chmod(0o755)
    (root / "empty").mkdir()
    return root


def test_registers_tarball_packager():
    [spec] = list(mcp_agent_cloud_packagers())
    assert (spec.name, spec.backend, spec.config_model) == ("tarball", TarballPackager, TarballConfig)


# -- determinism -------------------------------------------------------------------------------------------------


def test_same_tree_gives_same_bytes(packager, app, tmp_path):
    first = package(packager, app, tmp_path / "out1")
    second = package(packager, app, tmp_path / "out2")
    assert first.sha256 == second.sha256
    assert first.path == tmp_path / "out1" / f"{first.sha256}.tar.gz"
    assert hashlib.sha256(first.path.read_bytes()).hexdigest() == first.sha256
    assert first.size == first.path.stat().st_size
    assert sorted(p.name for p in (tmp_path / "out1").iterdir()) == [first.path.name]  # no temp file left


def test_copy_with_other_mtimes_and_creation_order_gives_same_bytes(packager, app, tmp_path):
    copy = tmp_path / "elsewhere" / "renamed"
    copy.mkdir(parents=True)
    for path in sorted(app.rglob("*"), reverse=True):  # create in another order
        target = copy / path.relative_to(app)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            target.chmod(0o750 if os.access(path, os.X_OK) else 0o600)  # other bits, same executability
    for i, path in enumerate(copy.rglob("*")):
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    assert package(packager, app, tmp_path / "a").sha256 == package(packager, copy, tmp_path / "b").sha256


@pytest.mark.parametrize("level", [1, 9])
def test_parallel_gzip_is_one_valid_stream_whatever_the_threads_and_writes(level):
    """Blocks compressed apart join into one gzip stream; the bytes depend on the input and level alone."""
    import random

    rng = random.Random(3)
    block = tarball._ParallelGzip.BLOCK
    data = (b"words repeat " * (block // 6) + rng.randbytes(block // 2)) * 3 + b"tail"  # several blocks, uneven end

    def compress(threads: int, step: int) -> bytes:
        raw = io.BytesIO()
        gz = tarball._ParallelGzip(raw, level, threads=threads)
        for i in range(0, len(data), step):
            gz.write(data[i : i + step])
        gz.close()
        return raw.getvalue()

    one = compress(1, len(data))
    assert gzip.decompress(one) == data
    assert compress(4, 10_000) == one == compress(2, 1 << 16)
    assert len(one) < len(data) * 0.8  # it compresses: the dictionary carries across blocks
    raw = io.BytesIO()
    empty = tarball._ParallelGzip(raw, level)
    empty.close()
    assert gzip.decompress(raw.getvalue()) == b""


def test_gzip_header_and_members_are_normalized(packager, app, tmp_path):
    pkg = package(packager, app, tmp_path / "out")
    raw = pkg.path.read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip mtime
    assert not raw[3] & 0x08  # no FNAME flag: no file name stored
    with tarfile.open(pkg.path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == MANIFEST_PATH
    assert names[1:] == sorted(names[1:])
    assert {m.name: (m.mode, m.type) for m in members if m.name in ("run.sh", "main.py", "pkg", "empty")} == {
        "run.sh": (0o755, tarfile.REGTYPE), "main.py": (0o644, tarfile.REGTYPE),
        "pkg": (0o755, tarfile.DIRTYPE), "empty": (0o755, tarfile.DIRTYPE)}
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}


# -- excludes ----------------------------------------------------------------------------------------------------


def test_builtin_excludes(packager, tmp_path):
    root = write(tmp_path / "app", {
        "main.py": "", "sub/keep.py": "", ".envrc": "kept: only .env itself is excluded",
        ".git/HEAD": "ref", ".venv/pyvenv.cfg": "", ".venv/lib/x.py": "",
        "myenv/pyvenv.cfg": "", "myenv/bin/python": "", "__pycache__/main.cpython-311.pyc": "",
        "sub/mod.pyc": "", "node_modules/x/index.js": "", ".env": "SECRET=1", "sub/.env": "SECRET=2",
        "mcp_agent.secrets.yaml": "key: secret", "sub/mcp_agent.secrets.yaml": "key: secret",
        ".mcp-agent/manifest.json": "{stale}",
    })
    assert packaged_files(packager, root, tmp_path / "out") == {"main.py", "sub/keep.py", ".envrc"}


def test_builtin_excludes_cannot_be_negated(packager, tmp_path):
    root = write(tmp_path / "app", {"main.py": "", ".env": "S=1", ".gitignore": "!.env\n!mcp_agent.secrets.yaml\n",
                                    "mcp_agent.secrets.yaml": "k: v"})
    assert packaged_files(packager, root, tmp_path / "out") == {"main.py", ".gitignore"}


def test_gitignore_mcpacignore_and_extra_patterns(packager, tmp_path):
    root = write(tmp_path / "app", {
        ".gitignore": "# logs\n*.log\n!keep.log\nbuild/\n!build/forced.py\n/top.txt\ndata/**/*.csv\n\n",
        ".mcpacignore": "secret?.txt\n[ab]x.py\n",
        "main.py": "", "a.log": "", "sub/b.log": "", "sub/keep.log": "",
        "build/out.py": "", "build/forced.py": "", "docs/build": "a file, not a dir",
        "top.txt": "", "sub/top.txt": "",
        "data/x.csv": "", "data/deep/er/y.csv": "", "data/z.json": "", "other/x.csv": "",
        "secret1.txt": "", "secret12.txt": "", "ax.py": "", "cx.py": "",
        "extra/big.bin": "", "keep/extra/x": "",
    })
    got = packaged_files(packager, root, tmp_path / "out") - {".gitignore", ".mcpacignore"}
    assert got == {"main.py", "sub/keep.log", "docs/build", "sub/top.txt", "data/z.json", "other/x.csv",
                   "secret12.txt", "cx.py", "keep/extra/x", "extra/big.bin"}
    got = {f.path for f in package(packager, root, tmp_path / "out2", exclude=["/extra/"]).manifest.files}
    assert "extra/big.bin" not in got and "keep/extra/x" in got


@pytest.mark.parametrize("patterns, path, is_dir, ignored", [
    (["foo"], "a/b/foo", False, True),
    (["foo/"], "a/foo", False, False),
    (["foo/"], "a/foo", True, True),
    (["/foo"], "a/foo", False, False),
    (["a/foo"], "a/foo", False, True),
    (["a/foo"], "x/a/foo", False, False),
    (["**/foo"], "x/y/foo", False, True),
    (["a/**/b"], "a/b", False, True),
    (["a/**/b"], "a/x/y/b", False, True),
    (["a/**"], "a/x/y", False, True),
    (["a/**"], "a", True, False),
    (["*.py", "!main.py"], "main.py", False, False),
    (["f?o"], "fxo", False, True),
    (["f?o"], "fo", False, False),
    (["[!a]x"], "bx", False, True),
    (["[!a]x"], "ax", False, False),
    (["\\#hash", "\\!bang"], "#hash", False, True),
    (["\\!bang"], "!bang", False, True),
    (["# comment"], "# comment", False, False),
    (["d/*.md"], "d/sub/x.md", False, False),
])
def test_ignore_rules(patterns, path, is_dir, ignored):
    assert IgnoreRules(patterns).ignored(path, is_dir) is ignored


def test_output_dir_inside_the_app_is_not_packaged(packager, app):
    first = package(packager, app, app / "dist")
    second = package(packager, app, app / "dist")
    assert first.sha256 == second.sha256
    assert not any(f.path.startswith("dist/") for f in second.manifest.files)


def test_symlink_in_tree_is_an_error_unless_ignored(packager, app, tmp_path):
    os.symlink("/etc/passwd", app / "pkg" / "link")
    with pytest.raises(PackageError, match="pkg/link is a symlink") as exc:
        package(packager, app, tmp_path / "out")
    assert ".mcpacignore" in exc.value.hint
    (app / ".mcpacignore").write_text("pkg/link\n")
    assert "pkg/link" not in {f.path for f in package(packager, app, tmp_path / "out").manifest.files}


def test_file_changed_while_packaging_is_an_error(packager, app, tmp_path, monkeypatch):
    real = tarball.sha256_file

    def hash_then_change(path):
        digest = real(path)
        if str(path).endswith("main.py"):
            Path(path).write_text(Path(path).read_text().upper())  # same size, other bytes
        return digest

    monkeypatch.setattr(tarball, "sha256_file", hash_then_change)
    with pytest.raises(PackageError, match="main.py changed while it was being packaged"):
        package(packager, app, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_fifo_in_tree_is_an_error(packager, app, tmp_path):
    os.mkfifo(app / "pipe")
    with pytest.raises(PackageError, match="pipe is a device, fifo or socket"):
        package(packager, app, tmp_path / "out")


# -- manifest, round trip, limits --------------------------------------------------------------------------------


def test_manifest_content(packager, app, tmp_path):
    pkg = package(packager, app, tmp_path / "out")
    m = pkg.manifest
    assert (m.format, m.kind, m.name, m.entrypoint, m.description, m.env) == (
        "tarball", "app", "demo", "main:server", "a demo", {"MODE": "prod"})
    assert m.requirements == ["mcp>=1", "httpx"]
    assert m.requirements_hash == requirements_hash(["httpx", "mcp>=1"])
    assert [f.path for f in m.files] == ["data/blob.bin", "main.py", "pkg/__init__.py", "pkg/util.py", "run.sh"]
    for f in m.files:
        content = (app / f.path).read_bytes()
        assert (f.sha256, f.size) == (hashlib.sha256(content).hexdigest(), len(content))
    with tarfile.open(pkg.path) as tar:
        stored = Manifest.model_validate_json(tar.extractfile(MANIFEST_PATH).read())
    assert stored == m
    assert anyio.run(packager.inspect, pkg.path) == m


def test_round_trip(packager, app, tmp_path):
    pkg = package(packager, app, tmp_path / "out")
    dest = tmp_path / "deploy" / "v1"
    assert unpack(packager, pkg.path, dest) == pkg.manifest
    source = {p.relative_to(app) for p in app.rglob("*")}
    unpacked = {p.relative_to(dest) for p in dest.rglob("*")} - {Path(".mcp-agent"), Path(MANIFEST_PATH)}
    assert unpacked == source
    for rel in source:
        if (app / rel).is_file():
            assert (dest / rel).read_bytes() == (app / rel).read_bytes()
    assert os.access(dest / "run.sh", os.X_OK) and not os.access(dest / "main.py", os.X_OK)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["v1"]  # temp dir moved, not copied


def test_unpack_into_empty_existing_dir_but_not_a_full_one(packager, app, tmp_path):
    pkg = package(packager, app, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    unpack(packager, pkg.path, tmp_path / "empty")
    assert (tmp_path / "empty" / "main.py").is_file()
    with pytest.raises(PackageError, match="not an empty directory"):
        unpack(packager, pkg.path, tmp_path / "empty")


def test_too_large_names_the_largest_files(tmp_path):
    sizes = {"f1.bin": 9000, "f2.bin": 8000, "f3.bin": 7000, "f4.bin": 6000, "f5.bin": 5000, "f6.bin": 100}
    root = write(tmp_path / "app", {name: os.urandom(size) for name, size in sizes.items()})
    with pytest.raises(TooLargeError) as exc:
        package(make_packager(tmp_path, max_bytes=20_000), root, tmp_path / "out")
    assert all(f"f{i}.bin" in exc.value.message for i in range(1, 6))
    assert "f6.bin" not in exc.value.message
    assert ".mcpacignore" in exc.value.hint
    assert list((tmp_path / "out").iterdir()) == []
    # hints.max_bytes applies when it is the smaller limit
    with pytest.raises(TooLargeError):
        package(make_packager(tmp_path), root, tmp_path / "out", hints=HINTS.model_copy(update={"max_bytes": 20_000}))
    assert package(make_packager(tmp_path, max_bytes=50_000), root, tmp_path / "out").size <= 50_000


def test_unpacked_size_and_file_count_limits_apply_when_packaging(tmp_path):
    root = write(tmp_path / "app", {f"f{i}.txt": "x" * 100 for i in range(5)})
    with pytest.raises(TooLargeError, match="over the limit"):
        package(make_packager(tmp_path, max_unpacked_bytes=400), root, tmp_path / "out")
    with pytest.raises(TooLargeError, match="over the limit of 5"):
        package(make_packager(tmp_path, max_files=5), root, tmp_path / "out")


# -- hostile archives --------------------------------------------------------------------------------------------

GOOD = b"hello\n"


def build(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], *, manifest: Manifest | bytes | None = None,
          add_manifest: bool = True) -> Path:
    """Write a .tar.gz by hand. By default the manifest lists every regular file with its real hash."""
    if manifest is None:
        manifest = Manifest(format="tarball", name="evil", files=[
            FileEntry(path=info.name, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            for info, data in members if info.isreg() and data is not None])
    raw = manifest if isinstance(manifest, bytes) else manifest.model_dump_json().encode()
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        if add_manifest:
            tar.addfile(info_for(MANIFEST_PATH, raw), io.BytesIO(raw))
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def info_for(name: str, data: bytes = b"", type: bytes = tarfile.REGTYPE, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = type, len(data) if type == tarfile.REGTYPE else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def file_member(name: str, data: bytes = GOOD):
    return info_for(name, data), data


def special(name: str, type: bytes, **attrs):
    return info_for(name, type=type, **attrs), None


def bad_hash_manifest(name: str) -> Manifest:
    return Manifest(format="tarball", name="evil",
                    files=[FileEntry(path=name, sha256=hashlib.sha256(b"HELLO\n").hexdigest(), size=len(GOOD))])


HOSTILE = {
    "traversal": ([file_member("ok.txt"), file_member("../x")], {}, "'../x': '..'"),
    "nested traversal": ([file_member("a/../../x")], {}, "'a/../../x': '..'"),
    "absolute": ([file_member("/etc/x")], {}, "'/etc/x': absolute"),
    "symlink": ([file_member("ok.txt"), special("link", tarfile.SYMTYPE, linkname="/etc/passwd")], {},
                "'link': symlink"),
    "hardlink": ([file_member("ok.txt"), special("hard", tarfile.LNKTYPE, linkname="ok.txt")], {}, "'hard': hardlink"),
    "char device": ([special("dev", tarfile.CHRTYPE, devmajor=1, devminor=3)], {}, "'dev': device"),
    "block device": ([special("blk", tarfile.BLKTYPE, devmajor=8, devminor=0)], {}, "'blk': device"),
    "fifo": ([special("fifo", tarfile.FIFOTYPE)], {}, "'fifo': fifo"),
    "duplicate": ([file_member("dup.txt"), file_member("dup.txt")], {}, "'dup.txt': duplicate"),
    "dot component": ([file_member("./sneaky.txt")], {}, "'./sneaky.txt': not a normalized"),
    "file as parent": ([file_member("a"), file_member("a/b")], {}, "'a/b': its parent"),
    "tampered content": ([file_member("ok.txt")], {"manifest": bad_hash_manifest("ok.txt")}, "'ok.txt'"),
    "size mismatch": ([file_member("ok.txt", b"longer content\n")], {"manifest": bad_hash_manifest("ok.txt")},
                      "'ok.txt'"),
    "not in manifest": ([file_member("extra.txt")], {"manifest": Manifest(format="tarball", name="e")},
                        "'extra.txt'"),
    "listed but missing": ([], {"manifest": bad_hash_manifest("ghost.txt")}, "'ghost.txt'"),
    "missing manifest": ([file_member("ok.txt")], {"add_manifest": False}, MANIFEST_PATH),
    "invalid manifest json": ([file_member("ok.txt")], {"manifest": b"{not json"}, MANIFEST_PATH),
    "manifest wrong shape": ([file_member("ok.txt")], {"manifest": json.dumps({"files": 3}).encode()},
                             MANIFEST_PATH),
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("method", ["unpack", "inspect"])
def test_hostile_archive_is_refused_and_nothing_is_written(packager, tmp_path, case, method):
    members, kwargs, named = HOSTILE[case]  # `named`: the member and, where there is one, the reason
    archive = build(tmp_path / "evil.tar.gz", members, **kwargs)
    out = tmp_path / "deploy"
    out.mkdir()
    with pytest.raises(PackageError) as exc:
        if method == "unpack":
            unpack(packager, archive, out / "v1")
        else:
            anyio.run(packager.inspect, archive)
    assert named in exc.value.message
    assert list(out.iterdir()) == []  # neither dest nor a temp dir
    assert not (tmp_path / "x").exists() and not (tmp_path / "sneaky.txt").exists()


def test_tampered_content_is_caught_after_extraction(packager, tmp_path):
    # Header sizes agree with the manifest, so only the hash check after extraction can catch this one.
    archive = build(tmp_path / "evil.tar.gz", [file_member("a.txt"), file_member("ok.txt")],
                    manifest=Manifest(format="tarball", name="e", files=[
                        FileEntry(path="a.txt", sha256=hashlib.sha256(GOOD).hexdigest(), size=len(GOOD)),
                        bad_hash_manifest("ok.txt").files[0]]))
    with pytest.raises(PackageError, match="'ok.txt': content does not match the manifest"):
        unpack(packager, archive, tmp_path / "dest")
    assert [p.name for p in tmp_path.iterdir()] == ["evil.tar.gz"]


@pytest.mark.parametrize("content", [
    b"this is not an archive at all",
    b"",
    gzip.compress(b"gzip, but not a tar" * 100),
], ids=["garbage", "empty", "gzip-not-tar"])
def test_corrupt_files_are_package_errors(packager, tmp_path, content):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(content)
    with pytest.raises(PackageError):
        unpack(packager, archive, tmp_path / "dest")
    with pytest.raises(PackageError):
        anyio.run(packager.inspect, archive)
    assert not (tmp_path / "dest").exists()


def test_truncated_archive_is_a_package_error(packager, app, tmp_path):
    pkg = package(packager, app, tmp_path / "out")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(pkg.path.read_bytes()[: pkg.size // 2])
    with pytest.raises(PackageError):
        unpack(packager, cut, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_unpack_limits(packager, tmp_path):
    archive = build(tmp_path / "a.tar.gz", [file_member(f"f{i}.txt", b"x" * 1000) for i in range(5)])
    with pytest.raises(TooLargeError, match="more than 3 members"):
        unpack(make_packager(tmp_path, max_files=3), archive, tmp_path / "d1")
    with pytest.raises(TooLargeError, match="unpacks to more than"):
        unpack(packager, archive, tmp_path / "d2", max_bytes=2500)
    with pytest.raises(TooLargeError, match="unpacks to more than"):
        unpack(make_packager(tmp_path, max_unpacked_bytes=2500), archive, tmp_path / "d3")
    assert not any((tmp_path / d).exists() for d in ("d1", "d2", "d3"))
    assert len(unpack(packager, archive, tmp_path / "d4", max_bytes=10_000).files) == 5


def test_unpack_missing_archive(packager, tmp_path):
    with pytest.raises(PackageError, match="archive not found"):
        unpack(packager, tmp_path / "nope.tar.gz", tmp_path / "dest")
