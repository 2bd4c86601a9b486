"""``madkit study DIR [--out OUT] [--results DIR] ...``: train every spec of a study folder with several
seeds, sweep them over sampling steps at matched compute, and write the study's CSV, plot and verdict.

The design lives in DIR/study.toml (see madkit.engine.studies.runner); the options below override it. Run the
same command again to continue: finished runs are skipped, unfinished ones resume, and evaluation
records already written are reused.

``--launcher local|slurm`` submits the runs and evaluations as jobs through submitit instead
(madkit.commands.study_launch); ``--status`` shows where they stand and gathers the results.
"""

from __future__ import annotations

from pathlib import Path

from madkit.commands import UsageError, add_assignments_arg, add_threads_arg, apply_threads_arg
from madkit.logs import get_logger

logger = get_logger(__name__)


def parse_ints(text: str | None, flag: str, positive: bool = False) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected comma-separated integers such as 0,1,2") from None
    if not values or (positive and min(values) <= 0):
        raise UsageError(f"{flag} {text!r}: expected one or more{' positive' if positive else ''} integers")
    return values


def add_parser(sub) -> None:
    p = sub.add_parser("study", help="train a study folder's specs with several seeds, sweep them at matched "
                       "compute, and write the CSV, the plot with error bars and the verdict")
    p.add_argument("folder", metavar="DIR", help="study folder: experiment specs and optionally study.toml")
    p.add_argument("--out", default=None, help="folder for the runs (OUT/runs/<spec>-seed<s>) and, by default, "
                   "the results (default runs/<DIR's name>)")
    p.add_argument("--results", default=None, help="folder for study.csv, study.png, verdict.md, points.csv and "
                   "study.json (default: OUT)")
    p.add_argument("--seeds", default=None, help="training seeds, e.g. 0,1,2 (default: study.toml's)")
    p.add_argument("--steps", default=None, help="sampling grid, denoising steps per block, e.g. 1,2,4,8")
    p.add_argument("--budget-steps", default=None,
                   help="budgets: the costliest setting's sampling FLOPs/image at these step counts, e.g. 1,2,4")
    p.add_argument("--num", "--num-images", dest="num", type=int, default=None, help="generated images per point")
    p.add_argument("--batch", type=int, default=None, help="images per forward pass while sampling")
    add_assignments_arg(p, "--set", "sets", "override a value of every spec, e.g. --set train.steps=50")
    p.add_argument("--device", default="auto", help="evaluation device: auto, cpu, cuda or cuda:N")
    p.add_argument("--train-only", action="store_true", help="train (or skip) the runs, evaluate nothing")
    p.add_argument("--force", action="store_true", help="evaluate again even where up-to-date records exist")
    p.add_argument("--cost", action="store_true", help="print the study's training and sampling FLOPs and its "
                   "accelerator-hours at --mfu of --peak-tflops, then stop (nothing is trained)")
    p.add_argument("--mfu", type=float, default=0.1, help="with --cost: the assumed model FLOPs utilisation")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="with --cost: the accelerator's dense bf16 peak (default: an H100/H200, 989)")
    p.add_argument("--launcher", choices=("inline", "local", "slurm"), default="inline",
                   help="inline: train and evaluate in this process (default); local or slurm: submit one job per run "
                   "and one per setting's evaluation through submitit (study.toml's [launcher]: partition, GPUs, "
                   "time...), evaluation after its training; run again to submit what is missing or failed")
    p.add_argument("--dry-run", action="store_true", help="with --launcher local|slurm: print every job's sbatch "
                   "script (or command) and the dependencies between jobs, and submit nothing")
    p.add_argument("--status", action="store_true", help="print every run's and point's state (pending, running, "
                   "done, failed), job id, log, last step and FID; once all are done, write the results")
    add_threads_arg(p)


def run(args) -> int:
    apply_threads_arg(args)  # evaluation; the training runs get it as train.threads (neutral on resume)
    if args.threads:
        args.sets.append(f"train.threads={args.threads}")
    import time

    import torch

    from madkit.engine.distributed import resolve_device, under_torchrun
    from madkit.engine.studies.results import write_results
    from madkit.engine.studies.runner import evaluate_runs, plan_study, train_runs, trained_steps
    from madkit.registry import Registry

    def log(message: str) -> None:
        logger.info(message)

    if under_torchrun():
        raise UsageError("a study runs in one process; under torchrun train or evaluate its runs one by one "
                         "(`madkit run`, `madkit eval`)")
    overrides = {
        "seeds": parse_ints(args.seeds, "--seeds"),
        "steps": parse_ints(args.steps, "--steps", positive=True),
        "budget_steps": parse_ints(args.budget_steps, "--budget-steps", positive=True),
        "num": args.num, "batch": args.batch,
    }
    folder = Path(args.folder)
    out = Path(args.out) if args.out else Path("runs") / folder.resolve().name
    registry = Registry.load()
    if args.status and not args.sets:  # the jobs' own --set values: a study's runs are named by them
        from madkit.engine.studies.study_state import StudyState

        if recorded := StudyState(out).submitted_sets():
            log(f"--status with the --set values the jobs were submitted with: {' '.join(recorded)}")
            args.sets = recorded
    # --cost, --dry-run and --status read no data: they work where it is not (a laptop, a login node)
    study = plan_study(folder, out, registry, overrides, args.sets,
                       check_resources=not (args.cost or args.dry_run or args.status))
    if args.cost:
        from madkit.engine.studies.cost import format_cost, study_cost

        if not (0 < args.mfu <= 1 and args.peak_tflops > 0):
            raise UsageError("--mfu must be in (0, 1] and --peak-tflops positive")
        print(format_cost(study_cost(study, registry, args.mfu, args.peak_tflops * 1e12)))
        return 0
    for planned in study.runs:  # a folder holding another spec is refused before anything trains
        trained_steps(planned, registry)
    if args.launcher != "inline" or args.status:
        from madkit.commands.study_launch import run_launched

        return run_launched(args, study, registry, log)
    if args.dry_run:
        raise UsageError("--dry-run shows the jobs of --launcher local or slurm; the inline study runs no job")
    started = time.perf_counter()
    log(f"study {folder}: {len(study.settings)} setting(s) x {len(study.config.seeds)} seed(s) into {out}")
    training = train_runs(study, registry, log)
    if args.train_only:
        print(f"trained {len(training['trained'])} run(s), skipped {len(training['skipped'])}, under {out / 'runs'}")
        return 0
    device = resolve_device(args.device)
    evaluation = evaluate_runs(study, registry, device, log, force=args.force, threads=args.threads)
    wall = {"total": time.perf_counter() - started, "train": training["seconds"], "evaluate": evaluation["seconds"],
            "train_cpu": training["cpu_seconds"], "evaluate_cpu": evaluation["cpu_seconds"],
            "trained": len(training["trained"]), "skipped": len(training["skipped"]), "device": str(device),
            "threads": torch.get_num_threads()}
    paths = write_results(study, Path(args.results) if args.results else out, training, evaluation, wall)
    print(paths["verdict"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
