"""Writes docs/cli.md from the click commands, so the reference cannot drift from --help.

Run: .venv/bin/python scripts/gen_cli_docs.py   (tests/test_docs_cli.py fails when docs/cli.md is stale)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

HEADER = """# CLI reference

`mcp-agent` (alias `mcp-agent-cloud`). Generated from the commands' `--help` by `scripts/gen_cli_docs.py`; do not
edit by hand. Plugins can add commands through the `mcp_agent_cloud_cli_commands` hook; they appear in `--help`.

Common to the commands that talk to a platform: `--api-url` (or `MCP_AGENT_CLOUD_API_URL`, else `api_url` in
`~/.mcp-agent-cloud/auth.json`, else `http://127.0.0.1:8765`), a token from `MCP_AGENT_CLOUD_TOKEN` or `auth.json`,
and `--json` for machine-readable output on stdout. Errors go to stderr with a `hint:` line and exit code 1
(with `--json`, an error object on stdout).
"""


def render(cli: click.Group) -> str:
    parts = [HEADER]

    def walk(cmd: click.Command, path: list[str]) -> None:
        if getattr(cmd, "hidden", False):
            return
        ctx = click.Context(cmd, info_name=" ".join(path), terminal_width=100, max_content_width=100)
        title = " ".join(path)
        parts.append(f"\n## `{title}`\n\n```\n{cmd.get_help(ctx).rstrip()}\n```\n")
        if isinstance(cmd, click.Group):
            for name in sorted(cmd.commands):
                walk(cmd.commands[name], path + [name])

    walk(cli, ["mcp-agent"])
    return "".join(parts)


def main() -> int:
    from mcp_agent_cloud.cli.main import build_cli
    from mcp_agent_cloud.manager import DISABLE_AUTOLOAD_ENV
    import os

    os.environ[DISABLE_AUTOLOAD_ENV] = "1"  # document the built-in commands only
    text = render(build_cli())
    target = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    if "--check" in sys.argv:
        return 0 if target.exists() and target.read_text() == text else 1
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
