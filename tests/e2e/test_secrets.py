"""End to end: deployment secrets on a real platform, with the `local` and the `vault` (a real OpenBao) backends.

The app under tests/apps/secrets answers whether a secret hashes to an expected value, never the value. Every
value here is random and distinctive, so the leak test at the end can look for each one in every file the
platform wrote and every answer it gave, and must find none.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import ROOT, PlatformProcess, call_tool, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.network]

APP = ROOT / "tests" / "apps" / "secrets"
BACKENDS = ["local", "vault"]


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Recorder:
    """The platform, the values handed to it, and every answer it gave (the leak test reads them all)."""

    def __init__(self, platform: PlatformProcess, envs: Path) -> None:
        self.p = platform
        self.envs = envs
        self.values: list[str] = []
        self.outputs: list[str] = []
        self.packages: dict[str | None, dict] = {}

    def value(self, label: str) -> str:
        v = f"v-{label}-{secrets.token_hex(12)}"
        self.values.append(v)
        return v

    def api(self, method: str, path: str, token: str | None = "default", **kw) -> httpx.Response:
        r = self.p.api(method, path, token=token, **kw)
        self.outputs.append(r.text)
        return r

    def cli_json(self, *args: str):
        r = self.p.cli(*args, "--json", check=True)
        self.outputs.append(r.stdout + r.stderr)
        return json.loads(r.stdout)

    def upload(self, token: str | None = "default") -> dict:
        """Package the app in-process with the tarball packager (what the CLI does) and upload it once per org."""
        if token not in self.packages:
            from mcp_agent_cloud.appspec import load_app
            from mcp_agent_cloud.hookspecs.types import PluginContext
            from mcp_agent_cloud.manager import load_plugin_manager

            pm = load_plugin_manager()
            out = self.p.root / "pkg"
            out.mkdir(exist_ok=True)
            packager = pm.build(pm.get_packager("tarball"), {}, PluginContext(data_dir=out))
            app = load_app(APP)
            pkg = anyio.run(lambda: packager.package(app.dir, app.to_hints(), out, exclude=app.exclude))
            r = self.api("POST", "/api/v1/packages", token=token, content=pkg.path.read_bytes(),
                         headers={"X-Package-Sha256": pkg.sha256, "X-Package-Format": "tarball"})
            assert r.status_code == 201, r.text
            self.packages[token] = {"kind": "app", "package_sha256": pkg.sha256, "package_format": "tarball",
                                    "entrypoint": "main:mcp"}
        return dict(self.packages[token])

    def deploy(self, name: str, token: str | None = "default", **body) -> tuple[int, dict]:
        """POST a version (of the app, unless ``kind`` says otherwise); returns (HTTP status, result or error)."""
        payload = body if "kind" in body else {**self.upload(token), **body}
        headers = {"Authorization": f"Bearer {self.p.token if token == 'default' else token}"}
        with httpx.stream("POST", f"{self.p.url}/api/v1/deployments/{name}/versions", json=payload,
                          headers=headers, timeout=600) as r:
            text = r.read().decode()
        self.outputs.append(text)
        if r.status_code != 200:
            return r.status_code, json.loads(text)
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
        return r.status_code, events[-1]

    def check(self, name: str, tool: str, key: str, value: str) -> str:
        return anyio.run(call_tool, f"{self.p.url}/servers/{name}/mcp", self.p.token, tool,
                         {"name" if tool == "check" else "path": key, "sha256": sha(value)})

    def serving_instance(self, name: str) -> dict:
        versions = self.api("GET", f"/api/v1/deployments/{name}/versions").json()["versions"]
        return next(v for v in versions if v["status"] == "serving")["instance"]


def backend_config(name: str, request, prefix: str) -> str:
    if name == "local":
        return ""
    # A real OpenBao dev server (tests/conftest.py), under a prefix of this module's own.
    return request.getfixturevalue("openbao").config_snippet(prefix=prefix)


@pytest.fixture(scope="module", params=BACKENDS)
def sec(request, tmp_path_factory, shared_envs):
    root = tmp_path_factory.mktemp(f"secrets-{request.param}")
    prefix = f"e2e-secrets-{secrets.token_hex(4)}"
    p = PlatformProcess(root, shared_envs, backend_config(request.param, request, prefix))
    p.start()
    rec = Recorder(p, shared_envs)
    rec.backend, rec.prefix = request.param, prefix
    rec.vault = request.getfixturevalue("openbao") if request.param == "vault" else None
    yield rec
    p.stop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]


def test_missing_secret_refused_then_set_deploy_and_rotate(sec):
    token_v1, user_v1 = sec.value("token1"), sec.value("user1")
    refs = [{"key": "API_TOKEN", "kind": "developer"}, {"key": "USER_KEY", "kind": "user"}]

    # A declared secret without a value: 409 before anything is built or started.
    status, err = sec.deploy("sec-env", secret_refs=refs, secrets={"API_TOKEN": token_v1})
    assert status == 409, err
    assert err["error"] == "missing_secrets" and err["missing"] == ["USER_KEY"]
    assert "USER_KEY" in err["message"] and "mcp-agent secrets set sec-env USER_KEY" in err["hint"]
    assert sec.api("GET", "/api/v1/deployments/sec-env").status_code == 404
    assert not (sec.p.root / "data" / "deployments" / "default.sec-env").exists()

    # A secret may be set before the deployment exists; then the deploy goes through.
    r = sec.api("PUT", "/api/v1/deployments/sec-env/secrets/USER_KEY", json={"value": user_v1})
    assert r.status_code == 200, r.text
    assert r.json() == {"key": "USER_KEY", "version": 1, "handle": "secret://default/sec-env/USER_KEY",
                        "restarted": False}
    status, result = sec.deploy("sec-env", secret_refs=refs, secrets={"API_TOKEN": token_v1},
                                env={"PLAIN": "not-a-secret"})
    assert status == 200 and result["type"] == "result", result
    assert sec.check("sec-env", "check", "API_TOKEN", token_v1) == "match"
    assert sec.check("sec-env", "check", "USER_KEY", user_v1) == "match"
    assert sec.check("sec-env", "check", "PLAIN", "not-a-secret") == "match"

    # The registry holds handles, not values.
    versions = sec.api("GET", "/api/v1/deployments/sec-env/versions").json()["versions"]
    if sec.vault is not None:  # the values are in OpenBao, KV v2, under the deployment's scope
        kv = sec.vault.client().secrets.kv.v2
        listed = kv.list_secrets(f"{sec.prefix}/default/sec-env", mount_point="secret")["data"]["keys"]
        assert {"API_TOKEN", "USER_KEY"} <= set(listed)
        assert not (sec.p.root / "data" / "secrets").exists()  # and no local store was written
    assert versions[-1]["options"]["secret_refs"] == [
        {"key": "API_TOKEN", "kind": "developer", "path": "api_token", "handle": "secret://default/sec-env/API_TOKEN"},
        {"key": "USER_KEY", "kind": "user", "path": "user_key", "handle": "secret://default/sec-env/USER_KEY"}]
    assert "secrets" not in versions[-1]["options"]

    # list: keys, versions, handles and kinds; the --env store (_deploy_env_v1) is internal and hidden.
    listed = sec.api("GET", "/api/v1/deployments/sec-env/secrets").json()
    assert [(s["key"], s["version"], s["kind"]) for s in listed["secrets"]] == [
        ("API_TOKEN", 1, "developer"), ("USER_KEY", 1, "user")]
    assert listed["missing"] == []
    for method, kw in (("PUT", {"json": {"value": "x"}}), ("GET", {}), ("DELETE", {})):
        r = sec.api(method, "/api/v1/deployments/sec-env/secrets/_deploy_env_v1", **kw)
        assert r.status_code == 400 and "reserved" in r.json()["message"], r.text

    # Rotation: the deployment switches to a new instance that sees the new value; the old one is gone.
    old_pid = sec.serving_instance("sec-env")["data"]["pid"]
    token_v2 = sec.value("token2")
    r = sec.api("PUT", "/api/v1/deployments/sec-env/secrets/API_TOKEN", json={"value": token_v2})
    assert r.status_code == 200 and r.json()["restarted"] is True and r.json()["version"] == 2, r.text
    assert sec.check("sec-env", "check", "API_TOKEN", token_v2) == "match"
    new_pid = sec.serving_instance("sec-env")["data"]["pid"]
    assert new_pid != old_pid
    wait_for(lambda: not pid_alive(old_pid), timeout=30, what="the old instance to exit")

    # A rotation whose new instance fails its health check: the API answers with the error, the old one serves on.
    bad = sec.value("break-me")
    bad = "break-me-" + bad
    sec.values.append(bad)
    r = sec.api("PUT", "/api/v1/deployments/sec-env/secrets/API_TOKEN", json={"value": bad})
    assert r.status_code == 500, r.text
    assert r.json()["error"] == "restart_failed" and "version 3" in r.json()["message"]
    assert "keeps serving" in r.json()["hint"]
    assert sec.serving_instance("sec-env")["data"]["pid"] == new_pid and pid_alive(new_pid)
    assert sec.check("sec-env", "check", "API_TOKEN", token_v2) == "match"
    # Setting a working value again restarts onto it.
    token_v4 = sec.value("token4")
    r = sec.api("PUT", "/api/v1/deployments/sec-env/secrets/API_TOKEN", json={"value": token_v4})
    assert r.status_code == 200 and r.json()["restarted"] is True and r.json()["version"] == 4, r.text
    assert sec.check("sec-env", "check", "API_TOKEN", token_v4) == "match"

    # A key the serving version does not declare is stored without a restart.
    pid = sec.serving_instance("sec-env")["data"]["pid"]
    r = sec.api("PUT", "/api/v1/deployments/sec-env/secrets/LATER", json={"value": sec.value("later")})
    assert r.json()["restarted"] is False
    assert sec.serving_instance("sec-env")["data"]["pid"] == pid

    # The supervisor's restart after a crash resolves the secrets again.
    os.kill(pid, 9)
    wait_for(lambda: sec.serving_instance("sec-env")["data"]["pid"] != pid, what="the supervisor's restart")
    wait_for(lambda: sec.api("GET", "/api/v1/deployments/sec-env").json()["status"] == "running",
             what="running again")
    assert sec.check("sec-env", "check", "API_TOKEN", token_v4) == "match"


def test_secret_versions_are_pinned(sec):
    """A failed rotation leaves the bad value as the latest version: restarts (supervisor, start, platform restart)
    must keep the version the last healthy instance ran with, and only a successful switch moves the pin."""
    good = sec.value("pin-good")
    status, result = sec.deploy("sec-pin", secrets={"PIN_TOKEN": good})
    assert status == 200 and result["type"] == "result", result

    def pins(version: int = -1) -> dict:
        versions = sec.api("GET", "/api/v1/deployments/sec-pin/versions").json()["versions"]
        return versions[version]["options"].get("secret_versions")

    assert pins() == {"PIN_TOKEN": 1}  # version numbers only, never a value

    # The app refuses to start with a break-me value: the rotation fails, the old instance serves on.
    pid = sec.serving_instance("sec-pin")["data"]["pid"]
    bad = "break-me-" + sec.value("pin-bad")
    sec.values.append(bad)
    r = sec.api("PUT", "/api/v1/deployments/sec-pin/secrets/PIN_TOKEN", json={"value": bad})
    assert r.status_code == 500 and r.json()["error"] == "restart_failed", r.text
    assert sec.serving_instance("sec-pin")["data"]["pid"] == pid
    assert pins() == {"PIN_TOKEN": 1}
    assert sec.api("GET", "/api/v1/deployments/sec-pin/secrets").json()["secrets"][0]["version"] == 2  # stored

    # A crash: the supervisor restarts the version on its pinned value, not on the failed latest one.
    os.kill(pid, 9)
    wait_for(lambda: sec.serving_instance("sec-pin")["data"]["pid"] != pid, what="the supervisor's restart")
    wait_for(lambda: sec.api("GET", "/api/v1/deployments/sec-pin").json()["status"] == "running",
             what="running again")
    assert sec.check("sec-pin", "check", "PIN_TOKEN", good) == "match"

    # stop + start, and a platform crash + restore: still the pinned value.
    assert sec.api("POST", "/api/v1/deployments/sec-pin/stop").status_code == 200
    assert sec.api("POST", "/api/v1/deployments/sec-pin/start").status_code == 200
    assert sec.check("sec-pin", "check", "PIN_TOKEN", good) == "match"
    sec.p.kill()
    sec.p.start()
    wait_for(lambda: sec.api("GET", "/api/v1/deployments/sec-pin").json()["serving_version"] == 1,
             what="the deployment to be restored")
    assert sec.check("sec-pin", "check", "PIN_TOKEN", good) == "match"

    # A value set while stopped is what the next start uses (no switch could try it earlier); pinned once healthy.
    good2 = sec.value("pin-good2")
    assert sec.api("POST", "/api/v1/deployments/sec-pin/stop").status_code == 200
    r = sec.api("PUT", "/api/v1/deployments/sec-pin/secrets/PIN_TOKEN", json={"value": good2})
    assert r.status_code == 200 and r.json() == {**r.json(), "version": 3, "restarted": False}, r.text
    assert sec.api("POST", "/api/v1/deployments/sec-pin/start").status_code == 200
    assert sec.check("sec-pin", "check", "PIN_TOKEN", good2) == "match"
    assert pins() == {"PIN_TOKEN": 3}

    # A new deploy takes the latest; a successful rotation moves its pin; a rollback uses the old version's pins.
    status, result = sec.deploy("sec-pin", secret_refs=[{"key": "PIN_TOKEN"}])
    assert status == 200 and result["version"] == 2, result
    good3 = sec.value("pin-good3")
    r = sec.api("PUT", "/api/v1/deployments/sec-pin/secrets/PIN_TOKEN", json={"value": good3})
    assert r.status_code == 200 and r.json()["restarted"] is True, r.text
    assert pins() == {"PIN_TOKEN": 4} and pins(0) == {"PIN_TOKEN": 3}
    r = sec.api("POST", "/api/v1/deployments/sec-pin/rollback", json={"to": 1})
    assert r.status_code == 200, r.text
    assert sec.check("sec-pin", "check", "PIN_TOKEN", good2) == "match"
    assert sec.api("DELETE", "/api/v1/deployments/sec-pin").status_code == 200


def test_get_needs_owner_and_is_audited(sec):
    developer = sec.cli_json("admin", "token", "--org", "default", "--role", "developer", "--subject", "dev")["token"]
    viewer = sec.cli_json("admin", "token", "--org", "default", "--role", "viewer", "--subject", "view")["token"]
    value = sec.value("audited")
    assert sec.api("PUT", "/api/v1/deployments/sec-audit/secrets/KEY", token=viewer,
                   json={"value": value}).status_code == 403
    r = sec.api("PUT", "/api/v1/deployments/sec-audit/secrets/KEY", token=developer, json={"value": value})
    assert r.status_code == 200, r.text
    r = sec.api("GET", "/api/v1/deployments/sec-audit/secrets", token=viewer)
    assert r.status_code == 200 and [s["key"] for s in r.json()["secrets"]] == ["KEY"]

    r = sec.api("GET", "/api/v1/deployments/sec-audit/secrets/KEY", token=developer)
    assert r.status_code == 403 and "owner" in r.json()["message"]
    r = sec.api("GET", "/api/v1/deployments/sec-audit/secrets/KEY")
    assert r.status_code == 200 and r.json() == {"key": "KEY", "version": 1, "value": value}
    assert r.headers["cache-control"] == "no-store"
    sec.outputs.pop()  # the one answer allowed to hold a value

    # The read is an event (who, which key and version), in the platform's event stream, without the value.
    events_file = sec.p.root / "data" / "events.jsonl"
    reads = [json.loads(line) for line in events_file.read_text().splitlines() if '"secret.read"' in line]
    assert reads, "no secret.read event"
    assert reads[-1]["data"] == {"key": "KEY", "secret_version": 1, "subject": "admin",
                                 "token_id": reads[-1]["data"]["token_id"], "provider": "builtin"}
    assert reads[-1]["data"]["token_id"]

    # An unknown key is a 404 naming the command that sets it; rm removes a key.
    r = sec.api("GET", "/api/v1/deployments/sec-audit/secrets/NOPE")
    assert r.status_code == 404 and "mcp-agent secrets set sec-audit NOPE" in r.json()["hint"]
    assert sec.api("DELETE", "/api/v1/deployments/sec-audit/secrets/KEY", token=viewer).status_code == 403
    r = sec.api("DELETE", "/api/v1/deployments/sec-audit/secrets/KEY?destroy=1", token=developer)
    assert r.status_code == 200 and r.json()["deleted"] == "KEY", r.text
    assert sec.api("GET", "/api/v1/deployments/sec-audit/secrets").json()["secrets"] == []


def test_file_mode(sec):
    value = sec.value("file")
    refs = [{"key": "OPENAI__API_KEY", "kind": "developer", "path": "openai.api_key"}]
    status, result = sec.deploy("sec-file", secret_refs=refs, secrets={"OPENAI__API_KEY": value}, secrets_as="file")
    assert status == 200 and result["type"] == "result", result
    assert sec.check("sec-file", "check_file", "openai.api_key", value) == "match"
    assert sec.check("sec-file", "check", "OPENAI__API_KEY", value) == "unset"  # not in the environment

    directory = Path(sec.serving_instance("sec-file")["data"]["secrets_dir"])
    file = directory / "mcp_agent.secrets.yaml"
    assert str(directory).startswith("/dev/shm/")  # a tmpfs: the value never reaches a disk
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700 and stat.S_IMODE(file.stat().st_mode) == 0o600
    link = sec.p.root / "data" / "deployments" / "default.sec-file" / "v1" / "app" / "mcp_agent.secrets.yaml"
    assert link.is_symlink() and link.resolve() == file

    # Rotation writes a new file for the new instance and removes the old one.
    value2 = sec.value("file2")
    r = sec.api("PUT", "/api/v1/deployments/sec-file/secrets/OPENAI__API_KEY", json={"value": value2})
    assert r.status_code == 200 and r.json()["restarted"] is True, r.text
    assert sec.check("sec-file", "check_file", "openai.api_key", value2) == "match"
    assert not directory.exists()
    directory = Path(sec.serving_instance("sec-file")["data"]["secrets_dir"])
    assert directory.is_dir()

    # Stopped: the file is gone. Started again: a new one. Deleted: gone with the deployment's secrets.
    assert sec.api("POST", "/api/v1/deployments/sec-file/stop").status_code == 200
    assert not directory.exists() and not link.exists()
    assert sec.api("POST", "/api/v1/deployments/sec-file/start").status_code == 200
    assert sec.check("sec-file", "check_file", "openai.api_key", value2) == "match"
    directory = Path(sec.serving_instance("sec-file")["data"]["secrets_dir"])
    assert sec.api("DELETE", "/api/v1/deployments/sec-file").status_code == 200
    assert not directory.exists()
    assert sec.api("GET", "/api/v1/deployments/sec-file/secrets").json()["secrets"] == []


def test_stdio_server(sec):
    """A stdio server (behind the adapter) gets the secrets too: in its environment, or the file's path."""
    value = sec.value("stdio")
    server = {"kind": "stdio", "command": "python", "args": [str(APP / "main.py")],
              "pip": ["mcp>=2.3,<3", "pyyaml>=6"]}
    status, result = sec.deploy("sec-stdio", **server, secrets={"STDIO__TOKEN": value})
    assert status == 200 and result["type"] == "result", result
    assert sec.check("sec-stdio", "check", "STDIO__TOKEN", value) == "match"

    status, result = sec.deploy("sec-stdio", **server, secret_refs=[{"key": "STDIO__TOKEN"}], secrets_as="file")
    assert status == 200 and result["type"] == "result", result
    assert sec.check("sec-stdio", "check_file", "stdio.token", value) == "match"
    assert sec.check("sec-stdio", "check", "STDIO__TOKEN", value) == "unset"
    directory = Path(sec.serving_instance("sec-stdio")["data"]["secrets_dir"])
    assert (directory / "mcp_agent.secrets.yaml").is_file()
    assert sec.api("DELETE", "/api/v1/deployments/sec-stdio").status_code == 200
    assert not directory.exists()


def test_isolation_between_orgs(sec):
    other = sec.cli_json("admin", "token", "--org", "other", "--role", "owner", "--subject", "mallory")["token"]
    value = sec.value("iso")
    r = sec.api("PUT", "/api/v1/deployments/sec-iso/secrets/API_TOKEN", json={"value": value})
    assert r.status_code == 200, r.text

    # Another org's owner cannot list, read, set or remove this deployment's secrets.
    base = "/api/v1/deployments/default.sec-iso/secrets"
    assert sec.api("GET", base, token=other).status_code == 403
    assert sec.api("GET", base + "/API_TOKEN", token=other).status_code == 403
    assert sec.api("PUT", base + "/API_TOKEN", token=other, json={"value": "x"}).status_code == 403
    assert sec.api("DELETE", base + "/API_TOKEN", token=other).status_code == 403
    # The same name in its own org is another scope: nothing there.
    assert sec.api("GET", "/api/v1/deployments/sec-iso/secrets", token=other).json()["secrets"] == []

    # A deployment of the other org declaring the same key does not get this org's value: it is missing there.
    status, err = sec.deploy("sec-iso", token=other, secret_refs=[{"key": "API_TOKEN"}])
    assert status == 409 and err["missing"] == ["API_TOKEN"], err
    # Handles are made by the platform from the deployment's own scope: a request cannot name one.
    status, err = sec.deploy("sec-iso", token=other, secret_refs=[
        {"key": "API_TOKEN", "handle": "secret://default/sec-iso/API_TOKEN"}])
    assert status == 400 and "handle" in err["message"], err
    for key in ("default/sec-iso/API_TOKEN", "../default/API_TOKEN", "secret://default/sec-iso/API_TOKEN"):
        status, err = sec.deploy("sec-iso", token=other, secret_refs=[{"key": key}])
        assert status == 400 and "invalid secret key" in err["message"], err


def test_files_left_by_a_crash_are_removed_at_start(sec):
    value = sec.value("crash")
    status, result = sec.deploy("sec-crash", secrets={"CRASH": value}, secrets_as="file")
    assert status == 200 and result["type"] == "result", result
    directory = Path(sec.serving_instance("sec-crash")["data"]["secrets_dir"])
    stray = directory.parent / "i-0123456789abcdef"  # as if from an instance nobody knows any more
    stray.mkdir(mode=0o700)
    sec.p.kill()  # no clean shutdown: the apps die with the platform, their files stay
    assert directory.is_dir() and stray.is_dir()
    sec.p.start()
    wait_for(lambda: sec.api("GET", "/api/v1/deployments/sec-crash").json()["serving_version"] == 1,
             what="the deployment to be restored")
    assert not directory.exists() and not stray.exists()
    assert sec.check("sec-crash", "check_file", "crash", value) == "match"  # restored with a new file
    assert Path(sec.serving_instance("sec-crash")["data"]["secrets_dir"]).is_dir()


def test_no_value_leaks(sec):
    """Its own values, and every value the tests before it used: not in the package, the venvs, the registry,
    the stores, the logs or any answer. It deploys, rotates (once well, once into a failing start), reads and
    runs in file mode itself, so it means the same run alone."""
    first, second, rotated, as_file = (sec.value(f"leak-{label}") for label in ("first", "second", "rotated", "file"))
    bad = "break-me-" + sec.value("leak-bad")
    sec.values.append(bad)
    refs = [{"key": "LEAK_A"}, {"key": "LEAK_B", "kind": "user"}]
    r = sec.api("PUT", "/api/v1/deployments/sec-leak/secrets/LEAK_B", json={"value": second})
    assert r.status_code == 200, r.text
    status, result = sec.deploy("sec-leak", secret_refs=refs, secrets={"LEAK_A": first}, env={"PLAIN": "plain"})
    assert status == 200 and result["type"] == "result", result
    r = sec.api("PUT", "/api/v1/deployments/sec-leak/secrets/LEAK_A", json={"value": rotated})
    assert r.status_code == 200 and r.json()["restarted"] is True, r.text
    r = sec.api("PUT", "/api/v1/deployments/sec-leak/secrets/LEAK_A", json={"value": bad})
    assert r.status_code == 500 and r.json()["error"] == "restart_failed", r.text
    assert sec.check("sec-leak", "check", "LEAK_A", rotated) == "match"
    r = sec.api("GET", "/api/v1/deployments/sec-leak/secrets/LEAK_B")
    assert r.status_code == 200 and r.json()["value"] == second
    sec.outputs.pop()  # the one answer allowed to hold a value
    for path in ("/api/v1/deployments/sec-leak", "/api/v1/deployments/sec-leak/versions",
                 "/api/v1/deployments/sec-leak/secrets", "/api/v1/deployments", "/api/v1/deployments/sec-leak/events"):
        assert sec.api("GET", path).status_code == 200, path
    status, result = sec.deploy("sec-leak-file", secrets={"LEAK__FILE": as_file}, secrets_as="file")
    assert status == 200 and result["type"] == "result", result
    assert sec.check("sec-leak-file", "check_file", "leak.file", as_file) == "match"

    needles = [v.encode() for v in sec.values]
    assert {first, second, rotated, bad, as_file} <= set(sec.values)
    found = []
    for base in (sec.p.root, sec.envs):
        for dirpath, _dirs, files in os.walk(base):  # does not follow symlinks: the link into /dev/shm is skipped
            for f in files:
                path = Path(dirpath) / f
                if path.is_symlink() or not path.is_file():
                    continue
                data = path.read_bytes()
                found += [(str(path), n.decode()) for n in needles if n in data]
    for text in sec.outputs:
        found += [("an API or CLI answer", v) for v in sec.values if v in text]
    assert not found, found
    # The files were looked at: the registry, the logs and the events exist.
    data = sec.p.root / "data"
    assert (data / "events.jsonl").stat().st_size > 0 and sec.p.log_path.stat().st_size > 0
    assert list(data.rglob("*.db")) or list(data.rglob("*.sqlite*"))
    assert list(data.rglob("app.log")) and list(data.rglob("build.log"))
