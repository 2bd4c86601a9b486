"""``madkit import-reference CKPT --spec SPEC --out RUN``: the MADFormer authors' released checkpoint
as a madkit run folder, which ``madkit sample``, ``eval``, ``sweep`` and ``export`` then use unchanged.

SPEC is the spec the checkpoint was trained with (experiments/madformer_ffhq_reference.toml for the
released FFHQ model). A file that is not such a checkpoint, or does not fit the spec, is one message
and exit code 2, with nothing written. How the file is read and checked: madkit/engine/packaging/reference_import.py.
"""

from __future__ import annotations

from madkit.commands import UsageError, add_assignments_arg


def add_parser(sub) -> None:
    p = sub.add_parser(
        "import-reference", help="import the MADFormer authors' released checkpoint (.pt) as a madkit run folder"
    )
    p.add_argument(
        "checkpoint", metavar="CKPT", help="the released checkpoint, e.g. ckpts.pt from JunhaoC/MADFormer-FFHQ"
    )
    p.add_argument(
        "--spec", required=True, help="the spec it was trained with, e.g. experiments/madformer_ffhq_reference.toml"
    )
    add_assignments_arg(
        p, "--set", "sets", "override a spec value (TOML value syntax), e.g. --set data.path=/data/ffhq"
    )
    p.add_argument("--out", required=True, help="the run folder to create (must not exist)")


def run(args) -> int:
    from madkit.engine.packaging.reference_import import ReferenceImportError, import_reference
    from madkit.experiment_spec import load_spec
    from madkit.registry import Registry

    registry = Registry.load()
    loaded = load_spec(args.spec, args.sets, registry, check_resources=False)  # the data may live elsewhere
    try:
        result = import_reference(args.checkpoint, loaded, registry, args.out)
    except ReferenceImportError as exc:
        raise UsageError(str(exc)) from None
    raw = f"raw weights from {result.raw_key!r}" if result.raw_key else "no separate raw weights (both sets are these)"
    print(
        f"imported {result.tensors} tensors ({result.values:,} values) from {args.checkpoint} "
        f"(sha256 {result.sha256[:16]}...): EMA weights from {result.weights_key!r}, {raw}"
    )
    print(f"wrote {result.run_dir}; sample it with: madkit sample {result.run_dir}")
    return 0
