"""Samplers: the contract suite (Gaussian toy included) for every built-in, plus their specifics."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from madkit_diffusion.samplers.ddim import DDIMSamplerConfig
from madkit_diffusion.samplers.ddpm import DDPMSamplerConfig
from madkit_diffusion.samplers.dpm_solver import DPMSolverSamplerConfig
from madkit_diffusion.samplers.euler import EulerSamplerConfig
from madkit_diffusion.schedules.cosine import CosineConfig
from madkit_diffusion.schedules.ddpm_linear import DDPMLinearConfig
from madkit_diffusion.schedules.flow import FlowConfig

from madkit.testing import SamplerContract, exact_gaussian_denoiser
from madkit.testing.diffusion import assert_gaussian, sample_with

DDPM_FAMILY_SCHEDULES = [cls(prediction=p) for cls in (DDPMLinearConfig, CosineConfig) for p in ("epsilon", "v", "x0")]
SCHEDULE_IDS = [
    f"{'linear' if isinstance(c, DDPMLinearConfig) else 'cosine'}-{c.prediction}" for c in DDPM_FAMILY_SCHEDULES
]
DDPM_FAMILY_SAMPLERS = [
    DDPMSamplerConfig(),
    DDIMSamplerConfig(),
    DDPMSamplerConfig(spacing="leading"),
    DPMSolverSamplerConfig(),
]
MU, STD = SamplerContract.toy_mean, SamplerContract.toy_std


# --------------------------------------------------------------------------- contract
# Toy step budgets, chosen so each sampler's own error sits well inside the 3% std tolerance.
# Measured std errors (linear / cosine) on the 20000-point float32 toy: ancestral DDPM 1.7% / 0.7%
# at 250 steps; DDIM 1.4% / 0.7% at 200 (2.8% / 1.5% at 100); DPM-Solver++ 2M 0.4% / 0.3% at 50
# (2.1% / 1.3% at 25); Euler on the flow 1.4% at 100. Mean errors are 0.005-0.017 std, the
# sampling noise of the 20000 starting points. A model 10% off lands at 8.7-10% and fails.
class DDPMFamilyContract(SamplerContract):
    @pytest.fixture(params=DDPM_FAMILY_SCHEDULES, ids=SCHEDULE_IDS)
    def schedule_config(self, request):
        return request.param


class TestDDPM(DDPMFamilyContract):
    @pytest.fixture
    def sampler_config(self):
        return DDPMSamplerConfig()

    @pytest.fixture
    def toy_steps(self):
        return 250


class TestDDIM(DDPMFamilyContract):
    @pytest.fixture
    def sampler_config(self):
        return DDIMSamplerConfig()

    @pytest.fixture
    def toy_steps(self):
        return 200


class TestStochasticDDIM(SamplerContract):
    @pytest.fixture
    def schedule_config(self):
        return DDPMLinearConfig()

    @pytest.fixture
    def sampler_config(self):
        return DDIMSamplerConfig(eta=1.0)

    @pytest.fixture
    def toy_steps(self):
        return 250


class TestDPMSolver(DDPMFamilyContract):
    @pytest.fixture
    def sampler_config(self):
        return DPMSolverSamplerConfig()

    @pytest.fixture
    def toy_steps(self):
        return 50


class TestDPMSolverLinspace(SamplerContract):
    """The reference's set-up: DPM-Solver++ built from a default DDIM config, i.e. "linspace" spacing."""

    @pytest.fixture
    def schedule_config(self):
        return DDPMLinearConfig()

    @pytest.fixture
    def sampler_config(self):
        return DPMSolverSamplerConfig(spacing="linspace")


class TestDDIMClipped(SamplerContract):
    """The reference's DDIM: "leading" spacing and the x0 estimate clipped to [-1, 1]. Clipping is only
    exact for data inside [-1, 1], so the Gaussian toy lives there (4.4 stds from either bound); DDIM
    needs more steps on data this narrow (std error 1.0% at 500 steps, 2.3% at 250)."""

    toy_mean = torch.tensor([0.1, -0.1], dtype=torch.float64)
    toy_std = torch.tensor([0.25, 0.2], dtype=torch.float64)

    @pytest.fixture
    def schedule_config(self):
        return DDPMLinearConfig()

    @pytest.fixture
    def sampler_config(self):
        return DDIMSamplerConfig(spacing="leading", clip_sample=True)

    @pytest.fixture
    def toy_steps(self):
        return 500


class TestEuler(SamplerContract):
    @pytest.fixture(params=["logit-normal", "uniform"])
    def schedule_config(self, request):
        return FlowConfig(timestep_sampling=request.param)

    @pytest.fixture
    def sampler_config(self):
        return EulerSamplerConfig()

    @pytest.fixture
    def toy_steps(self):
        return 100


# --------------------------------------------------------------------------- training == sampling
@pytest.mark.parametrize("sampler_config", DDPM_FAMILY_SAMPLERS, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("schedule_config", [DDPMLinearConfig(), CosineConfig()], ids=["linear", "cosine"])
def test_sampler_uses_the_exact_training_noise_levels(sampler_config, schedule_config):
    schedule = schedule_config.build()
    run = sampler_config.build(schedule=schedule).start(10)
    assert torch.equal(run.scheduler.alphas_cumprod, schedule.alphas_cumprod)
    assert run.scheduler.config.prediction_type == "epsilon"


def test_sampling_with_the_wrong_schedule_fails_the_toy():
    """A broken sampler (tables of another schedule than the model was trained with) is caught."""
    trained = CosineConfig().build()
    sampler = DDIMSamplerConfig().build(schedule=DDPMLinearConfig().build())
    samples = sample_with(sampler, exact_gaussian_denoiser(trained, MU, STD), (20000, 2), 100)
    with pytest.raises(AssertionError):
        assert_gaussian(samples, MU, STD, SamplerContract.toy_mean_tol, 0.03)


def test_trailing_spacing_starts_at_the_noisiest_training_step():
    schedule = DDPMLinearConfig().build()
    trailing = DDIMSamplerConfig().build(schedule=schedule).start(10)
    assert [int(t) for t in trailing.timesteps] == list(range(999, 0, -100))
    leading = DDIMSamplerConfig(spacing="leading").build(schedule=schedule).start(10)
    assert int(leading.timesteps[0]) == 900 and int(leading.timesteps[-1]) == 0


def test_dpm_solver_defaults_are_the_reference_sampler():
    sampler = DPMSolverSamplerConfig().build(schedule=DDPMLinearConfig().build())
    config = sampler.start().scheduler.config
    assert sampler.steps == 250 and sampler.guidance == 1.0
    assert config.algorithm_type == "dpmsolver++" and config.solver_order == 2


def _step_through(run, native_scheduler, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Final states of madkit's run and a bare diffusers scheduler fed the same model outputs."""
    native_scheduler.set_timesteps(steps)
    assert [int(t) for t in run.timesteps] == native_scheduler.timesteps.tolist()
    x = 3 * torch.randn(4, 8, generator=torch.Generator().manual_seed(0))  # x0 estimates beyond [-1, 1]
    y = x.clone()
    for t, native in zip(run.timesteps, native_scheduler.timesteps):
        x = run.step(0.5 * x + 0.1, t, x, None)
        y = native_scheduler.step(0.5 * y + 0.1, native, y).prev_sample
    return x, y


def test_reference_sampler_setups_are_diffusers_own_defaults(steps=250):
    """The released model samples with DPMSolverMultistepScheduler.from_config(DDIMScheduler().config)
    (linspace spacing: the loop ends at t = 4 for 250 steps) or DDIMScheduler() (leading, clip_sample)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    schedule = DDPMLinearConfig().build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        dpm = DPMSolverSamplerConfig(spacing="linspace").build(schedule=schedule).start(steps)
        x, y = _step_through(dpm, DPMSolverMultistepScheduler.from_config(DDIMScheduler().config), steps)
    torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)  # betas: float64 here, float32 there (1 ulp)
    assert int(dpm.timesteps[-1]) == 4
    ddim = DDIMSamplerConfig(spacing="leading", clip_sample=True).build(schedule=schedule).start(steps)
    x, y = _step_through(ddim, DDIMScheduler(), steps)
    torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    assert int(ddim.timesteps[-1]) == 0
    unclipped = DDIMSamplerConfig(spacing="leading").build(schedule=schedule).start(steps)
    assert not torch.allclose(_step_through(unclipped, DDIMScheduler(), steps)[0], y)  # clip_sample is live


def test_euler_hands_the_model_the_same_time_diffusers_uses():
    run = EulerSamplerConfig().build(schedule=FlowConfig().build()).start(20)
    times = torch.stack([run.model_time(t) for t in run.timesteps])
    torch.testing.assert_close(times, run.scheduler.timesteps.float())
    assert run.timesteps[0].item() == 1.0 and 0 < run.timesteps[-1].item() < 0.01


def test_stochastic_samplers_draw_their_noise_from_each_images_generator():
    sampler = DDPMSamplerConfig().build(schedule=DDPMLinearConfig().build())
    model = exact_gaussian_denoiser(sampler.schedule, MU, STD)

    def final(seeds):
        return sample_with(sampler, model, (2, 2), 20, generators=[torch.Generator().manual_seed(s) for s in seeds])

    a, b = final((1, 2)), final((1, 3))
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])


def test_starting_a_run_raises_no_warning():
    """diffusers' DPM-Solver set_timesteps trips a numpy DeprecationWarning; start() filters it."""
    sampler = DPMSolverSamplerConfig().build(schedule=DDPMLinearConfig().build())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler.start(20)


def test_more_steps_than_training_timesteps_is_refused():
    sampler = DDIMSamplerConfig().build(schedule=DDPMLinearConfig().build())
    with pytest.raises(ValueError, match="at most 1000"):
        sampler.start(1001)


def test_step_errors_say_how_to_fix_them():
    sampler = DPMSolverSamplerConfig().build(schedule=CosineConfig().build())
    run, x = sampler.start(2), torch.zeros(1, 3)
    with pytest.raises(ValueError, match="in order"):
        run.step(x, run.timesteps[1], x, None)
    with pytest.raises(ValueError, match="one per batch element"):
        run.step(x, run.timesteps[0], x, [torch.Generator(), torch.Generator()])
    with pytest.raises(ValueError, match="not one of this run's timesteps"):
        run.step(x, torch.tensor(5), x, None)
    for t in run.timesteps:
        x = run.step(x, t, x, None)
    with pytest.raises(RuntimeError, match=r"sampler.start\(\)"):
        run.step(x, run.timesteps[-1], x, None)


def test_a_timestep_equal_in_value_is_accepted():
    sampler = DDIMSamplerConfig().build(schedule=DDPMLinearConfig().build())
    run, x = sampler.start(3), torch.zeros(2, 2)
    for t in run.timesteps:
        x = run.step(x, t.clone(), x, None)  # a copy (e.g. after .to(device)) is matched by value


# --------------------------------------------------------------------------- schedule / sampler pairing
@pytest.mark.parametrize("sampler_config", [DDPMSamplerConfig(), DDIMSamplerConfig(), DPMSolverSamplerConfig()])
def test_ddpm_family_samplers_refuse_the_flow_schedule(sampler_config):
    with pytest.raises(ValueError, match="use sampler kind 'euler' with schedule kind 'flow'"):
        sampler_config.build(schedule=FlowConfig().build())
    (problem,) = sampler_config.check({"spec": SimpleNamespace(schedule=FlowConfig())})
    assert problem.path == "kind" and "'velocity'" in problem.message


@pytest.mark.parametrize("schedule_config", [DDPMLinearConfig(), CosineConfig(prediction="v")])
def test_euler_refuses_ddpm_family_schedules(schedule_config):
    with pytest.raises(
        ValueError, match="use sampler kind 'ddpm', 'ddim' or 'dpm-solver\\+\\+', or schedule kind 'flow'"
    ):
        EulerSamplerConfig().build(schedule=schedule_config.build())
    (problem,) = EulerSamplerConfig().check({"spec": SimpleNamespace(schedule=schedule_config)})
    assert problem.path == "kind"


def test_matching_pairs_and_missing_schedules_pass_the_check():
    assert list(EulerSamplerConfig().check({"spec": SimpleNamespace(schedule=FlowConfig())})) == []
    assert list(DDIMSamplerConfig().check({"spec": SimpleNamespace(schedule=CosineConfig(prediction="x0"))})) == []
    # a broken schedule table structures to None: its own problems are reported, not a pairing one
    assert list(DDIMSamplerConfig().check({"spec": SimpleNamespace(schedule=None)})) == []


def test_sampler_config_validation_names_the_fix():
    with pytest.raises(ValueError, match="1.0 turns classifier-free guidance off"):
        DDIMSamplerConfig(guidance=-1.0)
    with pytest.raises(ValueError, match="'trailing', 'leading', 'linspace'"):
        DDPMSamplerConfig(spacing="even")
    with pytest.raises(ValueError, match="0 deterministic DDIM"):
        DDIMSamplerConfig(eta=2.0)
    with pytest.raises(ValueError, match=">= 1"):
        EulerSamplerConfig(steps=0)


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize(
    "schedule_config, sampler_config",
    [
        (DDPMLinearConfig(), DDPMSamplerConfig()),
        (CosineConfig(), DPMSolverSamplerConfig()),
        (FlowConfig(), EulerSamplerConfig()),
    ],
    ids=["ddpm", "dpm-solver++", "euler"],
)
def test_cuda_loop_matches_cpu(schedule_config, sampler_config):
    """Timesteps on the GPU, scheduler tables on the CPU, per-image CPU generators: same result."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    sampler = sampler_config.build(schedule=schedule_config.build())
    model = exact_gaussian_denoiser(sampler.schedule, MU, STD)
    results = {}
    for device in ("cpu", "cuda"):
        gens = [torch.Generator().manual_seed(i) for i in range(4)]
        x = torch.cat([torch.randn(1, 2, generator=g) for g in gens]).to(device)
        run = sampler.start(20, device=device)
        for t in run.timesteps:
            assert t.device.type == device
            x = run.step(model(x, t), t, x, gens)
        assert x.device.type == device
        results[device] = x.cpu()
    torch.testing.assert_close(results["cuda"], results["cpu"], rtol=1e-4, atol=1e-4)
