"""``madkit plugins [--json]``: installed plugins and the kinds they register."""

import json
from collections import defaultdict


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list installed plugins and the kinds they register")
    p.add_argument("--json", action="store_true", help="JSON list of {interface, kind, plugin, distribution, version}")


def run(args) -> int:
    from madkit.registry import Registry

    registry = Registry.load()
    regs = sorted(registry.registrations(), key=lambda r: (r.plugin, r.interface, r.kind))
    if args.json:
        print(json.dumps([r.as_dict() for r in regs], indent=2))
        return 0
    by_plugin: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in regs:
        by_plugin[r.plugin][r.interface].append(r.kind)
    for name, info in sorted(registry.plugins.items()):
        print(f"{name}  ({info.distribution} {info.version})")
        for interface, kinds in sorted(by_plugin[name].items()):
            print(f"  {interface:<12} {', '.join(kinds)}")
    for skipped in registry.skipped:
        print(f"{skipped.name}  ({skipped.distribution} {skipped.version})  SKIPPED: {skipped.reason}")
    return 0
