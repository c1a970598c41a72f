"""The runtime wheel: built from the installed package, cached by content, installable into a fresh venv."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mcp_agent_cloud.runtime import wheel

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return wheel.build_wheel(tmp_path_factory.mktemp("wheelhouse"))


def test_wheel_holds_every_subpackage_and_a_valid_record(built):
    names = zipfile.ZipFile(built).namelist()
    # Subpackages an editable install maps to other directories (hookspecs, plugins, cli) are in it too.
    for module in ("mcp_agent_cloud/__init__.py", "mcp_agent_cloud/hookspecs/types.py",
                   "mcp_agent_cloud/plugins/process.py", "mcp_agent_cloud/cli/commands.py",
                   "mcp_agent_cloud/platform/service.py", "mcp_agent_cloud/runtime/wheel.py",
                   "mcp_agent_cloud/workflows/app.py",
                   "mcp_agent_cloud/templates/hello/main.py"):
        assert module in names, module
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    info = f"mcp_agent_cloud-{built.name.split('-')[1]}.dist-info"
    with zipfile.ZipFile(built) as zf:
        record = zf.read(f"{info}/RECORD").decode().splitlines()
        rows = {line.split(",")[0]: line.split(",")[1:] for line in record}
        assert set(rows) == set(names)
        for name in names:
            if name.endswith("RECORD"):
                continue
            data = zf.read(name)
            digest = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert rows[name] == [digest, str(len(data))], name
        assert "mcp_agent_cloud.plugins" in zf.read(f"{info}/entry_points.txt").decode()
        assert "Name: mcp-agent-cloud" in zf.read(f"{info}/METADATA").decode()


def test_same_code_same_wheel_and_changed_code_new_hash(built, tmp_path, monkeypatch):
    again = wheel.build_wheel(built.parent.parent)
    assert again == built and again.read_bytes() == built.read_bytes()
    other = wheel.build_wheel(tmp_path)  # another wheelhouse: same bytes (deterministic zip)
    assert other.read_bytes() == built.read_bytes() and other.parent.name == built.parent.name
    # Changed code (a file of a package) lands in a directory of its own.
    files = wheel.package_files()
    extra = tmp_path / "extra.py"
    extra.write_text("X = 1\n")
    monkeypatch.setattr(wheel, "package_files", lambda: {**files, "mcp_agent_cloud/extra.py": extra})
    changed = wheel.build_wheel(built.parent.parent)
    assert changed.parent.name != built.parent.name
    assert "mcp_agent_cloud/extra.py" in zipfile.ZipFile(changed).namelist()
    assert wheel.requirement(built) == f"mcp-agent-cloud @ file://{built}"


def test_wheel_installs_into_a_fresh_venv(built, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # --no-deps keeps this fast; the e2e tests install it with its dependencies through the process builder.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-input",
                    "--disable-pip-version-check", wheel.requirement(built)], check=True, capture_output=True)
    probe = (
        "import importlib.metadata as m, importlib.util as u, json, mcp_agent_cloud\n"
        "print(json.dumps({'file': mcp_agent_cloud.__file__, 'version': mcp_agent_cloud.__version__,\n"
        "  'subs': {s: bool(u.find_spec('mcp_agent_cloud.' + s)) for s in ('hookspecs', 'plugins', 'cli', 'runtime')},\n"
        "  'eps': sorted(e.name for e in m.entry_points(group='mcp_agent_cloud.plugins')),\n"
        "  'dist': m.version('mcp-agent-cloud')}))\n"
    )
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path)
    data = json.loads(out.stdout)
    assert data["file"].startswith(str(venv)), data  # the installed copy, not the checkout
    assert all(data["subs"].values()), data
    assert {"process", "asyncio", "cli"} <= set(data["eps"])
    assert data["dist"] == data["version"]
