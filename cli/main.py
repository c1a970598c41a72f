"""Entry point of ``mcp-agent`` / ``mcp-agent-cloud``. Every command, built-in or not, registers via the hook."""

from __future__ import annotations

import sys

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="mcp-agent")
def cli() -> None:
    """mcp-agent: deploy MCP apps and servers to a self-hosted MCP Agent Cloud.

    \b
    Quick start (local platform on the embedded defaults):
      mcp-agent serve &                         # start the platform
      mcp-agent init hello && cd hello          # scaffold an app
      mcp-agent deploy app . --name hello       # package, upload, build, start, health-check
      mcp-agent list                            # what is deployed
      mcp-agent logs hello --follow             # its log

    Every command takes --json for scripts. Point the CLI at another platform with
    --api-url or MCP_AGENT_CLOUD_API_URL.
    """


def build_cli() -> click.Group:
    from ..errors import MCPAgentCloudError
    from ..manager import load_plugin_manager

    try:
        pm = load_plugin_manager()
    except MCPAgentCloudError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    for warning in pm.warnings:
        click.echo(f"warning: {warning}", err=True)
    pm.hook.mcp_agent_cloud_cli_commands(cli=cli)
    cli.plugin_manager = pm  # type: ignore[attr-defined]
    return cli


def main(argv: list[str] | None = None) -> None:
    build_cli()(args=argv, prog_name="mcp-agent")


if __name__ == "__main__":
    main()
