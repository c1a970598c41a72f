"""Platform config: defaults, backend forms, errors with file:line, discovery order and env overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mcp_agent_cloud.config import (
    CONFIG_FILENAME,
    BackendRef,
    PlatformConfig,
    find_config_file,
    home_dir,
    load_config,
)
from mcp_agent_cloud.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No MCP_AGENT_CLOUD_* from the developer's shell; a private home; a cwd without a config file."""
    for name in list(os.environ):
        if name.startswith("MCP_AGENT_CLOUD_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MCP_AGENT_CLOUD_HOME", str(home))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return home


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(tmp_path, text: str) -> ConfigError:
    cfg = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    return err.value


# -- defaults and forms ---------------------------------------------------------------------------------------


def test_defaults(clean_env):
    loaded = load_config()
    cfg = loaded.config
    assert loaded.path is None
    assert cfg.listen == "127.0.0.1:8765"
    assert (cfg.host, cfg.port, cfg.base_url) == ("127.0.0.1", 8765, "http://127.0.0.1:8765")
    assert cfg.data_dir == clean_env / "data"
    assert cfg.default_org == "default"
    assert [cfg.packager.name, cfg.builder.name, cfg.registry.name, cfg.executor.name, cfg.secrets.name] == [
        "tarball", "process", "sqlite", "asyncio", "local"]
    assert [r.name for r in cfg.auth] == ["builtin"]
    assert [r.name for r in cfg.telemetry] == ["console", "jsonl"]
    assert (cfg.plugins.disable, cfg.plugins.require) == ([], [])
    assert cfg.limits.max_upload_bytes == 100 * 1024 * 1024
    assert cfg.log_level == "info"
    assert set(loaded.sources) == set(PlatformConfig.model_fields)
    assert set(loaded.sources.values()) == {"default"}


def test_defaults_are_not_shared_between_instances():
    a, b = PlatformConfig(), PlatformConfig()
    a.telemetry.append(BackendRef(name="x"))
    assert [r.name for r in b.telemetry] == ["console", "jsonl"]


def test_backend_string_and_mapping_forms(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "builder: process\npackager: {name: tarball, level: 9}\n")).config
    assert (cfg.builder.name, cfg.builder.options) == ("process", {})
    assert (cfg.packager.name, cfg.packager.options) == ("tarball", {"level": 9})
    cfg = load_config(write(tmp_path / "d.yaml", "builder:\n  name: process\n  x: 1\n")).config
    assert (cfg.builder.name, cfg.builder.options) == ("process", {"x": 1})


def test_auth_and_telemetry_single_values_become_lists(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "auth: builtin\ntelemetry: {name: jsonl, path: e.jsonl}\n")).config
    assert [r.name for r in cfg.auth] == ["builtin"]
    assert [(r.name, r.options) for r in cfg.telemetry] == [("jsonl", {"path": "e.jsonl"})]
    cfg = load_config(write(tmp_path / "d.yaml", "auth: [builtin, {name: okta, issuer: 'https://x'}]\n")).config
    assert [(r.name, r.options) for r in cfg.auth] == [("builtin", {}), ("okta", {"issuer": "https://x"})]


def test_data_dir_expands_user_and_vars(tmp_path, monkeypatch):
    monkeypatch.setenv("SOME_ROOT", str(tmp_path))
    cfg = load_config(write(tmp_path / "c.yaml", "data_dir: $SOME_ROOT/state\n")).config
    assert cfg.data_dir == tmp_path / "state"


def test_empty_file_means_defaults(tmp_path):
    loaded = load_config(write(tmp_path / "c.yaml", "# nothing yet\n"))
    assert loaded.config == PlatformConfig()
    assert loaded.path == tmp_path / "c.yaml"


def test_sources_name_file_and_line(tmp_path):
    cfg = write(tmp_path / "c.yaml", "log_level: debug\n\nlisten: 0.0.0.0:9000\n")
    sources = load_config(cfg).sources
    assert sources["listen"] == f"{cfg}:3"
    assert sources["log_level"] == f"{cfg}:1"
    assert sources["builder"] == "default"


# -- errors ---------------------------------------------------------------------------------------------------


def test_unknown_top_level_key_names_key_and_line(tmp_path):
    err = error_of(tmp_path, "listen: 127.0.0.1:1\nbuidler: process\n")
    assert f"{tmp_path / 'bad.yaml'}:2: buidler: unknown key" in err.message
    assert "docs/config.md" in err.hint


def test_nested_bad_value_names_dotted_key_and_line(tmp_path):
    err = error_of(tmp_path, "limits:\n  health_timeout: 5\n  max_upload_bytes: -1\n")
    assert f"{tmp_path / 'bad.yaml'}:3: limits.max_upload_bytes: " in err.message
    assert "greater than 0" in err.message
    assert "health_timeout" not in err.message


def test_bad_listen(tmp_path):
    err = error_of(tmp_path, "listen: localhost\n")
    assert ":1: listen: " in err.message and "host:port" in err.message


def test_backend_mapping_without_name(tmp_path):
    err = error_of(tmp_path, "telemetry:\n  - console\n  - {path: x}\n")
    assert ":3: telemetry.1: " in err.message and "'name'" in err.message


def test_several_errors_are_all_reported(tmp_path):
    err = error_of(tmp_path, "bogus: 1\nsupervisor:\n  backoff_max: 0\n")
    assert ":1: bogus: unknown key" in err.message
    assert ":3: supervisor.backoff_max: " in err.message


def test_invalid_yaml_names_the_line(tmp_path):
    err = error_of(tmp_path, "listen: 127.0.0.1:1\nlimits:\n  max_upload_bytes: [1, 2\nlog_level: info\n")
    assert f"invalid YAML in {tmp_path / 'bad.yaml'}:4:" in err.message


def test_top_level_must_be_a_mapping(tmp_path):
    err = error_of(tmp_path, "- listen\n- builder\n")
    assert "mapping" in err.message


# -- discovery ------------------------------------------------------------------------------------------------


def test_home_dir_honours_env(clean_env, monkeypatch):
    assert home_dir() == clean_env
    monkeypatch.delenv("MCP_AGENT_CLOUD_HOME")
    assert home_dir() == Path.home() / ".mcp-agent-cloud"


def test_discovery_order(tmp_path, clean_env, monkeypatch):
    cwd = Path.cwd()
    home_file = write(clean_env / CONFIG_FILENAME, "default_org: from-home\n")
    assert load_config().config.default_org == "from-home"
    assert load_config().path == home_file

    write(cwd / CONFIG_FILENAME, "default_org: from-cwd\n")
    assert load_config().config.default_org == "from-cwd"
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert load_config(cwd=other).config.default_org == "from-home"  # cwd= overrides the process's cwd

    env_file = write(tmp_path / "env.yaml", "default_org: from-env\n")
    monkeypatch.setenv("MCP_AGENT_CLOUD_CONFIG", str(env_file))
    assert load_config().config.default_org == "from-env"

    explicit = write(tmp_path / "explicit.yaml", "default_org: from-flag\n")
    loaded = load_config(explicit)
    assert (loaded.config.default_org, loaded.path) == ("from-flag", explicit)


def test_missing_explicit_file_errors(tmp_path):
    write(Path.cwd() / CONFIG_FILENAME, "default_org: from-cwd\n")  # must not be used as a fallback
    with pytest.raises(ConfigError, match="config file not found") as err:
        load_config(tmp_path / "nope.yaml")
    assert "--config" in err.value.hint


def test_missing_env_file_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("MCP_AGENT_CLOUD_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="MCP_AGENT_CLOUD_CONFIG"):
        find_config_file()


# -- env overrides --------------------------------------------------------------------------------------------


def test_env_overrides_win_and_are_sourced(tmp_path, monkeypatch):
    cfg = write(tmp_path / "c.yaml", "listen: 127.0.0.1:1000\nlimits:\n  max_upload_bytes: 10\n  health_timeout: 5\n")
    monkeypatch.setenv("MCP_AGENT_CLOUD_LISTEN", "0.0.0.0:9000")
    monkeypatch.setenv("MCP_AGENT_CLOUD_LIMITS__MAX_UPLOAD_BYTES", "2048")
    loaded = load_config(cfg)
    assert loaded.config.listen == "0.0.0.0:9000"
    assert loaded.config.limits.max_upload_bytes == 2048
    assert loaded.config.limits.health_timeout == 5  # siblings from the file survive
    assert loaded.sources["listen"] == "env MCP_AGENT_CLOUD_LISTEN"
    assert loaded.sources["limits"] == "env MCP_AGENT_CLOUD_LIMITS__MAX_UPLOAD_BYTES"


def test_env_values_are_yaml_scalars_but_paths_stay_strings(monkeypatch, tmp_path):
    monkeypatch.setenv("MCP_AGENT_CLOUD_PLUGINS__DISABLE", "[example, other]")
    monkeypatch.setenv("MCP_AGENT_CLOUD_DATA_DIR", str(tmp_path / "123"))
    cfg = load_config().config
    assert cfg.plugins.disable == ["example", "other"]
    assert cfg.data_dir == tmp_path / "123"


def test_env_option_keeps_the_backend_name(tmp_path, monkeypatch):
    monkeypatch.setenv("MCP_AGENT_CLOUD_BUILDER__MAX_MEMORY", "512")
    monkeypatch.setenv("MCP_AGENT_CLOUD_PACKAGER__LEVEL", "3")
    cfg = load_config(write(tmp_path / "c.yaml", "builder: process\n")).config
    assert (cfg.builder.name, cfg.builder.options) == ("process", {"max_memory": 512})
    assert (cfg.packager.name, cfg.packager.options) == ("tarball", {"level": 3})  # from the default


def test_env_error_blames_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MCP_AGENT_CLOUD_LIMITS__HEALTH_TIMEOUT", "-3")
    err = error_of(tmp_path, "limits:\n  health_timeout: 5\n")
    assert "env MCP_AGENT_CLOUD_LIMITS__HEALTH_TIMEOUT: limits.health_timeout:" in err.message


@pytest.mark.parametrize("name", ["MCP_AGENT_CLOUD_API_URL", "MCP_AGENT_CLOUD_TOKEN", "MCP_AGENT_CLOUD_UNRELATED"])
def test_non_config_env_vars_are_not_keys(monkeypatch, name):
    monkeypatch.setenv(name, "http://example.invalid")
    loaded = load_config()
    assert "api_url" not in loaded.sources
    assert set(loaded.sources.values()) == {"default"}
