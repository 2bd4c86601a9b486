"""Shared fixtures. Plugin fixtures never depend on which other plugins happen to be installed:
they load only the plugins a test names (MADKIT_PLUGINS) or register them by hand."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from fake_plugins import kinds as fake_kinds
from fake_plugins.distinfo import PluginSite

from madkit.registry import PluginInfo, Registry

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture
def plugin_site(tmp_path, monkeypatch) -> PluginSite:
    """An empty site directory on sys.path; modules imported from it are forgotten afterwards."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield PluginSite(root)
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(root)):
            del sys.modules[name]


@pytest.fixture
def fake_registry() -> Registry:
    """The built-in partitioners plus the fake ``test-*`` kinds, registered by hand (no entry points)."""
    import madkit_partitioners.plugin

    registry = Registry()
    registry.add_plugin(madkit_partitioners.plugin, PluginInfo("partitioners", "madkit", "(source)"))
    registry.add_plugin(fake_kinds, PluginInfo(fake_kinds.ENTRY_POINT, fake_kinds.DISTRIBUTION, "0.0.1"))
    return registry


@pytest.fixture
def fakes_installed(plugin_site, monkeypatch) -> dict[str, str]:
    """The fake kinds installed as a distribution; only it and the built-in partitioners load.

    Returns the environment a ``madkit`` subprocess needs to see the same plugins.
    """
    plugin_site.install(fake_kinds.DISTRIBUTION, "0.0.1", {fake_kinds.ENTRY_POINT: "fake_plugins.kinds"})
    only = f"partitioners,{fake_kinds.ENTRY_POINT}"
    monkeypatch.setenv("MADKIT_PLUGINS", only)
    monkeypatch.delenv("MADKIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    path = os.pathsep.join([str(plugin_site.root), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path.rstrip(os.pathsep), "MADKIT_PLUGINS": only, "HF_HUB_OFFLINE": "1"}
