"""The side-by-side benchmarks in one command: each section runs its cases interleaved (see timing.py)
and prints ratios with their spread.

    python benchmarks/compare.py                   # every section
    python benchmarks/compare.py generate          # one section (or --only generate; train,generate for both)
    python benchmarks/compare.py --quick           # fewer rounds: a smoke run, not a measurement

Sections (one module each, ``run(quick: bool) -> None``):
    train     madkit's training step against diffusers' DiT at equal width/depth/tokens, and the
              executed/useful attention FLOPs at the FFHQ geometry
    generate  cached against uncached generation, and throughput as the number of blocks grows
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

SECTIONS = {"train": "compare_train", "generate": "compare_generate"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help=f"sections to run, of {list(SECTIONS)} (default: all)")
    parser.add_argument("--only", default="", help="comma-separated sections (the same as naming them)")
    parser.add_argument("--quick", action="store_true", help="a few rounds only (checks that it runs)")
    args = parser.parse_args(argv)
    named = [s.strip() for part in [*args.sections, args.only] for s in part.split(",") if s.strip()]
    wanted = list(dict.fromkeys(named)) or list(SECTIONS)
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch

    # one intra-op thread unless the caller chose: ratios on a shared machine, not peak throughput
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name in wanted:
        print(f"\n== {name} ==")
        importlib.import_module(SECTIONS[name]).run(quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
