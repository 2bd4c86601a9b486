"""The ``[launcher]`` table of ``study.toml``: where and with what a study's jobs run when
``madkit study DIR --launcher local|slurm`` submits them (madkit.engine.studies.launchers).

    [launcher]
    partition = "gpu"                # sbatch --partition (default: the cluster's)
    account = "my-project"           # sbatch --account
    qos = "normal"                   # sbatch --qos
    time = "24:00:00"                # a training job's time limit: [D-]HH:MM:SS, D-HH:MM, D-HH or minutes
    eval_time = "4:00:00"            # an evaluation job's (default: time)
    nodes = 1                        # nodes per training job
    gpus_per_node = 8                # GPUs per node: one task (rank) per GPU; 0 = one CPU task
    eval_gpus = 8                    # GPUs of an evaluation job, one node (default: gpus_per_node)
    cpus_per_task = 10               # sbatch --cpus-per-task
    mem = "200G"                     # sbatch --mem, per node
    constraint = "h100"              # sbatch --constraint
    sbatch = {exclusive = true, mail-type = "FAIL"}  # any other directive, #SBATCH --key=value
    setup = ["module load cuda/12.4", "source ~/venvs/madkit/bin/activate"]  # before the job starts
    python = "python"                # the interpreter a job runs (default: the submitting one)

Every key is optional and unknown keys are refused like a spec's.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from madkit.validators import at_least

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEM = re.compile(r"^\d+(?:\.\d+)?[KMGT]?B?$", re.IGNORECASE)


def time_minutes(text: str) -> int:
    """SLURM's time formats as whole minutes (rounded up): "90", "1:30:00", "2-00:00:00", "1-12:30"; a bare
    "A:B" is refused (SLURM's MM:SS, easily meant as HH:MM: a job killed 60 times too early)."""
    match = _TIME.match(text.strip())
    if not match:
        raise ValueError(f"expected a time limit such as \"24:00:00\", \"1-12:00:00\" or \"90\" (minutes), got {text!r}")
    days, first, second, third = match.groups()
    if second is None:  # minutes, or days-hours
        minutes = int(first) * 60 if days else int(first)
    elif third is None:  # days-HH:MM; SLURM reads a bare "A:B" as MM:SS, which people read as HH:MM
        if not days:
            raise ValueError(f"{text!r} is ambiguous (SLURM reads it as minutes:seconds); write "
                             f"\"{first}:{second}:00\" for {first} h {second} min, or a number of minutes")
        minutes = int(first) * 60 + int(second)
    else:  # HH:MM:SS
        minutes = int(first) * 60 + int(second) + (int(third) > 0)
    minutes += int(days or 0) * 24 * 60
    if minutes <= 0:
        raise ValueError(f"a time limit must be positive, got {text!r}")
    return minutes


def _time(_inst: Any, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None:
        time_minutes(value)


def _mem(_inst: Any, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None and not _MEM.match(value):
        raise ValueError(f'expected a size such as "64G" or "500000M", got {value!r}')


def _directives(_inst: Any, attribute: attrs.Attribute, value: dict[str, Any]) -> None:
    for key, item in value.items():
        if not re.match(r"^[a-z][a-z0-9_-]*$", key) or not isinstance(item, (str, int, float, bool)):
            raise ValueError(f'{key}: expected sbatch option names with a string, number or true, e.g. '
                             f'{{exclusive = true, mail-type = "FAIL"}}')


@attrs.frozen
class LauncherConfig:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = attrs.field(default="24:00:00", validator=_time)
    eval_time: str | None = attrs.field(default=None, validator=_time)
    nodes: int = attrs.field(default=1, validator=at_least(1))
    gpus_per_node: int = attrs.field(default=0, validator=at_least(0))
    eval_gpus: int | None = attrs.field(default=None, validator=attrs.validators.optional(at_least(0)))
    cpus_per_task: int | None = attrs.field(default=None, validator=attrs.validators.optional(at_least(1)))
    mem: str | None = attrs.field(default=None, validator=_mem)
    constraint: str | None = None
    sbatch: dict[str, Any] = attrs.field(factory=dict, validator=_directives)
    setup: list[str] = attrs.Factory(list)
    python: str | None = None

    @property
    def evaluation_gpus(self) -> int:
        return self.gpus_per_node if self.eval_gpus is None else self.eval_gpus
