"""``madkit study DIR --launcher local|slurm [--dry-run]`` and ``madkit study DIR --status``: the study
as jobs submitted through submitit (madkit.engine.studies.launch), and where they stand.
"""

from __future__ import annotations

from pathlib import Path

from madkit.commands import UsageError


def run_launched(args, study, registry, log) -> int:
    from madkit.engine.studies.job_plan import plan_jobs
    from madkit.engine.studies.launch import Launch, dry_run, gather, status_text
    from madkit.engine.studies.study_state import StudyState

    if args.force:
        raise UsageError("--force re-evaluates in an inline study; with jobs, remove the eval records to redo instead")
    recorded = StudyState(study.out).launcher
    launcher = recorded if args.status and args.launcher == "inline" else args.launcher
    if args.dry_run and (args.status or launcher == "inline"):
        raise UsageError("--dry-run shows the jobs of --launcher local or slurm; drop --status")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UsageError("--launcher local|slurm and --status need submitit: pip install 'madkit[cluster]'") from None
    plan = plan_jobs(study, registry, args.sets, args.device, args.threads or 0)
    if args.train_only:
        plan = [job for job in plan if job.kind == "train"]
    if args.dry_run:
        print(dry_run(study, plan, launcher))
        return 0
    if launcher in (None, "inline"):  # --status of a study never launched as jobs: the run folders only
        launcher = "local"
    launch = Launch(study, plan, launcher, registry, log, args.sets)
    submitted = 0
    if not args.status:
        submitted = launch.submit_missing()
        if launcher == "local":
            launch.wait_local()
    text, done = status_text(launch)
    print(text)
    if done and not args.train_only:
        paths = gather(study, registry, Path(args.results) if args.results else study.out, log)
        print(paths["verdict"].read_text())
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    if args.status or done:
        return 0
    if launcher == "local":
        print("some jobs failed (see their logs above); run the same command again to submit them again: a training "
              "resumes from its run folder")
        return 1
    print(f"submitted {submitted} job(s); watch them with `madkit study {args.folder} --status`; run the same "
          "command again to submit what failed")
    return 0
