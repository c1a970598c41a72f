"""``mcp-agent publish``, ``unpublish`` and ``catalog``: deployments made public as ``@{org}/{name}``."""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path

import click
from rich.markup import escape

from ..errors import ValidationFailed
from .commands import _client
from .output import api_options, emit_json, err, handle_errors, json_option, out, table

ICON_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml"}


def icon_value(icon: str) -> str:
    """An https URL as it is; a local image file as a data: URI (the platform keeps it; nothing loads from
    elsewhere when the catalog shows it)."""
    if icon.startswith("https://") or icon == "":
        return icon
    path = Path(icon).expanduser()
    if not path.is_file():
        raise ValidationFailed(f"--icon {icon}: neither an https URL nor an image file",
                               hint="pass a PNG, JPEG, GIF, WebP or SVG file, or an https:// URL")
    kind = mimetypes.guess_type(path.name)[0]
    if kind not in ICON_TYPES:
        raise ValidationFailed(f"--icon {icon}: {kind or 'an unknown type'} is not an image type the catalog shows",
                               hint="use a .png, .jpg, .gif, .webp or .svg file")
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


class SearchByDefault(click.Group):
    """`catalog WORDS` is `catalog search WORDS`: searching is what the catalog is mostly for."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["search", *args]
        return super().parse_args(ctx, args)


def _usage(entry: dict) -> str:
    usage = entry.get("usage") or {}
    return f"{usage.get('calls', 0)} calls, {usage.get('callers', 0)} callers, {usage.get('errors', 0)} errors"


def register(cli: click.Group) -> None:
    @cli.command()
    @click.argument("name")
    @click.option("--description", help="What it does (default: the deployment's description).")
    @click.option("--icon", help="An image file (PNG, JPEG, GIF, WebP, SVG; at most 64 KB) or an https URL.")
    @click.option("--example-file", type=click.Path(exists=True, dir_okay=False),
                  help="A text file with an example of its use, shown in the catalog.")
    @api_options
    @json_option
    @handle_errors
    def publish(name, description, icon, example_file, api_url, as_json):
        """Make a deployment public as @ORG/NAME: listed in the catalog, and callable by users of every org.

        Its auth still holds: with `platform` (the default) a caller needs a token of this platform, of any org;
        with `provider:NAME`, a login through that provider. Publishing again updates what the catalog shows.

        \b
          mcp-agent publish clock --description "The time in any timezone" --icon clock.svg
          mcp-agent publish search --example-file examples/search.md
          mcp-agent unpublish clock
        """
        body: dict = {}
        if description is not None:
            body["description"] = description
        if icon is not None:
            body["icon"] = icon_value(icon)
        if example_file:
            body["example"] = Path(example_file).read_text(errors="replace")
        entry = _client(api_url).publish(name, body)
        if as_json:
            return emit_json(entry)
        out.print(f"{entry['name']} is public as [bold]{escape(entry['address'])}[/]", highlight=False)
        out.print(f"  endpoint: {entry['endpoint']}", highlight=False)
        if entry["auth"] == "none":
            err.print("  [yellow]note:[/] its auth is none: anyone who can reach the platform may call it",
                      markup=True, highlight=False)

    @cli.command()
    @click.argument("name")
    @click.option("--force", is_flag=True, help="Unpublish even though other orgs' deployments use it (owners).")
    @api_options
    @json_option
    @handle_errors
    def unpublish(name, force, api_url, as_json):
        """Make a public deployment private again: out of the catalog, callable by its own org only.

        Refused while deployments of other orgs declare that they use it (they would lose it), unless an owner
        passes --force.
        """
        data = _client(api_url).unpublish(name, force=force)
        if as_json:
            return emit_json(data)
        out.print(f"{data['name']} is private", highlight=False)
        if data.get("forced_dependents"):
            err.print(f"  [yellow]note:[/] {data['forced_dependents']} deployment(s) of other orgs used it",
                      markup=True, highlight=False)

    @cli.group(cls=SearchByDefault)
    def catalog():
        """The platform's public servers and apps, from every org.

        \b
          mcp-agent catalog                      all of them
          mcp-agent catalog time zone            those whose name or description has every word
          mcp-agent catalog show @acme/clock     one, in full
        """

    @catalog.command("search")
    @click.argument("query", nargs=-1)
    @click.option("--kind", type=click.Choice(["app", "stdio", "remote"]), help="Only deployments of this kind.")
    @api_options
    @json_option
    @handle_errors
    def catalog_search(query, kind, api_url, as_json):
        """Public deployments whose name, org or description has every word of QUERY (all without one)."""
        entries = _client(api_url).catalog(" ".join(query), kind=kind)
        if as_json:
            return emit_json({"entries": entries})
        table([{**e, "usage": _usage(e), "version": e.get("version") or "-"} for e in entries],
              [("address", "ADDRESS"), ("kind", "KIND"), ("version", "VERSION"), ("status", "STATUS"),
               ("usage", "USAGE"), ("description", "DESCRIPTION")])

    @catalog.command("show")
    @click.argument("address")
    @api_options
    @json_option
    @handle_errors
    def catalog_show(address, api_url, as_json):
        """One public deployment: endpoint, versions, the package hash it serves, usage and its example."""
        entry = _client(api_url).catalog_entry(address)
        if as_json:
            return emit_json(entry)
        out.print(f"[bold]{escape(entry['address'])}[/] ({entry['kind']}, {entry['status']})", highlight=False)
        if entry.get("description"):
            out.print(f"  {escape(entry['description'])}", highlight=False)
        out.print(f"  endpoint: {entry['endpoint']}  (auth {entry['auth']})", highlight=False)
        if entry.get("package_sha256"):
            out.print(f"  serving version {entry['version']}, package sha256 {entry['package_sha256']}",
                      highlight=False)
        out.print(f"  usage: {_usage(entry)}; used by {entry.get('used_by', 0)} deployment(s)", highlight=False)
        if entry.get("uses"):
            out.print(f"  uses: {', '.join(entry['uses'])}", highlight=False)
        versions = entry.get("versions") or []
        if versions:
            out.print("  versions: " + ", ".join(f"{v['version']} ({v['status']})" for v in versions),
                      highlight=False)
        if entry.get("example"):
            out.print("  example:", highlight=False)
            for line in entry["example"].splitlines():
                out.print(f"    {line}", markup=False, highlight=False)
