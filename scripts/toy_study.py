"""The toy CPU study: MADFormer's diffusion-depth trade-off in miniature, end to end in minutes.

    python scripts/toy_study.py [--out runs/toy_study] [--train-steps 300] [--num 500]

1. trains every spec in experiments/toy_study/ (16x16 OpenMoji, N = 4 layers, D = 1 and D = 3) with
   ``madkit run``;
2. sets a sampling budget: what the most diffusion-heavy model spends per image at
   ``--budget-steps`` denoising steps (``madkit flops``);
3. ``madkit sweep``s every run over ``--sweep-steps`` plus, per model, the largest step count that fits
   the budget, measuring FID with the offline proxy extractor (an OpenMoji classifier: figures are
   labelled with its name and are not Inception FIDs);
4. writes OUT/sweep/sweep.csv and sweep.png, and an HTML report per run (``madkit report``).

Every step is a madkit command run as a subprocess, so the log shows exactly what to type by hand.
Subprocesses get one intra-op thread: on a shared 2-core machine that was ~10x faster than two.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "experiments" / "toy_study"


def madkit(*args: str, env: dict[str, str], capture: bool = False) -> str:
    command = [sys.executable, "-m", "madkit", *args]
    print("$ madkit " + shlex.join(args), flush=True)
    result = subprocess.run(command, env=env, check=False, text=True, stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise SystemExit(f"toy study: `madkit {shlex.join(args)}` failed with exit code {result.returncode}")
    return result.stdout or ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/toy_study", help="folder for the runs and the sweep (default runs/toy_study)")
    p.add_argument("--specs", nargs="*", default=None, help="specs to train (default: experiments/toy_study/*.toml)")
    p.add_argument("--train-steps", type=int, default=None, help="optimizer steps per model (default: the specs')")
    p.add_argument("--sweep-steps", default="1,2,4,8,16", help="denoising steps per block (default 1,2,4,8,16)")
    p.add_argument("--budget-steps", type=int, default=2,
                   help="budget = sampling FLOPs/image of the largest-D model at this many steps (default 2)")
    p.add_argument("--num", type=int, default=500, help="generated images per point (default 500)")
    p.add_argument("--extractor-set", dest="extractor_sets", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to the proxy extractor, e.g. epochs=2")
    args = p.parse_args(argv)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = Path(args.out)
    specs = [Path(s) for s in args.specs] if args.specs else sorted(SPECS.glob("*.toml"))
    if not specs:
        raise SystemExit(f"toy study: no specs in {SPECS}")
    started = time.perf_counter()

    runs, depths = [], {}
    for spec in specs:
        run_dir = out / spec.stem
        sets = [] if args.train_steps is None else [
            "--set", f"train.steps={args.train_steps}", "--set", f"train.ckpt_every={args.train_steps}",
            "--set", f"train.log_every={max(1, args.train_steps // 10)}",
        ]
        madkit("run", str(spec), "--out", str(run_dir), *sets, env=env)
        cost = json.loads(madkit("flops", str(spec), "--steps", str(args.budget_steps), "--json", env=env,
                                 capture=True))
        runs.append(str(run_dir))
        depths[str(run_dir)] = (cost["diffusion_depth"], cost["sample_flops_per_image"])
    trained = time.perf_counter()

    # the budget: what the most diffusion-heavy model spends at --budget-steps steps
    budget = max(depths.values())[1]
    extractor = ["--extractor", "proxy"] + [a for s in args.extractor_sets for a in ("--extractor-set", s)]
    madkit("sweep", *runs, "--steps", args.sweep_steps, "--budget", str(budget), "--num", str(args.num),
           "--metrics", "fid", *extractor, "--out", str(out / "sweep"), "--batch", "100", env=env)
    for run_dir in runs:
        madkit("report", run_dir, env=env)

    with open(out / "sweep" / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    print(f"\ntoy study: trained in {trained - started:.0f} s, swept in {time.perf_counter() - trained:.0f} s; "
          f"budget {budget:.3g} FLOPs/image; FID by {rows[0]['extractor']} (not Inception):")
    for row in rows:
        mark = "  <- budget" if row["budget_matched"] == "True" else ""
        print(f"  {row['label']:<14} steps {row['steps']:>3}  FID {float(row['fid']):8.3f}  "
              f"FLOPs/image {float(row['sample_flops_per_image']):.3g}{mark}")
    print(f"wrote {out / 'sweep' / 'sweep.csv'}, {out / 'sweep' / 'sweep.png'} and report.html in each run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
