"""``madkit report RUN_DIR [--out FILE]``: a static, self-contained HTML page about one run.

Config, loss curves, sample grids over training, metric tables (eval/*.json) and sweep plots; every
image is inlined, so the page opens anywhere (see madkit.engine.evaluation.report).
"""

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of a run (config, losses, samples, metrics)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder")
    p.add_argument("--out", default=None, help="the HTML file to write (default RUN_DIR/report.html)")


def run(args) -> int:
    from madkit.engine.checkpoints.run_lock import run_folder_of, writing_into
    from madkit.engine.evaluation.report import build_report

    target = args.out or Path(args.run_dir) / "report.html"
    with writing_into(run_folder_of(args.run_dir), "madkit report", target):  # never beside a training run
        path = build_report(args.run_dir, args.out)
    print(f"wrote {path}")
    return 0
