"""The plugin contract: the one hook every madkit plugin implements.

A plugin is a module (or object) exposed through the ``madkit.plugins`` entry-point group. It
implements ``madkit_register`` and calls ``registry.register(...)`` once per component it ships::

    from madkit.hookspecs import hookimpl

    @hookimpl
    def madkit_register(registry):
        registry.register("partitioner", "hilbert", HilbertConfig)

Hot paths never call hooks: components are resolved once, when a spec is built.
"""

import pluggy

PROJECT = "madkit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def madkit_register(registry):
    """Register this plugin's components.

    ``registry`` is a handle bound to the calling plugin: every kind registered through it is
    attributed to that plugin (name, distribution, version). Call
    ``registry.register(interface, kind, config_cls)`` where ``interface`` is one of
    ``madkit.interfaces.INTERFACES`` and ``config_cls`` is a frozen attrs class with a
    ``build(**runtime)`` method that returns the component. Registering a kind that another
    plugin already owns raises ``DuplicateKindError`` naming both owners.
    """
