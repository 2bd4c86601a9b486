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
SPECS = sorted(EXPERIMENTS.rglob("*.toml"))
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


@pytest.mark.slow
def test_the_toy_study_runs_end_to_end(tmp_path):
    """scripts/toy_study.py with a few training steps and images: the CSV and the plot are well formed."""
    env = {"MADKIT_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, str(ROOT / "scripts" / "toy_study.py"), "--out", str(tmp_path / "study"),
               "--train-steps", "4", "--num", "16", "--sweep-steps", "1,2", "--extractor-set", "epochs=1"]
    result = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, check=False,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "study" / "sweep" / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = {row["label"] for row in rows}
    assert labels == {"D=1/N=4, T=4", "D=3/N=4, T=4"}
    for label in labels:
        mine = [r for r in rows if r["label"] == label]
        assert {int(r["steps"]) for r in mine} >= {1, 2}  # the grid, plus the budget's point where it is new
        assert sum(r["budget_matched"] == "True" for r in mine) == 1
    for row in rows:
        assert float(row["fid"]) >= 0
        if row["budget_matched"] == "True":
            assert float(row["sample_flops_per_image"]) <= float(row["budget_flops"])
    with Image.open(tmp_path / "study" / "sweep" / "sweep.png") as image:
        assert image.format == "PNG" and image.size[0] > 500
    for run in ("d1", "d3"):
        assert (tmp_path / "study" / run / "report.html").stat().st_size > 1000
