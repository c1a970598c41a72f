"""The wheel (not only the editable install) carries every subpackage, the launcher and the template, and works."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_and_runs(tmp_path):
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("core", "hookspecs", "plugins", "cli"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("mcp_agent_cloud-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("mcp_agent_cloud/__init__.py", "mcp_agent_cloud/hookspecs/__init__.py",
                     "mcp_agent_cloud/plugins/tarball.py", "mcp_agent_cloud/cli/main.py",
                     "mcp_agent_cloud/platform/service.py", "mcp_agent_cloud/runtime/launcher.py",
                     "mcp_agent_cloud/runtime/adapter.py", "mcp_agent_cloud/templates/hello/main.py",
                     "mcp_agent_cloud/templates/hello/mcp_agent.config.yaml"):
        assert required in names, required
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[mcp_agent_cloud.plugins]" in text and "mcp-agent = mcp_agent_cloud.cli.main:main" in text

    # A new venv with the wheel; its dependencies come from the test venv's site-packages through a .pth line
    # (a plain path entry, so the editable install's finder there is not activated).
    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"), "install",
                    "--no-deps", "-q", str(wheel)], check=True, capture_output=True)
    site = Path(subprocess.check_output([str(target / "bin" / "python"), "-c",
                                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([str(target / "bin" / "python"), "-c",
                        "import mcp_agent_cloud, sys; print(mcp_agent_cloud.__file__)"], capture_output=True, text=True)
    assert r.returncode == 0 and str(site) in r.stdout, r.stdout + r.stderr
    r = subprocess.run([str(target / "bin" / "mcp-agent"), "plugins", "list", "--json"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert '"tarball"' in r.stdout and '"process"' in r.stdout
    r = subprocess.run([str(target / "bin" / "mcp-agent-cloud"), "init", str(tmp_path / "app"), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "app" / "main.py").is_file(), r.stderr
