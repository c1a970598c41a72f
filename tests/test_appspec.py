"""load_app: entrypoint detection by AST, the deploy section, requirements and names, on real app directories."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mcp_agent_cloud.appspec import AppSpec, load_app
from mcp_agent_cloud.errors import AppError, ValidationFailed
from mcp_agent_cloud.names import requirements_hash

SERVER = "from mcp.server import MCPServer\nserver = MCPServer('demo')\n"


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = tmp_path / "demo-app"
    root.mkdir()
    return root


# -- detection ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["main.py", "app.py", "server.py"])
def test_detects_server_in_each_candidate_file(app, filename):
    write(app, {filename: SERVER})
    spec = load_app(app)
    assert spec.entrypoint == f"{filename[:-3]}:server"
    assert spec.detected == f"auto-detected MCPServer in {filename}"


def test_prefers_main_then_app_then_server(app):
    write(app, {"server.py": "s = FastMCP('a')\n", "app.py": "a = FastMCP('a')\n"})
    assert load_app(app).entrypoint == "app:a"
    write(app, {"main.py": "m = MCPApp(name='a')\n"})
    spec = load_app(app)
    assert (spec.entrypoint, spec.detected) == ("main:m", "auto-detected MCPApp in main.py")


@pytest.mark.parametrize("source, expected", [
    ("import mcp.server.fastmcp as f\nmcp = f.FastMCP('x')\n", "main:mcp"),
    ("from mcp.server import fastmcp\nsrv: fastmcp.FastMCP = fastmcp.FastMCP('x')\n", "main:srv"),
    ("import mcpserver\nhelper = 1\nthe_app = mcpserver.MCPServer()\n", "main:the_app"),
    ("try:\n    from mcp import MCPServer\nexcept ImportError:\n    pass\nif True:\n    s2 = MCPServer()\n", "main:s2"),
])
def test_detects_attribute_calls_and_annotated_assignments(app, source, expected):
    write(app, {"main.py": source})
    assert load_app(app).entrypoint == expected


def test_detection_does_not_run_app_code(app, tmp_path):
    marker = tmp_path / "EXECUTED"
    write(app, {"main.py": f"""
        import sys, some_module_that_does_not_exist
        open({str(marker)!r}, "w").write("ran")
        sys.exit(3)
        server = FastMCP("x")
        raise RuntimeError("imported")
    """})
    spec = load_app(app)
    assert spec.entrypoint == "main:server"
    assert not marker.exists()


def test_no_entrypoint_lists_searched_files_and_suggests_app(app):
    write(app, {"main.py": "x = 1\n", "tool.py": SERVER})
    with pytest.raises(AppError) as exc:
        load_app(app)
    assert "main.py, app.py, server.py" in exc.value.message
    assert "--app module:attr" in exc.value.hint


# -- explicit entrypoint -----------------------------------------------------------------------------------------


def test_explicit_app_overrides_detection_and_deploy_section(app):
    write(app, {"main.py": SERVER, "other.py": "def factory():\n    pass\n",
                "mcp_agent.config.yaml": "deploy:\n  entrypoint: main:server\n"})
    spec = load_app(app, entrypoint="other:factory")
    assert (spec.entrypoint, spec.detected) == ("other:factory", "--app")


@pytest.mark.parametrize("files, entrypoint", [
    ({"pkg/srv.py": "class Server: ...\n"}, "pkg.srv:Server"),
    ({"pkg2/__init__.py": "from .impl import server as app_server\n"}, "pkg2:app_server"),
    ({"m.py": "import json as server\n"}, "m:server"),
    ({"m.py": "a, (b, srv) = 1, (2, 3)\n"}, "m:srv"),
])
def test_explicit_attr_may_be_any_module_level_binding(app, files, entrypoint):
    write(app, files)
    assert load_app(app, entrypoint=entrypoint).entrypoint == entrypoint


@pytest.mark.parametrize("bad", ["main", "main:", ":server", "main:server:x", "main/x:server", "1main:server"])
def test_entrypoint_must_be_module_colon_attr(app, bad):
    write(app, {"main.py": SERVER})
    with pytest.raises(AppError, match="expected module:attr"):
        load_app(app, entrypoint=bad)


def test_file_name_as_module_gets_a_hint(app):
    write(app, {"main.py": SERVER})
    with pytest.raises(AppError) as exc:
        load_app(app, entrypoint="main.py:server")
    assert exc.value.hint == "drop the .py: --app main:server"


def test_missing_module_names_the_files_looked_for(app):
    write(app, {"main.py": SERVER})
    with pytest.raises(AppError) as exc:
        load_app(app, entrypoint="pkg.nope:server")
    assert "pkg/nope.py" in exc.value.message and "pkg/nope/__init__.py" in exc.value.message


# -- deploy section ----------------------------------------------------------------------------------------------


def test_deploy_section_keys_and_framework_keys_ignored(app):
    write(app, {"srv.py": SERVER, "requirements.txt": "ignored-because-deploy-lists-some\n",
                "mcp_agent.config.yaml": """
                    execution_engine: asyncio
                    logger:
                      level: debug
                    deploy:
                      name: from-yaml
                      entrypoint: srv:server
                      requirements: [httpx>=0.27, "  rich  "]
                      env: {MODE: prod, PORT: 8080, DEBUG: true}
                      description: A demo
                      builder: {name: docker, image: python:3.12}
                      exclude: [data/, "*.bin"]
                """})
    spec = load_app(app)
    assert spec.name == "from-yaml"
    assert (spec.entrypoint, spec.detected) == ("srv:server", "mcp_agent.config.yaml")
    assert spec.requirements == ["httpx>=0.27", "rich"]
    assert spec.env == {"MODE": "prod", "PORT": "8080", "DEBUG": "true"}
    assert spec.description == "A demo"
    assert spec.builder == {"name": "docker", "image": "python:3.12"}
    assert spec.exclude == ["data/", "*.bin"]
    assert load_app(app, name="explicit").name == "explicit"


def test_unknown_deploy_key_names_key_and_line(app):
    write(app, {"main.py": SERVER,
                "mcp_agent.config.yaml": "logger: {}\ndeploy:\n  name: ok\n  colour: blue\n"})
    with pytest.raises(AppError) as exc:
        load_app(app)
    assert "mcp_agent.config.yaml:4" in exc.value.message
    assert "deploy.colour: unknown key" in exc.value.message


def test_secrets_file_is_not_read(app):
    write(app, {"main.py": SERVER, "mcp_agent.secrets.yaml": "deploy: [unclosed\n  : : :\n"})
    assert load_app(app).entrypoint == "main:server"


# -- errors that say what is wrong and where -----------------------------------------------------------------------

APP_ERRORS = {
    "server made inside a function": ({"main.py": "def make():\n    server = FastMCP('x')\n"}, {},
                                      "no MCP server found"),
    "syntax error": ({"main.py": "x = 1\ndef broken(:\n"}, {}, r"syntax error in main\.py:2"),
    "attr only inside a function": ({"main.py": SERVER + "def later():\n    hidden = 1\n"},
                                    {"entrypoint": "main:hidden"},
                                    "'hidden' is not defined at module level in main.py"),
    "deploy entrypoint wrong": ({"main.py": SERVER, "mcp_agent.config.yaml": "deploy:\n  entrypoint: main:nothing\n"},
                                {}, r"'main:nothing' \(from mcp_agent.config.yaml\)"),
    "invalid yaml": ({"main.py": SERVER, "mcp_agent.config.yaml": "deploy:\n  name: ok\n   bad: [\n"}, {},
                     r"invalid YAML in .*mcp_agent\.config\.yaml:3"),
    "deploy not a mapping": ({"main.py": SERVER, "mcp_agent.config.yaml": "x: 1\ndeploy: [a]\n"}, {},
                             r"mcp_agent\.config\.yaml:2: deploy section must be a mapping"),
    "pyproject deps not a list": ({"main.py": SERVER, "pyproject.toml": "[project]\ndependencies = 'mcp'\n"}, {},
                                  r"\[project\]\.dependencies must be a list"),
    "invalid pyproject": ({"main.py": SERVER, "pyproject.toml": "[project\n"}, {}, "invalid TOML in .*pyproject.toml"),
}


@pytest.mark.parametrize("case", list(APP_ERRORS))
def test_app_errors(app, case):
    files, kwargs, message = APP_ERRORS[case]
    write(app, files)
    with pytest.raises(AppError, match=message) as exc:
        load_app(app, **kwargs)
    assert exc.value.hint


# -- directory, name, requirements -------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(AppError, match="app directory not found") as exc:
        load_app(tmp_path / "nope")
    assert exc.value.hint


def test_not_a_directory(tmp_path):
    (tmp_path / "file.py").write_text(SERVER)
    with pytest.raises(AppError, match="not a directory"):
        load_app(tmp_path / "file.py")


def test_name_from_directory_name(tmp_path):
    root = write(tmp_path / "My_Cool App", {"main.py": SERVER})
    spec = load_app(str(root))
    assert spec.name == "my-cool-app"
    assert spec.dir == root.resolve()


def test_invalid_explicit_name_is_refused(app):
    write(app, {"main.py": SERVER})
    with pytest.raises(ValidationFailed):
        load_app(app, name="Bad_Name")


def test_requirements_from_requirements_txt(app):
    write(app, {"main.py": SERVER, "requirements.txt": """
        # pinned for prod
        httpx>=0.27  # inline comment

        -r other.txt
        rich[jupyter]==13.7; python_version >= "3.11"
        --index-url https://example.invalid/simple
    """})
    spec = load_app(app)
    assert spec.requirements == ["httpx>=0.27", 'rich[jupyter]==13.7; python_version >= "3.11"']
    assert any("-r other.txt" in w for w in spec.warnings)
    assert any("--index-url" in w for w in spec.warnings)


def test_requirements_from_pyproject(app):
    write(app, {"main.py": SERVER, "pyproject.toml": """
        [project]
        name = "demo"
        dependencies = ["mcp>=1.0", "anyio"]
    """})
    assert load_app(app).requirements == ["mcp>=1.0", "anyio"]


def test_requirements_txt_wins_over_pyproject_and_none_is_empty(app):
    write(app, {"main.py": SERVER})
    assert load_app(app).requirements == []
    write(app, {"pyproject.toml": "[project]\ndependencies = ['a']\n", "requirements.txt": "b\n"})
    assert load_app(app).requirements == ["b"]


def test_deploy_requirements_file_path(app):
    write(app, {"main.py": SERVER, "reqs/prod.txt": "uvicorn\n",
                "mcp_agent.config.yaml": "deploy:\n  requirements: reqs/prod.txt\n"})
    assert load_app(app).requirements == ["uvicorn"]


@pytest.mark.parametrize("path", ["missing.txt", "../outside.txt"])
def test_deploy_requirements_file_must_exist_inside_app(app, path):
    (app.parent / "outside.txt").write_text("evil\n")
    write(app, {"main.py": SERVER, "mcp_agent.config.yaml": f"deploy:\n  requirements: {path}\n"})
    with pytest.raises(AppError, match="not a file inside"):
        load_app(app)


def test_to_hints_carries_what_the_packager_needs(app):
    write(app, {"main.py": SERVER, "requirements.txt": "a\n",
                "mcp_agent.config.yaml": "deploy:\n  env: {K: v}\n  description: d\n"})
    spec = load_app(app)
    assert isinstance(spec, AppSpec)
    hints = spec.to_hints(max_bytes=10)
    assert (hints.name, hints.entrypoint, hints.requirements, hints.env, hints.description, hints.max_bytes) == (
        "demo-app", "main:server", ["a"], {"K": "v"}, "d", 10)
    assert requirements_hash(hints.requirements) == requirements_hash(["a"])


def test_deploy_auth_is_platform_or_none(app):
    write(app, {"main.py": SERVER, "mcp_agent.config.yaml": "deploy:\n  auth: none\n"})
    assert load_app(app).auth == "none"
    write(app, {"main.py": SERVER, "mcp_agent.config.yaml": "deploy:\n  name: ok\n  auth: open\n"})
    with pytest.raises(AppError) as exc:
        load_app(app)
    assert "mcp_agent.config.yaml:3: deploy.auth: Value error, use platform, none, or {provider: NAME}" in \
        exc.value.message
    write(app, {"main.py": SERVER, "mcp_agent.config.yaml": "deploy:\n  auth: {provider: github}\n"})
    assert load_app(app).auth == "provider:github"
