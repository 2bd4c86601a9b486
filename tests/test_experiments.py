"""Every spec under experiments/ validates; the paper's study specs change exactly what they say; the
reference FFHQ configuration has the released size; the toy CPU study runs end to end (slow).

Specs whose data and VAE weights live outside the package (FFHQ, ImageNet) are validated with
``--no-data``, which looks for no files, so the result does not depend on this machine's datasets or
Hugging Face cache. OpenMoji specs are validated as they are.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from PIL import Image

from madkit.cli import main
from madkit.registry import Registry
from madkit.spec_loading import load_raw

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
SPECS = sorted(p for p in EXPERIMENTS.rglob("*.toml") if p.name != "study.toml")  # study.toml: a study's design
STUDY_DESIGNS = sorted(EXPERIMENTS.rglob("study.toml"))
STUDIES = EXPERIMENTS / "studies"
GRIDS = {"ffhq1024": (64, 64), "imagenet256": (16, 16)}  # token grids: latent side / 2 (unet cells)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load()


@pytest.fixture
def one_registry(registry, monkeypatch):
    """Every in-process command reuses one loaded registry (loading entry points is the slow part)."""
    monkeypatch.setattr(Registry, "load", classmethod(lambda cls, *a, **k: registry))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def raw(spec: Path) -> dict:
    return load_raw(spec)[0]


def validate_args(spec: Path) -> list[str]:
    args = ["validate", str(spec)]
    if raw(spec).get("data", {}).get("kind") != "openmoji":
        args.append("--no-data")
    return args


def test_the_studies_are_there():
    # each study's baseline value has no file of its own (T = 16 for FFHQ, T = 4 for ImageNet)
    other_blocks = {"ffhq1024": (1, 4, 8), "imagenet256": (1, 8, 16)}
    for dataset, blocks in other_blocks.items():
        names = {p.stem for p in (STUDIES / dataset).glob("*.toml")}
        assert names == {
            "baseline", "depth_d7", "depth_d21", "depth_d28", *(f"blocks_t{t}" for t in blocks),
            "context_clean", "context_condition", "towers_shared", "intra_block", "hidden_loss_0",
        }


@pytest.mark.parametrize("spec", SPECS, ids=[str(p.relative_to(EXPERIMENTS)) for p in SPECS])
def test_every_spec_validates(spec, one_registry, capsys):
    assert main(validate_args(spec)) == 0, capsys.readouterr().err
    assert ": valid: " in capsys.readouterr().out


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        out.update(_flat(value, path) if isinstance(value, dict) else {path: value})
    return out


def _blocks(spec: dict, grid: tuple[int, int]) -> int:
    rows, cols = spec["model"]["partitioner"]["tile"]
    return (grid[0] // rows) * (grid[1] // cols)


@pytest.mark.parametrize("dataset", sorted(GRIDS))
def test_each_study_changes_one_thing_of_its_baseline(dataset):
    folder = STUDIES / dataset
    base = raw(folder / "baseline.toml")
    expected = {
        "depth": "model.diffusion_depth", "blocks": "model.partitioner.tile", "context": "model.context",
        "towers": "model.shared_towers", "intra": "model.diffusion_layer.kind", "hidden": "model.hidden_loss_weight",
    }
    for spec in sorted(folder.glob("*.toml")):
        if spec.stem == "baseline":
            continue
        variant = raw(spec)
        changed = {k for k in _flat(base).keys() | _flat(variant).keys() if _flat(base).get(k) != _flat(variant).get(k)}
        assert changed == {"name", expected[spec.stem.split("_")[0]]}, spec
        assert variant["name"] == f"{dataset.replace('1024', '')}_{spec.stem}"
        kind, _, value = spec.stem.partition("_")
        if kind == "depth":
            assert variant["model"]["diffusion_depth"] == int(value.removeprefix("d"))
        if kind == "blocks":
            assert _blocks(variant, GRIDS[dataset]) == int(value.removeprefix("t"))
    assert _blocks(base, GRIDS[dataset]) == {"ffhq1024": 16, "imagenet256": 4}[dataset]
    assert base["model"]["diffusion_depth"] == 14 and base["train"]["keep_ckpts"] >= 5


@pytest.mark.parametrize("name", ["madformer_ffhq.toml", "madformer_ffhq_reference.toml"])
def test_the_reference_ffhq_configuration_has_the_released_size(name, one_registry):
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(["flops", str(EXPERIMENTS / name), "--json"])
    assert code == 0
    cost = json.loads(buffer.getvalue())
    assert cost["parameters"] == 1_300_243_844 and cost["train_sequence_length"] == 8192


def test_the_released_checkpoints_spec_changes_only_numerics():
    from madkit.spec_loading import load_raw as resolve

    base = _flat(resolve(EXPERIMENTS / "madformer_ffhq.toml")[0])
    released = _flat(resolve(EXPERIMENTS / "madformer_ffhq_reference.toml")[0])
    changed = {k for k in base.keys() | released.keys() if base.get(k) != released.get(k)}
    assert changed == {
        "name", "model.clean_timestep", "model.rope.kind", "sampler.spacing",
        *(f"model.{tower}_layer.{key}" for tower in ("ar", "diffusion") for key in ("kind", "norm_eps", "qk_norm_eps")),
    }
    assert released["model.ar_layer.qk_norm_eps"] == released["model.diffusion_layer.qk_norm_eps"] == 1e-6


def test_the_imagenet_base_is_class_conditional_on_a_16x16_token_grid(registry):
    from madkit.build import build_experiment
    from madkit.experiment_spec import load_spec

    spec = load_spec(EXPERIMENTS / "madformer_imagenet256.toml", [], registry, check_resources=False).spec
    experiment = build_experiment(spec, registry, meta=True)
    assert experiment.latent_shape == (4, 32, 32) and experiment.num_classes == 1000
    cost = experiment.model.compute_cost(250)
    assert (cost["blocks"], cost["tokens_per_block"], cost["diffusion_depth"]) == (4, 64, 14)


@pytest.mark.parametrize("design", STUDY_DESIGNS, ids=[str(p.relative_to(EXPERIMENTS)) for p in STUDY_DESIGNS])
def test_every_study_design_plans_all_its_runs(design, registry):
    from madkit.engine.studies.runner import plan_study

    study = plan_study(design.parent, "unused", registry)
    assert len(study.runs) == len(study.settings) * len(study.config.seeds)
    assert len(study.settings) >= 2 and len(study.config.seeds) >= 3  # a comparison, with a spread over seeds
    # every setting differs from the others in something besides its name and seed, all at one N
    shapes = {json.dumps({k: v for k, v in run.loaded.raw.items() if k not in ("name", "seed")}, sort_keys=True)
              for run in study.runs}
    assert len(shapes) == len(study.settings)
    assert len({run.loaded.spec.model.depth for run in study.runs}) == 1
    if design.parent.name in ("toy_study", "gpu_study"):  # the depth studies: one diffusion depth per setting
        assert len({run.loaded.spec.model.diffusion_depth for run in study.runs}) == len(study.settings)


@pytest.mark.parametrize(("studies", "baseline"), [("toy_studies", "toy_study/d2.toml"),
                                                    ("gpu_studies", "gpu_study/d4.toml")])
def test_the_ablation_studies_share_one_baseline(studies, baseline, registry):
    """Every study folder's baseline resolves to the depth study's run, so `--out` shared between the
    studies trains it once (the study runner refuses a run folder holding another spec)."""
    from madkit.experiment_spec import load_spec

    reference = load_spec(EXPERIMENTS / baseline, [], registry).raw
    copies = sorted((EXPERIMENTS / studies).glob(f"*/{Path(baseline).name}"))
    assert len(copies) >= 4
    assert all(load_spec(path, [], registry).raw == reference for path in copies)


@pytest.mark.slow
def test_the_toy_study_runs_end_to_end(tmp_path):
    """The shipped toy study design, shrunk to a few steps and images: CSV, plot and verdict."""
    env = {**os.environ, "MADKIT_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "madkit", "study", str(EXPERIMENTS / "toy_study"), "--out", str(tmp_path / "s"),
               "--set", "train.steps=4", "--seeds", "0,1", "--num", "16", "--steps", "1,2", "--budget-steps", "2"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "s" / "study.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {row["label"] for row in rows} == {f"D={d}/N=4, T=4" for d in (1, 2, 3, 4)}
    assert all(row["seeds"] == "2" and float(row["fid_std"]) >= 0 for row in rows)
    with Image.open(tmp_path / "s" / "study.png") as image:
        assert image.format == "PNG" and image.size[0] > 500
    assert "| budget (FLOPs/image) |" in (tmp_path / "s" / "verdict.md").read_text()
