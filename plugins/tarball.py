"""The built-in ``tarball`` packager: a deterministic ``.tar.gz`` whose first entry is ``.mcp-agent/manifest.json``.

Packaging walks the app directory (minus built-in excludes, ``.gitignore``, ``.mcpacignore`` and extra patterns),
records every file's sha256 in the manifest and writes entries with fixed metadata, so the same tree always gives
the same bytes. Unpacking validates every member before anything is written, extracts into a temporary directory,
checks every file against the manifest and only then moves the result into place.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcp_agent_cloud.errors import PackageError, TooLargeError
from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import FileEntry, Manifest, Package, PackageHints, Packager, PackagerSpec
from mcp_agent_cloud.names import requirements_hash, sha256_file

MANIFEST_DIR = ".mcp-agent"
MANIFEST_PATH = f"{MANIFEST_DIR}/manifest.json"
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
IGNORE_FILES = (".gitignore", ".mcpacignore")
# Never packaged, whatever the ignore files say: VCS data, environments, caches and secrets.
ALWAYS_EXCLUDED_NAMES = frozenset({".git", ".venv", "__pycache__", "node_modules", ".env", "mcp_agent.secrets.yaml"})
IGNORE_HINT = "add the path to .mcpacignore in the app directory (gitignore syntax), e.g. data/ or *.bin"
TAMPERED_HINT = "the archive was modified or corrupted; package the app again"
# Corrupt input surfaces from tarfile/gzip as any of these.
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


class TarballConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    compression_level: int = Field(1, ge=1, le=9, description="gzip level: 1 fastest (as gzip -1), 9 smallest "
                                   "(about 15% smaller on source trees, at several times the CPU)")
    max_bytes: int = Field(100 * 1024 * 1024, gt=0, description="largest compressed archive package() writes")
    max_unpacked_bytes: int = Field(500 * 1024 * 1024, gt=0, description="largest total size of the files")
    max_files: int = Field(20000, gt=0, description="most entries (files and directories) in one archive")


# ---------------------------------------------------------------------------------------------------------------
# gitignore-style patterns
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    anchored: bool  # matched against the whole relative path, not just the last component


def _translate(pattern: str) -> str:
    """Glob to regex: ``*`` and ``?`` stop at ``/``; ``**/`` spans directories; ``/**`` matches everything inside."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i) and (i == 0 or pattern[i - 1] == "/"):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("/**", i) and i + 3 == n:
            out.append("/.*")
            break
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = i + 1
            j += j < n and pattern[j] in "!^"
            j += j < n and pattern[j] == "]"
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal '['
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                negated = body[:1] in ("!", "^")
                body = (body[1:] if negated else body).replace("\\", "\\\\").replace("[", "\\[")
                out.append(f"[^/{body}]" if negated else f"[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _compile(line: str) -> _Rule | None:
    line = re.sub(r"(?<!\\)\s+$", "", line.rstrip("\r\n"))  # trailing blanks count only when escaped
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    if negate or line.startswith(("\\!", "\\#")):
        line = line[1:]
    dir_only = line.endswith("/")
    line = line.rstrip("/")
    anchored = "/" in line  # a slash at the start or in the middle ties the pattern to the app root
    line = line.lstrip("/")
    if not line:
        return None
    return _Rule(re.compile(_translate(line), re.DOTALL), negate, dir_only, anchored)


class IgnoreRules:
    """Patterns in gitignore syntax, the last matching one deciding. Like git, nothing inside an ignored directory
    can be re-included, because the walk never enters it."""

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self.rules = [rule for line in lines if (rule := _compile(line)) is not None]

    @classmethod
    def for_app(cls, root: Path, extra: Iterable[str] = ()) -> IgnoreRules:
        lines: list[str] = []
        for filename in IGNORE_FILES:
            path = root / filename
            if path.is_file():
                lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
        return cls([*lines, *extra])

    def ignored(self, rel: str, is_dir: bool) -> bool:
        result = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.fullmatch(rel if rule.anchored else rel.rpartition("/")[2]):
                result = not rule.negate
        return result


def _always_excluded(rel: str, name: str, path: str, is_dir: bool) -> bool:
    if name in ALWAYS_EXCLUDED_NAMES or name.endswith(".pyc") or rel == MANIFEST_DIR:
        return True
    return is_dir and os.path.isfile(os.path.join(path, "pyvenv.cfg"))  # a virtualenv under any name


# ---------------------------------------------------------------------------------------------------------------
# Packaging
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
    rel: str
    path: str
    is_dir: bool
    size: int = 0
    executable: bool = False


def _walk(root: Path, rules: IgnoreRules) -> list[_Entry]:
    out: list[_Entry] = []
    pending = [("", str(root))]
    while pending:
        prefix, directory = pending.pop()
        with os.scandir(directory) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            rel = prefix + child.name
            is_dir = child.is_dir(follow_symlinks=False)
            if _always_excluded(rel, child.name, child.path, is_dir) or rules.ignored(rel, is_dir):
                continue
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise PackageError(f"{rel!r}: file name is not valid UTF-8", hint=IGNORE_HINT) from None
            if "\\" in rel:  # unpack refuses backslashes (a path separator on Windows)
                raise PackageError(f"{rel!r}: file name contains a backslash", hint=IGNORE_HINT)
            if child.is_symlink():
                raise PackageError(f"{rel} is a symlink; packages hold only regular files and directories",
                                   hint=f"{IGNORE_HINT}, or replace the link with a copy of its target")
            if is_dir:
                out.append(_Entry(rel, child.path, True))
                pending.append((rel + "/", child.path))
            elif child.is_file(follow_symlinks=False):
                st = child.stat(follow_symlinks=False)
                out.append(_Entry(rel, child.path, False, st.st_size, bool(st.st_mode & 0o111)))
            else:
                raise PackageError(f"{rel} is a device, fifo or socket, not a regular file", hint=IGNORE_HINT)
    return sorted(out, key=lambda e: e.rel)


def _hash_all(files: list[_Entry]) -> list[str]:
    """sha256 of each file, on a few threads (hashlib releases the GIL): a big tree hashes at disk speed."""
    from concurrent.futures import ThreadPoolExecutor

    if len(files) < 64:
        return [sha256_file(e.path) for e in files]
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="tarball-hash") as pool:
        return list(pool.map(lambda e: sha256_file(e.path), files, chunksize=32))


def _human(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB" if size >= 1024 * 1024 else f"{size / 1024:.1f} KB"


def _too_large(what: str, size: int, limit: int, files: list[_Entry]) -> TooLargeError:
    largest = sorted(files, key=lambda e: (-e.size, e.rel))[:5]
    listing = ", ".join(f"{e.rel} ({_human(e.size)})" for e in largest)
    return TooLargeError(f"{what} is {_human(size)}, over the limit of {_human(limit)}; largest files: {listing}",
                         hint=IGNORE_HINT)


def _tarinfo(name: str, *, size: int = 0, mode: int = 0o644, type: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type = size, mode, type
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


class _ParallelGzip:
    """A write-only gzip stream compressed in fixed-size blocks on a thread pool (zlib releases the GIL), like pigz.

    Each block is deflated on its own, primed with the previous block's last 32 KiB as dictionary and ended with a
    sync flush, so the blocks join into one deflate stream any gunzip reads. The bytes depend only on the input and
    the level, never on the thread count or on how writes are split.
    """

    BLOCK = 1 << 20
    WINDOW = 1 << 15

    def __init__(self, raw: BinaryIO, level: int, threads: int | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.raw, self.level = raw, level
        self.threads = threads or min(4, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tarball-gzip")
        self.pending: list = []  # futures, in stream order
        self.buf = bytearray()
        self.tail = b""  # the last WINDOW bytes before the current block: its dictionary
        self.crc = 0
        self.size = 0
        # gzip header: deflate, no flags, mtime 0, no extra flags, OS unknown
        raw.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")

    def _deflate(self, block: bytes, zdict: bytes, final: bool) -> bytes:
        c = zlib.compressobj(self.level, zlib.DEFLATED, -zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY,
                             **({"zdict": zdict} if zdict else {}))
        return c.compress(block) + c.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)

    def _submit(self, block: bytes, final: bool) -> None:
        self.crc = zlib.crc32(block, self.crc)
        self.size += len(block)
        self.pending.append(self.pool.submit(self._deflate, block, self.tail, final))
        self.tail = (self.tail + block)[-self.WINDOW :]
        while len(self.pending) > 2 * self.threads:  # bounded memory: write out the oldest
            self.raw.write(self.pending.pop(0).result())

    def write(self, data) -> int:
        self.buf += data
        while len(self.buf) >= self.BLOCK:
            self._submit(bytes(self.buf[: self.BLOCK]), final=False)
            del self.buf[: self.BLOCK]
        return len(data)

    def tell(self) -> int:  # tarfile asks for the start offset
        return self.size + len(self.buf)

    def close(self) -> None:
        try:
            self._submit(bytes(self.buf), final=True)
            for future in self.pending:
                self.raw.write(future.result())
            self.raw.write(self.crc.to_bytes(4, "little") + (self.size & 0xFFFFFFFF).to_bytes(4, "little"))
        finally:
            self.pending.clear()
            self.pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _HashingReader:
    """Hashes what tarfile copies, so a file changed between hashing and archiving is caught."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.hash.update(data)
        return data


# ---------------------------------------------------------------------------------------------------------------
# Validation of archives
# ---------------------------------------------------------------------------------------------------------------


def _member_path(m: tarfile.TarInfo) -> str:
    name = m.name
    if name.startswith("/") or re.match(r"^[A-Za-z]:(/|$)", name) or "\\" in name:
        raise PackageError(f"refusing member {name!r}: absolute path", hint="package the app again with mcp-agent")
    path = name.rstrip("/") if m.isdir() else name
    parts = path.split("/")
    if ".." in parts:
        raise PackageError(f"refusing member {name!r}: '..' would write outside the app directory")
    if not path or "\0" in path or any(p in ("", ".") for p in parts):
        raise PackageError(f"refusing member {name!r}: not a normalized relative path")
    kind = ("symlink" if m.issym() else "hardlink" if m.islnk() else "device" if m.ischr() or m.isblk()
            else "fifo" if m.isfifo() else None)
    if kind:
        raise PackageError(f"refusing member {name!r}: {kind}; packages hold only regular files and directories")
    if not (m.isreg() or m.isdir()):
        raise PackageError(f"refusing member {name!r}: unsupported entry type {m.type!r}")
    return path


@dataclasses.dataclass
class _Scanned:
    manifest: Manifest
    members: list[tarfile.TarInfo]
    expected: dict[str, FileEntry]  # packaged files by path, from the manifest


def _digest(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while block := f.read(1 << 20):
        h.update(block)
    return h.hexdigest()


def _check_content(path: str, sha256: str, size: int, expected: dict[str, FileEntry]) -> None:
    entry = expected[path]
    if size != entry.size or sha256 != entry.sha256:
        raise PackageError(f"refusing member {path!r}: content does not match the manifest "
                           f"(sha256 {sha256[:12]}, size {size}; manifest says {entry.sha256[:12]}, {entry.size})",
                           hint=TAMPERED_HINT)


# ---------------------------------------------------------------------------------------------------------------
# The packager
# ---------------------------------------------------------------------------------------------------------------


class TarballPackager(Packager):
    config: TarballConfig

    async def package(self, src_dir: Path, hints: PackageHints, out_dir: Path, *,
                      exclude: Iterable[str] = ()) -> Package:
        """``exclude`` adds gitignore-style patterns (``deploy.exclude``) after the ignore files."""
        return await anyio.to_thread.run_sync(
            functools.partial(self._package, Path(src_dir), hints, Path(out_dir), list(exclude)))

    async def inspect(self, archive: Path) -> Manifest:
        return await anyio.to_thread.run_sync(self._inspect, Path(archive))

    async def unpack(self, archive: Path, dest: Path, *, max_bytes: int | None = None) -> Manifest:
        return await anyio.to_thread.run_sync(self._unpack, Path(archive), Path(dest), max_bytes)

    # -- packaging ------------------------------------------------------------------------------------------------

    def _package(self, src: Path, hints: PackageHints, out_dir: Path, exclude: list[str]) -> Package:
        if not src.is_dir():
            raise PackageError(f"not a directory: {src}", hint="package the app's directory")
        src = src.resolve()
        out_dir = out_dir.resolve()
        if out_dir.is_relative_to(src) and out_dir != src:  # never package earlier archives written inside the app
            exclude = [*exclude, f"/{out_dir.relative_to(src).as_posix()}/"]
        entries = _walk(src, IgnoreRules.for_app(src, exclude))
        files = [e for e in entries if not e.is_dir]
        if len(entries) + 1 > self.config.max_files:
            raise TooLargeError(f"{src} has {len(entries)} files and directories to package, over the limit of "
                                f"{self.config.max_files}", hint=IGNORE_HINT)
        unpacked = sum(e.size for e in files)
        if unpacked > self.config.max_unpacked_bytes:
            raise _too_large("the app", unpacked, self.config.max_unpacked_bytes, files)
        manifest = Manifest(
            format="tarball", name=hints.name, kind="app", entrypoint=hints.entrypoint,
            requirements=list(hints.requirements), requirements_hash=requirements_hash(hints.requirements),
            description=hints.description, env=dict(hints.env),
            files=[FileEntry(path=e.rel, sha256=digest, size=e.size) for e, digest in zip(files, _hash_all(files))])
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=".tarball-", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as raw:
                self._write(raw, manifest, entries)
            size = tmp.stat().st_size
            limit = min(self.config.max_bytes, hints.max_bytes or self.config.max_bytes)
            if size > limit:
                raise _too_large("the package", size, limit, files)
            digest = sha256_file(tmp)
            final = out_dir / f"{digest}.tar.gz"
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Package(path=final, sha256=digest, size=size, manifest=manifest)

    def _write(self, raw: BinaryIO, manifest: Manifest, entries: list[_Entry]) -> None:
        data = manifest.model_dump_json(indent=2).encode()
        expected = {f.path: f.sha256 for f in manifest.files}
        # No file name and mtime 0 in the gzip header: nothing about this run ends up in the bytes.
        gz = _ParallelGzip(raw, self.config.compression_level)
        try:
            self._write_tar(gz, data, expected, entries)
        except BaseException:
            gz.abort()
            raise
        gz.close()

    @staticmethod
    def _write_tar(gz: _ParallelGzip, data: bytes, expected: dict[str, str], entries: list[_Entry]) -> None:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tarinfo(MANIFEST_PATH, size=len(data)), io.BytesIO(data))
            for e in entries:
                if e.is_dir:
                    tar.addfile(_tarinfo(e.rel, mode=0o755, type=tarfile.DIRTYPE))
                    continue
                try:
                    with open(e.path, "rb") as f:
                        reader = _HashingReader(f)
                        tar.addfile(_tarinfo(e.rel, size=e.size, mode=0o755 if e.executable else 0o644), reader)
                except OSError as exc:  # includes tarfile's "unexpected end of data" for a file that shrank
                    raise PackageError(f"could not package {e.rel}: {exc}",
                                       hint="if it changed while packaging, stop whatever writes to it") from None
                if reader.hash.hexdigest() != expected[e.rel]:
                    raise PackageError(f"{e.rel} changed while it was being packaged",
                                       hint="stop whatever writes to it and package again")

    # -- validation and extraction -------------------------------------------------------------------------------

    def _scan(self, tar: tarfile.TarFile, limit: int) -> _Scanned:
        """Check every member header and the manifest. Reads no file content except the manifest's."""
        members: list[tarfile.TarInfo] = []
        paths: dict[str, tarfile.TarInfo] = {}
        total = 0
        try:
            for m in tar:
                if len(members) >= self.config.max_files:
                    raise TooLargeError(f"archive has more than {self.config.max_files} members",
                                        hint=IGNORE_HINT)
                path = _member_path(m)
                if path in paths:
                    raise PackageError(f"refusing member {m.name!r}: duplicate name")
                paths[path] = m
                members.append(m)
                total += m.size if m.isreg() else 0
                if total > limit:  # checked per member, before tarfile skips through the next one's data
                    raise TooLargeError(f"archive unpacks to more than {_human(limit)} (at member {m.name!r})",
                                        hint=IGNORE_HINT)
            manifest = self._read_manifest(tar, paths.get(MANIFEST_PATH))
        except _READ_ERRORS as exc:
            raise PackageError(f"corrupt archive: {exc}", hint="upload the .tar.gz that mcp-agent wrote") from None
        for path, m in paths.items():
            parent = path.rpartition("/")[0]
            while parent:
                if parent in paths and not paths[parent].isdir():
                    raise PackageError(f"refusing member {m.name!r}: its parent {parent!r} is a file")
                parent = parent.rpartition("/")[0]
        expected: dict[str, FileEntry] = {}
        for entry in manifest.files:
            if entry.path in expected or entry.path == MANIFEST_PATH:
                raise PackageError(f"invalid manifest: {entry.path!r} listed twice")
            expected[entry.path] = entry
        for path, m in paths.items():
            if m.isreg() and path != MANIFEST_PATH:
                if path not in expected:
                    raise PackageError(f"refusing member {m.name!r}: not listed in the manifest")
                if m.size != expected[path].size:
                    raise PackageError(f"refusing member {m.name!r}: {m.size} bytes, the manifest says "
                                       f"{expected[path].size}", hint=TAMPERED_HINT)
        missing = sorted(p for p in expected if p not in paths or not paths[p].isreg())
        if missing:
            raise PackageError(f"manifest lists {missing[0]!r} but the archive has no such file"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return _Scanned(manifest, members, expected)

    @staticmethod
    def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo | None) -> Manifest:
        if member is None or not member.isreg():
            raise PackageError(f"archive has no {MANIFEST_PATH}", hint="package the app with mcp-agent")
        if member.size > MAX_MANIFEST_BYTES:
            raise PackageError(f"refusing member {MANIFEST_PATH!r}: over {_human(MAX_MANIFEST_BYTES)}")
        f = tar.extractfile(member)
        assert f is not None  # a regular file always has content
        try:
            return Manifest.model_validate_json(f.read())
        except ValidationError as exc:
            raise PackageError(f"invalid {MANIFEST_PATH}: {exc.errors()[0]['msg']} "
                               f"at {'.'.join(map(str, exc.errors()[0]['loc'])) or 'top level'}") from None

    def _open(self, archive: Path, limit: int) -> tuple[tarfile.TarFile, _Scanned]:
        try:
            tar = tarfile.open(archive, "r:gz")
        except FileNotFoundError:
            raise PackageError(f"archive not found: {archive}") from None
        except _READ_ERRORS as exc:
            raise PackageError(f"{archive.name} is not a gzip-compressed tar archive: {exc}",
                               hint="upload the .tar.gz that mcp-agent wrote") from None
        try:
            return tar, self._scan(tar, limit)
        except BaseException:
            tar.close()
            raise

    def _inspect(self, archive: Path) -> Manifest:
        tar, scanned = self._open(archive, self.config.max_unpacked_bytes)
        with tar:
            try:
                for m in scanned.members:
                    if m.isreg() and m.name != MANIFEST_PATH:
                        f = tar.extractfile(m)
                        assert f is not None
                        _check_content(m.name, _digest(f), m.size, scanned.expected)
            except _READ_ERRORS as exc:
                raise PackageError(f"corrupt archive: {exc}") from None
        return scanned.manifest

    def _unpack(self, archive: Path, dest: Path, max_bytes: int | None) -> Manifest:
        if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
            raise PackageError(f"destination {dest} already exists and is not an empty directory",
                               hint="unpack into a new directory")
        tar, scanned = self._open(archive, max_bytes or self.config.max_unpacked_bytes)
        with tar:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.unpack-"))
            try:
                try:
                    # filter="data" is a second line of defense behind the checks in _scan.
                    tar.extractall(tmp, members=scanned.members, filter="data")
                except _READ_ERRORS as exc:
                    raise PackageError(f"could not extract {archive.name}: {exc}") from None
                for path in scanned.expected:
                    target = tmp / path
                    _check_content(path, sha256_file(target), target.stat().st_size, scanned.expected)
                tmp.chmod(0o755)
                if dest.exists():
                    dest.rmdir()
                tmp.rename(dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return scanned.manifest


@hookimpl
def mcp_agent_cloud_packagers():
    yield PackagerSpec(name="tarball", backend=TarballPackager, config_model=TarballConfig,
                       description="deterministic .tar.gz with a manifest")
