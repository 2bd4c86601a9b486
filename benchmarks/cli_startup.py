"""Start-up time of the ``madkit`` command: ``--help`` and ``--version`` must answer within 1.5 s.

Each case runs as a fresh process (the installed console script), interleaved with a bare
``python -c pass`` so the interpreter's own start-up on this machine is visible beside it:

    python benchmarks/cli_startup.py [--rounds 9]

Listing the commands must not import torch: command modules import heavy packages inside ``run``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import describe, interleaved, quartiles

TARGET_S = 1.5


def madkit_command() -> list[str]:
    """The console script next to this interpreter (what a user types), else ``python -m madkit``."""
    script = Path(sys.executable).with_name("madkit")
    if script.is_file():
        return [str(script)]
    found = shutil.which("madkit")
    return [found] if found else [sys.executable, "-m", "madkit"]


def call(argv: list[str]):
    def run() -> None:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="timed runs of each case (default 9)")
    args = parser.parse_args(argv)
    madkit = madkit_command()
    cases = {
        "madkit --help": call([*madkit, "--help"]),
        "madkit --version": call([*madkit, "--version"]),
        "python -c pass": call([sys.executable, "-c", "pass"]),
    }
    times = interleaved(cases, rounds=args.rounds, warmup=1)
    print(f"{' '.join(madkit)}; {args.rounds} rounds; median [interquartile range]")
    worst = 0.0
    for name, values in times.items():
        print(f"  {name:<18} {describe(values)}")
        if name.startswith("madkit"):
            worst = max(worst, quartiles(values)[1])
    verdict = "met" if worst <= TARGET_S else "MISSED"
    print(f"target: median under {TARGET_S} s -> {verdict} ({worst:.2f} s)")
    return 0 if worst <= TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
