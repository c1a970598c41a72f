"""The secrets CLI end to end: `deploy app` with a mcp_agent.secrets.yaml (plain, env-var and user secrets),
`--non-interactive` refusals, `mcp-agent secrets set|list|get|rm`, hidden prompts on a real pseudo-terminal, and
no value in any command's output but `secrets get`'s.

The app (tests/apps/secrets, shared with test_secrets.py) answers whether env var X holds the value with a given
sha256, so neither the MCP request nor its answer carries a value.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import secrets
import select
import shutil
import subprocess
import termios
import time
from pathlib import Path

import anyio
import pytest

from tests.conftest import CLI, ROOT, call_tool

pytestmark = [pytest.mark.e2e, pytest.mark.network]

APP = ROOT / "tests" / "apps" / "secrets"
SECRETS_YAML = """\
service:
  api_key: {plain}
  token: !developer_secret SECRETS_CLI_TOKEN
user:
  password: !user_secret
"""


class Recorder:
    """Runs the real CLI and keeps every output, so a test can check that no value leaked into any of it."""

    def __init__(self, platform) -> None:
        self.platform = platform
        self.outputs: list[tuple[str, str]] = []

    def __call__(self, *args: str, input: str | None = None, env: dict | None = None, ok: bool | None = True,
                 keep: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([CLI, *args], env={**self.platform.env, **(env or {})}, input=input if input is not None
                           else "", capture_output=True, text=True, timeout=600, cwd=self.platform.root)
        if keep:
            self.outputs.append((" ".join(args), r.stdout + r.stderr))
        if ok is not None and (r.returncode == 0) != ok:
            raise AssertionError(f"mcp-agent {' '.join(args)} exited {r.returncode}:\n"
                                 f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
        return r

    def json(self, *args: str, **kw):
        return json.loads(self(*args, "--json", **kw).stdout)

    def assert_no_leak(self, *values: str) -> None:
        for command, text in self.outputs:
            for value in values:
                assert value not in text, f"a secret value is in the output of `mcp-agent {command}`"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def check(endpoint: str, token: str, var: str, value: str, tool: str = "check") -> str:
    arg = "path" if tool == "check_file" else "name"
    return anyio.run(call_tool, endpoint, token, tool, {arg: var, "sha256": sha(value)})


def app_with_secrets(tmp_path: Path, text: str) -> Path:
    app = tmp_path / "secrets-app"
    shutil.copytree(APP, app)
    (app / "mcp_agent.secrets.yaml").write_text(text)
    return app


def test_deploy_with_secrets_file_and_the_secrets_commands(platform, tmp_path):
    plain, token, password, password2, from_file = (f"{kind}-{secrets.token_hex(8)}" for kind in (
        "plain", "token", "password", "password2", "fromfile"))
    app = app_with_secrets(tmp_path, SECRETS_YAML.format(plain=plain))
    cli = Recorder(platform)
    deploy = ("deploy", "app", str(app), "--name", "sec", "--non-interactive")
    token_env = {"SECRETS_CLI_TOKEN": token}

    # The user secret has no value: the platform refuses, naming the key and the command that sets it.
    r = cli(*deploy, env=token_env, ok=False)
    assert "USER__PASSWORD" in r.stderr
    assert "mcp-agent secrets set sec USER__PASSWORD" in r.stderr
    assert "SERVICE__TOKEN" not in r.stderr.split("hint")[0]  # the developer secrets were supplied
    refused = json.loads(cli(*deploy, "--json", env=token_env, ok=False).stdout)
    assert refused["error"] == "missing_secrets" and "USER__PASSWORD" in refused["message"]

    # A developer secret whose env var is unset is refused by the CLI, before anything is uploaded.
    r = cli(*deploy, ok=False)
    assert "SECRETS_CLI_TOKEN is not set" in r.stderr and "service.token" in r.stderr
    assert "upload" not in r.stderr

    # Values are never taken from argv: without --stdin/--from-file and no terminal there is no one to ask.
    r = cli("secrets", "set", "sec", "USER__PASSWORD", ok=False)
    assert "--stdin" in r.stderr
    r = cli("secrets", "set", "sec", "USER__PASSWORD", "--stdin", input="", ok=False)
    assert "empty value" in r.stderr
    r = cli("secrets", "set", "sec", "user.password", "--stdin", input="x", ok=False)
    assert "USER__PASSWORD" in r.stderr or "environment variable name" in r.stderr

    # Set before the first deploy; one trailing newline from `echo` is dropped.
    r = cli("secrets", "set", "sec", "USER__PASSWORD", "--stdin", input=password + "\n")
    assert "USER__PASSWORD set" in r.stdout and "not serving" in r.stdout

    r = cli(*deploy, env=token_env)
    assert "secrets: 3 declared (2 developer, 1 user), 2 sent, 1 already stored" in r.stderr
    endpoint = f"{platform.url}/servers/sec/mcp"
    assert check(endpoint, platform.token, "SERVICE__API_KEY", plain) == "match"
    assert check(endpoint, platform.token, "SERVICE__TOKEN", token) == "match"
    assert check(endpoint, platform.token, "USER__PASSWORD", password) == "match"

    # --json output of a deploy has the summary (keys only).
    result = cli.json(*deploy, env=token_env)
    assert result["secrets"]["declared"] == ["SERVICE__API_KEY", "SERVICE__TOKEN", "USER__PASSWORD"]
    assert result["secrets"]["sent"] == ["SERVICE__API_KEY", "SERVICE__TOKEN"]
    assert result["secrets"]["already_stored"] == ["USER__PASSWORD"] and result["secrets"]["missing"] == []

    # list: keys and versions, never values; internal keys (deploy --env) are hidden.
    listing = cli.json("secrets", "list", "sec")
    assert listing["missing"] == []
    listed = {row["key"]: row for row in listing["secrets"]}
    assert sorted(listed) == ["SERVICE__API_KEY", "SERVICE__TOKEN", "USER__PASSWORD"]
    assert listed["USER__PASSWORD"]["version"] == 1 and listed["SERVICE__API_KEY"]["version"] >= 1
    assert listed["SERVICE__TOKEN"]["handle"] == "secret://default/sec/SERVICE__TOKEN"
    table = cli("secrets", "list", "sec").stdout
    assert "SERVICE__TOKEN" in table and "secret://default/sec/USER__PASSWORD" in table

    # get: only the value on stdout, exactly (no newline when not a terminal).
    assert cli("secrets", "get", "sec", "USER__PASSWORD", keep=False).stdout == password
    got = cli.json("secrets", "get", "sec", "SERVICE__TOKEN", keep=False)
    assert (got["key"], got["value"]) == ("SERVICE__TOKEN", token)

    # get needs the owner role.
    dev_token = cli.json("admin", "token", "--org", "default", "--role", "developer", "--subject", "dev",
                         keep=False)["token"]
    r = cli("secrets", "get", "sec", "USER__PASSWORD", env={"MCP_AGENT_CLOUD_TOKEN": dev_token}, ok=False)
    assert password not in r.stdout + r.stderr and r.stdout == ""

    # Setting a key the serving deployment uses restarts it onto the new value.
    data = cli.json("secrets", "set", "sec", "USER__PASSWORD", "--stdin", input=password2)
    assert data["restarted"] is True and data["version"] == 2
    assert check(endpoint, platform.token, "USER__PASSWORD", password2) == "match"
    assert cli("secrets", "get", "sec", "USER__PASSWORD", "--version", "1", keep=False).stdout == password
    value_file = tmp_path / "value.txt"
    value_file.write_text(from_file + "\n")  # --from-file keeps the file as it is, newline included
    r = cli("secrets", "set", "sec", "USER__PASSWORD", "--from-file", str(value_file))
    assert "restarted onto the new value" in r.stdout
    assert check(endpoint, platform.token, "USER__PASSWORD", from_file + "\n") == "match"

    # A value the app fails to start with (it exits on break-me...): the old instance serves on, and the CLI says
    # so, says the value is stored but unused and what to do, shows the app's log tail, and exits 1.
    bad = f"break-me-{secrets.token_hex(8)}"
    r = cli("secrets", "set", "sec", "USER__PASSWORD", "--stdin", input=bad, ok=False)
    assert r.returncode == 1 and r.stdout == "", r.stdout
    said = " ".join(r.stderr.split())
    assert "sec was not restarted onto the new value of USER__PASSWORD" in said, r.stderr
    assert "The old instance keeps serving" in said and "restarts keep using it" in said
    assert "The new value is stored as version 4 but not in use" in said
    assert "mcp-agent logs sec" in said and "`mcp-agent secrets set sec USER__PASSWORD` again" in said
    assert "refusing to start: a credential was rejected" in r.stderr  # the app's log tail
    failed = json.loads(cli("secrets", "set", "sec", "USER__PASSWORD", "--stdin", "--json", input=bad,
                            ok=False).stdout)
    assert failed["error"] == "restart_failed" and "not in use" in failed["message"] and failed["log_tail"]
    assert check(endpoint, platform.token, "USER__PASSWORD", from_file + "\n") == "match"

    # rm: gone from the list; a deploy that needs it again without a value is refused by the CLI (developer
    # secret from an unset env var) or by the platform (user secret).
    r = cli("secrets", "rm", "sec", "USER__PASSWORD", "--yes")
    assert "USER__PASSWORD removed" in r.stdout
    listing = cli.json("secrets", "list", "sec")
    assert "USER__PASSWORD" not in {row["key"] for row in listing["secrets"]}
    assert listing["missing"] == ["USER__PASSWORD"]  # declared by the serving version
    assert "mcp-agent secrets set sec USER__PASSWORD" in cli("secrets", "list", "sec").stderr
    assert cli.json("secrets", "rm", "sec", "SERVICE__TOKEN", "--destroy", "--yes")
    r = cli(*deploy, ok=False)
    assert "SECRETS_CLI_TOKEN is not set" in r.stderr
    r = cli(*deploy, env=token_env, ok=False)
    assert "mcp-agent secrets set sec USER__PASSWORD" in r.stderr
    r = cli("secrets", "get", "sec", "USER__PASSWORD", ok=False)
    assert r.returncode == 1

    cli.assert_no_leak(plain, token, password, password2, from_file, bad)
    log = platform.log_path.read_text(errors="replace")
    for value in (plain, token, password, password2, from_file, bad):
        assert value not in log


def test_secrets_as_file_is_sent(platform, tmp_path):
    value = f"v-{secrets.token_hex(8)}"
    app = app_with_secrets(tmp_path, f"api_key: {value}\n")
    cli = Recorder(platform)
    cli("deploy", "app", str(app), "--name", "secfile", "--non-interactive", "--secrets-as", "file")
    endpoint = f"{platform.url}/servers/secfile/mcp"
    # In file mode the app reads the value from the file, and its environment does not hold it.
    assert check(endpoint, platform.token, "API_KEY", value) == "unset"
    assert check(endpoint, platform.token, "api_key", value, tool="check_file") == "match"
    cli.assert_no_leak(value)


# -- hidden prompts on a real terminal ------------------------------------------------------------------------------


def _controlling_tty() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """The CLI on a pseudo-terminal: what it prints, and typing answers to its prompts."""

    def __init__(self, platform, *args: str, env: dict | None = None) -> None:
        self.master, slave = pty.openpty()
        # The pty becomes the child's controlling terminal: getpass (hidden input) talks to /dev/tty.
        self.proc = subprocess.Popen([CLI, *args], env={**platform.env, **(env or {})}, stdin=slave, stdout=slave,
                                     stderr=slave, cwd=platform.root, preexec_fn=_controlling_tty)
        os.close(slave)
        self.seen = ""

    def read_until(self, needle: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} from the CLI; it printed:\n{self.seen}")
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the CLI exited and closed the terminal
                    chunk = b""
                if not chunk and self.proc.poll() is not None:
                    raise AssertionError(f"the CLI exited ({self.proc.returncode}) before {needle!r}:\n{self.seen}")
                self.seen += chunk.decode(errors="replace")
            elif self.proc.poll() is not None:
                raise AssertionError(f"the CLI exited ({self.proc.returncode}) before {needle!r}:\n{self.seen}")
        return self.seen

    def type(self, text: str) -> None:
        os.write(self.master, text.encode() + b"\r")

    def finish(self, timeout: float = 600) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:
                    break
        code = self.proc.wait(timeout=max(1, deadline - time.monotonic()))
        os.close(self.master)
        return code


def test_interactive_prompts_are_hidden(platform, tmp_path):
    token, password, typed = (f"{kind}-{secrets.token_hex(8)}" for kind in ("token", "password", "typed"))
    app = app_with_secrets(tmp_path, SECRETS_YAML.format(plain="plain-value-0"))

    # SECRETS_CLI_TOKEN is unset: the CLI asks for it, then for the user secret; neither answer is echoed.
    term = Terminal(platform, "deploy", "app", str(app), "--name", "tty")
    term.read_until("Value for SERVICE__TOKEN")
    term.type(token)
    term.read_until("User secret user.password (USER__PASSWORD)")
    term.type(password)
    assert term.finish() == 0, term.seen
    assert "secrets: 3 declared (2 developer, 1 user), 3 sent, 0 already stored" in term.seen
    assert token not in term.seen and password not in term.seen
    endpoint = f"{platform.url}/servers/tty/mcp"
    assert check(endpoint, platform.token, "SERVICE__TOKEN", token) == "match"
    assert check(endpoint, platform.token, "USER__PASSWORD", password) == "match"

    # Stored values are not asked for again.
    term = Terminal(platform, "deploy", "app", str(app), "--name", "tty")
    assert term.finish() == 0, term.seen
    assert "Value for" not in term.seen and "User secret" not in term.seen
    assert "3 declared (2 developer, 1 user), 1 sent, 2 already stored" in term.seen

    # Skipping a user secret with Enter leaves it to the platform, which refuses and says how to set it.
    app2 = app_with_secrets(tmp_path / "two", "user:\n  password: !user_secret\n")
    term = Terminal(platform, "deploy", "app", str(app2), "--name", "tty2")
    term.read_until("User secret user.password")
    term.type("")
    assert term.finish() == 1
    assert "mcp-agent secrets set tty2 USER__PASSWORD" in term.seen

    # --non-interactive never prompts, even on a terminal.
    term = Terminal(platform, "deploy", "app", str(app2), "--name", "tty2", "--non-interactive")
    assert term.finish() == 1
    assert "User secret" not in term.seen and "USER__PASSWORD" in term.seen

    # `secrets set` asks twice, hidden, and refuses a mismatch.
    term = Terminal(platform, "secrets", "set", "tty", "USER__PASSWORD")
    term.read_until("Value for USER__PASSWORD")
    term.type(typed)
    term.read_until("Repeat for confirmation")
    term.type(typed)
    assert term.finish() == 0, term.seen
    assert typed not in term.seen and "restarted onto the new value" in term.seen
    assert check(endpoint, platform.token, "USER__PASSWORD", typed) == "match"


def test_deploy_server_with_secret(platform, tmp_path):
    """`deploy server --secret KEY` declares a user secret for a stdio server: refused while it has no value, set
    with `secrets set`, or typed at a hidden prompt in a terminal; never taken from the command line."""
    value, typed = f"srv-{secrets.token_hex(8)}", f"typed-{secrets.token_hex(8)}"
    cli = Recorder(platform)
    server = ("deploy", "server", "srv", "--command", "python", "--arg", str(APP / "main.py"),
              "--pip", "mcp>=2.3,<3", "--pip", "pyyaml>=6", "--secret", "STDIO__TOKEN")

    assert "--secret KEY" in cli("deploy", "server", "--help").stdout
    r = cli(*server[:-1], "STDIO__TOKEN=oops-a-value", ok=False)  # a value on argv is refused, not stored
    assert "give only the name" in r.stderr
    assert cli.json("secrets", "list", "srv", ok=None, keep=False).get("secrets", []) == []

    r = cli(*server, "--non-interactive", ok=False)
    assert "STDIO__TOKEN" in r.stderr and "mcp-agent secrets set srv STDIO__TOKEN" in r.stderr
    cli("secrets", "set", "srv", "STDIO__TOKEN", "--stdin", input=value)
    result = cli.json(*server, "--non-interactive")
    assert result["secrets"]["declared"] == ["STDIO__TOKEN"] and result["secrets"]["already_stored"] == ["STDIO__TOKEN"]
    assert check(f"{platform.url}/servers/srv/mcp", platform.token, "STDIO__TOKEN", value) == "match"
    listed = cli.json("secrets", "list", "srv")["secrets"]
    assert [(s["key"], s["kind"]) for s in listed] == [("STDIO__TOKEN", "user")]

    # In a terminal the value is asked for, hidden; file mode hands it over in the secrets file.
    term = Terminal(platform, *server[:2], "srv2", *server[3:], "--secrets-as", "file")
    term.read_until("Secret STDIO__TOKEN")
    term.type(typed)
    assert term.finish() == 0, term.seen
    assert typed not in term.seen and "1 sent" in term.seen
    endpoint = f"{platform.url}/servers/srv2/mcp"
    assert check(endpoint, platform.token, "stdio.token", typed, tool="check_file") == "match"
    assert check(endpoint, platform.token, "STDIO__TOKEN", typed) == "unset"
    cli.assert_no_leak(value, typed)
