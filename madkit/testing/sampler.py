"""The sampler contract suite: subclass ``SamplerContract`` in your plugin's tests (see diffusion.py's
notes on the exact Gaussian denoiser every check samples with)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from madkit.interfaces import NoiseSchedule, Sampler
from madkit.registry import Registry
from madkit.spec import make_converter
from madkit.testing.diffusion import (
    Denoiser,
    assert_gaussian,
    exact_gaussian_denoiser,
    sample_from,
    sample_with,
)


class SamplerContract:
    """Checks every ``Sampler`` must pass. Provide ``schedule_config`` and ``sampler_config`` fixtures.

    The Gaussian toy draws ``toy_samples`` points in ``toy_steps`` steps and must match the data
    within ``toy_mean_tol`` (in data stds; 4 standard errors at 20000 points) and ``toy_std_tol``
    (relative). Override the two fixtures per sampler: first-order stochastic samplers need more
    steps or a looser std tolerance than high-order solvers. The tolerance must stay below 10%,
    because a model of a Gaussian 10% off (mean or std) must fail the same check.
    """

    toy_mean = torch.tensor([0.5, -1.0], dtype=torch.float64)
    toy_std = torch.tensor([0.5, 2.0], dtype=torch.float64)
    toy_samples = 20000
    toy_mean_tol = 0.03

    @pytest.fixture
    def schedule_config(self) -> Any:
        raise NotImplementedError("define a `schedule_config` fixture returning a schedule config")

    @pytest.fixture
    def sampler_config(self) -> Any:
        raise NotImplementedError("define a `sampler_config` fixture returning your sampler config")

    @pytest.fixture
    def toy_steps(self) -> int:
        return 50

    @pytest.fixture
    def toy_std_tol(self) -> float:
        return 0.03

    @pytest.fixture
    def schedule(self, schedule_config) -> NoiseSchedule:
        return schedule_config.build()

    @pytest.fixture
    def sampler(self, sampler_config, schedule) -> Sampler:
        return sampler_config.build(schedule=schedule)

    def oracle(self, schedule: NoiseSchedule) -> Denoiser:
        return exact_gaussian_denoiser(schedule, self.toy_mean, self.toy_std)

    # ------------------------------------------------------------------ the loop
    def test_has_steps_guidance_and_noise_scale(self, sampler):
        assert isinstance(sampler.steps, int) and sampler.steps >= 1
        assert isinstance(sampler.guidance, float)
        assert sampler.init_noise_sigma > 0

    def test_timesteps_run_from_noisy_to_clean(self, sampler, schedule):
        run = sampler.start(7)
        assert len(run.timesteps) == 7
        times = torch.stack([run.model_time(t) for t in run.timesteps])
        assert (times[1:] < times[:-1]).all(), f"model times must decrease: {times.tolist()}"
        top = schedule.diffusers_config()["num_train_timesteps"]
        assert 0 <= times.min() and times.max() <= top
        assert len(sampler.start().timesteps) == sampler.steps  # default: the configured step count

    def test_model_time_matches_the_schedule(self, sampler, schedule):
        """A model trained with the schedule must see the same numbers when sampled."""
        run = sampler.start(5)
        for t in run.timesteps:
            torch.testing.assert_close(run.model_time(t), schedule.model_time(t))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_steps_keep_shape_and_dtype(self, sampler, schedule, dtype):
        model = self.oracle(schedule)
        x = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
        run = sampler.start(6)
        for t in run.timesteps:
            out = model(run.scale_input(x, t), t)
            assert out.dtype == dtype
            x = run.step(out, t, x, [torch.Generator().manual_seed(i) for i in range(3)])
            assert x.shape == (3, 4, 2) and x.dtype == dtype and torch.isfinite(x).all()

    def test_low_precision_model_output_keeps_the_state_dtype(self, sampler, schedule):
        model = self.oracle(schedule)
        x = torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
        run = sampler.start(4)
        for t in run.timesteps:
            x = run.step(model(x, t).bfloat16(), t, x, None)
            assert x.dtype == torch.float32

    def test_runs_are_independent(self, sampler, schedule):
        """Two interleaved runs (two blocks) give what each gives alone: no shared solver state."""
        model = self.oracle(schedule)
        a0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        b0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(4)]
        alone_a = sample_from(sampler, model, a0, 6, gens())
        alone_b = sample_from(sampler, model, b0, 6, gens())
        run_a, run_b, a, b, ga, gb = sampler.start(6), sampler.start(6), a0, b0, gens(), gens()
        for ta, tb in zip(run_a.timesteps, run_b.timesteps):
            a = run_a.step(model(a, ta), ta, a, ga)
            b = run_b.step(model(b, tb), tb, b, gb)
        torch.testing.assert_close(a, alone_a)
        torch.testing.assert_close(b, alone_b)

    def test_each_image_depends_only_on_its_own_generator(self, sampler, schedule):
        model = self.oracle(schedule)
        batch = sample_with(sampler, model, (3, 2), 5, generators=[torch.Generator().manual_seed(s) for s in (7, 8, 9)])
        alone = sample_with(sampler, model, (1, 2), 5, generators=[torch.Generator().manual_seed(8)])
        torch.testing.assert_close(batch[1:2], alone)

    def test_misuse_is_refused(self, sampler, schedule):
        """Skipped steps, a wrong generator count, a mis-shaped output, a finished run, zero steps."""
        run = sampler.start(3)
        x = torch.zeros(2, 2)
        with pytest.raises(ValueError):
            run.step(x, run.timesteps[1], x, None)
        with pytest.raises(ValueError):
            run.step(x, run.timesteps[0], x, [torch.Generator()])
        with pytest.raises(ValueError):
            run.step(torch.zeros(2, 3), run.timesteps[0], x, None)
        for t in run.timesteps:
            x = run.step(torch.zeros_like(x), t, x, None)
        with pytest.raises((RuntimeError, ValueError)):
            run.step(x, run.timesteps[-1], x, None)
        with pytest.raises(ValueError):
            sampler.start(0)

    # ------------------------------------------------------------------ the Gaussian toy
    def test_exact_denoiser_reproduces_the_data(self, sampler, schedule, toy_steps, toy_std_tol):
        samples = sample_with(sampler, self.oracle(schedule), (self.toy_samples, 2), toy_steps)
        assert_gaussian(samples, self.toy_mean, self.toy_std, self.toy_mean_tol, toy_std_tol)

    @pytest.mark.parametrize("mean_shift, std_scale", [(0.1, 1.0), (0.0, 1.1)], ids=["mean+10%", "std+10%"])
    def test_the_gaussian_check_catches_a_wrong_model(
        self, sampler, schedule, toy_steps, toy_std_tol, mean_shift, std_scale
    ):
        """Proof that the toy has teeth: a model of a Gaussian 10% off must fail the same check."""
        assert toy_std_tol < 0.1 and self.toy_mean_tol < 0.1, "a tolerance this loose cannot tell 10% apart"
        wrong = exact_gaussian_denoiser(schedule, self.toy_mean + mean_shift * self.toy_std, self.toy_std * std_scale)
        samples = sample_with(sampler, wrong, (self.toy_samples, 2), toy_steps)
        with pytest.raises(AssertionError):
            assert_gaussian(samples, self.toy_mean, self.toy_std, self.toy_mean_tol, toy_std_tol)

    # ------------------------------------------------------------------ guidance and config
    def test_guidance_combines_cond_and_uncond(self, sampler):
        cond, uncond = torch.full((2, 3), 2.0), torch.full((2, 3), 1.0)
        torch.testing.assert_close(sampler.apply_guidance(cond, uncond, 1.0), cond)
        torch.testing.assert_close(sampler.apply_guidance(cond, uncond, 0.0), uncond)
        torch.testing.assert_close(sampler.apply_guidance(cond, uncond, 3.0), torch.full((2, 3), 4.0))
        torch.testing.assert_close(sampler.apply_guidance(cond, uncond), uncond + sampler.guidance * (cond - uncond))

    def test_config_round_trips_through_the_spec_converter(self, sampler_config):
        conv = make_converter(Registry())
        assert conv.structure(conv.unstructure(sampler_config), type(sampler_config)) == sampler_config
