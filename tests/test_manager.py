"""The plugin manager: typed look-ups, conflicts, broken plugins, building backends, entry-point loading."""

from __future__ import annotations

import logging
import sys
import textwrap

import pytest
from pydantic import BaseModel, ConfigDict

from mcp_agent_cloud.errors import MissingDependencyError, PluginError, UnknownBackendError
from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import (
    AuthProviderSpec,
    Backend,
    BuilderSpec,
    Event,
    ExecutorSpec,
    PackagerSpec,
    PluginContext,
    RegistrySpec,
    SecretsSpec,
    ServerTypeSpec,
    TelemetryExporterSpec,
)
from mcp_agent_cloud.manager import DISABLE_AUTOLOAD_ENV, TRACE_ENV, PluginManager, load_plugin_manager

BUILTINS = ("tarball", "process", "sqlite", "asyncio", "local", "builtin", "console", "jsonl")


@pytest.fixture
def pm(monkeypatch):
    """A manager with nothing loaded; autoload off so nothing installed can leak in."""
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    monkeypatch.delenv(TRACE_ENV, raising=False)
    manager = PluginManager()
    yield manager
    for name in list(manager.plugins):
        manager.unregister(name)


@pytest.fixture
def ctx(tmp_path):
    return PluginContext(data_dir=tmp_path)


class Dummy(Backend):
    pass


class SizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = 1


def packagers(*names: str):
    """A plugin object whose packager hook yields one spec per name."""

    class Plugin:
        @hookimpl
        def mcp_agent_cloud_packagers(self):
            for n in names:
                yield PackagerSpec(name=n, backend=Dummy, description=f"{n} archives")

    return Plugin()


# -- typed look-ups ------------------------------------------------------------------------------------------


class AllKinds:
    @hookimpl
    def mcp_agent_cloud_packagers(self):
        return [PackagerSpec(name="p1", backend=Dummy)]

    @hookimpl
    def mcp_agent_cloud_builders(self):
        return [BuilderSpec(name="b1", backend=Dummy)]

    @hookimpl
    def mcp_agent_cloud_registries(self):
        return [RegistrySpec(name="r1", backend=Dummy)]

    @hookimpl
    def mcp_agent_cloud_executors(self):
        return [ExecutorSpec(name="e1", backend=Dummy)]

    @hookimpl
    def mcp_agent_cloud_secrets_backends(self):
        return [SecretsSpec(name="s1", backend=Dummy)]

    @hookimpl
    def mcp_agent_cloud_auth_providers(self):
        return [AuthProviderSpec(name="a1", backend=Dummy)]

    @hookimpl
    def mcp_agent_cloud_telemetry_exporters(self):
        return [TelemetryExporterSpec(name="t1", backend=Dummy)]

    @hookimpl
    def mcp_agent_cloud_server_types(self):
        return [ServerTypeSpec(name="st1", description="d", command="c")]


@pytest.mark.parametrize("getter, name, spec_cls", [
    ("get_packager", "p1", PackagerSpec),
    ("get_builder", "b1", BuilderSpec),
    ("get_registry", "r1", RegistrySpec),
    ("get_executor", "e1", ExecutorSpec),
    ("get_secrets", "s1", SecretsSpec),
    ("get_auth_provider", "a1", AuthProviderSpec),
    ("get_telemetry_exporter", "t1", TelemetryExporterSpec),
    ("get_server_type", "st1", ServerTypeSpec),
])
def test_typed_getters_return_specs(pm, getter, name, spec_cls):
    pm.register(AllKinds(), name="allkinds", distribution="acme-all")
    spec = getattr(pm, getter)(name)
    assert type(spec) is spec_cls
    assert spec.name == name
    # every kind is indexed separately: one name does not leak into another kind
    assert pm.names(spec.kind) == [name]


def test_unregister_forgets_specs(pm):
    pm.register(packagers("zip"), name="zipper")
    assert pm.names("packager") == ["zip"]
    pm.unregister("zipper")
    assert pm.names("packager") == []
    assert "zipper" not in pm.plugins


def test_unknown_name_lists_installed_choices(pm):
    pm.register(packagers("zip", "tar"), name="archives")
    with pytest.raises(UnknownBackendError) as err:
        pm.get_packager("rar")
    assert "'rar'" in err.value.message
    assert "tar, zip" in err.value.message
    assert "mcp-agent-cloud[" not in str(err.value)  # no extra provides 'rar'


def test_unknown_name_with_no_choices(pm):
    with pytest.raises(UnknownBackendError, match=r"\(none\)"):
        pm.get_builder("whatever")


@pytest.mark.parametrize("kind, name, extra", [
    ("builder", "docker", "docker"),
    ("builder", "podman", "podman"),
    ("executor", "temporal", "temporal"),
    ("secrets", "vault", "vault"),
    ("telemetry", "otlp", "otel"),
    ("registry", "postgres", "postgres"),
])
def test_unknown_name_of_an_extra_names_the_extra(pm, kind, name, extra):
    with pytest.raises(UnknownBackendError) as err:
        pm.get(kind, name)
    assert err.value.hint == f"install it with: pip install 'mcp-agent-cloud[{extra}]'"


# -- conflicts and broken plugins -----------------------------------------------------------------------------


def test_two_plugins_claiming_one_name_conflict(pm):
    pm.register(packagers("zip"), name="zip-a", distribution="acme-zip")
    pm.register(packagers("zip"), name="zip-b", distribution="other-zip")
    with pytest.raises(PluginError) as err:
        pm.get_packager("zip")
    assert "acme-zip" in err.value.message and "other-zip" in err.value.message
    assert "plugins.disable" in err.value.hint


def test_same_name_in_different_kinds_is_fine(pm):
    class Builders:
        @hookimpl
        def mcp_agent_cloud_builders(self):
            yield BuilderSpec(name="zip", backend=Dummy)

    pm.register(packagers("zip"), name="p")
    pm.register(Builders(), name="b")
    assert pm.get_packager("zip").kind == "packager"
    assert pm.get_builder("zip").kind == "builder"


def test_raising_hookimpl_warns_and_others_still_work(pm, caplog):
    class Bad:
        @hookimpl
        def mcp_agent_cloud_packagers(self):
            raise RuntimeError("boom")

    pm.register(Bad(), name="badplug", distribution="bad-dist")
    pm.register(packagers("zip"), name="good")
    with caplog.at_level(logging.WARNING):
        assert pm.get_packager("zip").name == "zip"
    assert any("'badplug'" in w and "bad-dist" in w and "boom" in w for w in pm.warnings), pm.warnings
    assert any("badplug" in r.getMessage() for r in caplog.records)


def test_raising_generator_hookimpl_is_caught_too(pm):
    class HalfBad:
        @hookimpl
        def mcp_agent_cloud_packagers(self):
            yield PackagerSpec(name="half", backend=Dummy)
            raise RuntimeError("late boom")

    pm.register(HalfBad(), name="halfbad")
    pm.register(packagers("zip"), name="good")
    assert pm.names("packager") == ["zip"]
    assert any("late boom" in w for w in pm.warnings)


def test_wrongly_typed_spec_is_ignored_with_warning(pm):
    class Confused:
        @hookimpl
        def mcp_agent_cloud_packagers(self):
            yield BuilderSpec(name="notapackager", backend=Dummy)
            yield {"name": "adict"}
            yield PackagerSpec(name="fine", backend=Dummy)

    pm.register(Confused(), name="confused")
    assert pm.names("packager") == ["fine"]
    assert pm.names("builder") == []
    assert any("'confused'" in w and "BuilderSpec" in w and "expected PackagerSpec" in w for w in pm.warnings)
    assert any("dict" in w for w in pm.warnings)


def test_check_pending_catches_misspelled_hook(pm):
    class Typo:
        @hookimpl
        def mcp_agent_cloud_packager(self):  # missing the final "s"
            return []

    pm.register(packagers("zip"), name="good")
    pm.check_pending()  # correct hooks pass
    pm.register(Typo(), name="typo")
    with pytest.raises(PluginError, match="mcp_agent_cloud_packager"):
        pm.check_pending()


def test_require_names_missing_plugins(pm):
    pm.register(packagers("zip"), name="zipper")
    pm.require(["zipper"])
    with pytest.raises(PluginError, match="nothere"):
        pm.require(["zipper", "nothere"])


# -- building backends ----------------------------------------------------------------------------------------


def test_build_validates_options_and_constructs(pm, ctx):
    spec = BuilderSpec(name="sized", backend=Dummy, config_model=SizeConfig)
    backend = pm.build(spec, {"size": 3}, ctx)
    assert isinstance(backend, Dummy)
    assert backend.config == SizeConfig(size=3)
    assert backend.ctx is ctx
    assert backend.spec_name == "sized"
    assert pm.build(spec, {}, ctx).config.size == 1


def test_build_invalid_option_names_it(pm, ctx):
    spec = BuilderSpec(name="sized", backend=Dummy, config_model=SizeConfig)
    with pytest.raises(PluginError) as err:
        pm.build(spec, {"size": "big"}, ctx)
    assert "builder 'sized'" in err.value.message
    assert "size:" in err.value.message


def test_build_unknown_option_is_an_error(pm, ctx):
    with pytest.raises(PluginError) as err:
        pm.build(BuilderSpec(name="plain", backend=Dummy), {"colour": "red"}, ctx)
    assert "colour: unknown key" in err.value.message


def test_build_missing_dependency_names_the_extra(pm, ctx):
    spec = BuilderSpec(name="dock", backend=Dummy, config_model=SizeConfig,
                       requires=("json", "surely_missing_mod"), extra="docker")
    with pytest.raises(MissingDependencyError) as err:
        pm.build(spec, {"size": "not even valid"}, ctx)  # the dependency is checked first
    assert "surely_missing_mod" in err.value.message
    assert "json" not in err.value.message
    assert err.value.hint == "pip install 'mcp-agent-cloud[docker]'"


def test_build_missing_dependency_falls_back_to_known_extra_then_module(pm, ctx):
    known = SecretsSpec(name="vault", backend=Dummy, requires=("surely_missing_mod",))
    with pytest.raises(MissingDependencyError) as err:
        pm.build(known, {}, ctx)
    assert err.value.hint == "pip install 'mcp-agent-cloud[vault]'"
    unknown = SecretsSpec(name="mine", backend=Dummy, requires=("surely_missing_mod",))
    with pytest.raises(MissingDependencyError) as err:
        pm.build(unknown, {}, ctx)
    assert err.value.hint == "pip install surely_missing_mod"


# -- describe, call-all hooks, tracing -------------------------------------------------------------------------


def test_describe_rows(pm):
    class Builders:
        @hookimpl
        def mcp_agent_cloud_builders(self):
            yield BuilderSpec(name="b", backend=Dummy, description="a builder")

    pm.register(packagers("zip", "tar"), name="archives", distribution="acme-archives", version="1.2")
    pm.register(Builders(), name="builders")
    rows = pm.describe()
    assert rows == [
        {"kind": "packager", "name": "tar", "plugin": "archives", "distribution": "acme-archives",
         "version": "1.2", "builtin": False, "description": "tar archives"},
        {"kind": "packager", "name": "zip", "plugin": "archives", "distribution": "acme-archives",
         "version": "1.2", "builtin": False, "description": "zip archives"},
        {"kind": "builder", "name": "b", "plugin": "builders", "distribution": "(registered in code)",
         "version": "", "builtin": False, "description": "a builder"},
    ]


def test_lifecycle_and_configure_hooks(pm):
    seen = []

    class Watcher:
        @hookimpl
        def mcp_agent_cloud_lifecycle_event(self, event):
            seen.append(event.type)

        @hookimpl
        def mcp_agent_cloud_configure(self, config):
            seen.append(("configured", config))

    pm.hook.mcp_agent_cloud_configure.call_historic(kwargs={"config": "cfg"})
    pm.register(Watcher(), name="watcher")  # registered late: the historic hook still reaches it
    pm.hook.mcp_agent_cloud_lifecycle_event(event=Event(type="deployment.started"))
    assert seen == [("configured", "cfg"), "deployment.started"]


def test_trace_env_writes_hook_calls_to_stderr(monkeypatch, capsys):
    monkeypatch.setenv(TRACE_ENV, "1")
    manager = PluginManager()
    manager.register(packagers("zip"), name="zipper")
    manager.names("packager")
    manager.hook.mcp_agent_cloud_lifecycle_event(event=Event(type="x"))
    err = capsys.readouterr().err
    assert "mcp_agent_cloud_packagers" in err and "zipper" in err
    assert "mcp_agent_cloud_lifecycle_event" in err


# -- entry points ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Make real distributions (dist-info + modules) in a directory on sys.path, like an installed package."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    made_modules: list[str] = []

    def make(dist: str, entry_points: dict[str, str], modules: dict[str, str], version: str = "0.1") -> None:
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        eps = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[mcp_agent_cloud.plugins]\n{eps}")
        for mod, src in modules.items():
            (site / f"{mod}.py").write_text(textwrap.dedent(src))
            made_modules.append(mod)

    yield make
    for mod in made_modules:
        sys.modules.pop(mod, None)


def _load(**kw) -> PluginManager:
    manager = PluginManager()
    manager.load_entry_points(**kw)
    return manager


def test_broken_entry_point_warns_and_startup_goes_on(fake_dist, monkeypatch, caplog):
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    fake_dist("acme-broken", {"broken": "acme_broken_mod"}, {"acme_broken_mod": "import surely_missing_mod\n"})
    with caplog.at_level(logging.WARNING):
        manager = load_plugin_manager()
    assert "broken" not in manager.plugins
    msg = next(w for w in manager.warnings if "'broken'" in w)
    assert "acme-broken 0.1" in msg and "surely_missing_mod" in msg
    assert any("'broken'" in r.getMessage() for r in caplog.records)
    assert set(BUILTINS) <= set(manager.plugins)


def test_plugin_rejected_by_pluggy_warns_and_startup_goes_on(fake_dist, monkeypatch):
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    fake_dist("acme-wrongargs", {"wrongargs": "acme_wrongargs_mod"}, {"acme_wrongargs_mod": """
        from mcp_agent_cloud.hookspecs import hookimpl

        @hookimpl
        def mcp_agent_cloud_cli_commands(group):  # the hookspec's argument is `cli`
            pass
    """})
    manager = load_plugin_manager()
    assert "wrongargs" not in manager.plugins
    assert any("'wrongargs'" in w and "acme-wrongargs" in w for w in manager.warnings), manager.warnings
    assert set(BUILTINS) <= set(manager.plugins)


def test_working_entry_point_plugin_loads_with_its_distribution(fake_dist, monkeypatch):
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    fake_dist("acme-zip", {"acmezip": "acme_zip_mod"}, {"acme_zip_mod": """
        from mcp_agent_cloud.hookspecs import hookimpl
        from mcp_agent_cloud.hookspecs.types import Backend, PackagerSpec

        class Zip(Backend):
            pass

        @hookimpl
        def mcp_agent_cloud_packagers():
            yield PackagerSpec(name="acmezip", backend=Zip)
    """}, version="2.0")
    manager = load_plugin_manager()
    info = manager.plugins["acmezip"]
    assert (info.distribution, info.version, info.builtin, info.module) == ("acme-zip", "2.0", False, "acme_zip_mod")
    assert manager.get_packager("acmezip").backend.__module__ == "acme_zip_mod"
    # autoload off: the third-party plugin is not even imported, the built-ins still are
    sys.modules.pop("acme_zip_mod", None)
    off = _load(autoload=False)
    assert "acmezip" not in off.plugins and "acme_zip_mod" not in sys.modules
    assert set(BUILTINS) <= set(off.plugins)
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    assert "acmezip" not in _load().plugins
    assert "acmezip" not in _load(autoload=True, disable=["acmezip"]).plugins


def test_two_distributions_with_one_entry_point_name(fake_dist, monkeypatch):
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    fake_dist("acme-one", {"dupe": "acme_one_mod"}, {"acme_one_mod": ""})
    fake_dist("acme-two", {"dupe": "acme_two_mod"}, {"acme_two_mod": ""})
    manager = load_plugin_manager()
    assert manager.plugins["dupe"].distribution in ("acme-one", "acme-two")
    msg = next(w for w in manager.warnings if "'dupe'" in w)
    assert "acme-one" in msg and "acme-two" in msg


def test_builtins_present_with_autoload_on_and_off(monkeypatch):
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    for manager in (load_plugin_manager(), load_plugin_manager(autoload=False)):
        for name in BUILTINS:
            info = manager.plugins[name]
            assert info.builtin and info.distribution == "mcp-agent-cloud", info
            assert info.module.startswith("mcp_agent_cloud.plugins."), info


def test_disable_a_builtin(monkeypatch):
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    manager = load_plugin_manager(disable=["console"])
    assert "console" not in manager.plugins
    assert "jsonl" in manager.plugins


def test_builtin_specs_are_owned_by_builtins(monkeypatch):
    """Whatever the built-in modules register already must come from mcp-agent-cloud itself."""
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    rows = load_plugin_manager(autoload=False).describe()
    assert all(r["builtin"] and r["distribution"] == "mcp-agent-cloud" for r in rows), rows
