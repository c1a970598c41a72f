"""What an app directory is: its name, its entrypoint (``module:attr``), its requirements and its deploy settings.

Settings come from the ``deploy:`` key of ``mcp_agent.config.yaml`` (the rest of that file belongs to the mcp-agent
framework and is ignored). The entrypoint is found by reading source with :mod:`ast`: app code is never imported.
``mcp_agent.secrets.yaml`` holds secrets: it is never packaged; :func:`load_secrets` turns it into declarations for
the CLI's deploy (values travel only in the deploy request, to the secrets backend).
"""

from __future__ import annotations

import ast
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .config import load_yaml, validate_located
from .errors import AppError, ConfigError
from .hookspecs.types import PackageHints
from .names import AUTH_RE, suggest_name, validate_name

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
    auth: str | None = Field(
        None, description="who may call it: platform (a token of its org, the default), none (anyone), or "
                          "{provider: NAME} (users who logged in through that auth provider)")
    uses: list[str] | None = Field(
        None, max_length=50, description="the deployed servers it calls: NAME (of its org), ORG.NAME or @ORG/NAME")

    @field_validator("auth", mode="before")
    @classmethod
    def _auth(cls, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"provider"} and isinstance(value["provider"], str):
            value = f"provider:{value['provider']}"
        if value is not None and (not isinstance(value, str) or not AUTH_RE.match(value)):
            raise ValueError("use platform, none, or {provider: NAME}")
        return value

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
    auth: str | None = None
    uses: list[str] | None = None
    server_urls: list[str] = Field(default_factory=list, description="mcp.servers.*.url of the app's config")
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
    deploy, server_urls = _load_deploy_section(root)
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
                   auth=deploy.auth, uses=deploy.uses, server_urls=server_urls, detected=detected,
                   warnings=warnings)


def _load_deploy_section(root: Path) -> tuple[DeploySection, list[str]]:
    """The ``deploy:`` section, and the URLs of the MCP servers the app's ``mcp.servers`` connects to."""
    path = root / APP_CONFIG_FILENAME
    if not path.is_file():
        return DeploySection(), []
    try:
        located = load_yaml(path.read_text(encoding="utf-8"), str(path))
        deploy = validate_located(DeploySection, located, prefix=("deploy",), what="deploy section")
    except ConfigError as exc:  # same message (with file:line), reported as an app problem
        raise AppError(exc.message, hint=exc.hint or f"fix the deploy: section of {APP_CONFIG_FILENAME}") from None
    servers = ((located.data or {}).get("mcp") or {}).get("servers") if isinstance(located.data, dict) else None
    urls = [str(v["url"]) for v in (servers or {}).values() if isinstance(v, dict) and isinstance(v.get("url"), str)] \
        if isinstance(servers, dict) else []
    return deploy, urls


def platform_servers(urls: list[str], base_url: str) -> list[str]:
    """The deployments among ``urls`` (``mcp.servers.*.url``) that this platform serves: their names, as the
    app's declared dependencies when ``deploy.uses`` says nothing."""
    from urllib.parse import urlsplit

    from .names import from_at_path

    base = urlsplit(base_url)
    out = []
    for url in urls:
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            continue
        path = from_at_path(parts.path) or parts.path
        if path.startswith("/servers/") and len(path.split("/")) >= 3 and path.split("/")[2]:
            name = path.split("/")[2]
            if name not in out:
                out.append(name)
    return out


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


# ---------------------------------------------------------------------------------------------------------------
# mcp_agent.secrets.yaml: declarations with the mcp-agent framework's !developer_secret / !user_secret tags
# ---------------------------------------------------------------------------------------------------------------

SECRET_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEVELOPER_TAG = "!developer_secret"
USER_TAG = "!user_secret"
MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
SECRETS_HINT = (f"see docs/secrets.md: a leaf of {SECRETS_FILENAME} is a plain value, `{DEVELOPER_TAG} ENV_NAME`, "
                f"`{DEVELOPER_TAG}` (asked for at deploy) or `{USER_TAG}`")


@dataclass(frozen=True)
class SecretDecl:
    """One secret declared in ``mcp_agent.secrets.yaml``.

    ``source`` says where the value comes from: ``file`` (a plain value), ``env:NAME`` (``!developer_secret NAME``,
    read at deploy), ``prompt`` (``!developer_secret`` with no argument, a null leaf, or ``!user_secret``).
    ``value`` is set only for ``file``; :func:`resolve_secret_values` fills in the others.
    """

    key: str
    path: str
    kind: Literal["developer", "user"]
    value: str | None
    source: str
    line: int

    def __repr__(self) -> str:  # never show a value in tracebacks or logs
        return f"SecretDecl(key={self.key!r}, path={self.path!r}, kind={self.kind!r}, source={self.source!r})"

    def ref(self) -> dict[str, str]:
        """What the platform records: key, kind and path, never the value."""
        return {"key": self.key, "kind": self.kind, "path": self.path}


@dataclass(frozen=True)
class _Tagged:
    kind: Literal["developer", "user"]
    env: str | None
    line: int


class _SecretsLoader(yaml.SafeLoader):
    """SafeLoader plus the two secret tags. Any other unknown tag (``!!python/object``, ``!foo``) stays an error."""


def _tag_constructor(kind: Literal["developer", "user"]):
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> _Tagged:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.tag} takes an environment variable name or nothing, not a "
                f"{'mapping' if isinstance(node, yaml.MappingNode) else 'list'}", node.start_mark)
        env = (loader.construct_scalar(node) or "").strip() or None
        if env is not None and not SECRET_KEY_RE.match(env):
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.tag} {env!r}: the argument is the name of an environment variable "
                "(letters, digits, _), e.g. OPENAI_API_KEY", node.start_mark)
        return _Tagged(kind, env, line)
    return construct


_SecretsLoader.add_constructor(DEVELOPER_TAG, _tag_constructor("developer"))
_SecretsLoader.add_constructor(USER_TAG, _tag_constructor("user"))


def secret_key(path: tuple[str, ...]) -> str:
    """``("openai", "api_key")`` -> ``OPENAI__API_KEY``: the env name pydantic-settings reads as nested settings."""
    return "__".join(p.upper() for p in path)


def _short_tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


def _scalar_str(value: Any) -> str:
    if isinstance(value, bool):  # YAML true/false; the framework's settings parse "true"/"false"
        return "true" if value else "false"
    return str(value)


def load_secrets(path: Path | str, *, text: str | None = None) -> list[SecretDecl]:
    """Parse ``mcp_agent.secrets.yaml`` into declarations, in file order. A missing file declares nothing.

    Rules (see docs/secrets.md):
    - a plain scalar leaf is a developer secret with that value (numbers and booleans become strings);
    - ``!developer_secret NAME`` is a developer secret read from env var NAME at deploy;
      ``!developer_secret`` with no argument, or an empty leaf (``key:`` or ``key: ""``), is a developer secret
      asked for at deploy;
    - ``!user_secret`` is a user secret: asked for at deploy when interactive, or set with ``mcp-agent secrets set``
      (an argument, as in the framework, names an env var that supplies it when set);
    - a list with no tags inside is one developer secret holding the list as JSON (pydantic-settings parses JSON
      for list fields); a tag inside a list is an error, as is a key that is not a valid env-var part or two
      paths that give the same key;
    - ``$schema`` at the top level is ignored (editors use it).
    """
    path = Path(path)
    source = str(path)
    if text is None:
        if not path.is_file():
            return []
        text = path.read_text(encoding="utf-8")

    def fail(line: int | None, message: str, hint: str = SECRETS_HINT) -> AppError:
        return AppError(f"{source}:{line or 1}: {message}", hint=hint)

    try:
        node = yaml.compose(text, Loader=_SecretsLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise fail(mark.line + 1 if mark else None, f"invalid YAML: {exc.problem or exc}",
                   "fix the syntax at that line (indentation, quoting, a missing ':')") from None
    if node is None:
        return []
    if not isinstance(node, yaml.MappingNode) or node.tag != MAP_TAG:
        raise fail(node.start_mark.line + 1, "the secrets file must be a mapping of names to values, "
                   "e.g. `openai:\\n  api_key: !developer_secret OPENAI_API_KEY`")
    loader = _SecretsLoader("")  # constructs single nodes with the same tag rules
    decls: list[SecretDecl] = []
    seen: dict[str, SecretDecl] = {}

    def unknown_tag(n: yaml.Node) -> AppError:
        return fail(n.start_mark.line + 1, f"unknown tag {_short_tag(n.tag)}: only {DEVELOPER_TAG} and "
                    f"{USER_TAG} are understood (other tags are never constructed, so no YAML in this file can "
                    "run code)")

    def construct(n: yaml.Node) -> Any:
        try:
            return loader.construct_object(n, deep=True)
        except yaml.constructor.ConstructorError as exc:
            mark = exc.problem_mark or n.start_mark
            problem = exc.problem or str(exc)
            found = re.search(r"for the tag '([^']*)'", problem)
            if found:
                problem = (f"unknown tag {_short_tag(found.group(1))}: only {DEVELOPER_TAG} and {USER_TAG} are "
                           "understood (other tags are never constructed, so no YAML in this file can run code)")
            raise fail(mark.line + 1, problem) from None

    def add(keypath: tuple[str, ...], line: int, kind: Literal["developer", "user"], value: str | None,
            src: str) -> None:
        key = secret_key(keypath)
        dotted = ".".join(keypath)
        if key in seen:
            other = seen[key]
            raise fail(line, f"{dotted} and {other.path} (line {other.line}) both become the secret key {key}",
                       "rename one of them: keys are upper-cased and joined with __")
        decl = SecretDecl(key=key, path=dotted, kind=kind, value=value, source=src, line=line)
        seen[key] = decl
        decls.append(decl)

    def has_tag(n: yaml.Node) -> yaml.Node | None:
        if n.tag in (DEVELOPER_TAG, USER_TAG):
            return n
        children = (n.value if isinstance(n, yaml.SequenceNode) else
                    [v for pair in n.value for v in pair] if isinstance(n, yaml.MappingNode) else [])
        return next((found for c in children if (found := has_tag(c)) is not None), None)

    def walk(n: yaml.MappingNode, keypath: tuple[str, ...]) -> None:
        for key_node, value_node in n.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise fail(line, "keys must be plain names")
            name = key_node.value  # as written: YAML 1.1 would turn `on:` or `yes:` into True
            if not keypath and name == "$schema":
                continue
            if not SECRET_KEY_RE.match(name):
                raise fail(line, f"{'.'.join(keypath + (name,))}: {name!r} cannot be part of an environment "
                           "variable name (use letters, digits and _; no leading digit)")
            here = keypath + (name,)
            if isinstance(value_node, yaml.MappingNode) and value_node.tag == MAP_TAG:
                if not value_node.value:
                    raise fail(line, f"{'.'.join(here)}: an empty mapping declares no secret; remove it or give "
                               "it keys")
                walk(value_node, here)
                continue
            if isinstance(value_node, (yaml.MappingNode, yaml.SequenceNode)) and \
                    value_node.tag not in (SEQ_TAG, DEVELOPER_TAG, USER_TAG):
                raise unknown_tag(value_node)
            if isinstance(value_node, yaml.SequenceNode) and value_node.tag == SEQ_TAG:
                tagged = has_tag(value_node)
                if tagged is not None:
                    raise fail(tagged.start_mark.line + 1, f"{'.'.join(here)}: {tagged.tag} inside a list is not "
                               "supported; give each secret its own key in a mapping")
                add(here, line, "developer", json.dumps(construct(value_node)), "file")
                continue
            value = construct(value_node)
            if isinstance(value, _Tagged):
                if value.kind == "developer":
                    add(here, line, "developer", None, f"env:{value.env}" if value.env else "prompt")
                else:
                    add(here, line, "user", None, f"env:{value.env}" if value.env else "prompt")
            elif value is None or value == "":  # `key:` or `key: ""`: a value to be given at deploy
                add(here, line, "developer", None, "prompt")
            elif isinstance(value, (str, int, float, bool)):
                add(here, line, "developer", _scalar_str(value), "file")
            else:  # dates and other YAML scalars: keep the text as written
                add(here, line, "developer", value_node.value, "file")

    walk(node, ())
    return decls


class MissingSecretValue(AppError):
    """A developer secret whose value could not be found without prompting."""


def resolve_secret_values(decls: list[SecretDecl], *, environ: dict[str, str] | None = None,
                          prompt=None, have: set[str] = frozenset(), source: str = SECRETS_FILENAME
                          ) -> dict[str, str]:
    """Values to send for ``decls``: plain values, env vars (``env:NAME``) and, when ``prompt`` is given (an
    interactive deploy), answers for the rest. ``prompt(decl) -> str | None`` may return None to skip a user
    secret. Keys in ``have`` (already stored on the platform) are prompted for only if they have no other source.

    Without ``prompt``: a developer secret with no value is an error naming its env var or path, unless the
    platform already has it; a user secret is left out (the platform's 409 names what is missing).
    """
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    missing: list[str] = []
    for d in decls:
        value = d.value
        if value is None and d.source.startswith("env:"):
            value = environ.get(d.source[4:])
            if value == "":
                value = None
        if value is None and d.key not in have and prompt is not None:
            value = prompt(d) or None
        if value is not None:
            values[d.key] = value
        elif d.kind == "developer" and d.key not in have:
            missing.append(f"{d.path} (line {d.line}): " + (
                f"environment variable {d.source[4:]} is not set" if d.source.startswith("env:")
                else "no value in the file and no prompt (not interactive)"))
    if missing:
        raise MissingSecretValue(
            f"{source}: developer secret(s) without a value:\n  " + "\n  ".join(missing),
            hint="set the environment variables named above, run the deploy in a terminal to be asked, or store "
                 "them first with `mcp-agent secrets set NAME KEY`")
    return values
