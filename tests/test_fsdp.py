"""FSDP2 (``train.strategy = "fsdp"`` / ``"hsdp"``) on the CPU with gloo ranks: the real tiny MADFormer,
its real loss with noise on, the real trainer and CLI.

Example i of a step's global batch draws its noise, timesteps and label dropout from a generator keyed
by (seed, step, i), whichever rank and micro-batch holds it, so one process taking the batch whole draws
what the ranks drew together: the comparisons below patch nothing (data order, loss and its noise,
gradient reduction, clipping, AdamW, EMA and checkpoints are the real code on both sides).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from madkit import rng
from madkit.cli import main as cli
from madkit.engine import checkpoints
from madkit.engine.checkpoints.sharded import read_full
from madkit.engine.distributed import fsdp
from madkit.engine.training.loop import train
from madkit.experiment_spec import load_spec
from madkit.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments/tiny/madformer.toml"
# batch 4 in micro-batches of one image: two ranks accumulate two each, one process four;
# no flips (they draw from the global RNG, which is seeded per rank)
COMMON = [
    "data.hflip=false",
    "train.steps=3",
    "train.batch=4",
    "train.micro_batch=1",
    "train.ckpt_every=2",
    "train.keep_ckpts=5",
    "train.sample_num=2",
    "train.sample_steps=2",
    "log.sinks=[]",
    "log.progress=false",
]
TOL = 1e-5


@pytest.fixture(scope="module")
def registry():
    return Registry.load()


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MADKIT_PLUGINS"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    run = [*cmd, "-m", "madkit", *args]
    proc = subprocess.run(run, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def train_here(registry, out: Path, *sets: str, stop_after: int | None = None):
    """One process (a one-rank group when the strategy is sharded), one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(load_spec(TINY, [*COMMON, *sets], registry), registry, out, stop_after=stop_after)
    finally:
        torch.set_num_threads(before)


def assert_same_weights(a: Path, b: Path, use_ema: bool) -> None:
    wa, wb = checkpoints.load_weights(a, use_ema), checkpoints.load_weights(b, use_ema)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(
            wa[k], wb[k], atol=TOL, rtol=0, msg=f"{a} vs {b} ({'ema' if use_ema else 'model'}): {k}"
        )


def step_dir(run: Path, step: int) -> Path:
    return run / checkpoints.CHECKPOINTS / checkpoints.step_dir_name(step)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """3 steps of the tiny MADFormer on two FSDP ranks; sharded checkpoints at steps 2 and 3."""
    out = tmp_path_factory.mktemp("fsdp") / "two"
    sets = [f"--set={s}" for s in [*COMMON, "train.strategy=fsdp"]]
    proc = torchrun(2, "run", str(TINY), "--out", str(out), *sets)
    assert proc.stdout.count("run folder:") == 1  # rank 0 alone reports
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, registry) -> Path:
    """The same 3 steps in one plain process (DDP strategy, no group)."""
    return train_here(registry, tmp_path_factory.mktemp("fsdp") / "one").run_dir


def test_two_fsdp_ranks_write_sharded_checkpoints_equal_to_one_process(two_ranks, one_process):
    ckpt = step_dir(two_ranks, 3)
    files = sorted(p.name for p in (ckpt / checkpoints.SHARDED_DIR).iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # each rank wrote its slices
    assert not (ckpt / checkpoints.MODEL_FILE).exists()
    state = checkpoints.load_state(ckpt)
    assert state["layout"] == "sharded" and state["world_size"] == 2 and len(state["rng"]) == 2
    assert "optimizer" not in state  # it is sharded with the weights
    assert (two_ranks / "samples" / "step_00000003.png").is_file()  # both ranks sampled, rank 0 wrote

    # the names are the bare model's, with no wrapper segment
    names = set(read_full(ckpt, "model"))
    assert names == set(load_file(step_dir(one_process, 3) / checkpoints.MODEL_FILE))
    assert not any("_fsdp" in n or "module." in n or "_orig_mod" in n for n in names)
    for use_ema in (False, True):
        assert_same_weights(ckpt, step_dir(one_process, 3), use_ema)


def test_sharded_checkpoint_resumes_on_one_rank_and_across_strategies(two_ranks, one_process, registry):
    sharded_2 = step_dir(two_ranks, 2)
    # written on two ranks, continued on one (still sharded, a one-rank group): the AdamW moments and
    # the EMA are resharded; step 3 equals the uninterrupted two-rank step 3
    one_rank = train_here(registry, two_ranks.parent / "one_rank", "train.strategy=fsdp", f"train.resume={sharded_2}")
    # the same checkpoint continued by a plain process (whole tensors read from the slices)
    plain = train_here(registry, two_ranks.parent / "plain", f"train.resume={sharded_2}")
    # and a plain (whole) checkpoint continued sharded: positional AdamW state becomes named slices
    from_whole = train_here(
        registry, two_ranks.parent / "from_whole", "train.strategy=fsdp", f"train.resume={step_dir(one_process, 2)}"
    )
    assert checkpoints.is_sharded(one_rank.checkpoint) and checkpoints.is_sharded(from_whole.checkpoint)
    assert checkpoints.load_state(one_rank.checkpoint)["world_size"] == 1
    for run in (one_rank, plain, from_whole):
        assert run.step == 3
        for use_ema in (False, True):
            assert_same_weights(run.checkpoint, step_dir(two_ranks, 3), use_ema)


def test_sharded_checkpoint_exports_to_safetensors_and_samples(two_ranks, tmp_path):
    """``madkit export`` writes the usual model.safetensors from the slices; ``madkit sample`` reads
    the export and the sharded checkpoint itself alike."""
    export = tmp_path / "export"
    assert cli(["export", str(two_ranks), "--out", str(export)]) == 0
    whole, slices = load_file(export / "model.safetensors"), read_full(step_dir(two_ranks, 3), "ema")
    assert whole.keys() == slices.keys() and all(torch.equal(whole[k], slices[k]) for k in whole)
    for source, folder in ((export, tmp_path / "a"), (two_ranks, tmp_path / "b")):
        args = ["sample", str(source), "--num", "2", "--steps", "2", "--out", str(folder), "--device", "cpu"]
        assert cli(args) == 0
    for i in range(2):
        assert (tmp_path / "a" / f"{i:06d}.png").read_bytes() == (tmp_path / "b" / f"{i:06d}.png").read_bytes()


# --------------------------------------------------------------------------- reliability of sharded checkpoints
def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock"))
    return to


def test_sharded_checkpoints_record_health_and_verify(two_ranks, tmp_path):
    from madkit.engine.checkpoints.verify import CorruptCheckpointError, verify_checkpoint
    from madkit.engine.training.health import newest_healthy, recorded_health

    ckpt = step_dir(two_ranks, 3)
    verify_checkpoint(ckpt)
    record = recorded_health(ckpt)
    whole = read_full(ckpt, "model")
    # the max |weight| of the slices, reduced over both ranks, is the whole model's
    assert record["passed"] and record["max_abs_weight"] == max(float(t.abs().max()) for t in whole.values())
    assert newest_healthy(two_ranks) == ckpt
    garbage = copy_run(two_ranks, tmp_path / "run")
    metadata = step_dir(garbage, 3) / checkpoints.SHARDED_DIR / ".metadata"
    metadata.write_bytes(os.urandom(metadata.stat().st_size))
    with pytest.raises(CorruptCheckpointError, match=f"{metadata}: damaged"):
        verify_checkpoint(step_dir(garbage, 3))


def test_a_damaged_sharded_checkpoint_is_skipped_and_its_step_trained_again(two_ranks, registry, tmp_path, capsys):
    """The newest sharded checkpoint has a truncated rank file: ``sample`` falls back to step 2 with a
    warning, and the run continues from step 2, sets step 3 aside and trains it again to the same weights."""
    run = copy_run(two_ranks, tmp_path / "run")
    target = step_dir(run, 3) / checkpoints.SHARDED_DIR / "__1_0.distcp"
    target.write_bytes(target.read_bytes()[:-100])
    capsys.readouterr()
    assert cli(["sample", str(run), "--num", "1", "--steps", "2", "--out", str(tmp_path / "s"), "--device", "cpu"]) == 0
    warning = capsys.readouterr().err
    assert f"skipping checkpoint {step_dir(run, 3)}: {target}" in warning
    assert f"using {step_dir(run, 2)} instead" in warning

    again = train_here(registry, run, "train.strategy=fsdp")
    assert again.step == 3 and [p.name for p in (run / "set-aside").iterdir()][0].endswith("-damaged")
    for use_ema in (False, True):
        assert_same_weights(again.checkpoint, step_dir(two_ranks, 3), use_ema)


@pytest.mark.parametrize("how", ["free-space-check", "write-fails"])
def test_a_full_disk_during_a_sharded_save_leaves_no_temp_folder(tmp_path, capsys, monkeypatch, how):
    import errno

    import torch.distributed.checkpoint as dcp

    from madkit.engine.checkpoints import disk_space

    if how == "free-space-check":
        monkeypatch.setattr(disk_space, "free_bytes", lambda folder: 4096)
    else:
        def full(state, checkpoint_id):
            Path(checkpoint_id).mkdir(parents=True, exist_ok=True)
            (Path(checkpoint_id) / "__0_0.distcp").write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(dcp, "save", full)
    out = tmp_path / "run"
    sets = [f"--set={s}" for s in [*COMMON, "train.strategy=fsdp"]]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli(["run", str(TINY), "--out", str(out), *sets]) == 1
    finally:
        torch.set_num_threads(before)
    line = capsys.readouterr().err.strip().splitlines()[0]
    assert "disk full" in line and "no checkpoint had been written yet" in line and "Traceback" not in line
    assert [p.name for p in (out / checkpoints.CHECKPOINTS).iterdir()] == []  # no temp folder, no checkpoint


def test_strategy_spec_problems(registry):
    from madkit.spec import SpecError

    bad = [
        ("train.shard_ranks=2", "train.shard_ranks"),
        ("train.strategy=fsdp,train.precision=fp16", "train.precision"),
        ("train.fsdp_param_dtype=bf16", "train.fsdp_param_dtype"),
        ("train.strategy=zero3", "train.strategy"),
    ]
    for sets, key in bad:
        with pytest.raises(SpecError) as info:
            load_spec(TINY, sets.split(","), registry)
        assert any(key in line for line in info.value.lines), (sets, info.value.lines)


def test_hsdp_mesh_shape():
    assert fsdp.mesh_shape("fsdp", 8, 0) == (8,)
    assert fsdp.mesh_shape("hsdp", 8, 4) == (2, 4)
    with pytest.raises(ValueError, match="train.shard_ranks = 3"):
        fsdp.mesh_shape("hsdp", 8, 3)


# --------------------------------------------------------------------------- slow: more ranks, more policies
@pytest.mark.slow
def test_one_rank_checkpoint_resumes_on_two(two_ranks, registry):
    first = train_here(registry, two_ranks.parent / "first_on_one", "train.strategy=fsdp", stop_after=2)
    out = two_ranks.parent / "then_on_two"
    sets = [f"--set={s}" for s in [*COMMON, "train.strategy=fsdp", f"train.resume={first.checkpoint}"]]
    torchrun(2, "run", str(TINY), "--out", str(out), *sets)
    for use_ema in (False, True):
        assert_same_weights(step_dir(out, 3), step_dir(two_ranks, 3), use_ema)


@pytest.mark.slow
def test_whole_checkpoint_resumes_sharded_on_two(two_ranks, one_process):
    """AdamW's positional state from a plain run, sliced by parameter name onto two FSDP ranks."""
    out = two_ranks.parent / "whole_then_two"
    resume = f"train.resume={step_dir(one_process, 2)}"
    torchrun(2, "run", str(TINY), "--out", str(out), *[f"--set={s}" for s in [*COMMON, "train.strategy=fsdp", resume]])
    for use_ema in (False, True):
        assert_same_weights(step_dir(out, 3), step_dir(two_ranks, 3), use_ema)


@pytest.mark.slow
def test_hsdp_on_four_ranks_with_activation_checkpointing_equals_one_process(tmp_path, registry):
    """Two replicas of two shards each (a 2 x 2 mesh): gradients reduce-scattered within a pair and
    all-reduced across the pairs; blocks recomputed in backward."""
    hsdp = ["train.strategy=hsdp", "train.shard_ranks=2", "train.activation_checkpointing=true"]
    torchrun(4, "run", str(TINY), "--out", str(tmp_path / "hsdp"), *[f"--set={s}" for s in [*COMMON, *hsdp]])
    single = train_here(registry, tmp_path / "one")
    for use_ema in (False, True):
        assert_same_weights(step_dir(tmp_path / "hsdp", 3), single.checkpoint, use_ema)


def initial_weights(registry, *sets: str) -> dict[str, torch.Tensor]:
    """The weights every run of the spec starts from (rank 0's seeded initialisation)."""
    from madkit.build import build_experiment

    spec = load_spec(TINY, [*COMMON, *sets], registry).spec
    rng.seed_globals(spec.seed, 0)
    device = "cpu" if spec.train.device == "auto" else spec.train.device  # initialised where the run did
    model = build_experiment(spec, registry, device=device).model
    return {k: v.cpu() for k, v in checkpoints.unwrapped_state_dict(model).items()}


def assert_similar_updates(a: dict, b: dict, start: dict, cosine: float) -> None:
    """The training updates (weights minus their start) point the same way and have similar size."""
    da = torch.cat([(a[k] - start[k]).flatten() for k in start])
    db = torch.cat([(b[k] - start[k]).flatten() for k in start])
    assert torch.nn.functional.cosine_similarity(da, db, dim=0) > cosine
    assert 0.95 < da.norm() / db.norm() < 1.05


@pytest.mark.slow
def test_bf16_gathered_blocks_train_like_bf16_autocast(tmp_path, registry):
    """train.precision = bf16 under FSDP gathers the blocks in bf16; one process runs bf16 autocast
    over fp32 weights. Rounding differs, so the updates are compared, not the bits."""
    bf16 = ["train.precision=bf16"]
    sets = [f"--set={s}" for s in [*COMMON, *bf16, "train.strategy=fsdp"]]
    torchrun(2, "run", str(TINY), "--out", str(tmp_path / "fsdp"), *sets)
    single = train_here(registry, tmp_path / "one", *bf16)
    start = initial_weights(registry, *bf16)
    sharded = checkpoints.load_weights(step_dir(tmp_path / "fsdp", 3), False)
    assert_similar_updates(sharded, checkpoints.load_weights(single.checkpoint, False), start, cosine=0.99)


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_cuda_fsdp_bf16_trains_like_plain_bf16(tmp_path, registry):
    """One CUDA rank (an nccl group of one), blocks gathered in bf16, two accumulated micro-batches,
    against the plain bf16 autocast run; FlexAttention on both."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cuda = ["train.device=cuda", "train.precision=bf16", "train.batch=8", "train.micro_batch=4"]
    sharded = train_here(registry, tmp_path / "fsdp", *cuda, "train.strategy=fsdp")
    plain = train_here(registry, tmp_path / "plain", *cuda)
    start = initial_weights(registry, *cuda)
    a = checkpoints.load_weights(sharded.checkpoint, False)
    b = checkpoints.load_weights(plain.checkpoint, False)
    assert_similar_updates(a, b, start, cosine=0.98)
