"""The README's and docs/api.md's pictures of completion and of a generation trace, from a quickstart run.

    python scripts/quickstart_pictures.py runs/quickstart --out docs/images

completion.png: held-out OpenMoji faces (``data.holdout``: emoji the model never saw), one per row:
the original | its first 2 of 4 tiles kept (the rest grey) | 4 completions. trace.png: a strip of
generated faces appearing tile by tile (one row per image), and trace.gif: the first one animated.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import attrs
import torch

import madkit
from madkit.trace import Trace
from madkit.completion import rows, save_completion
from madkit.engine.evaluation.evaluate import data_images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", default="runs/quickstart")
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--faces", type=int, default=3, help="held-out faces to complete, and faces to trace")
    parser.add_argument("--keep", type=int, default=2)
    parser.add_argument("--num", type=int, default=4, help="completions per face")
    args = parser.parse_args(argv)

    pipe = madkit.load(args.run_dir, device="cpu")
    data = pipe.experiment.spec.data
    if not getattr(data, "holdout", 0):
        raise SystemExit(f"{args.run_dir}: its data holds nothing out (data.holdout = 0): no unseen faces to complete")
    held = next(data_images(attrs.evolve(data, split="heldout", hflip=False)).batches(1 << 20))
    faces = held[:: max(1, len(held) // args.faces)][: args.faces].float() / 127.5 - 1  # uint8 -> [-1, 1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = pipe.complete(faces, keep=args.keep, num=args.num, seed=0)
    tmp = out / ".completion"
    save_completion(result, tmp)
    (tmp / "grid.png").replace(out / "completion.png")
    for leftover in tmp.iterdir():
        leftover.unlink()
    tmp.rmdir()
    print(f"completion.png: {rows(result).shape[0]} held-out faces x (original, kept, {args.num} completions)")

    _, traces = pipe.generate(args.faces, seed=0, trace=True)
    strip = torch.cat([trace.frames for trace in traces])  # one row of frames per face
    Trace(strip, traces[0].captions * args.faces, traces[0].per_row).save_strip(out / "trace.png")
    traces[0].save_gif(out / "trace.gif")
    print(f"trace.png: {args.faces} faces x {traces[0].per_row} frames; trace.gif: the first face")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
