"""The side-by-side benchmarks in one command: each section runs its cases interleaved (see timing.py)
and prints ratios with their spread.

    python benchmarks/compare.py                   # every section
    python benchmarks/compare.py train             # one section (or --only train,generate)
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
    parser.add_argument(
        "sections",
        nargs="*",
        help=f"sections to run, of {list(SECTIONS)} (default: all)",
    )
    parser.add_argument("--only", default="", help="the same as a comma-separated list")
    parser.add_argument("--quick", action="store_true", help="a few rounds only (checks that it runs)")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in [*args.sections, *args.only.split(",")] if s.strip()] or list(SECTIONS)
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    here = Path(__file__).resolve().parent
    # checked before anything runs: a section can take many minutes, a missing one should not wait for it
    missing = [s for s in wanted if not (here / f"{SECTIONS[s]}.py").is_file()]
    if missing:
        files = ", ".join(f"benchmarks/{SECTIONS[s]}.py" for s in missing)
        others = " ".join(s for s in wanted if s not in missing)
        parser.error(
            f"{files} is not in this checkout (section(s) {', '.join(missing)}); run the others by name"
            + (f": python benchmarks/compare.py {others}" if others else "")
        )
    sys.path.insert(0, str(here))
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
