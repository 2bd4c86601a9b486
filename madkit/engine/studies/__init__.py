"""Studies (madkit study): specs x seeds trained, evaluated at matched compute and summarised.

    runner.py    study.toml, training the runs that are missing, evaluating the points
    results.py   mean and spread over seeds -> study.csv, study.png, verdict.md
    cost.py      FLOPs and accelerator-hours before anything runs (madkit study --cost)

As jobs through submitit (madkit study --launcher local|slurm, --status):

    launcher_config.py  the [launcher] table of study.toml (partition, GPUs, time, sbatch directives...)
    job_plan.py         one training job per run, one evaluation job per setting, and who waits for whom
    jobs.py             what a job runs in each of its tasks (torch.distributed from the scheduler's variables)
    launchers.py        submitit's local and SLURM executors, the sbatch script (--dry-run)
    launch.py           submit what is missing or failed, wait (local), gather the results
    study_state.py      OUT/study_jobs.json (the job ids) and each job's state
    study_status.py     the --status table: runs and points, state, job, log, last step, FID
"""
