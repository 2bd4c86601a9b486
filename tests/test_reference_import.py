"""``madkit import-reference``: the authors' checkpoint layout read safely, mapped one to one, checked,
and written as a run folder that samples exactly like the model it came from; every bad input is one
message, exit code 2 and nothing written.

The released file cannot be downloaded here, so each test writes a tiny random model with the
reference numerics (experiments/tiny/madformer_reference.toml) into a .pt laid out as the released
one is: a dict of 'model', 'ema', 'opt', 'lrs' and an argparse 'args', weights under the reference's
names, which this file spells out on its own (APPENDIX_NAMES) rather than asking the code under test.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch
from engine_fakes import one_thread  # noqa: F401  (autouse fixture: tiny models, one thread)
from safetensors.torch import load_file

from madkit.build import build_experiment
from madkit.cli import main
from madkit.engine.checkpoints.weights import load_for_inference
from madkit.experiment_spec import load_spec
from madkit.generation import generate_latents
from madkit.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "experiments" / "tiny" / "madformer_reference.toml"
FFHQ = ROOT / "experiments" / "madformer_ffhq_reference.toml"

# The released checkpoint's names, from its published layout: madkit name pattern -> reference name.
_TOWER = {"clean": "0", "noised": "1"}
APPENDIX_NAMES = [
    (r"boi", lambda m: "boi_block"),
    (
        r"layers\.(\d+)\.(clean|noised)\.attn_norm\.(.+)",
        lambda m: f"blocks.{m[1]}.input_layernorm_list.{_TOWER[m[2]]}.{m[3]}",
    ),
    (
        r"layers\.(\d+)\.(clean|noised)\.mlp_norm\.(.+)",
        lambda m: f"blocks.{m[1]}.post_attention_layernorm_list.{_TOWER[m[2]]}.{m[3]}",
    ),
    (
        r"layers\.(\d+)\.(clean|noised)\.(qkv|q_norm|k_norm)\.(.+)",
        lambda m: f"blocks.{m[1]}.self_attn.{m[3]}_list.{_TOWER[m[2]]}.{m[4]}",
    ),
    (r"layers\.(\d+)\.(clean|noised)\.out\.(.+)", lambda m: f"blocks.{m[1]}.self_attn.proj_list.{_TOWER[m[2]]}.{m[3]}"),
    (
        r"layers\.(\d+)\.(clean|noised)\.(gate|up|down)\.(.+)",
        lambda m: f"blocks.{m[1]}.mlp_list.{_TOWER[m[2]]}.{m[3]}_proj.{m[4]}",
    ),
    (r"embedder\.(down|up)\.time\.0\.(.+)", lambda m: f"{m[1]}sampler.time_embedding.linear_1.{m[2]}"),
    (r"embedder\.(down|up)\.time\.2\.(.+)", lambda m: f"{m[1]}sampler.time_embedding.linear_2.{m[2]}"),
    (r"embedder\.(down|up)\.(conv_in|conv_out)\.(.+)", lambda m: f"{m[1]}sampler.{m[2]}.{m[3]}"),
    (r"embedder\.(down|up)\.block(\d)\.(.+)", lambda m: f"{m[1]}sampler.{m[1]}_blocks.{int(m[2]) - 1}.{m[3]}"),
]


def appendix_name(name: str) -> str:
    for pattern, rename in APPENDIX_NAMES:
        if match := re.fullmatch(pattern, name):
            return rename(match)
    raise AssertionError(f"the published layout has no place for {name}")


def as_reference(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + appendix_name(k): (v[None] if k == "boi" else v).clone() for k, v in state.items()}


ARGS = dict(
    diff_depth=2,
    ar_len=4,
    block_size=16,
    pre_downsample_block_size=64,
    spatial_len=64,
    vae_latent_size=3,
    image_size=16,
    single_tower=False,
    lr=3e-4,
    results_dir="results",
    model_config_path="cfg.json",
)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load()


@pytest.fixture(autouse=True)
def one_registry(registry, monkeypatch):
    """Every in-process command reuses one loaded registry (loading entry points is the slow part)."""
    monkeypatch.setattr(Registry, "load", classmethod(lambda cls, *a, **k: registry))


@pytest.fixture(scope="module")
def models(registry):
    """(EMA model, raw weights): a random tiny reference-numerics model and a perturbed raw copy."""
    experiment = build_experiment(load_spec(SPEC, [], registry).spec, registry)
    torch.manual_seed(0)
    model = experiment.model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # norms and zero-initialised biases leave their defaults
    raw = {k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()}
    return experiment, raw


def write_reference(path: Path, weights, raw=None, prefix: str = "", args=ARGS, **edits) -> Path:
    """A .pt laid out like the released one (EMA ``weights``); ``edits`` replace (or, with None, drop)
    top-level entries."""
    contents = {
        "model": as_reference(raw if raw is not None else weights, prefix),
        "ema": as_reference(weights, prefix),
        "opt": {"state": {}, "param_groups": [{"lr": 3e-4, "params": []}]},
        "lrs": {"last_epoch": 7},
        "args": argparse.Namespace(**args),
    }
    for key, value in edits.items():
        if value is None:
            contents.pop(key)
        else:
            contents[key] = value
    torch.save(contents, path)
    return path


def run_import(ckpt: Path, out: Path, *extra: str) -> int:
    return main(["import-reference", str(ckpt), "--spec", str(SPEC), "--out", str(out), *extra])


# --------------------------------------------------------------------------- the layout
def test_the_released_layout_has_797_tensors_with_the_published_names_and_shapes(registry):
    spec = load_spec(FFHQ, [], registry, check_resources=False).spec
    layout = build_experiment(spec, registry, meta=True).model.reference_layout()
    shapes = {name: shape for name, (_, shape) in layout.tensors.items()}
    assert len(shapes) == 797 and sum(torch.Size(s).numel() for s in shapes.values()) == 1_300_243_844
    assert shapes["boi_block"] == (1, 256, 1152)
    assert shapes["blocks.27.self_attn.qkv_list.1.weight"] == (3456, 1152)
    assert shapes["blocks.0.self_attn.q_norm_list.0.weight"] == (64,)
    assert shapes["blocks.13.mlp_list.0.down_proj.weight"] == (1152, 4096)
    assert shapes["downsampler.time_embedding.linear_1.weight"] == (128, 1)
    assert shapes["upsampler.conv_out.weight"] == (4, 512, 3, 3)
    assert {own: appendix_name(own) for _, (own, _) in layout.tensors.items()} == {
        own: name for name, (own, _) in layout.tensors.items()
    }
    assert {k: v for k, (v, _) in layout.args.items() if k in ("diff_depth", "ar_len", "block_size")} == {
        "diff_depth": 14,
        "ar_len": 16,
        "block_size": 256,
    }


# --------------------------------------------------------------------------- a good file
def _sample(model, sampler) -> torch.Tensor:
    chunks = generate_latents(model, sampler, range(2), seed=5, num_classes=0, batch=2, steps=2)
    return torch.cat([lat for _, lat in chunks])


def _import_and_compare(models, tmp_path, prefix: str) -> Path:
    """Import a file with ``prefix`` on every name; both weight sets come back tensor for tensor."""
    experiment, raw = models
    ema = experiment.model.state_dict()
    out = tmp_path / "run"
    assert run_import(write_reference(tmp_path / "ckpts.pt", ema, raw, prefix), out) == 0
    ckpt = out / "checkpoints" / "00000000"
    for file, want in (("ema.safetensors", ema), ("model.safetensors", raw)):
        got = load_file(ckpt / file)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    return out


def test_import_gives_back_the_same_tensors_and_the_same_cached_samples(models, registry, tmp_path, capsys):
    out = _import_and_compare(models, tmp_path, "")
    said = capsys.readouterr().out
    assert "EMA weights from 'ema'" in said and "raw weights from 'model'" in said
    experiment, _ = models
    loaded_experiment, loaded = load_for_inference(out, registry)
    assert loaded.cfg == experiment.model.cfg  # the reference numerics came along with the spec
    assert torch.equal(_sample(loaded, loaded_experiment.sampler), _sample(experiment.model, experiment.sampler))


@pytest.mark.parametrize("prefix", ["module.", "module._orig_mod."])
def test_ddp_and_compile_prefixes_are_stripped(prefix, models, tmp_path):
    _import_and_compare(models, tmp_path, prefix)


def test_provenance_and_a_file_without_ema_weights(models, tmp_path, capsys):
    import hashlib

    experiment, _ = models
    source = write_reference(tmp_path / "only-model.pt", experiment.model.state_dict(), ema=None)
    assert run_import(source, tmp_path / "run") == 0
    assert "EMA weights from 'model', no separate raw weights" in capsys.readouterr().out
    state = torch.load(tmp_path / "run" / "checkpoints" / "00000000" / "state.pt", weights_only=True)
    prov = state["provenance"]
    assert prov["source_file"] == "only-model.pt" and prov["weights_key"] == "model" and prov["raw_weights_key"] is None
    assert prov["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert prov["args"]["diff_depth"] == 2 and prov["args"]["results_dir"] == "results"
    assert state["step"] == 0 and state["spec"]["name"] == "tiny_madformer_reference"


def test_an_imported_run_samples_exports_and_refuses_to_resume_training(models, tmp_path, capsys):
    experiment, raw = models
    out = tmp_path / "run"
    assert run_import(write_reference(tmp_path / "ckpts.pt", experiment.model.state_dict(), raw), out) == 0
    assert main(["sample", str(out), "--num", "1", "--steps", "1", "--out", str(tmp_path / "png")]) == 0
    assert len(list((tmp_path / "png").glob("*.png"))) == 1
    assert main(["export", str(out), "--out", str(tmp_path / "export")]) == 0
    card = (tmp_path / "export" / "README.md").read_text()
    assert "import-reference" in card and "ckpts.pt" in card
    capsys.readouterr()
    assert main(["run", str(SPEC), "--out", str(out), "--set", "log.sinks=[]"]) == 2  # a user mistake: exit 2
    assert "no optimizer state" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad files
class Payload:
    """Unpickling this creates ``marker``: proof that code in the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _refused(ckpt: Path, out: Path, capsys) -> str:
    assert run_import(ckpt, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    assert not out.exists() and not any(p.name.startswith(f".{out.name}") for p in out.parent.iterdir())
    return err


def test_a_hostile_pickle_is_refused_without_running_it(models, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    hostile = tmp_path / "hostile.pt"
    torch.save({"ema": {"boi_block": Payload(marker)}}, hostile)
    err = _refused(hostile, tmp_path / "run", capsys)
    assert "refused" in err and f"{open.__module__}.open" in err and "nothing in the file was executed" in err
    assert not marker.exists()
    torch.load(hostile, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


def test_truncated_and_foreign_files_are_refused(models, tmp_path, capsys):
    experiment, _ = models
    good = write_reference(tmp_path / "good.pt", experiment.model.state_dict()).read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    assert "cannot be read as a torch checkpoint" in _refused(truncated, tmp_path / "run", capsys)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    err = _refused(text, tmp_path / "run", capsys)
    assert "notes.pt: not a torch checkpoint" in err or "notes.pt: cannot be read as a torch checkpoint" in err
    assert "weights_only" not in err  # torch's advice to load unsafely is never repeated
    torch.save({"weights": {"a": torch.zeros(1)}}, tmp_path / "other.pt")
    err = _refused(tmp_path / "other.pt", tmp_path / "run", capsys)
    assert "expected a dict with 'ema' and/or 'model' weights, found ['weights']" in err
    assert "no such file" in _refused(tmp_path / "missing.pt", tmp_path / "run", capsys)


def _edited(models, tmp_path, edit) -> Path:
    experiment, _ = models
    weights = as_reference(experiment.model.state_dict())
    edit(weights)
    return write_reference(tmp_path / "edited.pt", experiment.model.state_dict(), ema=weights, model=weights)


def test_a_missing_tensor_is_named(models, tmp_path, capsys):
    path = _edited(models, tmp_path, lambda w: w.pop("blocks.1.mlp_list.1.up_proj.weight"))
    err = _refused(path, tmp_path / "run", capsys)
    assert "1 tensor(s) missing: blocks.1.mlp_list.1.up_proj.weight" in err and "['ema']" in err


def test_an_extra_tensor_is_named(models, tmp_path, capsys):
    path = _edited(models, tmp_path, lambda w: w.update({"blocks.0.self_attn.rope_scale": torch.ones(8)}))
    assert "does not have: blocks.0.self_attn.rope_scale" in _refused(path, tmp_path / "run", capsys)


def test_a_shape_mismatch_is_named(models, tmp_path, capsys):
    path = _edited(models, tmp_path, lambda w: w.update({"boi_block": torch.zeros(1, 8, 32)}))
    assert "boi_block [1, 8, 32] (the spec's model needs [1, 16, 32])" in _refused(path, tmp_path / "run", capsys)


def test_more_layers_than_the_spec_are_named(models, tmp_path, capsys):
    def add_layer(w):
        w.update({k.replace("blocks.3.", "blocks.4.", 1): v for k, v in list(w.items()) if k.startswith("blocks.3.")})

    err = _refused(_edited(models, tmp_path, add_layer), tmp_path / "run", capsys)
    assert "it holds 5 transformer layers, the spec 4" in err


def test_args_that_disagree_with_the_spec_are_named(models, tmp_path, capsys):
    experiment, _ = models
    path = write_reference(
        tmp_path / "d7.pt", experiment.model.state_dict(), args={**ARGS, "diff_depth": 3, "ar_len": 2}
    )
    err = _refused(path, tmp_path / "run", capsys)
    assert "diff_depth = 3 (the spec: 2, model.diffusion_depth)" in err and "ar_len = 2 (the spec: 4" in err


def test_an_existing_run_folder_is_left_alone(models, tmp_path, capsys):
    experiment, _ = models
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_import(write_reference(tmp_path / "ckpts.pt", experiment.model.state_dict()), out) == 2
    assert "already exists" in capsys.readouterr().err and [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_pickle_that_would_run_a_shell_command_is_refused_in_madkits_words(models, tmp_path, capsys):
    """torch 2.6+ words the refusal differently from earlier versions and advises weights_only=False;
    madkit names the blocked global and never repeats that advice."""
    import os

    class Shell:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'code-ran'}",))

    hostile = tmp_path / "shell.pt"
    torch.save({"ema": {"boi_block": Shell()}}, hostile)
    err = _refused(hostile, tmp_path / "run", capsys)
    assert f"refused: its pickle asks for {os.system.__module__}.system" in err
    assert "weights_only" not in err and "nothing in the file was executed" in err
    assert not (tmp_path / "code-ran").exists()
