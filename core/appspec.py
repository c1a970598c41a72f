"""What an app directory is: its name, its entrypoint (``module:attr``), its requirements and its deploy settings.

Settings come from the ``deploy:`` key of ``mcp_agent.config.yaml`` (the rest of that file belongs to the mcp-agent
framework and is ignored). The entrypoint is found by reading source with :mod:`ast`: app code is never imported.
``mcp_agent.secrets.yaml`` holds secrets and is never read here.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .config import load_yaml, validate_located
from .errors import AppError, ConfigError
from .hookspecs.types import PackageHints
from .names import suggest_name, validate_name

APP_CONFIG_FILENAME = "mcp_agent.config.yaml"
SECRETS_FILENAME = "mcp_agent.secrets.yaml"
CANDIDATE_FILES = ("main.py", "app.py", "server.py")
SERVER_CLASSES = ("MCPServer", "FastMCP", "MCPApp")
ENTRYPOINT_RE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
APP_HINT = ("name the server object with --app module:attr, e.g. --app main:server, or set deploy.entrypoint in "
            + APP_CONFIG_FILENAME)


class DeploySection(BaseModel):
    """The ``deploy:`` key of ``mcp_agent.config.yaml``."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    entrypoint: str | None = Field(None, description="module:attr of the MCP server object")
    requirements: list[str] | str | None = Field(
        None, description="pip requirement specs, or a requirements file relative to the app directory")
    env: dict[str, str] = Field(default_factory=dict, description="non-secret environment")
    description: str = ""
    builder: str | dict[str, Any] | None = None
    exclude: list[str] = Field(default_factory=list, description="extra gitignore-style patterns")

    @field_validator("env", mode="before")
    @classmethod
    def _scalars_to_str(cls, value: Any) -> Any:
        # YAML turns `PORT: 8080` and `DEBUG: true` into int/bool; env values are strings either way.
        if isinstance(value, dict):
            return {k: (str(v).lower() if isinstance(v, bool) else str(v) if isinstance(v, (int, float)) else v)
                    for k, v in value.items()}
        return value


class AppSpec(BaseModel):
    dir: Path
    name: str
    entrypoint: str
    requirements: list[str] = Field(default_factory=list)
    description: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    builder: str | dict[str, Any] | None = None
    exclude: list[str] = Field(default_factory=list)
    detected: str = Field(description="how the entrypoint was found")
    warnings: list[str] = Field(default_factory=list, description="things ignored on the way, for the CLI to show")

    def to_hints(self, *, max_bytes: int | None = None) -> PackageHints:
        return PackageHints(name=self.name, entrypoint=self.entrypoint, requirements=self.requirements,
                            description=self.description, env=self.env, max_bytes=max_bytes)


def load_app(directory: Path | str, *, name: str | None = None, entrypoint: str | None = None) -> AppSpec:
    """Describe the app in ``directory``. Explicit arguments win over the deploy section, which wins over detection."""
    root = Path(directory).expanduser()
    if not root.exists():
        raise AppError(f"app directory not found: {root}",
                       hint="pass the directory that holds your app, e.g. mcp-agent deploy ./my-app")
    if not root.is_dir():
        raise AppError(f"not a directory: {root}", hint="pass the app's directory, not a file inside it")
    root = root.resolve()
    deploy = _load_deploy_section(root)
    warnings: list[str] = []

    if entrypoint:
        detected = "--app"
    elif deploy.entrypoint:
        entrypoint, detected = deploy.entrypoint, APP_CONFIG_FILENAME
    else:
        entrypoint, detected = _detect_entrypoint(root)
    _check_entrypoint(root, entrypoint, detected)

    final_name = validate_name(name or deploy.name or suggest_name(root.name))
    return AppSpec(dir=root, name=final_name, entrypoint=entrypoint, requirements=_requirements(root, deploy, warnings),
                   description=deploy.description, env=deploy.env, builder=deploy.builder, exclude=deploy.exclude,
                   detected=detected, warnings=warnings)


def _load_deploy_section(root: Path) -> DeploySection:
    path = root / APP_CONFIG_FILENAME
    if not path.is_file():
        return DeploySection()
    try:
        located = load_yaml(path.read_text(encoding="utf-8"), str(path))
        return validate_located(DeploySection, located, prefix=("deploy",), what="deploy section")
    except ConfigError as exc:  # same message (with file:line), reported as an app problem
        raise AppError(exc.message, hint=exc.hint or f"fix the deploy: section of {APP_CONFIG_FILENAME}") from None


# ---------------------------------------------------------------------------------------------------------------
# Entrypoint: found and checked with ast, never by importing
# ---------------------------------------------------------------------------------------------------------------


def _parse(path: Path, root: Path) -> ast.Module:
    try:
        return ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise AppError(f"syntax error in {path.relative_to(root)}:{exc.lineno}: {exc.msg}",
                       hint="fix the file; it must be valid Python to be deployed") from None


def _module_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements that run at module level, including those inside top-level if/try/with blocks."""
    out = []
    for stmt in body:
        out.append(stmt)
        if isinstance(stmt, (ast.If, ast.Try, ast.TryStar)):
            out += _module_statements(stmt.body + stmt.orelse)
            if not isinstance(stmt, ast.If):
                out += _module_statements(stmt.finalbody)
                for handler in stmt.handlers:
                    out += _module_statements(handler.body)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            out += _module_statements(stmt.body)
    return out


def _assigned(stmt: ast.stmt) -> tuple[list[str], ast.expr | None]:
    """Names bound by an assignment statement, and the assigned value."""
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, ast.AnnAssign):
        targets = [stmt.target]
    else:
        return [], None
    names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    return names, stmt.value


def _bound_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for stmt in _module_statements(tree.body):
        names.update(_assigned(stmt)[0])
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(stmt.name)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names.update(a.asname or a.name.split(".")[0] for a in stmt.names if a.name != "*")
    return names


def _server_class(value: ast.expr | None) -> str | None:
    if not isinstance(value, ast.Call):
        return None
    func = value.func
    called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return called if called in SERVER_CLASSES else None


def _detect_entrypoint(root: Path) -> tuple[str, str]:
    for filename in CANDIDATE_FILES:
        path = root / filename
        if not path.is_file():
            continue
        for stmt in _module_statements(_parse(path, root).body):
            names, value = _assigned(stmt)
            cls = _server_class(value)
            if cls and names:
                return f"{path.stem}:{names[0]}", f"auto-detected {cls} in {filename}"
    raise AppError(
        f"no MCP server found in {root}: searched {', '.join(CANDIDATE_FILES)} for a module-level "
        f"assignment like `server = MCPServer(...)` (or {', '.join(SERVER_CLASSES[1:])})",
        hint=APP_HINT)


def module_path(root: Path, module: str) -> Path | None:
    """``pkg.mod`` -> ``root/pkg/mod.py`` or ``root/pkg/mod/__init__.py``, whichever exists."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _check_entrypoint(root: Path, entrypoint: str, detected: str) -> None:
    if not ENTRYPOINT_RE.match(entrypoint):
        raise AppError(f"invalid entrypoint {entrypoint!r} (from {detected}): expected module:attr, e.g. main:server",
                       hint=APP_HINT)
    module, attr = entrypoint.split(":")
    path = module_path(root, module)
    if path is None:
        rel = module.replace(".", "/")
        hint = "module paths are relative to the app directory; " + APP_HINT
        if module.endswith(".py"):  # a file name where a module name belongs
            hint = f"drop the .py: --app {module[:-3]}:{attr}"
        raise AppError(f"entrypoint {entrypoint!r} (from {detected}): module {module!r} not found; "
                       f"looked for {rel}.py and {rel}/__init__.py in {root}", hint=hint)
    if attr not in _bound_names(_parse(path, root)):
        raise AppError(f"entrypoint {entrypoint!r} (from {detected}): {attr!r} is not defined at module level "
                       f"in {path.relative_to(root)}",
                       hint=f"define `{attr} = MCPServer(...)` (or FastMCP/MCPApp) at the top level of that file, "
                            "or point --app at the right name")


# ---------------------------------------------------------------------------------------------------------------
# Requirements
# ---------------------------------------------------------------------------------------------------------------


def _requirements(root: Path, deploy: DeploySection, warnings: list[str]) -> list[str]:
    if isinstance(deploy.requirements, list):
        return [r.strip() for r in deploy.requirements if r.strip()]
    if isinstance(deploy.requirements, str):
        path = (root / deploy.requirements).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise AppError(f"deploy.requirements: {deploy.requirements!r} is not a file inside {root}",
                           hint="give a requirements file path relative to the app directory, or a list of specs")
        return parse_requirements_file(path, warnings)
    if (root / "requirements.txt").is_file():
        return parse_requirements_file(root / "requirements.txt", warnings)
    if (root / "pyproject.toml").is_file():
        path = root / "pyproject.toml"
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise AppError(f"invalid TOML in {path}: {exc}", hint="fix the syntax of pyproject.toml") from None
        deps = data.get("project", {}).get("dependencies", [])
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise AppError(f"{path}: [project].dependencies must be a list of strings",
                           hint='write it like dependencies = ["mcp>=1.0"]')
        return [d.strip() for d in deps if d.strip()]
    return []


def parse_requirements_file(path: Path, warnings: list[str]) -> list[str]:
    """Requirement specs from a pip requirements file. Option lines (``-r``, ``-e``, ``--index-url``) are skipped
    with a warning: the platform installs plain specs only."""
    out = []
    text = path.read_text(encoding="utf-8").replace("\\\n", "")
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        if line.startswith("-"):
            warnings.append(f"{path.name}:{lineno}: ignored option line {line!r}")
            continue
        out.append(line)
    return out
