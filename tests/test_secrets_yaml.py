"""mcp_agent.secrets.yaml: the !developer_secret / !user_secret tags, key derivation, errors with file:line,
safe loading, and how values are resolved from the file, the environment and prompts."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mcp_agent_cloud.appspec import SECRETS_FILENAME, load_secrets, resolve_secret_values, secret_key
from mcp_agent_cloud.errors import AppError


def secrets_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / SECRETS_FILENAME
    path.write_text(textwrap.dedent(text))
    return path


def rows(path: Path) -> list[tuple]:
    return [(d.key, d.path, d.kind, d.value, d.source, d.line) for d in load_secrets(path)]


def error(path: Path) -> str:
    with pytest.raises(AppError) as info:
        load_secrets(path)
    return info.value.message


def test_missing_or_empty_file_declares_nothing(tmp_path):
    assert load_secrets(tmp_path / SECRETS_FILENAME) == []
    assert load_secrets(secrets_file(tmp_path, "")) == []
    assert load_secrets(secrets_file(tmp_path, "# only a comment\n")) == []


def test_tags_plain_values_and_nesting(tmp_path):
    path = secrets_file(tmp_path, """\
        $schema: ../schema/mcp-agent.config.schema.json
        openai:
          api_key: sk-plain
          org: !developer_secret OPENAI_ORG
        anthropic:
          api_key: !user_secret
        github:
          token: !developer_secret
        mcp:
          servers:
            fetch:
              headers:
                authorization: !user_secret FETCH_AUTH
        """)
    assert rows(path) == [
        ("OPENAI__API_KEY", "openai.api_key", "developer", "sk-plain", "file", 3),
        ("OPENAI__ORG", "openai.org", "developer", None, "env:OPENAI_ORG", 4),
        ("ANTHROPIC__API_KEY", "anthropic.api_key", "user", None, "prompt", 6),
        ("GITHUB__TOKEN", "github.token", "developer", None, "prompt", 8),
        ("MCP__SERVERS__FETCH__HEADERS__AUTHORIZATION", "mcp.servers.fetch.headers.authorization", "user", None,
         "env:FETCH_AUTH", 13),
    ]


def test_keys_are_taken_as_written(tmp_path):
    # YAML 1.1 reads `on` and `yes` as booleans; as key names they are still the words
    assert [d.key for d in load_secrets(secrets_file(tmp_path, "on: 1\nyes: 2\nNull: 3\n"))] == ["ON", "YES", "NULL"]


def test_key_derivation():
    assert secret_key(("openai", "api_key")) == "OPENAI__API_KEY"
    assert secret_key(("Token",)) == "TOKEN"


@pytest.mark.parametrize("text, value", [
    ("port: 8080\n", "8080"),
    ("ratio: 1.5\n", "1.5"),
    ("enabled: true\n", "true"),
    ("disabled: no\n", "false"),
    ("quoted: '007'\n", "007"),
    ("day: 2024-01-02\n", "2024-01-02"),  # kept as written, not a date object's str
    ("multi: |\n  line1\n  line2\n", "line1\nline2\n"),
    ("hosts: [a.example, b.example]\n", '["a.example", "b.example"]'),  # lists travel as JSON
    ("nested_list:\n  - {a: 1}\n  - 2\n", '[{"a": 1}, 2]'),
])
def test_non_string_scalars_and_lists(tmp_path, text, value):
    [decl] = load_secrets(secrets_file(tmp_path, text))
    assert (decl.kind, decl.value, decl.source) == ("developer", value, "file")


@pytest.mark.parametrize("text", ["token:\n", "token: ''\n", "token: !developer_secret\n",
                                  "token: !developer_secret ''\n"])
def test_empty_leaves_are_asked_for(tmp_path, text):
    [decl] = load_secrets(secrets_file(tmp_path, text))
    assert (decl.key, decl.kind, decl.value, decl.source) == ("TOKEN", "developer", None, "prompt")


def test_values_never_in_repr(tmp_path):
    [decl] = load_secrets(secrets_file(tmp_path, "api_key: sk-do-not-print\n"))
    assert "sk-do-not-print" not in repr(decl) and "sk-do-not-print" not in str(decl)
    assert decl.ref() == {"key": "API_KEY", "kind": "developer", "path": "api_key"}


# -- errors name the file and line ---------------------------------------------------------------------------------


def test_colliding_keys(tmp_path):
    path = secrets_file(tmp_path, """\
        openai:
          api_key: a
        OPENAI:
          API_KEY: b
        """)
    msg = error(path)
    assert msg.startswith(f"{path}:4: ")
    assert "OPENAI.API_KEY and openai.api_key (line 2) both become the secret key OPENAI__API_KEY" in msg


def test_double_underscore_collides_with_nesting(tmp_path):
    path = secrets_file(tmp_path, "a:\n  b: 1\na__b: 2\n")
    assert error(path).startswith(f"{path}:3: a__b and a.b (line 2) both become the secret key A__B")


@pytest.mark.parametrize("text, line, needle", [
    ("a: 1\nb: !secret x\n", 2, "unknown tag !secret"),
    ("a:\n  b:\n    c: !env FOO\n", 3, "unknown tag !env"),
    ("a: !foo {b: 1}\n", 1, "unknown tag !foo"),
    ("a: !foo [1]\n", 1, "unknown tag !foo"),
    ("a:\n  - 1\n  - !foo 2\n", 3, "unknown tag !foo"),
    ("a: !!python/object/apply:os.system ['true']\n", 1, "unknown tag !!python/object/apply:os.system"),
    ("a: !!python/name:os.system\n", 1, "unknown tag !!python/name:os.system"),
    ("a: !developer_secret {x: 1}\n", 1, "!developer_secret takes an environment variable name or nothing"),
    ("a: !user_secret [x]\n", 1, "!user_secret takes an environment variable name or nothing, not a list"),
    ("a: !developer_secret not-a-var\n", 1, "the argument is the name of an environment variable"),
    ("a:\n  - !user_secret\n", 2, "a: !user_secret inside a list is not supported"),
    ("a:\n  api-key: x\n", 2, "a.api-key: 'api-key' cannot be part of an environment variable name"),
    ("1abc: x\n", 1, "'1abc' cannot be part"),
    ("a: {}\n", 1, "a: an empty mapping declares no secret"),
    ("- x\n", 1, "must be a mapping"),
    ("just a string\n", 1, "must be a mapping"),
    ("a: 1\nb: [unclosed\n", 3, "invalid YAML"),
    ("a: 1\n  b: 2\n", 2, "invalid YAML"),
])
def test_bad_files_name_file_and_line(tmp_path, text, line, needle):
    path = secrets_file(tmp_path, text)
    msg = error(path)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert needle in msg


def test_safe_loading_constructs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = secrets_file(tmp_path, f"a: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(AppError):
        load_secrets(path)
    assert not marker.exists()


# -- resolving values ----------------------------------------------------------------------------------------------

FILE = """\
    plain: p-value
    from_env: !developer_secret DEV_TOKEN
    ask_dev: !developer_secret
    user_key: !user_secret
    """


def test_resolve_from_file_and_env_without_prompt(tmp_path):
    decls = load_secrets(secrets_file(tmp_path, FILE))
    values = resolve_secret_values(decls, environ={"DEV_TOKEN": "from-env"}, have={"ASK_DEV"})
    # ASK_DEV is already stored on the platform; USER_KEY is left for the platform to report as missing
    assert values == {"PLAIN": "p-value", "FROM_ENV": "from-env"}


def test_resolve_missing_developer_value_names_the_var(tmp_path):
    decls = load_secrets(secrets_file(tmp_path, FILE))
    with pytest.raises(AppError) as info:
        resolve_secret_values(decls, environ={})
    msg = info.value.message
    assert "from_env (line 2): environment variable DEV_TOKEN is not set" in msg
    assert "ask_dev (line 3): no value in the file and no prompt" in msg
    assert "user_key" not in msg  # user secrets are the platform's to report
    assert "p-value" not in msg


def test_resolve_missing_env_is_prompted_when_interactive(tmp_path):
    decls = load_secrets(secrets_file(tmp_path, FILE))
    asked = []

    def prompt(decl):
        asked.append(decl.key)
        return {"FROM_ENV": "typed-1", "ASK_DEV": "typed-2", "USER_KEY": None}[decl.key]

    values = resolve_secret_values(decls, environ={"DEV_TOKEN": ""}, prompt=prompt)
    assert asked == ["FROM_ENV", "ASK_DEV", "USER_KEY"]
    assert values == {"PLAIN": "p-value", "FROM_ENV": "typed-1", "ASK_DEV": "typed-2"}


def test_resolve_does_not_prompt_for_stored_keys(tmp_path):
    decls = load_secrets(secrets_file(tmp_path, FILE))
    asked = []
    values = resolve_secret_values(decls, environ={"DEV_TOKEN": "e"}, have={"ASK_DEV", "USER_KEY", "PLAIN"},
                                   prompt=lambda d: asked.append(d.key))
    assert asked == []
    # values known without asking are still sent: the file is the source of truth for them
    assert values == {"PLAIN": "p-value", "FROM_ENV": "e"}
