"""The catalog's input rules, without a platform: dependency names, listing fields, icons, and the CLI's parsing."""

from __future__ import annotations

import base64

import click
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from mcp_agent_cloud.cli.catalog import SearchByDefault, icon_value
from mcp_agent_cloud.errors import ValidationFailed
from mcp_agent_cloud.platform.catalog import MAX_ICON_BYTES, MAX_USES, PublishBody, caller_id, resolve_uses
from mcp_agent_cloud.hookspecs.types import Identity


def test_uses_are_qualified_once_each_and_not_the_deployment_itself():
    assert resolve_uses(["clock", "@acme/search", "beta.db", "default.clock"], "default", "front") == [
        "default.clock", "acme.search", "beta.db"]
    with pytest.raises(ValidationFailed, match="cannot use itself"):
        resolve_uses(["front"], "default", "front")
    with pytest.raises(ValidationFailed, match="uses: invalid"):
        resolve_uses(["Not A Name"], "default", "front")
    with pytest.raises(ValidationFailed, match=f"at most {MAX_USES}"):
        resolve_uses([f"s{i}" for i in range(MAX_USES + 1)], "default", "front")


def test_an_icon_is_an_https_url_or_a_small_image_data_uri():
    assert PublishBody(icon="https://example.com/i.png").icon == "https://example.com/i.png"
    small = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"0" * 100).decode()
    assert PublishBody(icon=small).icon == small
    big = "data:image/png;base64," + base64.b64encode(b"0" * (MAX_ICON_BYTES + 1)).decode()
    for bad in ("http://example.com/i.png", "javascript:alert(1)", "data:text/html;base64,PGI+", big,
                "https://example.com/a b.png"):
        with pytest.raises(ValidationError):
            PublishBody(icon=bad)
    with pytest.raises(ValidationError):
        PublishBody(description="x" * 1001)


def test_the_cli_turns_an_image_file_into_a_data_uri(tmp_path):
    svg = tmp_path / "i.svg"
    svg.write_bytes(b"<svg/>")
    assert icon_value(str(svg)) == "data:image/svg+xml;base64," + base64.b64encode(b"<svg/>").decode()
    assert icon_value("https://example.com/i.png") == "https://example.com/i.png"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValidationFailed, match="not an image type"):
        icon_value(str(tmp_path / "notes.txt"))
    with pytest.raises(ValidationFailed, match="neither an https URL nor an image file"):
        icon_value(str(tmp_path / "missing.png"))


def test_caller_ids_tell_callers_apart_without_naming_them():
    a = caller_id(Identity(subject="ann", org="acme", provider="builtin"))
    assert a == caller_id(Identity(subject="ann", org="acme", provider="oauth", roles=["viewer"]))
    assert a != caller_id(Identity(subject="ann", org="beta", provider="builtin"))
    assert "ann" not in a and len(a) == 16 and caller_id(None) is None


def test_catalog_words_search_and_subcommands_still_work():
    seen = []

    @click.group(cls=SearchByDefault)
    def catalog():
        pass

    @catalog.command("search")
    @click.argument("query", nargs=-1)
    @click.option("--json", "as_json", is_flag=True)
    def search(query, as_json):
        seen.append(("search", query, as_json))

    @catalog.command("show")
    @click.argument("address")
    def show(address):
        seen.append(("show", address))

    runner = CliRunner()
    for args in (["time", "zone"], [], ["--json"], ["show", "@acme/clock"]):
        assert runner.invoke(catalog, args).exit_code == 0
    assert seen == [("search", ("time", "zone"), False), ("search", (), False), ("search", (), True),
                    ("show", "@acme/clock")]
    assert "Usage" in runner.invoke(catalog, ["--help"]).output


def test_the_servers_an_apps_mcp_config_connects_to_on_this_platform_are_its_dependencies(tmp_path):
    from mcp_agent_cloud.appspec import load_app, platform_servers

    (tmp_path / "main.py").write_text("from mcp.server.mcpserver import MCPServer\nmcp = MCPServer('x')\n")
    (tmp_path / "mcp_agent.config.yaml").write_text(
        "mcp:\n  servers:\n"
        "    clock: {transport: streamable_http, url: 'http://127.0.0.1:8765/servers/clock/mcp'}\n"
        "    search: {transport: sse, url: 'http://127.0.0.1:8765/servers/@acme/search/sse'}\n"
        "    elsewhere: {transport: streamable_http, url: 'https://api.example.com/servers/x/mcp'}\n"
        "    fetch: {command: uvx, args: [mcp-server-fetch]}\n")
    app = load_app(tmp_path)
    assert app.uses is None and len(app.server_urls) == 3
    assert platform_servers(app.server_urls, "http://127.0.0.1:8765") == ["clock", "acme.search"]
    assert platform_servers(app.server_urls, "http://127.0.0.1:9999") == []
