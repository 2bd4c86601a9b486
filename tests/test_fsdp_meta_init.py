"""A sharded run builds its model on the meta device and gives each rank only its slices
(madkit/engine/training/sharded_build.py): the same weights, buffers, EMA and generator states as the
way it was built before (whole on every rank, rank 0's weights broadcast, then sharded), with two
gloo ranks on the CPU in forked processes. ``setup.build_on_meta = False`` is that former way.

Each rank's global generator is compared too: a meta build must leave it where the whole build left
it, or whatever draws from it later (a model's dropout) would draw differently.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch

from madkit.engine import checkpoints, distributed
from madkit.engine.checkpoints.sharded import read_full
from madkit.engine.distributed import deferred_init
from madkit.engine.training import setup as trainer_setup
from madkit.engine.training.loop import Trainer, train
from madkit.experiment_spec import load_spec
from madkit.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments/tiny/madformer.toml"
SETS = [
    "train.strategy=fsdp", "train.steps=3", "train.batch=4", "train.micro_batch=1", "train.ckpt_every=3",
    "train.sample_every=0", "train.threads=1", "log.sinks=[]", "log.progress=false",
]  # fmt: skip
TOL = 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: Path, job: str, sets: list[str]) -> None:
    """One forked rank: join the gloo group, then do ``job`` once on the meta build and once the former way."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))  # fmt: skip
    torch.set_num_threads(1)
    try:
        env = distributed.setup("cpu", group_when_alone=True)
        registry = Registry.load()
        loaded = load_spec(TINY, [*SETS, *sets], registry)
        seen = {}
        for meta in (True, False):
            trainer_setup.build_on_meta = meta
            if job == "train":
                train(loaded, registry, out / f"meta_{meta}")
            else:
                seen[meta] = _built(loaded, registry, out / f"meta_{meta}", env)
        if job == "build":
            _compare(*seen.values())
        distributed.teardown(env)
    except BaseException:
        (out / f"rank{rank}.error").write_text(traceback.format_exc())
        raise


def _built(loaded, registry, out: Path, env) -> dict:
    """What the trainer holds once constructed: the whole model, EMA and buffers, and the generator."""
    trainer = Trainer(loaded, registry, out, env)
    try:
        assert trainer.init_program is None or trainer_setup.build_on_meta
        if trainer_setup.build_on_meta:
            assert trainer.init_program is not None, "the tiny MADFormer must build on the meta device"
        state = {f"model.{k}": _whole(v) for k, v in trainer.model.state_dict().items()}
        state.update({f"ema.{k}": _whole(v) for k, v in trainer.ema.module.state_dict().items()})
        state.update({f"buffer.{k}": v.clone() for k, v in trainer.model.named_buffers()})
        state["rng"] = torch.get_rng_state()
        assert not _meta_tensors(trainer.model), _meta_tensors(trainer.model)
        return state
    finally:
        trainer.reporter.close()
        trainer.lock.release()


def _whole(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t.detach().clone()


def _meta_tensors(model: torch.nn.Module) -> list[str]:
    """Tensors left on the meta device anywhere in the model (parameters, buffers, plain attributes)."""
    found = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            for v in (value, *getattr(value, "__dict__", {}).values()):
                if isinstance(v, torch.Tensor) and v.device.type == "meta":
                    found.append(f"{name}.{attr}")
    return found


def _compare(meta: dict, whole: dict) -> None:
    assert meta.keys() == whole.keys()
    for k, value in meta.items():
        assert torch.equal(value, whole[k]), f"{k} differs between the meta build and the whole build"


def _run_ranks(tmp_path: Path, job: str, *sets: str, world: int = 2) -> None:
    # spawned, not forked: a child forked from a test process whose thread pools (OpenMP, autograd) have run
    # can crash (seen: SIGSEGV in both ranks of the build job in a full run) or refuse to run backward
    ctx, port = multiprocessing.get_context("spawn"), _free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, tmp_path, job, list(sets))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    errors = [f.read_text() for f in sorted(tmp_path.glob("rank*.error"))]
    assert all(p.exitcode == 0 for p in procs) and not errors, "\n".join(errors) or [p.exitcode for p in procs]


def test_meta_build_gives_the_whole_builds_weights_buffers_ema_and_generators(tmp_path):
    _run_ranks(tmp_path, "build")


@pytest.mark.slow
def test_meta_build_trains_three_steps_to_the_whole_builds_weights(tmp_path):
    _run_ranks(tmp_path, "train")
    a, b = tmp_path / "meta_True", tmp_path / "meta_False"
    step = checkpoints.CHECKPOINTS + "/" + checkpoints.step_dir_name(3)
    for part in ("model", "ema"):
        wa, wb = read_full(a / step, part), read_full(b / step, part)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], atol=TOL, rtol=0, msg=f"{part}: {k}")


def test_replay_holds_one_tensor_at_a_time_and_gives_the_values_of_a_real_build():
    """Linear layers whose construction draws defaults that are drawn again (as MADFormer's
    reset_parameters does): the replay holds at most one weight at a time, frees every value that is
    overwritten unread, and gives bit for bit what building on the CPU from the same seed gives."""

    def build():
        layers = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(6)])
        for layer in layers:
            torch.nn.init.xavier_uniform_(layer.weight)
        layers.register_buffer("table", torch.arange(8.0).cos(), persistent=False)
        return layers

    with torch.device("meta"):
        _, program = deferred_init.record(build)
    torch.manual_seed(3)
    ref = build()
    torch.manual_seed(3)
    got = {}
    peak = program.replay(torch.device("cpu"), lambda name, full: got.__setitem__(name, full.clone()))
    assert set(got) == {n for n, _ in [*ref.named_parameters(), *ref.named_buffers()]}
    for n, t in [*ref.named_parameters(), *ref.named_buffers()]:
        assert torch.equal(got[n], t), n
    one_weight = 64 * 64 * 4
    assert one_weight <= peak < 2 * one_weight  # a weight and at most some biases, never two weights


def test_a_construction_that_draws_on_the_cpu_is_refused():
    """A real tensor drawn on the CPU while building (a random block order) would differ per rank."""

    def shuffles():
        layer = torch.nn.Linear(4, 4)
        layer.register_buffer("order", torch.randperm(4, device="cpu"))
        return layer

    with torch.device("meta"), pytest.raises(deferred_init.DeferredInitError, match="on the CPU"):
        deferred_init.record(shuffles)


def test_init_from_fills_the_slices_of_a_meta_build(tmp_path):
    """``train.init_from`` in a sharded run (a one-rank group) loads the source's whole EMA tensors
    into the meta-built model's slices: one step later it matches a plain run started the same way."""
    registry = Registry.load()
    one_step = ["train.steps=1", "train.ckpt_every=1", "train.sample_every=0", "train.threads=1", "log.sinks=[]",
                "log.progress=false", "train.batch=4", "train.micro_batch=2"]  # fmt: skip
    source = train(load_spec(TINY, one_step, registry), registry, tmp_path / "source").run_dir
    runs = {}
    for strategy in ("fsdp", "ddp"):
        sets = [*one_step, f"train.strategy={strategy}", f"train.init_from={str(source)!r}"]
        runs[strategy] = train(load_spec(TINY, sets, registry), registry, tmp_path / strategy).checkpoint
    assert checkpoints.is_sharded(runs["fsdp"]) and not checkpoints.is_sharded(runs["ddp"])
    for use_ema in (False, True):
        a, b = checkpoints.load_weights(runs["fsdp"], use_ema), checkpoints.load_weights(runs["ddp"], use_ema)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=TOL, rtol=0, msg=k)


def test_a_construction_that_cannot_be_recorded_is_built_whole_with_a_note(monkeypatch, capsys):
    """A constructor reading a value on the meta device (``.item()``) stops the recording; the
    trainer then builds the model whole, as before, and says so."""
    from madkit.build import PluginBuildError
    from madkit.engine.training import sharded_build

    def reads_a_value():
        torch.nn.Linear(4, 4).weight.sum().item()

    with torch.device("meta"), pytest.raises(deferred_init.DeferredInitError, match="_local_scalar_dense"):
        deferred_init.record(reads_a_value)

    registry = Registry.load()
    spec = load_spec(TINY, SETS, registry).spec
    real_build = sharded_build.build_experiment

    def build_experiment(spec, registry, device="cpu", meta=False):
        if meta:  # what build_part makes of the plugin's failure
            try:
                with torch.device("meta"):
                    deferred_init.record(reads_a_value)
            except deferred_init.DeferredInitError as exc:
                raise PluginBuildError("[model] kind 'madformer' could not be built") from exc
        return real_build(spec, registry, device=device, meta=meta)

    monkeypatch.setattr(sharded_build, "build_experiment", build_experiment)
    before = torch.get_rng_state()
    experiment, program = sharded_build.build(spec, registry, torch.device("cpu"), is_main=True)
    assert program is None and next(experiment.model.parameters()).device.type == "cpu"
    assert "note: building the whole model on every rank before sharding" in capsys.readouterr().err
    assert not torch.equal(before, torch.get_rng_state())  # the whole build drew its initialisation
