"""The training engine: schedules, weight decay, EMA, data order, accumulation, exact resume, run folder."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import subprocess
import tomllib

import engine_fakes as fakes
import pytest
import torch
from engine_fakes import one_thread  # noqa: F401  (autouse fixture)
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

from madkit.engine.checkpoints import latest_checkpoint
from madkit.engine.checkpoints.run_folder import read_metrics
from madkit.engine.data import batches
from madkit.engine.training.ema import EMA
from madkit.engine.training.loop import train
from madkit.engine.training.optim import LRSchedule, build_optimizer, split_decay
from madkit.engine.training.precision import resolve_precision
from madkit.experiment_spec import TrainConfig


@pytest.fixture(scope="module")
def registry():
    return fakes.make_registry()


def run(tmp_path, registry, out="run", stop_after=None, **sections):
    spec = fakes.write_spec(tmp_path, f"{out}.toml", **sections)
    return train(fakes.load(spec, registry), registry, tmp_path / out, stop_after=stop_after)


def weights(ckpt, name="model.safetensors"):
    return load_file(ckpt / name)


# --------------------------------------------------------------------------- lr schedules
@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["wsd", "cosine", "constant"]),
    steps=st.integers(1, 3000),
    warmup=st.floats(0, 0.3),
    decay_start=st.floats(0.3, 1.0),
)
def test_lr_schedule_shape(kind, steps, warmup, decay_start):
    s = LRSchedule.from_config(
        TrainConfig(steps=steps, lr=3e-4, lr_schedule=kind, warmup=warmup, decay_start=decay_start)
    )
    f = [s.factor(i) for i in range(steps)]
    assert all(0 < x <= 1 for x in f)
    w = s.warmup_steps
    assert f[:w] == sorted(f[:w])  # warmup rises linearly
    after = f[w:]
    assert all(a >= b for a, b in itertools.pairwise(after))  # never rises again
    if kind == "constant":
        assert set(after) <= {1.0}
    if kind == "wsd" and after:
        d = s.decay_start_step
        assert all(x == 1.0 for x in f[w:d])  # the stable phase
        assert min(after) >= 0.5**6 - 1e-12  # decays to at most lr / 64


def test_wsd_matches_the_paper_formula():
    s = LRSchedule.from_config(TrainConfig(steps=1000, lr=1.0, lr_schedule="wsd"))
    assert s.warmup_steps == 10 and s.decay_start_step == 850
    assert s.lr(0) == pytest.approx(0.1) and s.lr(9) == 1.0 and s.lr(849) == 1.0
    assert s.lr(925) == pytest.approx(0.5 ** (6 * 75 / 150))


@pytest.mark.parametrize("kind", ["wsd", "cosine", "constant"])
def test_torch_lambda_lr_sets_the_schedules_lr_at_every_step_and_after_a_resume(kind):
    cfg = TrainConfig(steps=40, lr=2e-3, lr_schedule=kind, warmup=0.1, decay_start=0.5)
    schedule = LRSchedule.from_config(cfg)
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, cfg)
    scheduler = schedule.lr_scheduler(optimizer, 0)
    seen = []
    for _ in range(25):
        seen += [g["lr"] for g in optimizer.param_groups]
        optimizer.step()
        scheduler.step()
    resumed = build_optimizer(model, cfg)
    resumed.load_state_dict(optimizer.state_dict())  # its groups hold the last lr, not the base
    scheduler = schedule.lr_scheduler(resumed, 25)
    for _ in range(25, 40):
        seen += [g["lr"] for g in resumed.param_groups]
        resumed.step()
        scheduler.step()
    groups = len(optimizer.param_groups)
    assert seen == [schedule.lr(step) for step in range(40) for _ in range(groups)]


# --------------------------------------------------------------------------- weight decay
class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.conv = nn.Conv2d(2, 2, 3)
        self.norm = nn.LayerNorm(4)
        self.emb = nn.Embedding(5, 4)
        self.token = nn.Parameter(torch.zeros(3, 4))  # a learned block, like MADFormer's BOI
        self.skip = nn.Linear(4, 4)

    def no_weight_decay(self):
        return {"skip.weight"}


def test_only_linear_and_conv_weights_decay():
    _, exempt, names = split_decay(_Mixed())
    assert names == ["lin.weight", "conv.weight"]
    assert len(exempt) == 8  # biases x3, norm weight and bias, embedding, token, skip.weight
    opt = build_optimizer(_Mixed(), TrainConfig(weight_decay=0.1, betas=(0.9, 0.95)))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_adamw_is_fused_where_torch_has_it_and_its_state_loads_either_way():
    from madkit.engine.training.optim import fused_adamw_available, load_optimizer_state

    cfg = TrainConfig(weight_decay=0.1, lr=1e-2)
    torch.manual_seed(0)
    model = _Mixed()
    opt = build_optimizer(model, cfg)
    assert bool(opt.defaults["fused"]) == fused_adamw_available(list(model.parameters()))

    def steps(optimizer, net, n):
        for i in range(n):
            net.zero_grad()
            (net.lin(torch.full((2, 4), float(i))).square().sum() + net.token.square().sum()).backward()
            optimizer.step()

    steps(opt, model, 2)
    state = opt.state_dict()
    # the same run continued by a fused and by a foreach optimizer from that state
    results = []
    for fused in (True, False):
        net = copy.deepcopy(model)
        groups = [{"params": g["params"]} for g in build_optimizer(net, cfg).param_groups]
        other = torch.optim.AdamW(groups, lr=1e-2, fused=fused or None, foreach=not fused or None)
        load_optimizer_state(other, copy.deepcopy(state))  # loading shares tensors that steps then change
        assert all(bool(g["fused"]) == fused for g in other.param_groups)  # its own implementation stays
        steps(other, net, 2)
        results.append(net.lin.weight.detach())
    assert torch.allclose(results[0], results[1], atol=1e-6)
    model.token.requires_grad_(False)  # a parameter frozen since the state was written
    with pytest.raises(ValueError, match="set of trained parameters changed.*train.init_from"):
        load_optimizer_state(build_optimizer(model, cfg), copy.deepcopy(state))


def test_compiled_artifacts_are_kept_in_madkits_cache(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from madkit.engine.training.model_setup import compile_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what inductor sets on import
    monkeypatch.setenv("MADKIT_CACHE_DIR", str(tmp_path))
    assert compile_cache_dir() == tmp_path / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")  # what inductor reads
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache_dir() == tmp_path / "mine"  # the user's choice wins


# --------------------------------------------------------------------------- EMA
def test_ema_update_is_an_fp32_lerp_of_the_live_weights():
    model = nn.Linear(3, 2).to(torch.bfloat16)
    ema = EMA(model, decay=0.75)
    assert all(p.dtype == torch.float32 for p in ema.module.parameters())
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    expected = 0.75 * before + 0.25 * model.weight.float()
    torch.testing.assert_close(ema.module.weight, expected)


@pytest.mark.parametrize("warmup", [0, 30])
def test_ema_equals_the_written_out_average_bit_for_bit(warmup):
    """torch's AveragedModel holds madkit's EMA: the same floats as the formula applied by hand."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))
    ema = EMA(model, decay=0.97, warmup=warmup)
    by_hand = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 61):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        decay = ema.update(model)
        assert decay == ema.decay_at(step)
        by_hand = [torch.lerp(a, p.detach(), 1.0 - decay)
                   for a, p in zip(by_hand, model.parameters())]
    for mine, theirs in zip(ema.module.parameters(), by_hand):
        assert torch.equal(mine, theirs)
    assert ema.updates == 60 and list(ema.state_dict()) == list(model.state_dict())


@given(decay=st.floats(0.5, 0.99999), warmup=st.integers(1, 10_000), s=st.integers(1, 100_000))
def test_ema_warmup_grows_the_horizon_to_full(decay, warmup, s):
    ema = EMA(nn.Linear(1, 1), decay, warmup)
    d = ema.decay_at(s)
    assert 0.0 <= d <= decay
    assert ema.decay_at(s + 1) >= d
    if s >= warmup:
        assert d == pytest.approx(decay)


# --------------------------------------------------------------------------- precision
def test_precision_knob():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == "fp32"  # CPU stays exact unless asked
    assert resolve_precision("bf16", cpu).dtype == torch.bfloat16
    assert resolve_precision("fp16", cpu).grad_scaler().is_enabled()
    assert not resolve_precision("bf16", cpu).grad_scaler().is_enabled()
    with resolve_precision("bf16", cpu).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


# --------------------------------------------------------------------------- data order
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    world=st.integers(1, 4),
    per_rank=st.integers(1, 6),
    accumulation=st.integers(1, 3),
    steps=st.integers(1, 8),
    resume_at=st.integers(0, 8),
)
def test_ranks_split_each_global_batch_and_resume_continues(n, world, per_rank, accumulation, steps, resume_at):
    plan = batches.BatchPlan.make(world * per_rank * accumulation, per_rank, world)
    order = batches.StreamOrder(n, seed=3)

    def rank_steps(rank, consumed, count):
        it = iter(batches.MicroBatchIndices(order, plan, rank, consumed))
        return [[i for _ in range(plan.accumulation) for _, i, _ in next(it)] for _ in range(count)]

    per_rank_steps = [rank_steps(r, 0, steps) for r in range(world)]
    for s in range(steps):  # the ranks' shares together are exactly the stream's next B positions
        got = sorted(i for r in range(world) for i in per_rank_steps[r][s])
        want = sorted(order.index(p) for p in range(s * plan.global_batch, (s + 1) * plan.global_batch))
        assert got == want
    for epoch in range(2):  # every epoch is a permutation
        assert sorted(order.permutation(epoch).tolist()) == list(range(n))
    k = min(resume_at, steps)
    for r in range(world):
        assert rank_steps(r, k * plan.global_batch, steps - k) == per_rank_steps[r][k:]


def test_batch_plan_errors_name_the_keys():
    with pytest.raises(ValueError, match=r"train.batch = 6 .* 4 ranks"):
        batches.BatchPlan.make(6, 0, 4)
    with pytest.raises(ValueError, match=r"train.micro_batch = 3"):
        batches.BatchPlan.make(8, 3, 2)


# --------------------------------------------------------------------------- the loop
# (one global batch split into micro-batches or ranks: tests/test_split_invariance.py, real MADFormer)
def test_resume_is_exact(tmp_path, registry):
    """4 steps straight == 2 steps, stop, resume, 2 steps: identical raw weights, EMA and optimizer."""
    straight = run(tmp_path, registry, "straight")
    first = run(tmp_path, registry, "split", stop_after=2)
    assert first.step == 2 and first.checkpoint.name == "00000002"
    resumed = run(tmp_path, registry, "split")
    assert resumed.step == 4
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(straight.checkpoint, name), weights(resumed.checkpoint, name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    sa = torch.load(straight.checkpoint / "state.pt", weights_only=True)
    sb = torch.load(resumed.checkpoint / "state.pt", weights_only=True)
    for pid, pstate in sa["optimizer"]["state"].items():
        assert torch.equal(pstate["exp_avg_sq"], sb["optimizer"]["state"][pid]["exp_avg_sq"])
    assert sa["data"] == sb["data"] == {"consumed": 16, "epoch": 0, "index": 16}
    # the resumed run's metrics continue the first part's and match the straight run's
    loss = lambda r: [m["loss"] for m in read_metrics(r.run_dir / "metrics.jsonl")]
    assert loss(resumed) == loss(straight)


def test_activation_checkpointing_changes_nothing_but_memory(tmp_path, registry):
    plain = run(tmp_path, registry, "plain", train={"steps": 2})
    ckpt = run(tmp_path, registry, "ac", train={"steps": 2, "activation_checkpointing": True})
    a, b = weights(plain.checkpoint), weights(ckpt.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_folder_has_everything(tmp_path, registry):
    result = run(tmp_path, registry, train={"steps": 6, "sample_every": 3, "log_every": 2, "keep_ckpts": 2})
    root = result.run_dir
    resolved = tomllib.loads((root / "config.resolved.toml").read_text())
    assert resolved["train"]["steps"] == 6 and resolved["model"]["kind"] == "test-engine-tiny"
    versions = json.loads((root / "versions.json").read_text())
    assert {"madkit", "torch", "plugins"} <= versions.keys() and "test-engine" in versions["plugins"]

    records = read_metrics(root / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6]
    for r in records:
        assert {"loss", "loss/mse", "lr", "grad_norm", "images_per_s", "mem_gb"} <= r.keys()
        assert math.isfinite(r["loss"]) and r["images_per_s"] > 0

    # newest 2 checkpoints kept (every 2 steps plus the final one)
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["00000004", "00000006"]
    assert latest_checkpoint(root) == root / "checkpoints" / "00000006"

    grids = sorted(p.name for p in (root / "samples").iterdir())
    assert grids == ["step_00000003.png", "step_00000006.png"] and result.samples.name == grids[-1]
    from PIL import Image

    # 4 images of 8x8 in a 2x2 grid, padding 2, enlarged 16x to show at least 128 pixels per image
    assert Image.open(result.samples).size == ((2 * 8 + 3 * 2) * 16,) * 2

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(root / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("loss")] == [2, 4, 6]
    assert "samples" in events.Tags()["images"]


def test_sample_grids_use_fixed_noise(tmp_path, registry):
    """Same weights and seed give the same grid: the noise is a function of (seed, image index)."""
    a = run(tmp_path, registry, "a", train={"steps": 1})
    b = run(tmp_path, registry, "b", train={"steps": 1})
    assert a.samples.read_bytes() == b.samples.read_bytes()


def test_cli_run_prints_where_things_are(tmp_path):
    spec = fakes.write_spec(tmp_path, train={"steps": 2})
    out = tmp_path / "cli-run"
    proc = subprocess.run(
        fakes.madkit_cmd("run", str(spec), "--out", str(out), "--set", "train.log_every=1"),
        env=fakes.cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"run folder: {out}" in proc.stdout
    assert f"samples:    {out / 'samples' / 'step_00000002.png'}" in proc.stdout
    assert "step 2/2 | loss" in proc.stdout
    assert (out / "samples" / "step_00000002.png").is_file()


def test_latent_cache_feeds_the_same_training(tmp_path, registry):
    """Latents encoded once (stored as float16) train like latents encoded every batch."""
    fly = run(tmp_path, registry, "fly", train={"steps": 2})
    cache_root = tmp_path / "cache"
    cached = run(tmp_path, registry, "cached", train={"steps": 2, "latent_cache": str(cache_root)})
    assert list(cache_root.glob("latents/*/meta.json")), "the cache folder was not written"
    a, b = weights(fly.checkpoint), weights(cached.checkpoint)
    assert all(torch.allclose(a[k], b[k], atol=1e-3) for k in a)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_fp32_weights(tmp_path, registry, precision):
    result = run(tmp_path, registry, precision, train={"steps": 2, "precision": precision})
    assert math.isfinite(result.metrics["loss"])
    assert all(t.dtype == torch.float32 for t in weights(result.checkpoint).values())
    scaler = torch.load(result.checkpoint / "state.pt", weights_only=True)["scaler"]
    assert bool(scaler) == (precision == "fp16")  # a GradScaler only for fp16


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(tmp_path, registry):
    eager = run(tmp_path, registry, "eager", train={"steps": 2})
    compiled = run(tmp_path, registry, "compiled", train={"steps": 2, "compile": True})
    a, b = weights(eager.checkpoint), weights(compiled.checkpoint)
    assert a.keys() == b.keys()  # no _orig_mod in the names
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
