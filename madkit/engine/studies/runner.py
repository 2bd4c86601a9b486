"""A study: every spec of a folder trained with several seeds, swept over sampling steps at matched
compute, and summarised with error bars and a verdict (``madkit study DIR``).

A study folder holds experiment specs (one per setting compared, e.g. one per diffusion depth) and
optionally ``study.toml``, the design (every key optional; command-line options override it):

    specs = ["d1.toml", "d2.toml"]  # default: every *.toml of the folder but study.toml
    seeds = [0, 1, 2]               # training seeds: the spec's ``seed`` value
    steps = [1, 2, 4, 8, 16]        # the sampling grid: denoising steps per block
    budget_steps = [1, 2, 4, 8]     # budgets: the costliest setting's sampling FLOPs/image at these steps
    num = 1000                      # generated images per point
    batch = 100                     # images per forward pass
    eval_seed = 0                   # image i's noise comes from (eval_seed, i), the same for every run
    sampler = "ddim"                # default: each spec's own
    extractor = {kind = "proxy"}    # default: the data's default (proxy for OpenMoji, else inception)
    [launcher]                      # where jobs run with --launcher local|slurm (launcher_config.py)

The runner (inline; ``--launcher local|slurm`` submits the same work as jobs, see launch.py)
1. trains OUT/runs/<spec>-seed<s> for every spec and seed (``madkit run``'s trainer, in this process),
   skipping runs already trained to their ``train.steps`` and resuming unfinished ones; a run folder
   holding a different spec is refused rather than mixed;
2. evaluates each run at every grid step count and, for each budget, at the largest step count whose
   sampling FLOPs per image fit it (the cost ``madkit flops`` reports): ordinary eval records in the
   run's eval/ folder, reused when up to date;
3. writes the results (madkit.engine.studies.results): every point, the mean and spread over seeds,
   the compute-versus-FID plot with error bars, and the verdict per budget.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from madkit.engine.studies.launcher_config import LauncherConfig
from madkit.errors import ConfigError
from madkit.experiment_spec import LoadedSpec, load_spec
from madkit.registry import Registry
from madkit.spec import Problems, SpecError, make_converter, structure
from madkit.spec_loading import SpecLoadError, load_raw
from madkit.validators import at_least

STUDY_FILE = "study.toml"
RUNS = "runs"


def _positive_items(_inst, attribute, value: Sequence[int]) -> None:
    if any(v <= 0 for v in value):
        raise ValueError(f"step counts must be positive, got {list(value)}")


def _not_empty(_inst, attribute, value: Sequence[Any]) -> None:
    if not value:
        raise ValueError("must name at least one")


@attrs.frozen
class StudyConfig:
    specs: list[str] = attrs.Factory(list)
    seeds: list[int] = attrs.field(default=attrs.Factory(lambda: [0, 1, 2]), validator=_not_empty)
    steps: list[int] = attrs.field(default=attrs.Factory(lambda: [1, 2, 4, 8, 16]), validator=_positive_items)
    budget_steps: list[int] = attrs.field(default=attrs.Factory(list), validator=_positive_items)
    num: int = attrs.field(default=1000, validator=at_least(2))
    batch: int = attrs.field(default=100, validator=at_least(1))
    eval_seed: int = 0
    sampler: str | None = None
    extractor: dict[str, Any] = attrs.Factory(dict)
    launcher: LauncherConfig = attrs.Factory(LauncherConfig)


def load_study_config(folder: Path, registry: Registry, overrides: dict[str, Any]) -> StudyConfig:
    """``folder/study.toml`` (if any) with ``overrides`` (the command line's) on top; every problem at once."""
    path = folder / STUDY_FILE
    try:
        raw = load_raw(path)[0] if path.is_file() else {}
    except SpecLoadError as exc:
        raise SpecError([str(exc)]) from None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return structure(make_converter(registry), raw, StudyConfig)
    except Problems as exc:
        source = str(path) if path.is_file() else "the command line"
        raise SpecError([f"{source}: {p.path}: {p.message}" for p in exc.problems]) from None


@attrs.frozen
class PlannedRun:
    setting: str  # the spec's file stem
    seed: int
    run_dir: Path
    loaded: LoadedSpec


@attrs.frozen
class Study:
    folder: Path
    out: Path
    config: StudyConfig
    specs: dict[str, Path]  # setting -> spec file, in study order
    runs: list[PlannedRun]

    @property
    def settings(self) -> list[str]:
        return list(self.specs)


def plan_study(folder: str | Path, out: str | Path, registry: Registry, overrides: dict[str, Any] | None = None,
               sets: Sequence[str] = (), check_resources: bool = True) -> Study:
    """Read the design and check every spec with every seed (``sets`` apply to all) before anything runs;
    ``check_resources=False``: without looking for data folders and weights (--cost, --dry-run, --status)."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder; pass a study folder of experiment specs")
    config = load_study_config(folder, registry, overrides or {})
    names = config.specs or sorted(p.name for p in folder.glob("*.toml") if p.name != STUDY_FILE)
    if not names:
        raise ConfigError(f"{folder} holds no experiment specs (*.toml besides {STUDY_FILE})")
    specs = {Path(name).stem: folder / name for name in names}
    problems, runs = _unknown_kinds(config, registry, folder / STUDY_FILE), []
    for setting, path in specs.items():
        if not path.is_file():
            problems.append(f"{folder / STUDY_FILE}: specs: {path.name} does not exist in {folder}")
            continue
        for seed in config.seeds:
            try:
                loaded = load_spec(path, [*sets, f"seed={seed}"], registry, check_resources=check_resources)
            except SpecError as exc:
                problems.extend(exc.lines)
                break  # the same problems for every seed
            runs.append(PlannedRun(setting, seed, out / RUNS / f"{setting}-seed{seed}", loaded))
    if problems:
        raise SpecError(list(dict.fromkeys(problems)))
    return Study(folder, out, config, specs, runs)


def _unknown_kinds(config: StudyConfig, registry: Registry, source: Path) -> list[str]:
    """The sampler and extractor named by the design must exist: found now, not after hours of training."""
    problems = []
    for key, interface, kind in (("sampler", "sampler", config.sampler),
                                 ("extractor.kind", "extractor", config.extractor.get("kind"))):
        if kind is not None and kind not in registry.kinds(interface):
            problems.append(f"{source}: {key}: no {interface} kind {kind!r}; installed: "
                            f"{', '.join(registry.kinds(interface))}")
    if config.extractor and "kind" not in config.extractor:
        problems.append(f'{source}: extractor: name its kind, e.g. extractor = {{kind = "proxy"}}')
    return problems


# --------------------------------------------------------------------------- training
def trained_steps(run: PlannedRun, registry: Registry) -> int:
    """How far ``run`` is trained (0 when it has no checkpoint); refuses a folder holding another spec."""
    from madkit.engine.checkpoints import all_spec_differences, latest_checkpoint, stored_spec
    from madkit.engine.training.resume_changes import describe, is_neutral
    from madkit.experiment_spec import with_current_defaults

    ckpt = latest_checkpoint(run.run_dir)
    if ckpt is None:
        return 0
    # what may differ is what a resumed run may change freely: how it trains, not what it learns
    stored = with_current_defaults(stored_spec(ckpt), registry)  # keys added since are no difference
    differences = [d for d in all_spec_differences(stored, run.loaded.raw) if not is_neutral(d[0])]
    if differences:
        raise ConfigError(
            f"{run.run_dir} was trained from another spec than {run.loaded.source} with seed {run.seed} "
            f"({describe(differences[:4])}); give the study another --out folder, or remove that run"
        )
    return int(ckpt.name)


def train_runs(study: Study, registry: Registry, log: Callable[[str], None]) -> dict[str, Any]:
    """Train every planned run that is not finished; returns what was trained, skipped and how long it took."""
    from madkit.engine.training.loop import train

    trained, skipped, started, cpu = [], [], time.perf_counter(), time.process_time()
    for run in study.runs:
        done, target = trained_steps(run, registry), run.loaded.spec.train.steps
        if done >= target:
            log(f"{run.run_dir}: trained to step {done} of {target}; skipped")
            skipped.append(str(run.run_dir))
            continue
        log(f"training {run.setting} with seed {run.seed} into {run.run_dir}"
            + (f" (resuming at step {done})" if done else ""))
        train(run.loaded, registry, run.run_dir)
        trained.append(str(run.run_dir))
        gc.collect()
    return {"trained": trained, "skipped": skipped, "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu}


# --------------------------------------------------------------------------- evaluation
@attrs.frozen
class SettingCost:
    """What sampling one image of a setting costs, from the model on the meta device (``madkit flops``)."""

    label: str
    cost: Callable[[int], dict[str, Any]]
    max_steps: int


def setting_costs(study: Study, registry: Registry) -> dict[str, SettingCost]:
    from madkit.build import build_experiment
    from madkit.engine.evaluation.sweep import max_sampling_steps, model_label

    first = {}
    for run in study.runs:
        first.setdefault(run.setting, run.loaded.spec)
    out = {}
    for setting, spec in first.items():
        experiment = build_experiment(spec, registry, meta=True)
        model = experiment.model
        out[setting] = SettingCost(model_label(model.compute_cost(1), setting), model.compute_cost,
                                   max_sampling_steps(experiment.schedule))
    labels = [c.label for c in out.values()]
    if len(set(labels)) < len(labels):  # settings of one shape (towers, context...): name them by their files
        out = {s: attrs.evolve(c, label=s) for s, c in out.items()}
    return out


def budgets_and_matches(study: Study, costs: dict[str, SettingCost]) -> tuple[list[dict[str, Any]], dict]:
    """The budgets (the costliest setting's FLOPs/image at each ``budget_steps``) and, per setting and
    budget, the largest step count that fits (None when even one step costs more)."""
    from madkit.engine.evaluation.sweep import steps_within_budget

    budgets = []
    for steps in study.config.budget_steps:
        flops = {s: c.cost(steps)["sample_flops_per_image"] for s, c in costs.items()}
        costliest = max(flops, key=flops.get)
        budgets.append({"flops": flops[costliest], "steps": steps, "setting": costliest})
    matches = {
        s: [steps_within_budget(c.cost, b["flops"], c.max_steps) for b in budgets] for s, c in costs.items()
    }
    return budgets, matches


def eval_request(config: StudyConfig) -> Any:
    """How every point of the study samples and measures (an evaluation.points.Request)."""
    from madkit.engine.evaluation.points import Request

    return Request(num=config.num, seed=config.eval_seed, sampler=config.sampler, batch=config.batch,
                   metrics=("fid",), extractor=dict(config.extractor) or None)


def evaluated_steps(config: StudyConfig, matched: Sequence[int | None]) -> list[int]:
    """A setting's step counts: the grid and its budget-matched counts."""
    return sorted(set(config.steps) | {m for m in matched if m})


def evaluate_runs(study: Study, registry: Registry, device: Any, log: Callable[[str], None],
                  force: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Every run at the grid and at its budget-matched step counts; returns the points and the plan.
    ``threads``: the command's --threads (None: the rule); applied again here, since training the runs
    applied each run's own train.threads."""
    from madkit.engine.evaluation.points import Evaluator
    from madkit.engine.evaluation.sweep import run_sweep
    from madkit.threads import apply_threads

    config, started, cpu = study.config, time.perf_counter(), time.process_time()
    log(f"evaluating with {apply_threads(threads)}")
    evaluator = Evaluator(registry, eval_request(config), log=log)
    costs = setting_costs(study, registry)
    budgets, matches = budgets_and_matches(study, costs)
    points = []
    for setting in study.settings:
        steps = evaluated_steps(config, matches[setting])
        runs = [r for r in study.runs if r.setting == setting]
        result = run_sweep([r.run_dir for r in runs], steps, evaluator, device, force=force)
        seed_of = {r.run_dir.resolve(): r.seed for r in runs}  # records written by jobs name absolute paths
        for row in result.rows:
            points.append({**row, "label": costs[setting].label, "setting": setting,
                           "seed": seed_of[Path(row["run"]).resolve()],
                           "budget_matched": row["steps"] in matches[setting]})
    return {"points": points, "budgets": budgets, "matches": matches, "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu}
