"""Noise schedules: the contract suite on every built-in, plus each schedule's exact numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from madkit_diffusion.schedules.cosine import CosineConfig
from madkit_diffusion.schedules.ddpm_linear import DDPMLinearConfig
from madkit_diffusion.schedules.flow import FlowConfig

from madkit.registry import Registry
from madkit.spec import Problems, make_converter, structure
from madkit.testing import ScheduleContract


# --------------------------------------------------------------------------- contract
class TestDDPMLinearContract(ScheduleContract):
    @pytest.fixture(params=["epsilon", "v", "x0"])
    def config(self, request):
        return DDPMLinearConfig(prediction=request.param)


class TestCosineContract(ScheduleContract):
    @pytest.fixture(params=["epsilon", "v", "x0"])
    def config(self, request):
        return CosineConfig(prediction=request.param)


class TestFlowContract(ScheduleContract):
    @pytest.fixture(params=["logit-normal", "uniform"])
    def config(self, request):
        return FlowConfig(timestep_sampling=request.param)


# --------------------------------------------------------------------------- DDPM family
def test_ddpm_linear_is_the_reference_schedule():
    s = DDPMLinearConfig().build()
    assert s.num_train_timesteps == 1000 and s.prediction == "epsilon"
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(s.betas.double().diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=0.01)  # what is left of the signal at t = 999


def test_cosine_follows_the_improved_ddpm_alpha_bar():
    s = CosineConfig().build()
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    expected = f(t) / f(torch.zeros(()))
    # equal to the closed form wherever beta is not clipped (all but the very last steps)
    torch.testing.assert_close(s.alphas_cumprod[:990].double(), expected[:990], rtol=1e-5, atol=1e-7)
    assert s.betas.max().item() == pytest.approx(0.999) and (s.betas.double().diff() >= 0).all()


def test_ddpm_timesteps_are_integer_steps_covering_the_whole_range():
    s = DDPMLinearConfig().build()
    t = s.sample_timesteps((20000,), torch.Generator().manual_seed(0), "cpu")
    assert t.dtype == torch.int64 and t.min() == 0 and t.max() == 999
    assert s.model_time(t).dtype == torch.float32 and torch.equal(s.model_time(t), t.float())


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_ddpm_targets_are_what_each_prediction_names(prediction):
    s = CosineConfig(prediction=prediction).build()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    a = s.alphas_cumprod[t].double().sqrt()[:, None]
    sigma = (1 - s.alphas_cumprod[t].double()).sqrt()[:, None]
    torch.testing.assert_close(s.add_noise(x0, noise, t), a * x0 + sigma * noise)
    expected = {"epsilon": noise, "v": a * noise - sigma * x0, "x0": x0}[prediction]
    torch.testing.assert_close(s.target(x0, noise, t), expected)


def test_ddpm_refuses_float_timesteps_with_the_fix():
    s = DDPMLinearConfig().build()
    with pytest.raises(TypeError, match="int64 step indices.*model_time"):
        s.add_noise(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1.0, 2.0]))


# --------------------------------------------------------------------------- flow
def test_flow_interpolates_and_targets_the_velocity():
    s = FlowConfig().build()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    t = torch.rand(3, 2, generator=g)
    xt, v = s.add_noise(x0, noise, t), s.target(x0, noise, t)
    torch.testing.assert_close(xt, (1 - t[..., None]) * x0 + t[..., None] * noise)
    torch.testing.assert_close(v, noise - x0)
    # the velocity is the time derivative of the path: x_{t+h} = x_t + h v
    h = 1e-3
    torch.testing.assert_close(s.add_noise(x0, noise, t + h), xt + h * v, rtol=1e-4, atol=1e-4)
    # endpoints: clean data at t = 0, pure noise at t = 1
    torch.testing.assert_close(s.add_noise(x0, noise, torch.zeros(3, 2)), x0)
    torch.testing.assert_close(s.add_noise(x0, noise, torch.ones(3, 2)), noise)
    torch.testing.assert_close(s.model_time(torch.tensor([0.0, 0.25, 1.0])), torch.tensor([0.0, 250.0, 1000.0]))


def test_flow_timestep_distributions():
    g = torch.Generator().manual_seed(0)
    uniform = FlowConfig(timestep_sampling="uniform").build().sample_timesteps((20000,), g, "cpu")
    assert 0 <= uniform.min() and uniform.max() < 1
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.01) and uniform.std().item() == pytest.approx(
        12**-0.5, abs=0.01
    )
    ln = FlowConfig(logit_mean=0.5, logit_std=0.8).build().sample_timesteps((20000,), g, "cpu")
    logit = torch.log(ln / (1 - ln))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.02) and logit.std().item() == pytest.approx(0.8, abs=0.02)


# --------------------------------------------------------------------------- configs in specs
def _structure(cls, data):
    return structure(make_converter(Registry()), data, cls, "schedule")


@pytest.mark.parametrize("cls", [DDPMLinearConfig, CosineConfig])
def test_ddpm_family_rejects_velocity_with_a_pointer_to_flow(cls):
    with pytest.raises(Problems) as info:
        _structure(cls, {"prediction": "velocity"})
    (problem,) = info.value.problems
    assert problem.path == "schedule.prediction" and 'kind = "flow"' in problem.message


def test_flow_rejects_ddpm_predictions_with_a_pointer_to_ddpm():
    with pytest.raises(Problems) as info:
        _structure(FlowConfig, {"prediction": "epsilon", "logit_std": 0.0})
    problems = {p.path: p.message for p in info.value.problems}
    assert "ddpm-linear" in problems["schedule.prediction"]
    assert "> 0" in problems["schedule.logit_std"]


def test_direct_construction_validates_too():
    with pytest.raises(ValueError, match="'epsilon', 'v' or 'x0'"):
        DDPMLinearConfig(prediction="velocity")
    with pytest.raises(ValueError, match="beta_start"):
        DDPMLinearConfig(beta_start=0.02, beta_end=0.01)


def test_kinds_are_registered_by_madkit():
    env = {**os.environ, "MADKIT_PLUGINS": "diffusion", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "madkit", "plugins", "--json"], capture_output=True, text=True, env=env, check=True
    )
    kinds = {(r["interface"], r["kind"]): r for r in json.loads(out.stdout)}
    for key in [
        ("schedule", "ddpm-linear"),
        ("schedule", "cosine"),
        ("schedule", "flow"),
        ("sampler", "ddpm"),
        ("sampler", "ddim"),
        ("sampler", "dpm-solver++"),
        ("sampler", "euler"),
    ]:
        assert kinds[key]["distribution"] == "madkit" and kinds[key]["plugin"] == "diffusion", key


class _Without:
    """A schedule whose diffusers_config() lacks one key: what a third-party schedule might ship."""

    def __init__(self, schedule, key: str):
        self._schedule, self._key = schedule, key

    def __getattr__(self, name):
        return getattr(self._schedule, name)

    def diffusers_config(self):
        return {k: v for k, v in self._schedule.diffusers_config().items() if k != self._key}


@pytest.mark.parametrize(("config", "key"), [(DDPMLinearConfig(), "trained_betas"), (FlowConfig(), "shift")])
def test_the_contract_catches_a_schedule_the_samplers_could_not_use(config, key):
    contract = ScheduleContract()
    contract.test_diffusers_config_has_what_the_samplers_need(config.build())  # the real one passes
    with pytest.raises(AssertionError, match=key):
        contract.test_diffusers_config_has_what_the_samplers_need(_Without(config.build(), key))
