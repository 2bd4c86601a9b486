"""Studies (madkit study): specs x seeds trained, evaluated at matched compute and summarised.

    runner.py    study.toml, training the runs that are missing, evaluating the points
    results.py   mean and spread over seeds -> study.csv, study.png, verdict.md
    cost.py      FLOPs and accelerator-hours before anything runs (madkit study --cost)
"""
