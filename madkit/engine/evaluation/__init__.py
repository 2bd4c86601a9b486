"""Measuring trained models.

    evaluate.py   image sets, feature extraction, reference statistics, metrics
    points.py     one point: a checkpoint x sampler x step count -> RUN/eval/<name>.json (madkit eval)
    records.py    the RUN/eval/ files and their readers
    shard_parts.py  one point's shard files, read back and combined in image order
    ranks.py      one point's images shared across torchrun ranks
    sweep.py      runs x step counts or a FLOPs budget -> sweep.csv, sweep.png (madkit sweep)
    protocol.py   the paper's protocol: the last K checkpoints, mean and spread
    spread.py     standard deviations, their display, significance of differences
    caveats.py    what a figure is read beside: the sample-size note, the data's floor (proxy FIDs)
    report.py     a run's HTML report (madkit report)
"""
