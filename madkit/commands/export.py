"""``madkit export RUN_DIR --out DIR``: an inference-only folder (EMA weights, spec, model card).

``madkit sample``, ``eval`` and ``sweep`` accept the folder wherever they accept a run folder. The
format is described in madkit/engine/packaging/export.py (reading: madkit/engine/checkpoints/export_format.py).
"""

from __future__ import annotations

from madkit.commands import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write an inference-only folder (EMA weights, spec, model card) that sample/eval/sweep accept"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--out", required=True, help="the folder to write; must not exist yet (or be empty)")


def run(args) -> int:
    from madkit.engine.checkpoints.export_format import WEIGHTS_FILE, ExportError
    from madkit.engine.packaging.export import check_destination, export_checkpoint
    from madkit.registry import Registry

    try:
        check_destination(args.out)
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    out = export_checkpoint(args.run_dir, args.out, Registry.load())
    size = (out / WEIGHTS_FILE).stat().st_size
    print(f"wrote {out}: EMA weights ({size / 2**20:.1f} MiB), config.resolved.toml, README.md")
    print(f"sample it with: madkit sample {out}")
    return 0
