"""The example plugin package, really pip-installed: discovered by entry point, selected by config, built."""

from __future__ import annotations

import asyncio
import json
from importlib.metadata import distribution
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from example_plugin_util import DIST_NAME, ENTRY_POINT, MODULE, example_plugin_installed

from mcp_agent_cloud.config import load_config
from mcp_agent_cloud.errors import PluginError, UnknownBackendError
from mcp_agent_cloud.hookspecs.types import Event, PluginContext, TelemetryExporterSpec
from mcp_agent_cloud.manager import DISABLE_AUTOLOAD_ENV, PluginManager, load_plugin_manager


# One worker installs and removes the example plugin at a time (tests/e2e/test_cli_misc.py does too).
pytestmark = pytest.mark.xdist_group("example_plugin")


@pytest.fixture(scope="module")
def installed():
    with example_plugin_installed():
        yield


@pytest.fixture(autouse=True)
def _autoload_on(monkeypatch):
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)


def test_installed_for_real_not_from_the_source_tree(installed):
    dist = distribution(DIST_NAME)
    files = {str(f) for f in dist.files or ()}
    assert f"{MODULE}/__init__.py" in files
    located = Path(dist.locate_file(f"{MODULE}/__init__.py")).resolve()
    assert "example_plugin" not in located.parts  # not an editable install pointing back at tests/


def test_listed_with_distribution_and_version(installed):
    pm = load_plugin_manager()
    info = pm.plugins[ENTRY_POINT]
    assert (info.distribution, info.version, info.builtin) == (DIST_NAME, "0.1.0", False)
    assert info.module == MODULE
    rows = [r for r in pm.describe() if r["name"] == "recorder"]
    assert rows == [{
        "kind": "telemetry", "name": "recorder", "plugin": ENTRY_POINT, "distribution": DIST_NAME,
        "version": "0.1.0", "builtin": False,
        "description": "appends every platform event as one JSON line to a file",
    }]


def test_selected_by_config_built_and_exports(installed, tmp_path):
    out = tmp_path / "events" / "recorded.jsonl"
    cfg_file = tmp_path / "platform.yaml"
    cfg_file.write_text(f"telemetry:\n  - console\n  - {{name: recorder, path: '{out}'}}\n")
    cfg = load_config(explicit=cfg_file).config
    ref = cfg.telemetry[1]
    assert (ref.name, ref.options) == ("recorder", {"path": str(out)})

    pm = load_plugin_manager(disable=cfg.plugins.disable, require=cfg.plugins.require)
    spec = pm.get_telemetry_exporter(ref.name)
    assert isinstance(spec, TelemetryExporterSpec)
    exporter = pm.build(spec, ref.options, PluginContext(data_dir=tmp_path / "data"))
    assert exporter.spec_name == "recorder"
    asyncio.run(exporter.setup())
    exporter.export(Event(type="deployment.created", org="acme", deployment="hello", version=1, message="first"))
    exporter.export(Event(type="deployment.started", org="acme", deployment="hello", version=1, status="ok"))
    asyncio.run(exporter.aclose())

    lines = out.read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["deployment.created", "deployment.started"]
    assert json.loads(lines[0])["message"] == "first"


def test_relative_path_is_under_data_dir(installed, tmp_path):
    pm = load_plugin_manager()
    exporter = pm.build(pm.get_telemetry_exporter("recorder"), {"path": "ev.jsonl"},
                        PluginContext(data_dir=tmp_path))
    asyncio.run(exporter.setup())
    exporter.export(Event(type="x"))
    assert json.loads((tmp_path / "ev.jsonl").read_text())["type"] == "x"


def test_takes_spans_when_it_overrides_export_span(installed, tmp_path):
    from mcp_agent_cloud.telemetry import Tracer

    pm = load_plugin_manager()
    exporter = pm.build(pm.get_telemetry_exporter("recorder"), {"path": "ev.jsonl", "spans_path": "spans.jsonl"},
                        PluginContext(data_dir=tmp_path))
    assert type(exporter).takes_spans()
    tracer = Tracer(exporter.export_span)
    with tracer.span("parent", org="acme", deployment="hello"):
        with tracer.span("child", attributes={"api_key": "hidden", "tool": "add"}):
            pass
    child, parent = [json.loads(line) for line in (tmp_path / "spans.jsonl").read_text().splitlines()]
    assert (child["name"], parent["name"]) == ("child", "parent")
    assert child["parent_id"] == parent["span_id"] and child["trace_id"] == parent["trace_id"]
    assert child["deployment"] == "hello" and child["attributes"] == {"tool": "add"}  # no credential-like keys


def test_path_option_is_required(installed, tmp_path):
    pm = load_plugin_manager()
    with pytest.raises(PluginError, match="path"):
        pm.build(pm.get_telemetry_exporter("recorder"), {}, PluginContext(data_dir=tmp_path))


def test_registered_in_code_as_docs_plugins_md_shows(installed, monkeypatch, tmp_path):
    import mcp_agent_cloud_example

    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    pm = PluginManager()
    pm.register(mcp_agent_cloud_example, name="example", distribution=DIST_NAME)
    pm.check_pending()
    backend = pm.build(pm.get_telemetry_exporter("recorder"), {"path": "events.jsonl"},
                       PluginContext(data_dir=tmp_path))
    assert backend.spec_name == "recorder"
    assert pm.warnings == []


def test_cli_command(installed):
    pm = load_plugin_manager()
    cli = click.Group("mcp-agent")
    pm.hook.mcp_agent_cloud_cli_commands(cli=cli)
    result = CliRunner().invoke(cli, ["example-hello"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello from the example plugin\n"


def test_autoload_disabled_keeps_builtins_only(installed, monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    pm = load_plugin_manager()
    assert ENTRY_POINT not in pm.plugins
    assert {"tarball", "process", "sqlite"} <= set(pm.plugins)
    with pytest.raises(UnknownBackendError, match="recorder"):
        pm.get_telemetry_exporter("recorder")


def test_disabled_by_config(installed, tmp_path):
    cfg_file = tmp_path / "platform.yaml"
    cfg_file.write_text("plugins:\n  disable: [example]\n")
    cfg = load_config(explicit=cfg_file).config
    pm = load_plugin_manager(disable=cfg.plugins.disable)
    assert ENTRY_POINT not in pm.plugins
    assert "tarball" in pm.plugins  # disabling one plugin leaves the rest
    with pytest.raises(UnknownBackendError):
        pm.get_telemetry_exporter("recorder")


def test_required_but_disabled_fails(installed):
    with pytest.raises(PluginError, match="example"):
        load_plugin_manager(disable=["example"], require=["example"])
