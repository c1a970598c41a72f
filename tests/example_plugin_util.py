"""Install the example plugin package (tests/example_plugin) for real, and remove it again.

Shared by the plugin tests and the end-to-end tests, which need it installed in the interpreter that runs
``mcp-agent serve``.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

EXAMPLE_DIR = Path(__file__).parent / "example_plugin"
DIST_NAME = "mcp-agent-cloud-example-plugin"
MODULE = "mcp_agent_cloud_example"
ENTRY_POINT = "example"


def _can_build_without_isolation(python: str) -> bool:
    """setuptools < 70.1 needs the separate ``wheel`` package to build wheels; without it pip must fetch a
    newer setuptools into an isolated build environment."""
    probe = (
        "import importlib.util, setuptools\n"
        "v = tuple(int(p) for p in setuptools.__version__.split('.')[:2])\n"
        "raise SystemExit(0 if v >= (70, 1) or importlib.util.find_spec('wheel') else 1)\n"
    )
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def _pip(python: str, *args: str) -> None:
    proc = subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def install_example_plugin(python: str = sys.executable) -> None:
    """``pip install`` (not editable) the example plugin into ``python``'s environment."""
    # Build from a copy: pip builds local directories in place and would leave build/ and *.egg-info in the repo.
    with tempfile.TemporaryDirectory(prefix="example-plugin-") as tmp:
        src = Path(tmp) / "example_plugin"
        shutil.copytree(EXAMPLE_DIR, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        args = ["install", "--no-deps", "--force-reinstall", "-q"]
        if _can_build_without_isolation(python):
            args.append("--no-build-isolation")
        _pip(python, *args, str(src))
    _forget_imports()


def uninstall_example_plugin(python: str = sys.executable) -> None:
    _pip(python, "uninstall", "-y", "-q", DIST_NAME)
    _forget_imports()


def _forget_imports() -> None:
    # This process may have imported the old copy and cached the site-packages listing and entry points.
    for name in [m for m in sys.modules if m == MODULE or m.startswith(MODULE + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


@contextlib.contextmanager
def example_plugin_installed(python: str = sys.executable) -> Iterator[None]:
    """Install for the duration of the ``with`` block; uninstall even when the block fails."""
    install_example_plugin(python)
    try:
        yield
    finally:
        uninstall_example_plugin(python)
