"""Bad input gets a clear error and changes no state."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile

import pytest

from tests.conftest import CLI, ROOT, PlatformProcess

pytestmark = [pytest.mark.e2e]

HELLO = ROOT / "examples" / "hello"


def _no_deployments(platform) -> None:
    assert platform.cli_json("list") == []


def test_bad_app_directories(platform, tmp_path):
    r = platform.cli("deploy", "app", str(tmp_path / "nope"))
    assert r.returncode == 1 and "nope" in r.stderr and "Error" in r.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    r = platform.cli("deploy", "app", str(empty))
    assert r.returncode == 1
    assert "main.py" in r.stderr and "--app" in r.stderr

    bad_yaml = tmp_path / "badyaml"
    shutil.copytree(HELLO, bad_yaml)
    (bad_yaml / "mcp_agent.config.yaml").write_text("deploy:\n  entrypoint: main:mcp\n  env: [unclosed\n")
    r = platform.cli("deploy", "app", str(bad_yaml))
    assert r.returncode == 1
    assert "mcp_agent.config.yaml:" in r.stderr

    r = platform.cli("deploy", "app", str(HELLO), "--app", "main:nothing_here")
    assert r.returncode == 1 and "nothing_here" in r.stderr

    r = platform.cli("deploy", "app", str(HELLO), "--name", "Bad_Name")
    assert r.returncode == 1 and "invalid deployment name" in r.stderr

    r = platform.cli("deploy", "app", str(HELLO), "--name", "hello", "--json", "--builder", "nope")
    assert r.returncode == 1
    err = json.loads(r.stdout)
    assert err["error"] == "unknown_backend" and "process" in err["message"]
    _no_deployments(platform)


def test_org_isolation(platform):
    acme = platform.cli_json("admin", "token", "--org", "acme", "--role", "developer")["token"]
    # A fully qualified name in someone else's org is refused before anything is written.
    r = platform.cli("deploy", "app", str(HELLO), "--name", "acme.hello")
    assert r.returncode == 1 and "belongs to org 'acme'" in r.stderr
    _no_deployments(platform)

    acme_env = {"MCP_AGENT_CLOUD_TOKEN": acme}
    deployed = platform.cli_json("deploy", "app", str(HELLO), "--name", "hello", env=acme_env)
    assert deployed["org"] == "acme"
    assert deployed["endpoint"].endswith("/servers/acme.hello/mcp")
    _no_deployments(platform)  # the default org sees nothing of acme's
    for path in ("/api/v1/deployments/acme.hello", "/api/v1/deployments/acme.hello/logs"):
        assert platform.api("GET", path).status_code == 403
    assert platform.api("POST", "/servers/acme.hello/mcp", json={}).status_code == 403
    assert platform.api("GET", "/api/v1/deployments/hello", token=acme).status_code == 200
    assert platform.api("GET", "/api/v1/deployments/hello").status_code == 404


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info, None


@pytest.mark.parametrize("members,needle", [
    ([_file("../evil.txt")], "evil.txt"),
    ([_file("/tmp/evil-abs.txt")], "evil-abs.txt"),
    ([_link("link", "/etc/passwd")], "link"),
    ([_link("hard", "/etc/passwd", tarfile.LNKTYPE)], "hard"),
    ([_device("dev")], "dev"),
])
def test_hostile_archives_are_refused(platform, members, needle):
    data = _tar(members)
    sha = hashlib.sha256(data).hexdigest()
    r = platform.api("POST", "/api/v1/packages", content=data, headers={"X-Package-Sha256": sha})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_package" and needle in r.json()["message"]
    assert not list((platform.root / "data" / "packages").rglob("*.pkg"))
    assert not (platform.root / "evil.txt").exists() and not (platform.root / "data" / "evil.txt").exists()


def test_checksum_mismatch_and_bad_sha(platform):
    data = _tar([_file("main.py")])
    r = platform.api("POST", "/api/v1/packages", content=data, headers={"X-Package-Sha256": "0" * 64})
    assert r.status_code == 400 and "checksum mismatch" in r.json()["message"]
    r = platform.api("POST", "/api/v1/packages", content=data, headers={"X-Package-Sha256": "../../x"})
    assert r.status_code == 400
    assert not list((platform.root / "data" / "packages").rglob("*.pkg"))


def test_upload_over_the_limit(tmp_path, shared_envs):
    p = PlatformProcess(tmp_path, shared_envs, extra_config="limits: {max_upload_bytes: 2000}\n")
    p.start()
    try:
        data = b"\0" * 5000
        sha = hashlib.sha256(data).hexdigest()
        r = p.api("POST", "/api/v1/packages", content=data, headers={"X-Package-Sha256": sha})
        assert r.status_code == 413 and r.json()["error"] == "too_large"

        def chunks():  # no Content-Length: the limit is enforced while streaming
            for _ in range(5):
                yield b"\0" * 1000
        r = p.api("POST", "/api/v1/packages", content=chunks(), headers={"X-Package-Sha256": sha})
        assert r.status_code == 413
        assert not list((tmp_path / "data" / "packages").rglob("*.pkg"))
    finally:
        p.stop()


def test_unknown_plugin_name_in_config(tmp_path, shared_envs):
    p = PlatformProcess(tmp_path, shared_envs)
    p.config_path.write_text(p.config_path.read_text().replace("builder: {name: process", "builder: {name: nope"))
    r = subprocess.run([CLI, "serve"], env=p.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "builder 'nope' is not available" in r.stderr and "process" in r.stderr
    r = subprocess.run([CLI, "config", "validate", str(p.config_path)], env=p.env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "nope" in r.stderr

    # The docker builder without its SDK (the `docker` extra): sys.modules["docker"] = None hides the installed one.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['docker'] = None\n")
    p.config_path.write_text(re.sub(r"(?m)^builder: .*$", "builder: docker", p.config_path.read_text()))
    r = subprocess.run([CLI, "serve"], env={**p.env, "PYTHONPATH": str(hide)}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "mcp-agent-cloud[docker]" in r.stderr, r.stderr


def test_invalid_config_names_file_key_and_line(tmp_path, shared_envs):
    p = PlatformProcess(tmp_path, shared_envs)
    p.config_path.write_text(p.config_path.read_text() + "limits:\n  max_upload_bytes: -5\n")
    r = subprocess.run([CLI, "serve"], env=p.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    line = len(p.config_path.read_text().splitlines())
    assert f"{p.config_path}:{line}" in r.stderr and "limits.max_upload_bytes" in r.stderr


def test_port_in_use(platform, tmp_path, shared_envs):
    other = PlatformProcess(tmp_path / "second", shared_envs)
    other.config_path.write_text(other.config_path.read_text().replace(f":{other.port}", f":{platform.port}"))
    r = subprocess.run([CLI, "serve"], env=other.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "in use" in r.stderr and "--listen" in r.stderr


@pytest.mark.network
def test_app_that_crashes_on_start(platform, tmp_path):
    src = tmp_path / "crashy"
    shutil.copytree(HELLO, src)
    (src / "main.py").write_text("import sys\nprint('fatal: no config', file=sys.stderr)\nsys.exit(3)\nmcp = None\n")
    r = platform.cli("deploy", "app", str(src), "--name", "crashy")
    assert r.returncode == 1
    assert "exited" in r.stderr and "fatal: no config" in r.stderr
    status = platform.cli_json("status", "crashy")
    assert status["status"] == "failed" and status["serving_version"] is None
