"""A wheel of the installed mcp-agent-cloud, for app environments that run the MCPApp runtime.

An app that does ``from mcp_agent_cloud import MCPApp`` needs this very package (same code as the platform, so
the tool shapes and the executor interface match) inside its own virtualenv. The platform may run from an
editable checkout or a normal install, and pip cannot install "the running package" from either directly, so the
wheel is assembled here with the standard library: every file of every import package of mcp_agent_cloud
(wherever it maps: an editable install maps subpackages to other directories), plus the installed
distribution's METADATA and entry_points.txt. It is cached by content hash in ``DATA/wheelhouse/<hash12>/``: the
same code always gives the same bytes and path, so a venv keyed by the requirement line is reused until the code
changes.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import os
import secrets
import sys
import zipfile
from pathlib import Path

DIST = "mcp-agent-cloud"
TOP = "mcp_agent_cloud"
# Subpackages a setuptools package-dir mapping may place outside the top package's directory (editable installs
# map them one by one); nested packages inside any of them are found by walking the directories.
MAPPED = ("hookspecs", "plugins", "cli", "platform", "runtime", "workflows")
SKIP_DIRS = frozenset({"__pycache__"})
SKIP_SUFFIXES = (".pyc", ".pyo")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: equal trees give equal bytes


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location)
        if (path / "__init__.py").is_file():
            return path
    return None


def _mapped_names() -> set[str]:
    """Subpackages that import hooks map elsewhere (setuptools' editable finder keeps a MAPPING dict)."""
    names = {f"{TOP}.{sub}" for sub in MAPPED}
    for finder in sys.meta_path:
        mapping = getattr(finder, "MAPPING", None) or getattr(sys.modules.get(getattr(finder, "__module__", "")),
                                                              "MAPPING", None)
        if isinstance(mapping, dict):
            names.update(n for n in mapping if isinstance(n, str) and n.startswith(TOP + "."))
    return names


def package_files() -> dict[str, Path]:
    """``{path in the wheel: file on disk}`` for every file of mcp_agent_cloud and its subpackages."""
    files: dict[str, Path] = {}
    todo = [TOP, *sorted(_mapped_names())]
    seen: set[str] = set()
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        root = _package_dir(name)
        if root is None:
            continue
        prefix = name.replace(".", "/")
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            keep = []
            for d in sorted(dirnames):
                if d in SKIP_DIRS or d.startswith(".") or d.endswith(".egg-info"):
                    continue
                if (here / d / "__init__.py").is_file():
                    # A subpackage: walked on its own, so a mapped one resolves through the import system.
                    todo.append(f"{name}.{(here / d).relative_to(root).as_posix().replace('/', '.')}")
                    continue
                keep.append(d)  # package data (templates/...)
            dirnames[:] = keep
            for f in sorted(filenames):
                if f.endswith(SKIP_SUFFIXES) or f.startswith("."):
                    continue
                rel = (here / f).relative_to(root).as_posix()
                files[f"{prefix}/{rel}"] = here / f
    if f"{TOP}/__init__.py" not in files:
        raise RuntimeError(f"cannot find the {TOP} package to build its wheel")
    return files


def _dist() -> importlib.metadata.Distribution:
    return importlib.metadata.distribution(DIST)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _contents() -> tuple[str, list[tuple[str, bytes]]]:
    dist = _dist()
    version = dist.version
    info = f"mcp_agent_cloud-{version}.dist-info"
    entries = [(arc, path.read_bytes()) for arc, path in sorted(package_files().items())]
    metadata = dist.read_text("METADATA") or f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {version}\n"
    entries.append((f"{info}/METADATA", metadata.encode()))
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        entries.append((f"{info}/entry_points.txt", entry_points.encode()))
    entries.append((f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: mcp-agent-cloud (runtime/wheel.py)\n"
                                     b"Root-Is-Purelib: true\nTag: py3-none-any\n"))
    entries.append((f"{info}/top_level.txt", f"{TOP}\n".encode()))
    return version, entries


def content_hash(entries: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for arc, data in entries:
        digest.update(arc.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def build_wheel(wheelhouse: Path) -> Path:
    """The wheel of the installed mcp-agent-cloud in ``wheelhouse/<hash12>/``, built if not there yet."""
    version, entries = _contents()
    digest = content_hash(entries)[:12]
    target_dir = Path(wheelhouse) / digest
    target = target_dir / f"mcp_agent_cloud-{version}-py3-none-any.whl"
    if target.is_file():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    info = f"mcp_agent_cloud-{version}.dist-info"
    record = [f"{arc},{_record_hash(data)},{len(data)}" for arc, data in entries] + [f"{info}/RECORD,,"]
    tmp = target_dir / f".{target.name}.{secrets.token_hex(4)}"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for arc, data in [*entries, (f"{info}/RECORD", ("\n".join(record) + "\n").encode())]:
                zi = zipfile.ZipInfo(arc, date_time=ZIP_TIME)
                zi.external_attr = 0o644 << 16
                zi.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(zi, data)
        os.replace(tmp, target)  # concurrent builders write the same bytes: whichever lands last is fine
    finally:
        tmp.unlink(missing_ok=True)
    return target


def requirement(wheel: Path) -> str:
    """The pip requirement line that installs ``wheel``."""
    return f"{DIST} @ {Path(wheel).absolute().as_uri()}"
