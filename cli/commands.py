"""The built-in CLI commands. They register through ``mcp_agent_cloud_cli_commands`` like any plugin's commands."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import click

from ..errors import MCPAgentCloudError, NotFoundError
from ..hookspecs import hookimpl
from rich.markup import escape

from .output import DeployProgress, api_options, emit_json, err, handle_errors, json_option, out, span_tree, table

PROCESS_WARNING = ("The `process` builder runs app code directly on the platform host, with no isolation. "
                   "Use it only for code you trust. Untrusted code needs a container builder: "
                   "--builder docker or --builder podman (see docs/builders.md).")


def _client(api_url: str | None):
    from ..client import PlatformClient

    return PlatformClient(api_url)


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


def _client_snippet(name: str, endpoint: str) -> dict:
    return {"mcpServers": {name: {"type": "http", "url": endpoint,
                                  "headers": {"Authorization": "Bearer ${MCP_AGENT_CLOUD_TOKEN}"}}}}


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        emit_json({k: v for k, v in result.items() if k != "type"} | {"client_config": _client_snippet(
            result["name"], result["endpoint"])})
        return
    out.print()
    out.print(f"[bold green]Deployed[/] {result['org']}.{result['name']}", markup=True, highlight=False)
    out.print(f"  endpoint:   {result['endpoint']}", highlight=False)
    out.print(f"  deployment: {result['id']}", highlight=False)
    out.print(f"  version:    {result['version']}", highlight=False)
    out.print(f"  status:     {result['status']}", highlight=False)
    if result.get("tools"):
        out.print(f"  tools:      {', '.join(result['tools'])}", highlight=False)
    if result.get("auth") == "none":
        out.print("  auth:       [bold yellow]none[/]: anyone who can reach the platform may call it, with no token "
                  "(`--auth platform` closes it)", markup=True, highlight=False)
        return
    from ..state import auth_path

    out.print(f"\nMCP client configuration (set MCP_AGENT_CLOUD_TOKEN to your token, from {auth_path()}):",
              highlight=False)
    out.print(json.dumps(_client_snippet(result["name"], result["endpoint"]), indent=2), markup=False,
              highlight=False)


def _warn_process_builder(result: dict, as_json: bool) -> None:
    from ..state import load_session, save_session

    if result.get("builder") != "process" or as_json or load_session().get("process_builder_warned"):
        return
    err.print(f"\n[yellow]note:[/] {PROCESS_WARNING}", markup=True, highlight=False)
    save_session(process_builder_warned=True)


def _run_deploy(client, name: str, body: dict, *, as_json: bool, verbose: bool, extra: dict | None = None) -> dict:
    with DeployProgress(quiet=as_json, verbose=verbose) as progress:
        result = client.deploy(name, body, progress.on_event)
    _print_result(result | (extra or {}), as_json)
    _warn_process_builder(result, as_json)
    return result


def _fmt_secret_row(row: dict) -> dict:
    when = row.get("updated_at")
    if isinstance(when, (int, float)):
        return row | {"updated_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))}
    return row


def _interactive(non_interactive: bool) -> bool:
    return not non_interactive and sys.stdin.isatty()


def _prompt_secret(decl) -> str | None:
    """Hidden prompt (on stderr, so --json output stays clean). A user secret may be skipped with Enter."""
    label = f"{decl.path} ({decl.key})"
    if decl.kind == "user":
        value = click.prompt(f"User secret {label}, Enter to skip and set it later with `mcp-agent secrets set`",
                             default="", show_default=False, hide_input=True, err=True)
        return value or None
    why = f"environment variable {decl.source[4:]} is not set; " if decl.source.startswith("env:") else ""
    err.print(f"  [dim]{escape(why)}developer secret {escape(label)}[/]", markup=True, highlight=False)
    return click.prompt(f"Value for {decl.key}", hide_input=True, err=True)  # click repeats on empty input


def _collect_secrets(client, target: str, app_dir: Path, *, non_interactive: bool, as_json: bool
                     ) -> tuple[dict[str, str], list[dict], dict]:
    """Read mcp_agent.secrets.yaml, find what the platform already stores, prompt for the rest when interactive.
    Returns (values to send, refs for every declared key, a value-free summary)."""
    from ..appspec import SECRETS_FILENAME, load_secrets, resolve_secret_values

    path = app_dir / SECRETS_FILENAME
    decls = load_secrets(path)
    if not decls:
        return {}, [], {}
    have = {s["key"] for s in client.list_secrets(target, missing_ok=True)["secrets"]}
    values = resolve_secret_values(decls, have=have, source=str(path),
                                   prompt=_prompt_secret if _interactive(non_interactive) else None)
    declared = [d.key for d in decls]
    stored = [k for k in declared if k not in values and k in have]
    missing = [k for k in declared if k not in values and k not in have]
    developer = sum(d.kind == "developer" for d in decls)
    summary = {"file": str(path), "declared": declared, "developer": developer, "user": len(decls) - developer,
               "sent": sorted(values), "already_stored": stored, "missing": missing}
    if not as_json:
        line = (f"secrets: {len(decls)} declared ({developer} developer, {len(decls) - developer} user), "
                f"{len(values)} sent, {len(stored)} already stored")
        if missing:
            line += f", {len(missing)} missing ({', '.join(missing)})"
        err.print(f"  [dim]{escape(line)}[/]", markup=True, highlight=False)
    return values, [d.ref() for d in decls], summary


def _missing_secrets_hint(exc, target: str) -> None:
    """The platform refuses a deploy whose declared keys have no value (409 missing_secrets): make sure the
    error says how to set them, whatever the platform's hint."""
    from ..errors import ApiError

    if not isinstance(exc, ApiError) or exc.code != "missing_secrets":
        return
    if not exc.hint or "mcp-agent secrets set" not in exc.hint:
        first = ((exc.data or {}).get("missing") or ["KEY"])[0]
        exc.hint = (f"set each missing key, e.g. `mcp-agent secrets set {target} {first}` (reads the value from a "
                    "hidden prompt, --stdin or --from-file), then deploy again; or deploy in a terminal without "
                    "--non-interactive to be asked")


def _server_secrets(client, target: str, keys: tuple[str, ...], *, non_interactive: bool, as_json: bool
                    ) -> tuple[dict[str, str], dict]:
    """`deploy server --secret KEY`: user secrets. Values the platform lacks are asked for (hidden) when
    interactive; otherwise the platform's 409 names them. Returns (values to send, a value-free summary)."""
    from ..appspec import SECRET_KEY_RE

    declared: list[str] = []
    for key in keys:
        if "=" in key:  # a value on argv would be in the shell history and `ps`
            raise click.BadParameter(f"{key.partition('=')[0]}=...: give only the name; the value is asked for, or "
                                     f"set with `mcp-agent secrets set {target} {key.partition('=')[0]}`",
                                     param_hint="--secret")
        if not SECRET_KEY_RE.match(key) or key.startswith("_"):
            raise click.BadParameter(f"{key!r} is not a secret key: use an environment variable name (letters, "
                                     "digits, _; not starting with _), e.g. GITHUB_TOKEN", param_hint="--secret")
        if key not in declared:
            declared.append(key)
    have = {s["key"] for s in client.list_secrets(target, missing_ok=True)["secrets"]}
    values: dict[str, str] = {}
    if _interactive(non_interactive):
        for key in (k for k in declared if k not in have):
            value = click.prompt(f"Secret {key}, Enter to skip and set it later with `mcp-agent secrets set`",
                                 default="", show_default=False, hide_input=True, err=True)
            if value:
                values[key] = value
    stored = [k for k in declared if k not in values and k in have]
    missing = [k for k in declared if k not in values and k not in have]
    if not as_json:
        line = f"secrets: {len(declared)} declared (user), {len(values)} sent, {len(stored)} already stored"
        if missing:
            line += f", {len(missing)} missing ({', '.join(missing)})"
        err.print(f"  [dim]{escape(line)}[/]", markup=True, highlight=False)
    return values, {"declared": declared, "sent": sorted(values), "already_stored": stored, "missing": missing}


def deploy_app_dir(directory: str, *, name: str | None, entrypoint: str | None, env: tuple[str, ...],
                   builder: str | None, region: str | None, public: bool, api_url: str | None, as_json: bool,
                   verbose: bool, packager_name: str = "tarball", non_interactive: bool = False,
                   secrets_as: str = "env", auth: str | None = None, uses: tuple[str, ...] = ()) -> dict:
    from ..appspec import load_app, platform_servers
    from ..hookspecs.types import PluginContext
    from ..manager import load_plugin_manager

    progress = DeployProgress(quiet=as_json)
    progress.step("validate", "started")
    t0 = time.monotonic()
    org_prefix = ""
    if name and "." in name:  # org.name: the app is named by its short part, the platform checks the org
        from ..names import validate_name

        org_prefix, _, name = name.rpartition(".")
        validate_name(org_prefix, what="org name")
    app = load_app(Path(directory), name=name, entrypoint=entrypoint)
    progress.step("validate", "ok", (time.monotonic() - t0) * 1000)
    if not as_json:
        err.print(f"  [dim]{escape(app.name)}: entrypoint {escape(app.entrypoint)} ({escape(app.detected)}), "
                  f"{len(app.requirements)} requirement(s)[/]", markup=True, highlight=False)
        for warning in app.warnings:
            err.print(f"  [yellow]warning:[/] {escape(warning)}", markup=True, highlight=False)
    client = _client(api_url)
    target = f"{org_prefix}.{app.name}" if org_prefix else app.name
    # Before packaging: a missing value should stop the deploy before anything is uploaded.
    secret_values, secret_refs, secrets_summary = _collect_secrets(client, target, app.dir,
                                                                  non_interactive=non_interactive, as_json=as_json)
    ctx = click.get_current_context(silent=True)
    # The CLI loaded the plugins once at start-up; reuse that manager.
    pm = getattr(ctx.find_root().command, "plugin_manager", None) if ctx else None
    pm = pm or load_plugin_manager()
    spec = pm.get_packager(packager_name)
    with tempfile.TemporaryDirectory(prefix="mcpac-pkg-") as tmp:
        packager = pm.build(spec, {}, PluginContext(data_dir=Path(tmp)))
        hints = app.to_hints()
        progress.step("package", "started")
        t0 = time.monotonic()
        import anyio

        package = anyio.run(lambda: packager.package(app.dir, hints, Path(tmp), exclude=app.exclude))
        progress.step("package", "ok", (time.monotonic() - t0) * 1000)
        if not as_json:
            err.print(f"  [dim]{len(package.manifest.files)} files, {package.size / 1024:.1f} KiB, "
                      f"sha256 {package.sha256[:12]}[/]", markup=True, highlight=False)
        t0 = time.monotonic()
        if client.has_package(package.sha256):
            progress.record("upload", "ok", (time.monotonic() - t0) * 1000)
            if not as_json:
                err.print("[green]✓[/] upload [dim](already on the platform)[/]", markup=True, highlight=False)
        else:
            if as_json:
                client.upload_package(package.path, package.sha256, spec.name)
            else:
                from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

                with Progress("upload", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err,
                              transient=True) as bar:
                    task = bar.add_task("upload", total=package.size)
                    client.upload_package(package.path, package.sha256, spec.name,
                                          on_progress=lambda sent, total: bar.update(task, completed=sent))
            progress.step("upload", "ok", (time.monotonic() - t0) * 1000)
    body = {"kind": "app", "package_sha256": package.sha256, "package_format": spec.name,
            "entrypoint": app.entrypoint, "env": _parse_env(env), "builder": builder or app.builder,
            "description": app.description or None, "region": region, "public": public or None,
            "auth": auth or app.auth,
            # --use, else deploy.uses, else the servers of this platform in mcp.servers; none: the last deploy's
            "uses": list(uses) if uses else app.uses if app.uses is not None else (
                platform_servers(app.server_urls, client.api_url) or None),
            "secrets": secret_values, "secret_refs": secret_refs, "secrets_as": secrets_as,
            "client_steps": progress.timings}
    try:
        return _run_deploy(client, target, body, as_json=as_json, verbose=verbose,
                           extra={"secrets": secrets_summary} if secrets_summary else None)
    except MCPAgentCloudError as exc:
        _missing_secrets_hint(exc, target)
        raise


_secrets_deploy_options = [
    click.option("--non-interactive", is_flag=True,
                 help="Never prompt (the default when stdin is not a terminal): a developer secret with no value "
                      "is an error; a user secret with no stored value makes the platform refuse the deploy, "
                      "naming it."),
    click.option("--secrets-as", type=click.Choice(["env", "file"]), default="env", show_default=True,
                 help="How the app gets its secrets: environment variables (OPENAI__API_KEY), or a resolved "
                      "mcp_agent.secrets.yaml on a tmpfs."),
]


def _check_auth(ctx, param, value):
    from ..names import AUTH_RE

    if value is not None and not AUTH_RE.match(value):
        raise click.BadParameter(f"{value!r}: use platform, none or provider:NAME (e.g. provider:github)")
    return value


_auth_option = click.option(
    "--auth", metavar="platform|none|provider:NAME", callback=_check_auth,
    help="Who may call its MCP endpoints: platform (a token of its org; the default), none (anyone who can reach "
         "the platform, with no token: only for what may be public), or provider:NAME (users of its org who "
         "logged in through that auth provider, e.g. provider:github). Default: deploy.auth in "
         "mcp_agent.config.yaml, else what the deployment had, else platform.")


def _deploy_app_options(fn):
    for opt in reversed([
        click.option("--name", help="Deployment name (default: from mcp_agent.config.yaml, else the directory name)."),
        click.option("--app", "entrypoint", metavar="MODULE:ATTR",
                     help="The MCP server object, e.g. main:mcp (default: detected in main.py, app.py or server.py)."),
        click.option("--env", multiple=True, metavar="KEY=VALUE", help="Environment for the app (repeatable)."),
        click.option("--builder", help="Builder for this deployment (default: the platform's)."),
        click.option("--region", help="Region label (stored; scale-out gives it effect)."),
        click.option("--public", is_flag=True, help="List in the catalog (stored; the catalog gives it effect)."),
        _auth_option,
        click.option("--use", "uses", multiple=True, metavar="NAME",
                     help="A deployed server the app calls (repeatable; NAME, ORG.NAME or @ORG/NAME): recorded in "
                          "the dependency graph. Default: deploy.uses in mcp_agent.config.yaml."),
        click.option("-v", "--verbose", is_flag=True, help="Show every build log line."),
        *_secrets_deploy_options,
        api_options, json_option, handle_errors,
    ]):
        fn = opt(fn)
    return fn


def register(cli: click.Group) -> None:
    # -- serve --------------------------------------------------------------------------------------------------
    @cli.command()
    @click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Platform config file.")
    @click.option("--listen", help="HOST:PORT to bind (overrides the config).")
    @click.option("--data-dir", type=click.Path(file_okay=False), help="Data directory (overrides the config).")
    @handle_errors
    def serve(config_path, listen, data_dir):
        """Run the self-hosted platform: API, MCP gateway, auth and supervisor in one process.

        The config comes from --config, $MCP_AGENT_CLOUD_CONFIG, ./mcp_agent_cloud.config.yaml or
        ~/.mcp-agent-cloud/. On first start it creates the org `default` and an admin token, and writes the
        CLI's credentials to ~/.mcp-agent-cloud/auth.json so `mcp-agent deploy` works right away.
        """
        from ..config import load_config
        from ..platform.server import run

        if listen:
            os.environ["MCP_AGENT_CLOUD_LISTEN"] = listen
        if data_dir:
            os.environ["MCP_AGENT_CLOUD_DATA_DIR"] = str(Path(data_dir).resolve())
        loaded = load_config(config_path)
        cfg = loaded.config
        err.print(f"mcp-agent-cloud platform on [bold]{cfg.base_url}[/] (data: {escape(str(cfg.data_dir))}, "
                  f"builder: {cfg.builder.name}, registry: {cfg.registry.name})", markup=True, highlight=False)
        run(loaded)

    # -- deploy -------------------------------------------------------------------------------------------------
    @cli.group(invoke_without_command=True)
    @click.option("--app", "entrypoint", metavar="MODULE:ATTR", help="Deploy the current directory with this entrypoint.")
    @click.option("--name", help="Deployment name (default: the directory name).")
    @click.option("--env", multiple=True, metavar="KEY=VALUE", help="Environment for the app (repeatable).")
    @click.option("--builder", help="Builder for this deployment.")
    @click.option("-v", "--verbose", is_flag=True)
    @_secrets_deploy_options[0]
    @_secrets_deploy_options[1]
    @api_options
    @json_option
    @click.pass_context
    @handle_errors
    def deploy(ctx, entrypoint, name, env, builder, verbose, non_interactive, secrets_as, api_url, as_json):
        """Deploy an MCP app or server. Each deploy creates a new version; traffic moves only when it is healthy.

        \b
          mcp-agent deploy app ./hello --name hello          an MCP app (MCPServer) from a directory
          mcp-agent deploy --app main:mcp                    the current directory, with this entrypoint
          mcp-agent deploy server time --type time           a known utility server
          mcp-agent deploy server t2 --command mcp-server-time --pip mcp-server-time
          mcp-agent deploy server remote1 --url https://host/mcp
        """
        if ctx.invoked_subcommand is not None:
            return
        if not entrypoint:
            click.echo(ctx.get_help())
            return
        deploy_app_dir(".", name=name, entrypoint=entrypoint, env=env, builder=builder, region=None, public=False,
                       api_url=api_url, as_json=as_json, verbose=verbose, non_interactive=non_interactive,
                       secrets_as=secrets_as)

    @deploy.command("app")
    @click.argument("directory", default=".", type=click.Path())
    @_deploy_app_options
    def deploy_app(directory, name, entrypoint, env, builder, region, public, auth, uses, verbose, non_interactive,
                   secrets_as, api_url, as_json):
        """Deploy the MCP app in DIRECTORY (default: the current directory).

        The app is an MCP server object (mcp's MCPServer). Its dependencies come from deploy.requirements in
        mcp_agent.config.yaml, requirements.txt or pyproject.toml.

        mcp_agent.secrets.yaml is never packaged. Each value in it is stored in the platform's secrets backend
        and given to the app as an environment variable named by its path (openai.api_key -> OPENAI__API_KEY),
        or with --secrets-as file as a resolved mcp_agent.secrets.yaml on a tmpfs:

        \b
          openai:
            api_key: !developer_secret OPENAI_API_KEY   value from this env var of the CLI (asked if unset)
            org: !developer_secret                      asked for at deploy (hidden input)
          github:
            token: !user_secret                         asked for, or set later with `mcp-agent secrets set`
          region: eu-west-1                             a plain value

        In a terminal, missing values are asked for; with --non-interactive (or no terminal) the platform
        refuses to start while a declared key has no stored value, and names it.
        """
        deploy_app_dir(directory, name=name, entrypoint=entrypoint, env=env, builder=builder, region=region,
                       public=public, auth=auth, uses=uses, api_url=api_url, as_json=as_json, verbose=verbose,
                       non_interactive=non_interactive, secrets_as=secrets_as)

    @deploy.command("agent")
    @click.argument("directory", default=".", type=click.Path())
    @_deploy_app_options
    def deploy_agent(directory, name, entrypoint, env, builder, region, public, auth, uses, verbose, non_interactive,
                     secrets_as, api_url, as_json):
        """Alias of `deploy app`. `mcp-agent deploy agent list` lists deployments."""
        if directory == "list" and not Path("list").is_dir():
            return _list(api_url, as_json)
        deploy_app_dir(directory, name=name, entrypoint=entrypoint, env=env, builder=builder, region=region,
                       public=public, auth=auth, uses=uses, api_url=api_url, as_json=as_json, verbose=verbose,
                       non_interactive=non_interactive, secrets_as=secrets_as)

    @deploy.command("server")
    @click.argument("name")
    @click.option("--type", "server_type", help="A known server: see `mcp-agent deploy server-types`.")
    @click.option("--command", help="Command that starts a stdio MCP server.")
    @click.option("--arg", "args", multiple=True, help="Argument for --command (repeatable, in order).")
    @click.option("--pip", "pip_reqs", multiple=True, help="PyPI requirement the command needs (repeatable).")
    @click.option("--env", multiple=True, metavar="KEY=VALUE", help="Environment for the server (repeatable).")
    @click.option("--url", help="Register an MCP server that already speaks Streamable HTTP at this URL.")
    @click.option("--dir", "directory", type=click.Path(file_okay=False), help="Directory for --type git/filesystem.")
    @click.option("--session-mode", type=click.Choice(["isolated", "shared"]),
                  help="Stdio servers only. isolated (the default): one child process per client session, so state "
                       "never leaks between clients; costs one process per session. shared: one child for all "
                       "sessions (requests multiplexed); choose it for stateless servers or children that are "
                       "expensive to start.")
    @click.option("--secret", "secret_keys", multiple=True, metavar="KEY",
                  help="Stdio servers: a secret the server needs, handed to it as env var KEY (repeatable). Only "
                       "the name: the value is asked for (hidden) in a terminal, or set with `mcp-agent secrets "
                       "set NAME KEY`; never on the command line.")
    @click.option("--builder", help="Builder for this deployment.")
    @click.option("--region")
    @click.option("--public", is_flag=True)
    @_auth_option
    @click.option("-v", "--verbose", is_flag=True)
    @_secrets_deploy_options[0]
    @_secrets_deploy_options[1]
    @api_options
    @json_option
    @handle_errors
    def deploy_server(name, server_type, command, args, pip_reqs, env, url, directory, session_mode, secret_keys,
                      builder, region, public, auth, verbose, non_interactive, secrets_as, api_url, as_json):
        """Deploy an existing MCP server NAME: a stdio command behind the adapter, a known --type, or a --url.

        \b
          mcp-agent deploy server time --type time
          mcp-agent deploy server t2 --command mcp-server-time --pip mcp-server-time
          mcp-agent deploy server gh --command npx --arg -y --arg @modelcontextprotocol/server-github \\
              --secret GITHUB_PERSONAL_ACCESS_TOKEN
          mcp-agent deploy server remote1 --url https://host/mcp

        --secret KEY declares a user secret: the server gets its value as environment variable KEY (or, with
        --secrets-as file, in a mcp_agent.secrets.yaml whose path is in MCP_AGENT_SECRETS_FILE). In a terminal
        the CLI asks for values the platform does not store yet (hidden input; Enter skips); otherwise set them
        first with `mcp-agent secrets set NAME KEY`, or the platform refuses the deploy and names them.
        """
        given = [x for x in (server_type, command, url) if x]
        if len(given) != 1:
            raise click.UsageError("give exactly one of --type, --command or --url")
        if secret_keys and url:
            raise click.UsageError("--secret is for stdio servers: a remote server (--url) runs elsewhere and gets "
                                   "its secrets there")
        if url:
            body = {"kind": "remote", "url": url}
        elif server_type:
            body = {"kind": "stdio", "server_type": server_type, "args": list(args),
                    "dir": str(Path(directory).resolve()) if directory else None}
        else:
            body = {"kind": "stdio", "command": command, "args": list(args), "pip": list(pip_reqs)}
        body.update({"env": _parse_env(env), "builder": builder, "region": region, "public": public or None,
                     "session_mode": session_mode, "auth": auth})
        client = _client(api_url)
        summary = None
        if secret_keys:
            values, summary = _server_secrets(client, name, secret_keys, non_interactive=non_interactive,
                                              as_json=as_json)
            body.update({"secrets": values, "secret_refs": [{"key": k, "kind": "user"} for k in summary["declared"]],
                         "secrets_as": secrets_as})
        try:
            _run_deploy(client, name, body, as_json=as_json, verbose=verbose,
                        extra={"secrets": summary} if summary else None)
        except MCPAgentCloudError as exc:
            _missing_secrets_hint(exc, name)
            raise

    @deploy.command("server-types")
    @api_options
    @json_option
    @handle_errors
    def deploy_server_types(api_url, as_json):
        """List the known server types for `deploy server NAME --type T`."""
        rows = _client(api_url).server_types()
        if as_json:
            return emit_json(rows)
        table(rows, [("name", "TYPE"), ("description", "DESCRIPTION")])

    @deploy.group("auth")
    def auth():
        """Credentials for the platform (stored in ~/.mcp-agent-cloud/auth.json, mode 0600)."""

    @auth.command("login")
    @click.option("--token", help="Log in with a token instead of the browser (an API key from `mcp-agent keys "
                  "create`, or one `mcp-agent admin token` made).")
    @click.option("--no-browser", is_flag=True, help="Only print the login URL; do not try to open a browser.")
    @click.option("--provider", metavar="NAME", help="Log in at this identity provider's own device flow (github, "
                  "okta), then trade its token for the platform's. Without it, the platform's login page offers every way "
                  "to log in.")
    @api_options
    @json_option
    @handle_errors
    def auth_login(token, no_browser, provider, api_url, as_json):
        """Log in to a platform. Without --token: the OAuth device flow. It shows a code and a URL (and opens a
        browser when it can); log in there, and the CLI gets its tokens. They are stored in
        ~/.mcp-agent-cloud/auth.json (mode 0600) and refreshed on their own before they expire.

        \b
          mcp-agent login                                    browser login
          mcp-agent login --provider github                  GitHub's device flow
          mcp-agent login --api-url https://agents.example.com
          mcp-agent login --token "$MCP_AGENT_CLOUD_KEY"    CI: an API key"""
        from ..client import PlatformClient
        from ..state import resolve_api_url, resolve_auth_url, save_auth

        url = resolve_api_url(api_url)
        auth_url = resolve_auth_url(url)
        extra: dict = {"auth_url": auth_url} if auth_url != url else {}
        if token:
            access = token
        else:
            from ..login import device_login, provider_login

            def show(device: dict) -> None:
                err.print(f"To log in, open {device['verification_uri']} and enter the code "
                          f"[bold]{device['user_code']}[/]", highlight=False)
                complete = device.get("verification_uri_complete")
                if complete:
                    err.print(f"  (or open {complete})", highlight=False)
                if not no_browser and sys.stderr.isatty() and not os.environ.get("CI"):
                    import webbrowser

                    with contextlib.suppress(Exception):
                        webbrowser.open(complete or device["verification_uri"])
                err.print("Waiting for the login in the browser...", highlight=False)

            tokens = provider_login(auth_url, provider, show=show) if provider else device_login(auth_url, show=show)
            access = tokens["access_token"]
            extra.update(refresh_token=tokens.get("refresh_token"), expires_at=tokens["expires_at"],
                         scope=tokens.get("scope", ""), token_type="oauth")
        with PlatformClient(url, access) as client:
            who = client.whoami()
        path = save_auth(api_url=url, access_token=access, org=who["org"], **{k: v for k, v in extra.items()
                                                                                 if v is not None})
        if as_json:
            return emit_json({"api_url": url, "auth_url": auth_url, "subject": who["subject"], "org": who["org"],
                              "roles": who["roles"], "path": str(path), "expires_at": extra.get("expires_at")})
        out.print(f"Logged in to {url} as {who['subject']} (org {who['org']}); credentials in {path}",
                  highlight=False)

    @auth.command("status")
    @api_options
    @json_option
    @handle_errors
    def auth_status(api_url, as_json):
        """Who the CLI is logged in as, where, with which scopes, and when the token expires."""
        from ..state import load_auth, resolve_auth_url

        client = _client(api_url)
        if not client.token:
            from ..errors import AuthError
            raise AuthError(f"not logged in to {client.api_url}", hint="mcp-agent login")
        who = client.whoami()
        stored = load_auth()
        expires = stored.get("expires_at") if stored.get("access_token") == client.token else None
        kind = "oauth" if stored.get("refresh_token") and expires else "token"
        if as_json:
            return emit_json({"api_url": client.api_url, "auth_url": resolve_auth_url(client.api_url), **who,
                              "login": kind, "expires_at": expires})
        scopes = ", ".join(who.get("scopes") or []) or "all the role allows"
        out.print(f"{client.api_url}: {who['subject']} in org {who['org']} (roles: {', '.join(who['roles'])}, "
                  f"scopes: {scopes}, provider: {who['provider']})", highlight=False)
        if expires:
            out.print(f"  access token expires {_when(expires)} (refreshed on its own)", highlight=False)

    @auth.command("logout")
    @json_option
    @handle_errors
    def auth_logout(as_json):
        """Revoke the stored login at the platform (an OAuth login) and forget it."""
        from ..state import clear_auth, load_auth

        stored = load_auth()
        revoked = False
        if stored.get("refresh_token"):
            from ..login import revoke

            try:
                revoked = revoke(stored)
            except MCPAgentCloudError as exc:
                err.print(f"could not revoke the login at {stored.get('api_url')} ({exc.message}); forgetting it "
                          "here anyway", highlight=False)
        removed = clear_auth()
        if as_json:
            return emit_json({"logged_out": removed, "revoked": revoked})
        out.print(("Logged out" + (" and revoked the login." if revoked else ".")) if removed else "Not logged in.")

    cli.add_command(auth, "auth")
    cli.add_command(auth_login, "login")
    cli.add_command(auth_logout, "logout")

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def _list(api_url, as_json):
        rows = _client(api_url).list()
        if as_json:
            return emit_json(rows)
        rows = [r | {"auth": "NONE (open)" if r.get("auth") == "none" else r.get("auth", "platform")} for r in rows]
        table(rows, [("name", "NAME"), ("status", "STATUS"), ("current_version", "VERSION"), ("kind", "KIND"),
                     ("builder", "BUILDER"), ("auth", "AUTH"), ("endpoint", "ENDPOINT")])

    @cli.command("list")
    @api_options
    @json_option
    @handle_errors
    def list_cmd(api_url, as_json):
        """List the deployments of your org."""
        _list(api_url, as_json)

    @cli.command()
    @click.argument("name")
    @api_options
    @json_option
    @handle_errors
    def status(name, api_url, as_json):
        """Show a deployment: status, endpoint, serving version, restarts, resource use and versions."""
        data = _client(api_url).status(name)
        if as_json:
            return emit_json(data)
        out.print(f"[bold]{data['org']}.{data['name']}[/] ({data['kind']}, builder {data['builder']})", markup=True,
                  highlight=False)
        for key in ("status", "desired_state", "serving_version", "endpoint", "auth", "restarts", "id"):
            out.print(f"  {key + ':':16} {data.get(key)}", highlight=False)
        if data.get("public"):
            out.print(f"  {'public:':16} yes, as @{data['org']}/{data['name']} (`mcp-agent catalog show`)",
                      highlight=False)
        for key in ("uses", "used_by"):
            if data.get(key):
                out.print(f"  {key + ':':16} {'; '.join(data[key])}", highlight=False)
        if (data.get("spec") or {}).get("suspended"):
            out.print(f"  {'suspended:':16} yes: it starts no new workflow runs (`mcp-agent workflows unsuspend "
                      f"{name}` lifts it)", highlight=False)
        if data.get("stats"):
            s = data["stats"]
            out.print(f"  {'resources:':16} " + ", ".join(f"{k}={v}" for k, v in s.items()), highlight=False)
        if data.get("health"):
            out.print(f"  {'health:':16} {_health_line(data['health'])}", highlight=False)
        out.print()
        table(data.get("versions", []), [("version", "VERSION"), ("status", "STATUS"),
                                         ("package_sha256", "PACKAGE"), ("error", "ERROR")])

    @cli.command()
    @click.argument("name")
    @click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
    @click.option("-n", "--tail", type=click.IntRange(min=0),
                  help="Lines from the end to start with (default: 100; with --since, every line since then).")
    @click.option("--since", metavar="WHEN",
                  help="Only lines written since WHEN: a duration ago (30s, 10m, 2h, 1d) or an ISO 8601 time "
                       "(2026-12-07T09:30:00Z; local time without an offset). Lines of logs from before the platform "
                       "recorded times have none: they are shown without --since and skipped with it.")
    @click.option("--grep", metavar="REGEX",
                  help="Only lines matching this (Python) regular expression anywhere, e.g. 'error|warn' or "
                       "'(?i)timeout'. Applied by the platform, also to followed lines.")
    @click.option("-t", "--timestamps", is_flag=True, help="Start each line with the time it was written (UTC).")
    @click.option("--version", "version", type=int, help="A version's log (default: the serving version's).")
    @api_options
    @json_option
    @handle_errors
    def logs(name, follow, tail, since, grep, timestamps, version, api_url, as_json):
        """Print a deployment's app log (stdout and stderr of its process). Each version has its own log.

        The platform records when it wrote each line and from which stream. --json prints one JSON object a line
        (with --follow too): {"ts": "2026-12-07T09:30:00.123Z", "stream": "stdout", "line": "..."}; stream is
        stdout, stderr or platform (lines the platform adds, such as "starting version 2"); ts and stream are
        null for lines of older logs.

        \b
          mcp-agent logs hello --since 10m --grep 'Traceback|ERROR'
          mcp-agent logs hello --follow --json
        """
        from datetime import datetime

        from ..errors import ApiError

        if since:
            try:
                when = datetime.fromisoformat(since.strip())
            except ValueError:
                pass  # a duration: the platform checks it
            else:
                # Sent with its offset: the platform's clock may be in another time zone.
                since = (when.astimezone() if when.tzinfo is None else when).isoformat()
        client = _client(api_url)
        try:
            if as_json:
                for entry in client.log_entries(name, tail=tail, follow=follow, version=version, since=since,
                                                grep=grep):
                    sys.stdout.write(json.dumps(entry) + "\n")
                    sys.stdout.flush()
                return
            for chunk in client.logs(name, tail=tail, follow=follow, version=version, since=since, grep=grep,
                                     timestamps=timestamps):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        except ApiError as exc:
            # The platform names its query parameters; here they are options.
            for param in ("since", "grep"):
                exc.message = exc.message.replace(f"query parameter '{param}'", f"--{param}")
            raise
        except KeyboardInterrupt:
            pass

    @cli.command()
    @click.argument("name")
    @click.option("--after", default=0, help="Only events after this id.")
    @click.option("-f", "--follow", is_flag=True,
                  help="Keep printing events as they happen, on whichever node (one JSON object a line with --json).")
    @api_options
    @json_option
    @handle_errors
    def events(name, after, follow, api_url, as_json):
        """Print a deployment's lifecycle and pipeline events."""
        if follow:
            for e in _client(api_url).follow_events(name, after=after):
                if as_json:
                    print(json.dumps(e), flush=True)
                else:
                    _print_event(e)
            return None
        rows = _client(api_url).events(name, after=after, limit=1000)
        if as_json:
            return emit_json(rows)
        for e in rows:
            _print_event(e)

    @cli.command()
    @click.argument("name")
    @click.option("--run", "run_id", help="Only the trace of this workflow run (its RUN_ID).")
    @click.option("--trace", "trace_id", help="Only this trace (32 hex digits).")
    @click.option("-n", "--limit", default=5, show_default=True, help="How many recent traces.")
    @api_options
    @json_option
    @handle_errors
    def traces(name, run_id, trace_id, limit, api_url, as_json):
        """Print a deployment's recent traces as span trees: deploys (each pipeline step), MCP requests through
        the gateway, and inside MCPApp apps their tool calls and workflow runs.

        \b
        Examples:
          mcp-agent traces hello                 the 5 most recent traces
          mcp-agent traces hello --run RUN_ID    one workflow run, from the tool call that started it
        Traces are kept in the memory of the node serving the deployment (tracing.keep_spans); send them
        somewhere durable with the otlp exporter (docs/observability.md)."""
        data = _client(api_url).traces(name, run=run_id, trace=trace_id, limit=limit)
        if as_json:
            return emit_json(data)
        if not data.get("tracing", True):
            err.print("tracing is off on the platform (`tracing.enabled: false`)", highlight=False)
        if not data["traces"]:
            what = f"run {run_id}" if run_id else (f"trace {trace_id}" if trace_id else name)
            raise NotFoundError(f"no traces for {what}", hint="traces are kept in memory: they start again when "
                                "the serving node restarts; call a tool, or check the name with `mcp-agent list`")
        for i, spans in enumerate(data["traces"]):
            if i:
                out.print()
            for line in span_tree(spans):
                out.print(line, markup=False, highlight=False)

    @cli.group()
    def export():
        """Export a deployment for another runtime."""

    @export.command("k8s")
    @click.argument("name")
    @click.option("--namespace", "-n", default="default", show_default=True, help="Namespace of the manifests.")
    @click.option("--image", help="Image the cluster pulls (default: the pushed image, else the local tag).")
    @click.option("--version", "version", type=int, help="Version to export (default: the current one).")
    @click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True),
                  help="Write the YAML to this file instead of stdout.")
    @api_options
    @json_option
    @handle_errors
    def export_k8s(name, namespace, image, version, output, api_url, as_json):
        """Print Kubernetes manifests for deployment NAME: ServiceAccount, Deployment, Service, NetworkPolicy.

        The container runs as in the docker and podman builders: non-root, read-only root filesystem, no
        capabilities, the same memory and CPU limits, egress to everything but the metadata address. Secrets are
        references to a Secret you create; the notes (on stderr, as YAML comments in the file) say how. Only
        deployments built by a container builder can be exported. Apply with `kubectl apply -f FILE`.

        \b
          mcp-agent export k8s hello -n agents -o hello.yaml
          mcp-agent export k8s hello --image registry.internal/acme/hello:3 | kubectl apply -f -
        """
        import yaml

        data = _client(api_url).export_k8s(name, namespace=namespace, image=image, version=version)
        if as_json:
            return emit_json(data)
        header = "".join(f"# {note}\n" for note in data["notes"])
        text = f"# {data['deployment']} v{data['version']}, exported by mcp-agent-cloud\n{header}---\n" + \
            "---\n".join(yaml.safe_dump(doc, sort_keys=False) for doc in data["manifests"])
        if output:
            Path(output).write_text(text)
            err.print(f"wrote {len(data['manifests'])} manifests to {output}", highlight=False)
        else:
            sys.stdout.write(text)
        for note in data["notes"]:
            err.print(f"note: {note}", markup=False, highlight=False)

    def _simple(verb: str, doc: str, call):
        @cli.command(verb, help=doc)
        @click.argument("name")
        @api_options
        @json_option
        @handle_errors
        def command(name, api_url, as_json):
            data = call(_client(api_url), name)
            if as_json:
                return emit_json(data)
            out.print(f"{verb}: {name} -> {data.get('status', 'done')}", highlight=False)
        return command

    _simple("stop", "Stop serving a deployment (it stays stopped across platform restarts).",
            lambda c, n: c.stop(n))
    _simple("start", "Start a stopped deployment's current version.", lambda c, n: c.start(n))

    @cli.command()
    @click.argument("name")
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    @click.option("--force", is_flag=True, help="Delete a public deployment even though others use it (owners).")
    @api_options
    @json_option
    @handle_errors
    def delete(name, yes, force, api_url, as_json):
        """Stop a deployment and delete it with all its versions.

        A public deployment that other deployments declare they use is kept (they would lose it) unless an owner
        passes --force. A private one deletes at once; the apps of its org that used it are listed.
        """
        if not yes and not as_json and sys.stdin.isatty():
            click.confirm(f"Delete {name} and all its versions?", abort=True)
        data = _client(api_url).delete(name, force=force)
        if as_json:
            return emit_json(data)
        out.print(f"deleted {name}", highlight=False)
        if data.get("dependents"):
            err.print(f"  [yellow]note:[/] these used it: {escape('; '.join(data['dependents']))}", markup=True,
                      highlight=False)

    @cli.command()
    @click.argument("name")
    @click.option("--to", "to", type=int, help="Version to move traffic to (default: the previous one).")
    @api_options
    @json_option
    @handle_errors
    def rollback(name, to, api_url, as_json):
        """Move traffic back to an earlier version (health-checked before the switch)."""
        data = _client(api_url).rollback(name, to)
        if as_json:
            return emit_json(data)
        out.print(f"{name}: serving version {data['version']} at {data['endpoint']}", highlight=False)

    # -- API keys and the audit log ------------------------------------------------------------------------------
    def _when(ts):
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "never"

    def _duration(value: str, what: str) -> float:
        from ..applog import parse_duration

        seconds = parse_duration(value)
        if seconds is None:
            raise click.BadParameter(f"{value!r} is not a duration such as 30d, 12h or 90m", param_hint=what)
        return seconds

    @cli.group()
    def keys():
        """API keys for machine clients (CI, scripts, MCP clients without a browser). A key acts as the person who
        made it, in their org, with at most their role; scopes narrow it further; every key expires.

        \b
          mcp-agent keys create ci --role developer --scope api --expires-in 30d
          mcp-agent keys create bot --role viewer --scope mcp --scope deployment:hello
          mcp-agent keys list
          mcp-agent keys revoke tok_0123abcd

        The key is printed once (on stdout, so it can be piped) and stored only as a hash. Use it as a bearer token:
        `Authorization: Bearer KEY`, or `mcp-agent deploy auth login --token KEY`."""

    @keys.command("create")
    @click.argument("name")
    @click.option("--role", type=click.Choice(["owner", "developer", "viewer"]),
                  help="The key's role (default: yours; never more than yours).")
    @click.option("--scope", "scopes", multiple=True, metavar="SCOPE",
                  help="api (the management API), mcp (deployments' MCP endpoints) or deployment:NAME (only that "
                       "deployment); repeat to combine. None: all your role allows.")
    @click.option("--expires-in", default="90d", show_default=True, help="Lifetime: 30d, 12h, 90m (at most 366d).")
    @api_options
    @json_option
    @handle_errors
    def keys_create(name, role, scopes, expires_in, api_url, as_json):
        """Create API key NAME (a label) and print it once."""
        data = _client(api_url).create_key(name=name, role=role, scopes=list(scopes),
                                           expires_in=_duration(expires_in, "--expires-in"))
        if as_json:
            return emit_json(data)
        out.print(data["key"], markup=False, highlight=False)
        scope_text = ", ".join(data["scopes"]) or "all the role allows"
        err.print(f"key {data['id']} ({name}): role {', '.join(data['roles'])}, scopes {scope_text}, expires "
                  f"{_when(data['expires_at'])}; it is shown only once", highlight=False)

    @keys.command("list")
    @api_options
    @json_option
    @handle_errors
    def keys_list(api_url, as_json):
        """The org's keys (owners) or your own: never the keys themselves."""
        rows = _client(api_url).keys()
        if as_json:
            return emit_json(rows)
        for row in rows:
            row["roles_text"] = ",".join(row["roles"])
            row["scopes_text"] = ",".join(row["scopes"]) or "*"
            row["created"] = _when(row["created_at"])
            row["expires"] = _when(row["expires_at"])
        table(rows, [("id", "ID"), ("name", "NAME"), ("subject", "OWNER"), ("roles_text", "ROLE"),
                     ("scopes_text", "SCOPES"), ("created", "CREATED"), ("expires", "EXPIRES"), ("status", "STATUS")])

    @keys.command("revoke")
    @click.argument("key_id")
    @api_options
    @json_option
    @handle_errors
    def keys_revoke(key_id, api_url, as_json):
        """Revoke a key at once (on every node within the auth cache time, 2 s by default)."""
        data = _client(api_url).revoke_key(key_id)
        if as_json:
            return emit_json(data)
        out.print(f"revoked key {data['id']} ({data['name'] or 'no name'})", highlight=False)

    @cli.command()
    @click.option("--actor", help="Only actions by this subject.")
    @click.option("--action", help='Only actions whose route contains this text, e.g. "DELETE" or "/secrets".')
    @click.option("--since", help="Only this recent: 10m, 2h, 7d, or an ISO time.")
    @click.option("-n", "--limit", type=int, default=50, show_default=True, help="How many records, newest first.")
    @api_options
    @json_option
    @handle_errors
    def audit(actor, action, since, limit, api_url, as_json):
        """The org's audit log (owners): every management action, with who, what, when, from where and the
        outcome, newest first. It is append only.

        \b
          mcp-agent audit --since 1d
          mcp-agent audit --action DELETE --actor alice --json"""
        rows = _client(api_url).audit(actor=actor, action=action, since=since, limit=limit)
        if as_json:
            return emit_json(rows)
        for row in rows:
            row["when"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["created_at"]))
            row["result"] = f"{row['outcome']} {row['status']}" + (f": {row['message']}" if row["message"] else "")
        table(rows, [("when", "WHEN"), ("actor", "WHO"), ("action", "ACTION"), ("target", "TARGET"),
                     ("source", "FROM"), ("result", "OUTCOME")])

    # -- secrets ------------------------------------------------------------------------------------------------
    @cli.group()
    def secrets():
        """Manage a deployment's secrets. Values are stored in the platform's secrets backend, never in the registry,
        the package or logs, and reach the app as environment variables (or a file on a tmpfs).

        \b
          mcp-agent secrets set hello OPENAI__API_KEY              asks for the value (hidden input)
          printf %s "$TOKEN" | mcp-agent secrets set hello GITHUB__TOKEN --stdin
          mcp-agent secrets set hello TLS__KEY --from-file key.pem
          mcp-agent secrets list hello                              keys and versions, never values
          mcp-agent secrets get hello OPENAI__API_KEY > key.txt     the value (owner role; audited)
          mcp-agent secrets rm hello OPENAI__API_KEY --destroy

        KEY is an environment variable name: openai.api_key in mcp_agent.secrets.yaml is OPENAI__API_KEY.
        A secret can be set before the first deploy of NAME.
        """

    def _check_key(key: str) -> str:
        from ..appspec import SECRET_KEY_RE

        if not SECRET_KEY_RE.match(key):
            raise click.BadParameter(f"{key!r} is not a secret key: use an environment variable name (letters, "
                                     "digits, _), e.g. OPENAI__API_KEY for openai.api_key", param_hint="KEY")
        if key.startswith("_"):
            raise click.BadParameter(f"{key!r}: keys starting with _ are the platform's own", param_hint="KEY")
        return key

    def _explain_restart_failed(exc, name: str, key: str) -> None:
        """The platform stored the value, but the instance started with it failed its health check (HTTP 500
        restart_failed, with the app's log tail): say what serves now, what the new value is, and what to do."""
        d = exc.data or {}
        reason = f" ({d['reason']})" if d.get("reason") else ""
        stored = f"stored as version {d['secret_version']}" if d.get("secret_version") else "stored"
        serving = f" (deployment version {d['serving_version']})" if d.get("serving_version") else ""
        exc.message = (f"{name} was not restarted onto the new value of {key}: the instance started with it "
                       f"failed{reason}. The old instance keeps serving{serving} with the previous value, and "
                       f"restarts keep using it. The new value is {stored} but not in use.")
        exc.hint = (f"see why in the log below or with `mcp-agent logs {name}`, fix the value, then run "
                    f"`mcp-agent secrets set {name} {key}` again")

    @secrets.command("set")
    @click.argument("name")
    @click.argument("key")
    @click.option("--stdin", "from_stdin", is_flag=True,
                  help="Read the value from standard input (one trailing newline is removed).")
    @click.option("--from-file", "from_file", type=click.Path(exists=True, dir_okay=False),
                  help="Read the value from this file, byte for byte (UTF-8).")
    @api_options
    @json_option
    @handle_errors
    def secrets_set(name, key, from_stdin, from_file, api_url, as_json):
        """Store a new version of secret KEY for deployment NAME.

        The value is never taken from the command line (it would end up in shell history and `ps`): it comes from
        a hidden prompt (asked twice), --stdin or --from-file. A serving deployment that uses KEY is restarted onto
        the new value through the health-checked switch; if the new instance fails, the old one keeps serving
        (restarts too keep the previous value), the new value stays stored but unused, and the command prints
        the app's log tail and exits with status 1.

        \b
          mcp-agent secrets set hello OPENAI__API_KEY
          printf %s "$OPENAI_API_KEY" | mcp-agent secrets set hello OPENAI__API_KEY --stdin
          mcp-agent secrets set hello GCP__CREDENTIALS --from-file sa.json
        """
        from ..errors import ValidationFailed

        _check_key(key)
        if from_stdin and from_file:
            raise click.UsageError("give --stdin or --from-file, not both")
        if from_stdin:
            value = sys.stdin.read()
            value = value[:-2] if value.endswith("\r\n") else value[:-1] if value.endswith("\n") else value
        elif from_file:
            try:
                value = Path(from_file).read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ValidationFailed(f"{from_file} is not UTF-8 text",
                                       hint="secrets are text; store binary data base64-encoded") from None
        elif sys.stdin.isatty():
            value = click.prompt(f"Value for {key}", hide_input=True, confirmation_prompt=True, err=True)
        else:
            raise click.UsageError("stdin is not a terminal, so there is no one to ask: pass --stdin to read the "
                                   "value from it, or --from-file PATH")
        if not value:
            raise ValidationFailed(f"empty value for {key}: a secret needs a value",
                                   hint=f"to remove it, use `mcp-agent secrets rm {name} {key}`")
        from ..errors import ApiError

        try:
            data = _client(api_url).set_secret(name, key, value)
        except ApiError as exc:
            if exc.code == "restart_failed":
                _explain_restart_failed(exc, name, key)
            raise
        if as_json:
            return emit_json(data)
        out.print(f"{name}: {key} set (version {data.get('version')})", highlight=False)
        if data.get("restarted"):
            out.print(f"{name} was restarted onto the new value", highlight=False)
        else:
            out.print(f"{name} is not serving with {key}: the value is used from its next start or deploy",
                      highlight=False)

    @secrets.command("list")
    @click.argument("name")
    @api_options
    @json_option
    @handle_errors
    def secrets_list(name, api_url, as_json):
        """List the secrets of deployment NAME: keys, versions, last update and handles, and the declared keys
        that have no value yet. Never values."""
        data = _client(api_url).list_secrets(name)
        if as_json:
            return emit_json(data)
        table([_fmt_secret_row(r) for r in data["secrets"]],
              [("key", "KEY"), ("version", "VERSION"), ("updated_at", "UPDATED"), ("kind", "KIND"),
               ("handle", "HANDLE")])
        for key in data.get("missing") or []:
            err.print(f"[yellow]missing:[/] {escape(key)} is declared but has no value: "
                      f"mcp-agent secrets set {escape(name)} {escape(key)}", markup=True, highlight=False)

    @secrets.command("get")
    @click.argument("name")
    @click.argument("key")
    @click.option("--version", "version", type=click.IntRange(min=1), help="An earlier version (default: the latest).")
    @api_options
    @json_option
    @handle_errors
    def secrets_get(name, key, version, api_url, as_json):
        """Print the value of secret KEY of deployment NAME, and nothing else (for piping).

        Needs the owner role; every read is recorded as a `secret.read` event (key, version and who, never the
        value). No newline is added unless stdout is a terminal, so `> file` keeps the value exact.

        \b
          mcp-agent secrets get hello OPENAI__API_KEY | pbcopy
        """
        data = _client(api_url).get_secret(name, _check_key(key), version)
        if as_json:
            return emit_json(data)
        sys.stdout.write(data["value"])
        if sys.stdout.isatty():
            sys.stdout.write("\n")
        sys.stdout.flush()

    @secrets.command("rm")
    @click.argument("name")
    @click.argument("key")
    @click.option("--destroy", is_flag=True,
                  help="Destroy every version for good instead of a soft delete.")
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    @api_options
    @json_option
    @handle_errors
    def secrets_rm(name, key, destroy, yes, api_url, as_json):
        """Remove secret KEY of deployment NAME.

        A deployment whose mcp_agent.secrets.yaml declares KEY cannot be deployed again until KEY is set.
        Without --destroy, backends that keep versions (vault) keep the old ones recoverable.
        """
        _check_key(key)
        if not yes and not as_json and sys.stdin.isatty():
            click.confirm(f"{'Destroy' if destroy else 'Remove'} secret {key} of {name}?", abort=True, err=True)
        data = _client(api_url).delete_secret(name, key, destroy=destroy)
        if as_json:
            return emit_json(data if isinstance(data, dict) else {"key": key, "deleted": True, "destroyed": destroy})
        out.print(f"{name}: {key} {'destroyed' if destroy else 'removed'}", highlight=False)
        if isinstance(data, dict) and data.get("hint"):
            err.print(f"  [yellow]note:[/] {escape(data['hint'])}", markup=True, highlight=False)

    # -- talking MCP to a deployment -----------------------------------------------------------------------------
    def _endpoint(api_url, name):
        from ..errors import ConflictError

        client = _client(api_url)
        status = client.status(name)
        if status.get("serving_version") is None:  # say why here, rather than as an MCP transport error
            raise ConflictError(f"{name} is {status['status']}, not serving",
                                hint=f"`mcp-agent start {name}`, or `mcp-agent logs {name}` to see why it stopped")
        return client, status["endpoint"]

    @cli.command()
    @click.argument("name")
    @api_options
    @json_option
    @handle_errors
    def tools(name, api_url, as_json):
        """List the MCP tools of a deployment (an MCP client session through the gateway)."""
        import anyio

        from ..client import mcp_client

        client, endpoint = _endpoint(api_url, name)

        async def list_tools():
            async with mcp_client(endpoint, client.token) as mcp:
                return (await mcp.list_tools()).tools

        found = anyio.run(list_tools)
        rows = [{"name": t.name, "description": (t.description or "").strip().splitlines()[0] if t.description
                 else "", "input_schema": t.input_schema} for t in found]
        if as_json:
            return emit_json(rows)
        table(rows, [("name", "TOOL"), ("description", "DESCRIPTION")])

    @cli.command()
    @click.argument("name")
    @click.argument("tool")
    @click.option("-a", "--arg", "args", multiple=True, metavar="KEY=VALUE",
                  help="A tool argument; VALUE is parsed as JSON when it can be (repeatable).")
    @click.option("--args-json", help="All arguments as one JSON object.")
    @api_options
    @json_option
    @handle_errors
    def call(name, tool, args, args_json, api_url, as_json):
        """Call TOOL on deployment NAME and print its result.

        \b
          mcp-agent call hello greet -a name=Ada
          mcp-agent call hello add --args-json '{"a": 1, "b": 2}'
        """
        import anyio

        from ..client import mcp_client

        arguments = json.loads(args_json) if args_json else {}
        for pair in args:
            key, sep, value = pair.partition("=")
            if not sep:
                raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--arg")
            try:
                arguments[key] = json.loads(value)
            except ValueError:
                arguments[key] = value
        client, endpoint = _endpoint(api_url, name)

        async def call_tool():
            async with mcp_client(endpoint, client.token) as mcp:
                return await mcp.call_tool(tool, arguments)

        result = anyio.run(call_tool)
        texts = [getattr(c, "text", None) for c in result.content]
        if as_json:
            return emit_json(result.model_dump(mode="json", by_alias=True, exclude_none=True))
        for text in texts:
            if text is not None:
                out.print(text, markup=False, highlight=False)
        if result.is_error:
            sys.exit(1)

    # -- workflows ----------------------------------------------------------------------------------------------
    @cli.group()
    def workflows():
        """Run and steer the durable workflows of an MCPApp deployment (its workflows-* tools, through the platform).

        \b
          mcp-agent workflows list hello
          mcp-agent workflows run hello Approve --param amount=5 --watch
          mcp-agent workflows runs hello --status paused          what each paused run waits for
          mcp-agent workflows resume run_... --signal approve --payload '{"ok": true}'
          mcp-agent workflows cancel run_...

        Runs are named by run id alone: the platform finds the deployment that holds them in your org.
        """

    def _parse_params(pairs: tuple[str, ...], params_file: str | None) -> dict:
        params: dict = {}
        if params_file:
            try:
                loaded = json.loads(Path(params_file).read_text())
            except (OSError, ValueError) as exc:
                raise click.BadParameter(f"cannot read JSON from {params_file}: {exc}", param_hint="--params-file")
            if not isinstance(loaded, dict):
                raise click.BadParameter("the file must hold one JSON object", param_hint="--params-file")
            params.update(loaded)
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
            try:
                params[key] = json.loads(value)
            except ValueError:
                params[key] = value
        return params

    def _parse_payload(payload: str | None):
        if payload is None:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            return payload  # a plain string

    def _describe_run(run: dict) -> str:
        status = run.get("status", "?")
        if status == "paused" and run.get("waiting_for"):
            status += f" (waiting for {run['waiting_for']})"
        return status

    def _print_run(run: dict) -> None:
        out.print(f"[bold]{run.get('run_id') or run.get('id')}[/] {run.get('name', '')}", markup=True,
                  highlight=False)
        rows = [("status", _describe_run(run)), ("workflow_id", run.get("workflow_id")),
                ("deployment", run.get("deployment")), ("state", run.get("state") or None),
                ("params", run.get("params") or None), ("result", run.get("result")), ("error", run.get("error"))]
        for key, value in rows:
            if value is None:
                continue
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out.print(f"  {key + ':':12} {text}", markup=False, highlight=False)
        for event in run.get("history") or []:
            stamp = time.strftime("%H:%M:%S", time.localtime(event.get("ts", 0)))
            rest = {k: v for k, v in event.items() if k not in ("ts", "kind")}
            out.print(f"    {stamp} {event.get('kind', '')} {json.dumps(rest, default=str) if rest else ''}",
                      markup=False, highlight=False)

    FINAL = {"completed", "error", "cancelled", "interrupted"}

    def _watch(client, run_id: str, as_json: bool, interval: float = 1.0) -> dict:
        """Poll the run until it finishes, printing each change of status or state."""
        last = None
        try:
            while True:
                run = client.run_status(run_id)
                seen = (run.get("status"), run.get("waiting_for"), json.dumps(run.get("state"), sort_keys=True))
                if seen != last and not as_json:
                    stamp = time.strftime("%H:%M:%S")
                    state = f" state={json.dumps(run['state'])}" if run.get("state") else ""
                    out.print(f"{stamp} {run_id} {_describe_run(run)}{state}", markup=False, highlight=False)
                last = seen
                if run.get("status") in FINAL:
                    return run
                time.sleep(interval)
        except KeyboardInterrupt:
            return run

    def _refresh(fetch, show, as_json: bool, watch: bool, interval: float = 2.0) -> None:
        """Show ``fetch()`` once, or with ``watch`` again every ``interval`` seconds until Ctrl-C: the table redrawn,
        or with ``as_json`` one compact JSON document per line each time the data changes."""
        last = None
        try:
            while True:
                data = fetch()
                if as_json:
                    if not watch:
                        return emit_json(data)
                    line = json.dumps(data, default=str, sort_keys=True)
                    if line != last:
                        click.echo(line)
                    last = line
                else:
                    if watch:
                        click.clear()
                    show(data)
                if not watch:
                    return
                time.sleep(interval)
        except KeyboardInterrupt:
            return

    def _show_run(run: dict, as_json: bool) -> None:
        if as_json:
            return emit_json(run)
        _print_run(run)
        if run.get("status") == "error" or run.get("status") == "interrupted":
            sys.exit(1)

    @workflows.command("list")
    @click.argument("name")
    @click.option("--watch", is_flag=True, help="Refresh every 2 seconds until Ctrl-C (e.g. across a redeploy).")
    @api_options
    @json_option
    @handle_errors
    def workflows_list(name, watch, api_url, as_json):
        """The workflows deployment NAME serves, with their parameters."""
        client = _client(api_url)

        def show(data: dict) -> None:
            rows = []
            for w in data["workflows"]:
                props = (w.get("input_schema") or {}).get("properties") or {}
                required = set((w.get("input_schema") or {}).get("required") or [])
                params = ", ".join(f"{p}{'' if p in required else '?'}" for p in props)
                schedules = ", ".join(s.get("cron") or f"every {s.get('every')}s" for s in w.get("schedules") or [])
                rows.append({**w, "params": params or "-", "schedule": schedules or "-"})
            table(rows, [("name", "WORKFLOW"), ("params", "PARAMETERS"), ("schedule", "SCHEDULE"),
                         ("description", "DESCRIPTION")])

        _refresh(lambda: client.workflows(name), show, as_json, watch)

    @workflows.command("run")
    @click.argument("name")
    @click.argument("workflow")
    @click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
                  help="A run parameter; VALUE is parsed as JSON when it can be (repeatable).")
    @click.option("--params-file", type=click.Path(exists=True, dir_okay=False),
                  help="All run parameters as one JSON object (--param adds to it).")
    @click.option("--workflow-id", help="Your own id for the run (default: WORKFLOW-<uuid>).")
    @click.option("--priority", type=int, help="Higher runs first when runs queue.")
    @click.option("--watch", is_flag=True, help="Follow the run until it finishes.")
    @api_options
    @json_option
    @handle_errors
    def workflows_run(name, workflow, params, params_file, workflow_id, priority, watch, api_url, as_json):
        """Start a run of WORKFLOW on deployment NAME."""
        client = _client(api_url)
        started = client.run_workflow(name, workflow, _parse_params(params, params_file), workflow_id=workflow_id,
                                      priority=priority)
        if watch:
            return _show_run(_watch(client, started["run_id"], as_json), as_json)
        if as_json:
            return emit_json(started)
        out.print(f"started {workflow}: run {started['run_id']} (workflow id {started['workflow_id']})",
                  highlight=False)
        out.print(f"  follow it with: mcp-agent workflows status {started['run_id']} --watch", highlight=False)

    @workflows.command("status")
    @click.argument("run_id")
    @click.option("--history", is_flag=True, help="Also show the run's history (state changes, signals).")
    @click.option("--watch", is_flag=True, help="Follow the run until it finishes.")
    @api_options
    @json_option
    @handle_errors
    def workflows_status(run_id, history, watch, api_url, as_json):
        """Status of run RUN_ID: status, what it waits for, state, result or error."""
        client = _client(api_url)
        if watch:
            _watch(client, run_id, as_json)
        _show_run(client.run_status(run_id, history=history), as_json)

    def _run_verb(verb: str, doc: str):
        @workflows.command(verb, help=doc)
        @click.argument("run_id")
        @click.option("--watch", is_flag=True, help="Then follow the run until it finishes.")
        @api_options
        @json_option
        @handle_errors
        def command(run_id, watch, api_url, as_json):
            client = _client(api_url)
            run = client.run_action(run_id, verb)
            if watch:
                run = _watch(client, run_id, as_json)
            if as_json:
                return emit_json(run)
            out.print(f"{verb}: {run_id} -> {_describe_run(run)}", highlight=False)
        return command

    _run_verb("pause", "Pause run RUN_ID at its next pause point (a step, a sleep or a wait for a signal).")
    _run_verb("cancel", "Cancel run RUN_ID.")

    @workflows.command("resume")
    @click.argument("run_id")
    @click.option("--signal", "signal", default=None,
                  help="The signal to send (default: resume, which also lifts a pause).")
    @click.option("--payload", help="The signal's payload: JSON, or else a plain string.")
    @click.option("--watch", is_flag=True, help="Then follow the run until it finishes.")
    @api_options
    @json_option
    @handle_errors
    def workflows_resume(run_id, signal, payload, watch, api_url, as_json):
        """Resume run RUN_ID, or send it the signal it waits for, with an optional payload."""
        client = _client(api_url)
        run = client.run_action(run_id, "resume", signal=signal, payload=_parse_payload(payload))
        if watch:
            run = _watch(client, run_id, as_json)
        if as_json:
            return emit_json(run)
        out.print(f"resume: {run_id} -> {_describe_run(run)}", highlight=False)

    @workflows.command("runs")
    @click.argument("name", required=False)
    @click.option("--status", type=click.Choice(["running", "paused", "completed", "error", "cancelled",
                                                 "interrupted"]), help="Only runs with this status.")
    @click.option("--workflow", help="Only runs of this workflow.")
    @click.option("--limit", default=100, show_default=True, help="At most this many runs.")
    @click.option("--watch", is_flag=True, help="Refresh every 2 seconds until Ctrl-C (with --json: one JSON "
                  "document per line, each time the list changes).")
    @api_options
    @json_option
    @handle_errors
    def workflows_runs(name, status, workflow, limit, watch, api_url, as_json):
        """Runs of deployment NAME (or of every serving app of your org), newest first; paused runs show what they
        wait for."""
        client = _client(api_url)

        def show(data: dict) -> None:
            rows = [{**r, "status": _describe_run(r),
                     "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("created_at") or 0))}
                    for r in data["runs"]]
            table(rows, [("run_id", "RUN ID"), ("name", "WORKFLOW"), ("status", "STATUS"), ("created", "CREATED")]
                  + ([] if name else [("deployment", "DEPLOYMENT")]))

        _refresh(lambda: client.runs(name, status=status, workflow=workflow, limit=limit), show, as_json, watch)

    @workflows.command("batch")
    @click.argument("name")
    @click.argument("action", type=click.Choice(["run", "cancel", "pause", "resume"]))
    @click.option("--workflow", help="run: the workflow to start; else only runs of this workflow.")
    @click.option("--status", help="cancel/pause/resume: every run with this status.")
    @click.option("--run-id", "run_ids", multiple=True, help="A run to act on (repeatable).")
    @click.option("--params-file", type=click.Path(exists=True, dir_okay=False),
                  help="run: a JSON list of run-parameter objects, one run each.")
    @click.option("--signal", "signal", help="resume: the signal to send (default resume).")
    @click.option("--payload", help="resume: the signal's payload (JSON, or a plain string).")
    @api_options
    @json_option
    @handle_errors
    def workflows_batch(name, action, workflow, status, run_ids, params_file, signal, payload, api_url, as_json):
        """Start, cancel, pause or resume many runs of deployment NAME at once."""
        body: dict = {"action": action}
        if workflow:
            body["workflow_name"] = workflow
        if status:
            body["status"] = status
        if run_ids:
            body["run_ids"] = list(run_ids)
        if params_file:
            try:
                runs = json.loads(Path(params_file).read_text())
            except (OSError, ValueError) as exc:
                raise click.BadParameter(f"cannot read JSON from {params_file}: {exc}", param_hint="--params-file")
            if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
                raise click.BadParameter("the file must hold a JSON list of objects", param_hint="--params-file")
            body["runs"] = runs
        if signal:
            body["signal_name"] = signal
        if payload is not None:
            body["payload"] = _parse_payload(payload)
        data = _client(api_url).workflow_batch(name, body)
        if as_json:
            return emit_json(data)
        table(data.get("results", []), [("run_id", "RUN ID"), ("ok", "OK"), ("error", "ERROR")])
        if any(not r.get("ok") for r in data.get("results", [])):
            sys.exit(1)

    def _agent_verb(verb: str, action: str, doc: str):
        @workflows.command(verb, help=doc)
        @click.argument("name")
        @api_options
        @json_option
        @handle_errors
        def command(name, api_url, as_json):
            data = _client(api_url).agent(name, action)
            if as_json:
                return emit_json(data)
            runs = f", {data['active_runs']} run(s) in flight" if data.get("active_runs") is not None else ""
            out.print(f"{name}: {'suspended: it starts no new runs' if data['suspended'] else 'accepting runs'}"
                      f"{runs}", highlight=False)
        return command

    _agent_verb("suspend", "pause", "Suspend deployment NAME: it starts no new runs (runs in flight go on).")
    _agent_verb("unsuspend", "resume", "Lift the suspension of deployment NAME.")

    # -- local helpers ------------------------------------------------------------------------------------------
    @cli.command()
    @click.argument("directory", default="hello", type=click.Path(file_okay=False))
    @click.option("--force", is_flag=True, help="Write into a non-empty directory.")
    @json_option
    @handle_errors
    def init(directory, force, as_json):
        """Scaffold a working example MCP app in DIRECTORY (default: ./hello)."""
        from ..errors import AppError

        dest = Path(directory)
        if dest.exists() and any(dest.iterdir()) and not force:
            raise AppError(f"{dest} is not empty", hint="pick a new directory or pass --force")
        dest.mkdir(parents=True, exist_ok=True)
        template = resources.files("mcp_agent_cloud") / "templates" / "hello"
        written = []
        for entry in sorted(template.iterdir(), key=lambda e: e.name):
            if entry.is_file() and not entry.name.endswith(".pyc"):
                (dest / entry.name).write_bytes(entry.read_bytes())
                written.append(entry.name)
        if as_json:
            return emit_json({"directory": str(dest.resolve()), "files": written})
        out.print(f"Created {dest}/ ({', '.join(written)}). Deploy it with:\n  mcp-agent deploy app {directory}",
                  highlight=False)

    @cli.command()
    @click.option("--api-url", help="Platform URL.")
    @click.option("--org", help="Default org.")
    @json_option
    @handle_errors
    def configure(api_url, org, as_json):
        """Set the platform URL and default org the CLI uses (asks when not given)."""
        from ..state import load_session, resolve_api_url, save_session

        current = load_session()
        if api_url is None and sys.stdin.isatty() and not as_json:
            api_url = click.prompt("Platform API URL", default=resolve_api_url())
        if org is None and sys.stdin.isatty() and not as_json:
            org = click.prompt("Default org", default=current.get("org", "default"))
        save_session(api_url=api_url.rstrip("/") if api_url else None, org=org)
        data = {"api_url": resolve_api_url(), **load_session()}
        if as_json:
            return emit_json(data)
        out.print(f"api_url: {data['api_url']}\norg: {data.get('org', 'default')}", highlight=False)

    @cli.group()
    def plugins():
        """Inspect installed plugins."""

    @plugins.command("list")
    @json_option
    @handle_errors
    def plugins_list(as_json):
        """Every backend each installed plugin provides: kind, name, distribution and version."""
        pm = cli.plugin_manager
        rows = pm.describe()
        if as_json:
            return emit_json({"plugins": rows, "warnings": pm.warnings})
        table(rows, [("kind", "KIND"), ("name", "NAME"), ("distribution", "DISTRIBUTION"), ("version", "VERSION"),
                     ("description", "DESCRIPTION")])

    @cli.group()
    def config():
        """Show or validate the platform config."""

    @config.command("show")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False))
    @json_option
    @handle_errors
    def config_show(config_path, as_json):
        """Print the effective platform config and where each value comes from."""
        from ..config import load_config

        loaded = load_config(config_path)
        data = loaded.config.model_dump(mode="json")
        if as_json:
            return emit_json({"file": str(loaded.path) if loaded.path else None, "config": data,
                              "sources": loaded.sources})
        out.print(f"# file: {loaded.path or '(none: built-in defaults)'}", highlight=False)
        import yaml

        for key, value in data.items():
            text = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=None).rstrip()
            out.print(f"{text}    # {loaded.sources.get(key, 'default')}", markup=False, highlight=False)

    @config.command("validate")
    @click.argument("path", required=False, type=click.Path(dir_okay=False))
    @json_option
    @handle_errors
    def config_validate(path, as_json):
        """Check a config file: YAML, keys, values, and that every selected backend is installed."""
        from ..config import load_config
        from ..platform.server import create_platform

        loaded = load_config(path)
        create_platform(loaded)
        if as_json:
            return emit_json({"valid": True, "file": str(loaded.path) if loaded.path else None})
        out.print(f"{loaded.path or '(defaults)'}: valid", highlight=False)

    @cli.group()
    def admin():
        """Administer the platform on its own host (works on the data dir of the platform config)."""

    @admin.command("token")
    @click.option("--org", required=True, help="Org the token belongs to (created if new).")
    @click.option("--subject", default="admin", show_default=True, help="Who the token is for.")
    @click.option("--role", type=click.Choice(["owner", "developer", "viewer"]), default="developer",
                  show_default=True)
    @click.option("--name", default="", help="A label for the token.")
    @click.option("--expires-in", type=float, help="Lifetime in seconds (default: no expiry).")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False))
    @json_option
    @handle_errors
    def admin_token(org, subject, role, name, expires_in, config_path, as_json):
        """Create a bearer token for an org. The token is printed once and stored only as a hash."""
        import anyio

        from ..names import validate_name

        validate_name(org, what="org name")
        pm, ctx, registry = _local_registry(config_path)

        async def create():
            await registry.setup()
            try:
                await registry.ensure_org(org)
                ctx.registry = registry
                auth = pm.build(pm.get_auth_provider("builtin"), {}, ctx)
                issued = await auth.issue_token(org=org, subject=subject, roles=[role], name=name,
                                                expires_in=expires_in)
                import getpass

                from ..hookspecs.types import AuditRecord

                with contextlib.suppress(NotImplementedError):  # a registry without an audit log
                    await registry.add_audit(AuditRecord(
                        org=org, actor=f"host:{getpass.getuser()}", provider="admin-cli", action="admin token",
                        target=f"id={issued[1].id} subject={subject} role={role}", source="local", status=201))
                return issued
            finally:
                await registry.aclose()

        token, record = anyio.run(create)
        if as_json:
            return emit_json({"token": token, "id": record.id, "org": org, "roles": record.roles})
        out.print(token, markup=False, highlight=False)
        err.print(f"token {record.id} for {subject} in org {org} (role {role}); it is shown only once",
                  highlight=False)

    @admin.group("users")
    def admin_users():
        """Local users of the `builtin` provider: they log in with `mcp-agent login` (a browser page asks for the
        password). Works on the platform's registry, on its host.

        \b
          mcp-agent admin users add alice --org acme --role developer      asks for the password
          printf %s "$PW" | mcp-agent admin users add ci-bot --org acme --role viewer --password-stdin
          mcp-agent admin users set alice --role owner
          mcp-agent admin users set alice --disable                         no more logins or refreshes
          mcp-agent admin users list"""

    def _read_password(from_stdin: bool) -> str:
        if from_stdin:
            password = sys.stdin.read().rstrip("\n")
        elif sys.stdin.isatty():
            password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        else:
            raise click.UsageError("no terminal to ask for the password: pass it with --password-stdin")
        if len(password) < 8:
            raise click.BadParameter("a password needs at least 8 characters", param_hint="password")
        return password

    def _on_registry(config_path, fn):
        import anyio

        _, _, registry = _local_registry(config_path)

        async def go():
            await registry.setup()
            try:
                return await fn(registry)
            finally:
                await registry.aclose()
        return anyio.run(go)

    def _user_row(u) -> dict:
        return {"username": u.username, "org": u.org, "roles": u.roles, "disabled": u.disabled,
                "created_at": u.created_at}

    @admin_users.command("add")
    @click.argument("username")
    @click.option("--org", required=True, help="The user's org (created if new).")
    @click.option("--role", type=click.Choice(["owner", "developer", "viewer"]), default="developer",
                  show_default=True)
    @click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False))
    @json_option
    @handle_errors
    def admin_users_add(username, org, role, password_stdin, config_path, as_json):
        """Add a local user. The password is stored only as a scrypt hash."""
        from ..hookspecs.types import UserRecord
        from ..names import validate_name
        from ..plugins.builtin_auth import hash_password

        validate_name(org, what="org name")
        if not username or len(username) > 64 or not all(c.isalnum() or c in "._@-" for c in username):
            raise click.BadParameter("1-64 letters, digits and . _ @ -", param_hint="USERNAME")
        password = _read_password(password_stdin)

        async def add(registry):
            await registry.ensure_org(org)
            return await registry.add_user(UserRecord(username=username, org=org, roles=[role],
                                                      password_hash=hash_password(password)))
        user = _on_registry(config_path, add)
        if as_json:
            return emit_json(_user_row(user))
        out.print(f"user {username} added to org {org} (role {role}); they log in with `mcp-agent login`",
                  highlight=False)

    @admin_users.command("set")
    @click.argument("username")
    @click.option("--role", type=click.Choice(["owner", "developer", "viewer"]))
    @click.option("--password", "new_password", is_flag=True, help="Set a new password (asked, or --password-stdin).")
    @click.option("--password-stdin", is_flag=True, help="With --password: read it from standard input.")
    @click.option("--disable/--enable", default=None, help="Stop (or allow again) logins and token refreshes.")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False))
    @json_option
    @handle_errors
    def admin_users_set(username, role, new_password, password_stdin, disable, config_path, as_json):
        """Change a local user's role, password or whether they may log in."""
        from ..plugins.builtin_auth import hash_password

        fields: dict = {}
        if role:
            fields["roles"] = [role]
        if new_password:
            fields["password_hash"] = hash_password(_read_password(password_stdin))
        if disable is not None:
            fields["disabled"] = disable
        if not fields:
            raise click.UsageError("nothing to change: give --role, --password or --disable/--enable")
        user = _on_registry(config_path, lambda registry: registry.update_user(username, **fields))
        if as_json:
            return emit_json(_user_row(user))
        out.print(f"user {username}: role {', '.join(user.roles)}{', disabled' if user.disabled else ''}",
                  highlight=False)

    @admin_users.command("list")
    @click.option("--org", help="Only this org's users.")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False))
    @json_option
    @handle_errors
    def admin_users_list(org, config_path, as_json):
        """Local users (never their password hashes)."""
        rows = [_user_row(u) for u in _on_registry(config_path, lambda registry: registry.list_users(org))]
        if as_json:
            return emit_json(rows)
        for row in rows:
            row["role"] = ",".join(row["roles"])
            row["state"] = "disabled" if row["disabled"] else "active"
        table(rows, [("username", "USER"), ("org", "ORG"), ("role", "ROLE"), ("state", "STATE")])

    @admin.command("migrate")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False))
    @json_option
    @handle_errors
    def admin_migrate(config_path, as_json):
        """Apply the registry's pending schema migrations, then exit.

        `mcp-agent serve` does this at start unless the registry says otherwise (postgres:
        `migrate_on_start: false`, for teams that migrate in a deploy step). Safe to run while nodes serve and
        from several hosts at once: migrations run in one transaction under a lock, and each runs once.
        """
        import anyio

        _, _, registry = _local_registry(config_path)
        versions = anyio.run(registry.migrate)
        name = registry.spec_name
        if versions is None:
            result = {"registry": name, "migrated": False, "message": "this registry has no schema to migrate"}
        else:
            before, after = versions
            result = {"registry": name, "migrated": after > before, "from_version": before, "to_version": after}
        if as_json:
            return emit_json(result)
        if versions is None:
            out.print(f"registry {name}: {result['message']}", highlight=False)
        elif after > before:
            out.print(f"registry {name}: schema migrated from version {before} to {after}", highlight=False)
        else:
            out.print(f"registry {name}: schema is at version {after}, nothing to do", highlight=False)

    @admin.command("nodes")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False))
    @json_option
    @handle_errors
    def admin_nodes(config_path, as_json):
        """The platform nodes sharing the registry, and which deployments each one runs.

        A node is live while it renews its leases (every third of `node.lease_seconds`); the deployments of a
        node that stopped renewing are taken over by another once their leases expire.
        """
        import anyio

        _, _, registry = _local_registry(config_path)

        async def read():
            await registry.setup()
            try:
                return await registry.list_nodes(), await registry.list_leases()
            finally:
                await registry.aclose()

        nodes, leases = anyio.run(read)
        rows = [{"id": n.id, "url": n.url, "heartbeat_age": round(n.age, 1),
                 "deployments": [lease.key for lease in leases if lease.node_id == n.id and lease.live],
                 "expired": [lease.key for lease in leases if lease.node_id == n.id and not lease.live]}
                for n in nodes]
        if as_json:
            return emit_json({"nodes": rows})
        if not rows:
            out.print("no node has started on this registry yet", highlight=False)
            return None
        table([{"id": r["id"], "url": r["url"], "age": f"{r['heartbeat_age']:.0f}s ago",
                "deps": ", ".join(r["deployments"] + [f"{k} (lease expired)" for k in r["expired"]]) or "-"}
               for r in rows], [("id", "NODE"), ("url", "URL"), ("age", "HEARTBEAT"), ("deps", "DEPLOYMENTS")])

    @cli.command(hidden=True, context_settings={"ignore_unknown_options": True})
    @click.option("--host", default="127.0.0.1")
    @click.option("--port", type=int, required=True)
    @click.option("--cwd", type=click.Path(file_okay=False))
    @click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
    def adapter(host, port, cwd, command):
        """Serve a stdio MCP server over Streamable HTTP: mcp-agent adapter --port P -- CMD ARGS."""
        from ..runtime.adapter import main as adapter_main

        argv = ["--host", host, "--port", str(port)] + (["--cwd", cwd] if cwd else []) + ["--", *command]
        sys.exit(adapter_main(argv))


def _health_line(h: dict) -> str:
    """Requests through the gateway since this node began serving the deployment, at a glance."""
    def ms(v):
        return "-" if v is None else f"{v:g} ms"

    parts = [f"{h.get('requests', 0)} requests", f"error rate {h.get('error_rate', 0) * 100:.1f}%",
             f"tool calls p50 {ms(h.get('p50_ms'))} p95 {ms(h.get('p95_ms'))} p99 {ms(h.get('p99_ms'))}",
             f"{h.get('active_sessions', 0)} sessions"]
    if h.get("memory_bytes"):
        parts.append(f"{h['memory_bytes'] / 2**20:.0f} MiB")
    if h.get("cpu_seconds") is not None:
        parts.append(f"cpu {h['cpu_seconds']:g}s")
    return ", ".join(parts)


def _print_event(e: dict) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["created_at"]))
    step = e["data"].get("step")
    out.print(f"{e['id']:>5} {stamp} {e['type']}{' ' + step if step else ''} {e['message']}", markup=False,
              highlight=False)


def _local_registry(config_path: str | None):
    """The plugin manager, a plugin context and the (not yet started) registry of the platform config, for the
    `admin` commands that work on the platform's own state."""
    from ..config import load_config
    from ..hookspecs.types import PluginContext
    from ..manager import load_plugin_manager

    cfg = load_config(config_path).config
    pm = load_plugin_manager(disable=cfg.plugins.disable)
    ctx = PluginContext(data_dir=cfg.data_dir)
    return pm, ctx, pm.build(pm.get_registry(cfg.registry.name), cfg.registry.options, ctx)


@hookimpl
def mcp_agent_cloud_cli_commands(cli: click.Group) -> None:
    from . import catalog

    register(cli)
    catalog.register(cli)


