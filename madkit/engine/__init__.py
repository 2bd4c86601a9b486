"""What madkit does with a built experiment, one room per job:

    training/      the training loop and its parts        data/          what training reads, in what order
    checkpoints/   checkpoints, exports' format, run folder, lock, free space
    distributed/   process group and collectives, FSDP2  evaluation/    points, sweeps, protocol, report
    studies/       specs x seeds -> verdicts             packaging/     export, model card, hub, reference import

Rooms import downwards only (studies > evaluation, packaging, training > data, checkpoints >
distributed); pyproject.toml's import-linter contracts enforce it.
"""
