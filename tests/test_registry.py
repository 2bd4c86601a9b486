"""Plugin loading and the registry: real entry points from temporary dist-info folders, attribution,
refusals with messages naming the culprit, the environment switches and registry isolation."""

from __future__ import annotations

import json
import sys
import textwrap

import attrs
import pytest

import madkit
from madkit.cli import main
from madkit.hookspecs import hookimpl
from madkit.registry import DuplicateKindError, PluginError, PluginInfo, Registry, UnknownKindError


@pytest.fixture(autouse=True)
def _no_plugin_env(monkeypatch):
    monkeypatch.delenv("MADKIT_PLUGINS", raising=False)
    monkeypatch.delenv("MADKIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)


def plugin_module(kind: str, interface: str = "partitioner", body: str = "") -> str:
    """Source of a plugin module registering one partitioner-like kind (an attrs subclass of raster's config)."""
    return textwrap.dedent(
        f"""
        import attrs
        from madkit.hookspecs import hookimpl
        from madkit_partitioners.raster import RasterConfig

        @attrs.frozen
        class Config(RasterConfig):
            pass

        @hookimpl
        def madkit_register(registry):
            {body or f"registry.register({interface!r}, {kind!r}, Config)"}
        """
    )


class HandPlugin:
    """A plugin object (not a module) that registers one kind; for registries built by hand."""

    def __init__(self, interface: str, kind: str, config_cls: type):
        self.interface, self.kind, self.config_cls = interface, kind, config_cls

    @hookimpl
    def madkit_register(self, registry):
        registry.register(self.interface, self.kind, self.config_cls)


@attrs.frozen
class GoodConfig:
    size: int = 1

    def build(self):
        return self.size


# --------------------------------------------------------------------------- entry points
def test_kinds_are_attributed_to_plugin_distribution_and_version(plugin_site, monkeypatch):
    plugin_site.install(
        "acme-madkit",
        "2.3.4",
        {"acme": "acme_pkg.plugin"},
        {"acme_pkg/__init__.py": "", "acme_pkg/plugin.py": plugin_module("test-acme")},
    )
    monkeypatch.setenv("MADKIT_PLUGINS", "acme,partitioners")
    registry = Registry.load()
    acme = registry.get("partitioner", "test-acme")
    assert (acme.plugin, acme.distribution, acme.version) == ("acme", "acme-madkit", "2.3.4")
    raster = registry.get("partitioner", "raster")
    assert (raster.plugin, raster.distribution, raster.version) == ("partitioners", "madkit", madkit.__version__)
    assert registry.versions() == {
        "acme": {"distribution": "acme-madkit", "version": "2.3.4"},
        "partitioners": {"distribution": "madkit", "version": madkit.__version__},
    }
    assert registry.kind_of("partitioner", acme.config_cls(4)) == "test-acme"


def test_duplicate_kind_names_both_owners(plugin_site, monkeypatch):
    plugin_site.install("first-dist", "1.0", {"first": "first_plugin"}, {"first_plugin.py": plugin_module("test-same")})
    plugin_site.install(
        "second-dist", "2.0", {"second": "second_plugin"}, {"second_plugin.py": plugin_module("test-same")}
    )
    monkeypatch.setenv("MADKIT_PLUGINS", "first,second")
    registry = Registry.load()  # one broken installation must not stop every command
    assert registry.get("partitioner", "test-same").plugin == "first"  # the first one keeps the kind
    (skipped,) = registry.skipped
    assert (skipped.name, skipped.distribution) == ("second", "second-dist")
    for needle in ("partitioner kind 'test-same'", "'first'", "first-dist 1.0", "'second'", "second-dist 2.0"):
        assert needle in skipped.reason
    with pytest.raises(DuplicateKindError):  # by hand, it still raises
        registry.add_plugin(HandPlugin("partitioner", "test-same", GoodConfig), "by-hand")


def test_same_entry_point_name_in_two_distributions_is_refused(plugin_site, monkeypatch):
    # pluggy would silently keep one of them
    plugin_site.install("one-dist", "1.0", {"clash": "one_plugin"}, {"one_plugin.py": plugin_module("test-one")})
    plugin_site.install("two-dist", "1.0", {"clash": "two_plugin"}, {"two_plugin.py": plugin_module("test-two")})
    monkeypatch.setenv("MADKIT_PLUGINS", "clash")
    (skipped,) = Registry.load().skipped
    assert "two distributions declare the madkit plugin 'clash': one-dist 1.0 and two-dist 1.0" in skipped.reason


def test_plugin_raising_while_registering_is_named(plugin_site, monkeypatch):
    body = 'raise RuntimeError("no GPU driver found")'
    plugin_site.install(
        "broken-dist", "0.3", {"broken": "broken_plugin"}, {"broken_plugin.py": plugin_module("x", body=body)}
    )
    monkeypatch.setenv("MADKIT_PLUGINS", "broken")
    (skipped,) = Registry.load().skipped
    assert "plugin 'broken' (broken-dist 0.3) failed while registering: RuntimeError: no GPU driver found" in (
        skipped.reason
    )
    with pytest.raises(PluginError) as info:  # added by hand it raises, with a note naming the plugin
        import broken_plugin

        Registry().add_plugin(broken_plugin, "broken")
    assert any("madkit plugin 'broken'" in note for note in info.value.__cause__.__notes__)


def test_plugin_failing_to_import_is_named(plugin_site, monkeypatch):
    source = "import a_module_that_is_not_installed\n"
    plugin_site.install("noimport-dist", "0.1", {"noimport": "noimport_plugin"}, {"noimport_plugin.py": source})
    monkeypatch.setenv("MADKIT_PLUGINS", "noimport")
    (skipped,) = Registry.load().skipped
    assert "plugin 'noimport' (distribution noimport-dist 0.1) failed to import 'noimport_plugin'" in skipped.reason
    assert "a_module_that_is_not_installed" in skipped.reason


def test_entry_point_naming_a_missing_module_is_named(plugin_site, monkeypatch):
    plugin_site.install("ghost-dist", "0.1", {"ghost": "ghost_plugin_was_never_written"})
    monkeypatch.setenv("MADKIT_PLUGINS", "ghost")
    (skipped,) = Registry.load().skipped
    assert "failed to import 'ghost_plugin_was_never_written'" in skipped.reason


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_autoload_can_be_disabled(plugin_site, monkeypatch, value):
    plugin_site.install("acme-madkit", "1.0", {"acme": "acme_plugin"}, {"acme_plugin.py": plugin_module("test-acme")})
    monkeypatch.setenv("MADKIT_DISABLE_PLUGIN_AUTOLOAD", value)
    registry = Registry.load()
    assert registry.plugins == {} and registry.registrations() == []
    assert "acme_plugin" not in sys.modules


def test_madkit_plugins_loads_only_the_named_plugins(plugin_site, monkeypatch):
    for name in ("a", "b", "c"):
        plugin_site.install(
            f"dist-{name}", "1.0", {name: f"{name}_plugin"}, {f"{name}_plugin.py": plugin_module(f"test-{name}")}
        )
    monkeypatch.setenv("MADKIT_PLUGINS", " a, b ")
    registry = Registry.load()
    assert set(registry.plugins) == {"a", "b"}
    assert registry.kinds("partitioner") == ["test-a", "test-b"]
    assert "c_plugin" not in sys.modules, "a plugin that is not selected must not even be imported"


def test_madkit_plugins_naming_an_unknown_plugin_lists_the_available_ones(plugin_site, monkeypatch):
    plugin_site.install("dist-a", "1.0", {"a": "a_plugin"}, {"a_plugin.py": plugin_module("test-a")})
    monkeypatch.setenv("MADKIT_PLUGINS", "a,zzz")
    with pytest.raises(PluginError, match=r"MADKIT_PLUGINS names \['zzz'\].*available: \[.*'a'.*'partitioners'"):
        Registry.load()


# --------------------------------------------------------------------------- registries built by hand
def test_registries_are_isolated():
    one, two = Registry(), Registry()
    one.add_plugin(HandPlugin("partitioner", "test-iso", GoodConfig), "iso")
    assert one.kinds("partitioner") == ["test-iso"]
    assert two.kinds("partitioner") == [] and two.plugins == {}
    two.add_plugin(HandPlugin("partitioner", "test-iso", GoodConfig), "iso")  # no clash across registries
    assert two.get("partitioner", "test-iso").plugin == "iso"


def test_hand_registered_plugin_is_marked_not_installed():
    registry = Registry()
    registry.add_plugin(HandPlugin("data", "test-hand", GoodConfig), "hand")
    assert registry.get("data", "test-hand").distribution == "(not installed)"


def test_duplicate_kind_between_hand_plugins():
    registry = Registry()
    registry.add_plugin(HandPlugin("data", "test-dup", GoodConfig), PluginInfo("first", "dist-one", "1"))
    with pytest.raises(DuplicateKindError, match=r"by plugin 'first' \(dist-one 1\) and by plugin 'second'"):
        registry.add_plugin(HandPlugin("data", "test-dup", GoodConfig), "second")


def test_same_kind_name_under_two_interfaces_is_fine():
    registry = Registry()
    registry.add_plugin(HandPlugin("schedule", "test-linear", GoodConfig), "schedules")
    registry.add_plugin(HandPlugin("sampler", "test-linear", GoodConfig), "samplers")
    assert registry.get("sampler", "test-linear").plugin == "samplers"


def test_unknown_interface_is_refused():
    with pytest.raises(
        PluginError, match=r"plugin 'typo' registered 'x' for unknown interface 'partitoner'; interfaces: partitioner"
    ):
        Registry().add_plugin(HandPlugin("partitoner", "x", GoodConfig), "typo")


class PlainConfig:
    def build(self):
        return None


@attrs.frozen
class NoBuildConfig:
    size: int = 1


@pytest.mark.parametrize("config_cls", [PlainConfig, NoBuildConfig, dict])
def test_config_must_be_attrs_with_build(config_cls):
    with pytest.raises(PluginError, match=r"plugin 'bad': data 'x' must be registered with an attrs config class"):
        Registry().add_plugin(HandPlugin("data", "x", config_cls), "bad")


def test_hook_with_wrong_argument_names_is_refused():
    class WrongArgs:
        @hookimpl
        def madkit_register(self, reg):
            reg.register("data", "x", GoodConfig)

    with pytest.raises(PluginError, match=r"plugin 'wrong' does not follow the madkit hook contract"):
        Registry().add_plugin(WrongArgs(), "wrong")


def test_plugin_name_loaded_twice_is_refused():
    registry = Registry()
    registry.add_plugin(HandPlugin("data", "test-a", GoodConfig), "same")
    with pytest.raises(PluginError, match=r"a plugin named 'same' is already loaded"):
        registry.add_plugin(HandPlugin("data", "test-b", GoodConfig), "same")


def test_unknown_kind_lists_installed_kinds_and_suggests(fake_registry):
    with pytest.raises(UnknownKindError) as info:
        fake_registry.get("partitioner", "tile")
    assert str(info.value) == "unknown partitioner kind 'tile'; did you mean 'tiles'? (installed: 'raster', 'tiles')"
    with pytest.raises(UnknownKindError, match=r"unknown metric kind 'fid' \(installed: none\)"):
        fake_registry.get("metric", "fid")


# --------------------------------------------------------------------------- madkit plugins --json
def test_plugins_json_lists_builtin_partitioners(monkeypatch, capsys):
    monkeypatch.setenv("MADKIT_PLUGINS", "partitioners")
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(set(row) == {"interface", "kind", "plugin", "distribution", "version"} for row in rows)
    builtin = {(r["interface"], r["kind"]): r for r in rows}
    for kind in ("raster", "tiles"):
        row = builtin[("partitioner", kind)]
        assert (row["plugin"], row["distribution"], row["version"]) == ("partitioners", "madkit", madkit.__version__)


def test_a_broken_plugin_is_named_and_skipped_and_every_command_still_runs(plugin_site, monkeypatch, capsys):
    plugin_site.install("bad-dist", "0.9", {"bad": "bad_plugin"}, {"bad_plugin.py": "raise ImportError('oops')\n"})
    assert main(["plugins"]) == 0
    captured = capsys.readouterr()
    assert "skipped plugin 'bad' (bad-dist 0.9)" in captured.err and "MADKIT_DISABLE_PLUGINS=bad" in captured.err
    assert "bad  (bad-dist 0.9)  SKIPPED:" in captured.out and "raster" in captured.out
    spec = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "experiments" / "tiny" / "madformer.toml")
    assert main(["validate", spec, "--no-data"]) == 0
    monkeypatch.setenv("MADKIT_DISABLE_PLUGINS", "bad")
    registry = Registry.load()
    assert registry.skipped == [] and "bad" not in registry.plugins and "partitioners" in registry.plugins


def test_a_third_party_kind_colliding_with_a_builtin_is_the_one_skipped(plugin_site):
    # "aaa" sorts before every built-in plugin name; the built-in raster still keeps its kind
    plugin_site.install("aaa-dist", "1.0", {"aaa": "aaa_plugin"}, {"aaa_plugin.py": plugin_module("raster")})
    registry = Registry.load()
    assert registry.get("partitioner", "raster").plugin == "partitioners"
    assert [s.name for s in registry.skipped] == ["aaa"] and "aaa" not in registry.plugins


def test_a_skipped_plugin_leaves_nothing_registered(plugin_site, monkeypatch):
    body = 'registry.register("partitioner", "test-half", Config); registry.register("partitioner", "raster", Config)'
    plugin_site.install("half-dist", "1.0", {"half": "half_plugin"}, {"half_plugin.py": plugin_module("x", body=body)})
    monkeypatch.setenv("MADKIT_PLUGINS", "partitioners,half")
    registry = Registry.load()
    assert "test-half" not in registry.kinds("partitioner") and "half" not in registry.plugins
    assert "raster" in registry.kinds("partitioner")
