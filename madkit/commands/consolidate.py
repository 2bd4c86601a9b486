"""``madkit consolidate CHECKPOINT [--out DIR]``: a sharded checkpoint's weights as whole safetensors files."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "consolidate",
        help="write a sharded (fsdp/hsdp) checkpoint's weights as model.safetensors and ema.safetensors",
    )
    p.add_argument("checkpoint", help="run folder (its latest checkpoint) or a sharded checkpoint folder")
    p.add_argument("--out", default=None, help="new folder to write (default RUN/consolidated/<step>)")


def run(args) -> int:
    from madkit.commands import UsageError
    from madkit.engine.checkpoint import CheckpointError, is_sharded, resolve_checkpoint
    from madkit.engine.sharded_checkpoint import consolidate

    try:
        ckpt = resolve_checkpoint(args.checkpoint)
        if not is_sharded(ckpt):
            raise UsageError(f"{ckpt} is not sharded: it already holds model.safetensors; nothing to consolidate")
        out = consolidate(ckpt, args.out)
    except (CheckpointError, FileExistsError) as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {out} (model.safetensors, ema.safetensors, state.pt); `madkit sample {out}` reads it")
    return 0
