"""The training loop and what it is made of.

    loop.py            train() and the Trainer: one optimizer step after another, top to bottom
    setup.py           building the experiment and data, restoring a checkpoint (before any step)
    resume.py          which checkpoint to continue from; claiming the run folder
    saving.py          writing a training checkpoint (whole or sharded)
    resume_changes.py  which spec values may change on resume (--allow-changes)
    init_from.py       starting a new run from other weights (train.init_from)
    optim.py           AdamW groups and the learning-rate schedule     ema.py   the fp32 EMA
    precision.py       fp32 / bf16 / fp16 autocast and the grad scaler   health.py  NaN and divergence guard
    model_setup.py     the loss module, activation checkpointing, compiling blocks
    sharded_build.py   a sharded run's model: built on the meta device, then only this rank's slices
    reporting.py       metrics.jsonl, sinks, progress     console_log.py  RUN/train.log
    sample_grids.py    fixed-noise sample grids during training
    stopping.py        a scheduler's warning: stop after the step in progress, save, hand over (study jobs)
(how many CPU threads a process uses, train.threads and --threads, is madkit/threads.py: every command uses it)
"""
