"""Plugin loading and the registry of component kinds.

Each ``Registry`` owns its own pluggy ``PluginManager`` (no module-global state), so tests and
notebooks can build isolated registries. Plugins come from the ``madkit.plugins`` entry-point group;
built-in plugins are loaded through that same group.

Environment:
- ``MADKIT_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points (register plugins by hand);
- ``MADKIT_PLUGINS=a,b``: load only the entry points with these names;
- ``MADKIT_DISABLE_PLUGINS=a,b``: load every entry point but these.

One broken installed plugin must not stop every command: an entry point that fails to import,
raises while registering, registers a kind another plugin already has, or shares its name with
another distribution's entry point is skipped whole (whatever it had registered is taken back),
named with its distribution and the reason on stderr once per process, and listed by
``madkit plugins``. madkit's own plugins load first, so a third-party kind that collides with a
built-in one is the one skipped. Plugins added by hand (``add_plugin``) still raise.
"""

from __future__ import annotations

import difflib
import os
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import attrs
import pluggy

from madkit import hookspecs
from madkit.errors import UserError
from madkit.interfaces import INTERFACES
from madkit.logs import get_logger

logger = get_logger(__name__)

ENTRY_POINT_GROUP = "madkit.plugins"


class PluginError(UserError):
    """A plugin could not be loaded or registered (an installation to repair); the message names the plugin."""


class DuplicateKindError(PluginError):
    """Two plugins registered the same kind for the same interface."""


class UnknownKindError(UserError, LookupError):
    """A spec named a kind that no loaded plugin registers."""

    def __init__(self, interface: str, kind: str, installed: list[str]):
        self.interface, self.kind, self.installed = interface, kind, installed
        close = difflib.get_close_matches(kind, installed, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(repr(k) for k in installed) or "none"
        super().__init__(f"unknown {interface} kind {kind!r}{hint} (installed: {listing})")


@attrs.frozen
class Registration:
    """One registered kind and who registered it."""

    interface: str
    kind: str
    config_cls: type
    plugin: str
    distribution: str
    version: str

    def as_dict(self) -> dict[str, str]:
        return {
            "interface": self.interface,
            "kind": self.kind,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
        }


@attrs.frozen
class SkippedPlugin:
    """An installed plugin that was not loaded, and why."""

    name: str
    distribution: str
    version: str
    reason: str

    def line(self) -> str:
        return (f"skipped plugin {self.name!r} ({self.distribution} {self.version}): {self.reason} "
                f"(MADKIT_DISABLE_PLUGINS={self.name} leaves it out silently)")


_REPORTED: set[str] = set()


@attrs.frozen
class PluginInfo:
    name: str
    distribution: str
    version: str


class PluginHandle:
    """What a plugin's ``madkit_register`` receives: the registry, bound to that plugin."""

    def __init__(self, registry: Registry, info: PluginInfo):
        self._registry = registry
        self.plugin = info

    def register(self, interface: str, kind: str, config_cls: type) -> None:
        self._registry._add(interface, kind, config_cls, self.plugin)


class Registry:
    """Kinds per interface, with attribution. Build one with ``Registry.load()``."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._kinds: dict[str, dict[str, Registration]] = {name: {} for name in INTERFACES}
        self._plugins: dict[str, PluginInfo] = {}
        self.skipped: list[SkippedPlugin] = []  # installed plugins left out, and why

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, autoload: bool | None = None) -> Registry:
        """A registry with the installed plugins loaded, honouring the environment variables."""
        registry = cls()
        if autoload is None:
            autoload = os.environ.get("MADKIT_DISABLE_PLUGIN_AUTOLOAD", "") not in ("1", "true", "yes")
        if autoload:
            only = os.environ.get("MADKIT_PLUGINS", "").strip()
            wanted = {name.strip() for name in only.split(",") if name.strip()} if only else None
            disabled = {n.strip() for n in os.environ.get("MADKIT_DISABLE_PLUGINS", "").split(",") if n.strip()}
            registry.load_entry_points(wanted, disabled)
            for skipped in registry.skipped:
                if skipped.line() not in _REPORTED:  # once per process, not once per Registry.load()
                    _REPORTED.add(skipped.line())
                    logger.warning(skipped.line())
        return registry

    def load_entry_points(self, names: set[str] | None = None, disabled: set[str] = frozenset()) -> None:
        """Load the ``madkit.plugins`` entry points (only ``names`` if given, never ``disabled``); a
        broken one is skipped and recorded in ``self.skipped`` (see the module docstring)."""
        eps: dict[str, list[EntryPoint]] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if (names is None or ep.name in names) and ep.name not in disabled:
                eps.setdefault(ep.name, []).append(ep)
        if names is not None and (missing := names - set(eps) - disabled):
            available = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
            raise PluginError(
                f"MADKIT_PLUGINS names {sorted(missing)} but no installed entry point has that name "
                f"(available: {available})"
            )
        # madkit's own plugins first: a third-party kind colliding with a built-in one is the one skipped
        order = sorted(eps, key=lambda name: (_dist_name_version(eps[name][0])[0] != "madkit", name))
        for name in order:
            found = eps[name]
            info = PluginInfo(name, *_dist_name_version(found[0]))
            if len(found) > 1:  # importlib lists each distribution's entry points; pluggy would keep one
                labels = " and ".join(sorted(_dist_label(ep) for ep in found))
                self._skip(info, f"two distributions declare the madkit plugin {name!r}: {labels}; "
                                 "uninstall one of them")
                continue
            try:
                module = found[0].load()
            except Exception as exc:  # noqa: BLE001  (any import failure is the plugin's, reported below)
                self._skip(info, f"plugin {name!r} (distribution {info.distribution} {info.version}) failed to "
                                 f"import {found[0].value!r}: {type(exc).__name__}: {exc}")
                continue
            try:
                self.add_plugin(module, info)
            except PluginError as exc:
                self._skip(info, str(exc))

    def _skip(self, info: PluginInfo, reason: str) -> None:
        self.skipped.append(SkippedPlugin(info.name, info.distribution, info.version, reason))

    def add_plugin(
        self, plugin: ModuleType | Any, info: PluginInfo | str, distribution: str = "", version: str = ""
    ) -> None:
        """Register a plugin object (module or instance) and run its ``madkit_register``."""
        if isinstance(info, str):
            info = PluginInfo(info, distribution or "(not installed)", version or "")
        if info.name in self._plugins:
            raise PluginError(f"a plugin named {info.name!r} is already loaded")
        try:
            self._pm.register(plugin, name=info.name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {info.name!r} does not follow the madkit hook contract: {exc}") from exc
        self._plugins[info.name] = info
        impls = [i for i in self._pm.hook.madkit_register.get_hookimpls() if i.plugin_name == info.name]
        handle = PluginHandle(self, info)
        try:
            for impl in impls:
                try:
                    impl.function(registry=handle)
                except PluginError:
                    raise
                except Exception as exc:
                    exc.add_note(f"raised while madkit plugin {info.name!r} ({info.distribution}) registered")
                    raise PluginError(
                        f"plugin {info.name!r} ({info.distribution} {info.version}) failed while registering: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
        except PluginError:  # all or nothing: take back what it registered before failing
            for per in self._kinds.values():
                for kind in [k for k, reg in per.items() if reg.plugin == info.name]:
                    del per[kind]
            del self._plugins[info.name]
            self._pm.unregister(name=info.name)
            raise

    def _add(self, interface: str, kind: str, config_cls: type, info: PluginInfo) -> None:
        if interface not in self._kinds:
            raise PluginError(
                f"plugin {info.name!r} registered {kind!r} for unknown interface {interface!r}; "
                f"interfaces: {', '.join(INTERFACES)}"
            )
        if not (attrs.has(config_cls) and callable(getattr(config_cls, "build", None))):
            raise PluginError(
                f"plugin {info.name!r}: {interface} {kind!r} must be registered with an attrs config "
                f"class that has a build() method, got {config_cls!r}"
            )
        if (old := self._kinds[interface].get(kind)) is not None:
            raise DuplicateKindError(
                f"{interface} kind {kind!r} is registered twice: by plugin {old.plugin!r} "
                f"({old.distribution} {old.version}) and by plugin {info.name!r} "
                f"({info.distribution} {info.version}); uninstall or disable one "
                f"(MADKIT_DISABLE_PLUGINS or MADKIT_PLUGINS choose which plugins load)"
            )
        self._kinds[interface][kind] = Registration(
            interface, kind, config_cls, info.name, info.distribution, info.version
        )

    # ---------------------------------------------------------------- queries
    def get(self, interface: str, kind: str) -> Registration:
        if interface not in self._kinds:
            raise KeyError(f"unknown interface {interface!r}")
        try:
            return self._kinds[interface][kind]
        except KeyError:
            raise UnknownKindError(interface, kind, self.kinds(interface)) from None

    def kinds(self, interface: str) -> list[str]:
        return sorted(self._kinds[interface])

    def kind_of(self, interface: str, config: Any) -> str:
        for kind, reg in self._kinds[interface].items():
            if type(config) is reg.config_cls:
                return kind
        raise LookupError(f"{type(config).__name__} is not a registered {interface} config")

    def registrations(self) -> list[Registration]:
        return [reg for per in self._kinds.values() for reg in per.values()]

    @property
    def plugins(self) -> dict[str, PluginInfo]:
        return dict(self._plugins)

    def versions(self) -> dict[str, dict[str, str]]:
        """Plain data for run folders and checkpoints: plugin -> distribution and version."""
        return {
            name: {"distribution": p.distribution, "version": p.version} for name, p in self._plugins.items()
        }


def _dist_name_version(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "(unknown)", ""
    return dist.metadata["Name"], dist.version


def _dist_label(ep: EntryPoint) -> str:
    name, version = _dist_name_version(ep)
    return f"{name} {version}".strip()

