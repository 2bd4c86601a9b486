"""Contract suites for noise schedules and samplers, and the exact Gaussian denoiser they use.

Subclass a suite in your plugin's tests and provide the configs as pytest fixtures (parametrize
them to cover several variants)::

    from madkit.testing import SamplerContract, ScheduleContract

    class TestMySchedule(ScheduleContract):
        @pytest.fixture(params=["epsilon", "v"])
        def config(self, request):
            return MyScheduleConfig(prediction=request.param)

    class TestMySampler(SamplerContract):
        @pytest.fixture
        def schedule_config(self):
            return MyScheduleConfig()

        @pytest.fixture
        def sampler_config(self):
            return MySamplerConfig()

The suites assume what every diffusion and flow-matching schedule in use satisfies: an affine
Gaussian path x_t = alpha(t) x0 + sigma(t) noise and a target that is linear in (x0, noise). Under
that assumption ``exact_gaussian_denoiser`` gives the optimal model output for Gaussian data in
closed form for ANY prediction type, so a sampler driven by it must reproduce the data's
distribution; that is the strongest end-to-end check a sampler can get without a trained network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from madkit.interfaces import NoiseSchedule, Sampler
from madkit.registry import Registry
from madkit.spec import make_converter

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# hypothesis with pytest fixtures: the fixtures here build immutable objects, so reuse is safe
_PROPERTY = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------- closed forms
def path_coefficients(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """alpha, sigma (x_t = alpha x0 + sigma noise) and the target's weights c_x0, c_noise at ``t``.

    The schedule's own ``NoiseSchedule.path_coefficients``, shaped like ``like``, in float64.
    """
    a, b, c, d = schedule.path_coefficients(t, torch.zeros_like(like, dtype=torch.float64))
    return {"alpha": a, "sigma": b, "c_x0": c, "c_noise": d}


def exact_gaussian_denoiser(schedule: NoiseSchedule, mean: torch.Tensor, std: torch.Tensor) -> Denoiser:
    """The optimal model for data x0 ~ N(mean, diag(std^2)) (per feature, the last dim).

    Returns ``model(x_t, t)`` = E[target | x_t] in ``schedule``'s prediction type, where t is in
    the schedule's convention (0-d, or one per leading element of x_t). With x_t = a x0 + s n and
    Var(x_t) = a^2 std^2 + s^2:
        E[x0 | x_t] = mean + a std^2 (x_t - a mean) / Var,   E[n | x_t] = s (x_t - a mean) / Var,
    and E[target | x_t] = c_x0 E[x0 | x_t] + c_noise E[n | x_t] by linearity. That is affine in
    x_t, so the coefficients are computed once per call in float64 on a small probe and applied as
    ``gain * x_t + bias`` in x_t's dtype (cheap enough for 20000-point toys over hundreds of steps).
    """
    mean, std = mean.double(), std.double()

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        probe = torch.ones(*t.shape, *[1] * (x.ndim - t.ndim), dtype=torch.float64, device=x.device)
        k = path_coefficients(schedule, t, probe)
        a, s = k["alpha"], k["sigma"]
        var = a * a * std * std + s * s
        g, h = a * std * std / var, s / var  # d E[x0|x_t] / dx_t and d E[n|x_t] / dx_t
        gain = k["c_x0"] * g + k["c_noise"] * h
        bias = k["c_x0"] * (mean - g * a * mean) - k["c_noise"] * h * a * mean
        return gain.to(x.dtype) * x + bias.to(x.dtype)

    return model


def sample_with(
    sampler: Sampler,
    model: Denoiser,
    shape: tuple[int, ...],
    steps: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Run one full denoising loop from seeded Gaussian noise; returns x at the end.

    Without ``generators`` the sampler's own noise comes from the global RNG, seeded here and
    restored afterwards (one generator per element would be slow for the 20000-point toy).
    """
    start = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]), _single_thread():
        torch.manual_seed(seed + 1)
        if generators is None:
            x = torch.randn(shape, generator=start, dtype=dtype)
        else:
            x = torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=dtype) for g in generators])
        x = x * sampler.init_noise_sigma
        run = sampler.start(steps)
        for t in run.timesteps:
            x = run.step(model(run.scale_input(x, t), t), t, x, generators)
    return x


@contextlib.contextmanager
def _single_thread():
    """Toy tensors (tens of thousands of elements) are too small for intra-op threads to pay off,
    and on a busy CPU the thread hand-offs of every tiny op cost 10x the work: run on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def assert_gaussian(samples: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mean_tol: float, std_tol: float):
    """Per feature (last dim): |mean error| <= mean_tol * std and |std ratio - 1| <= std_tol."""
    got_mean, got_std = samples.double().mean(0), samples.double().std(0)
    mean_err = ((got_mean - mean) / std).abs().max().item()
    std_err = (got_std / std - 1).abs().max().item()
    assert torch.isfinite(samples).all(), "samples contain non-finite values"
    assert mean_err <= mean_tol, (
        f"sample mean {got_mean.tolist()} vs {mean.tolist()}: error {mean_err:.4f} std > {mean_tol}"
    )
    assert std_err <= std_tol, (
        f"sample std {got_std.tolist()} vs {std.tolist()}: relative error {std_err:.4f} > {std_tol}"
    )


# --------------------------------------------------------------------------- schedules
class ScheduleContract:
    """Checks every ``NoiseSchedule`` must pass. Provide a ``config`` fixture (a schedule config)."""

    @pytest.fixture
    def config(self) -> Any:
        raise NotImplementedError("define a `config` fixture returning your schedule config")

    @pytest.fixture
    def schedule(self, config) -> NoiseSchedule:
        return config.build()

    def test_declares_prediction_and_diffusers_config(self, schedule):
        assert schedule.prediction in ("epsilon", "v", "x0", "velocity")
        config = schedule.diffusers_config()
        assert isinstance(config["num_train_timesteps"], int) and config["num_train_timesteps"] > 1
        assert "prediction_type" in config

    def test_diffusers_config_has_what_the_samplers_need(self, schedule):
        """The built-in samplers rebuild the schedule's noise levels from ``diffusers_config()``: a
        DDPM-family schedule must give its exact betas, a flow schedule its shift (otherwise the spec
        validates and ``madkit run`` fails when it first samples)."""
        config = schedule.diffusers_config()
        n = config["num_train_timesteps"]
        if schedule.prediction == "velocity":
            assert float(config.get("shift", 0)) > 0, "a flow schedule's diffusers_config() must give shift > 0"
            return
        betas = config.get("trained_betas")
        assert betas is not None, "a DDPM-family schedule's diffusers_config() must give trained_betas"
        betas = torch.as_tensor(list(betas), dtype=torch.float64)
        assert betas.shape == (n,), f"trained_betas must hold num_train_timesteps = {n} values, got {tuple(betas.shape)}"
        assert bool(((betas > 0) & (betas < 1)).all()), "trained_betas must lie in (0, 1)"

    def test_timesteps_independent_per_element_and_in_range(self, schedule):
        g = torch.Generator().manual_seed(0)
        t = schedule.sample_timesteps((4096, 4), g, "cpu")
        assert t.shape == (4096, 4)
        time = schedule.model_time(t)
        assert time.dtype == torch.float32
        top = schedule.diffusers_config()["num_train_timesteps"]
        assert 0 <= time.min() and time.max() <= top, f"model_time outside [0, {top}]"
        # independent per block: columns are not copies of each other and are uncorrelated
        assert not torch.equal(time[:, 0], time[:, 1])
        corr = torch.corrcoef(time.T.double())
        off_diagonal = corr[~torch.eye(4, dtype=torch.bool)]
        assert off_diagonal.abs().max() < 0.1, f"timesteps of different blocks are correlated: {corr}"
        # and they actually vary (a schedule that always returns one t would pass the above)
        assert time.std() > 0.1 * top / 4

    def test_seeded_determinism(self, schedule):
        draw = lambda seed: schedule.sample_timesteps((64, 3), torch.Generator().manual_seed(seed), "cpu")
        assert torch.equal(draw(1), draw(1))
        assert not torch.equal(draw(1), draw(2))

    @_PROPERTY
    @given(
        n=st.integers(1, 3),
        blocks=st.integers(1, 4),
        b=st.integers(1, 3),
        c=st.integers(1, 3),
        seed=st.integers(0, 2**16),
    )
    def test_per_block_timesteps_broadcast_from_the_left(self, schedule, n, blocks, b, c, seed):
        g = torch.Generator().manual_seed(seed)
        x0, noise = torch.randn(n, blocks, b, c, generator=g), torch.randn(n, blocks, b, c, generator=g)
        t = schedule.sample_timesteps((n, blocks), g, "cpu")
        xt, target = schedule.add_noise(x0, noise, t), schedule.target(x0, noise, t)
        assert xt.shape == target.shape == x0.shape and xt.dtype == x0.dtype
        for i in range(n):
            for j in range(blocks):
                torch.testing.assert_close(xt[i, j], schedule.add_noise(x0[i, j], noise[i, j], t[i, j]))
                torch.testing.assert_close(target[i, j], schedule.target(x0[i, j], noise[i, j], t[i, j]))

    def test_mismatched_timestep_shape_is_refused(self, schedule):
        x0 = torch.randn(2, 3, 4, 5)
        t = schedule.sample_timesteps((2, 4), torch.Generator().manual_seed(0), "cpu")
        with pytest.raises(ValueError, match="leading dims"):
            schedule.add_noise(x0, torch.randn_like(x0), t)

    @_PROPERTY
    @given(seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]))
    def test_path_is_affine_and_target_recovers_x0(self, schedule, seed, dtype):
        """x_t = alpha x0 + sigma noise, and (x_t, target) determine x0 exactly: the model's output
        carries all it needs for a sampler to reconstruct the clean data."""
        g = torch.Generator().manual_seed(seed)
        x0, noise = torch.randn(8, 6, generator=g, dtype=dtype), torch.randn(8, 6, generator=g, dtype=dtype)
        t = schedule.sample_timesteps((8,), g, "cpu")
        xt, target = schedule.add_noise(x0, noise, t), schedule.target(x0, noise, t)
        assert xt.dtype == target.dtype == dtype
        k = path_coefficients(schedule, t, x0)
        tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-6, "atol": 1e-6}
        torch.testing.assert_close(xt.double(), k["alpha"] * x0.double() + k["sigma"] * noise.double(), **tol)
        torch.testing.assert_close(target.double(), k["c_x0"] * x0.double() + k["c_noise"] * noise.double(), **tol)
        # solve [[alpha, sigma], [c_x0, c_noise]] [x0, noise]^T = [x_t, target]^T
        det = k["alpha"] * k["c_noise"] - k["sigma"] * k["c_x0"]
        assert det.abs().min() > 1e-6, "x_t and the target do not determine x0"
        x0_back = (k["c_noise"] * xt.double() - k["sigma"] * target.double()) / det
        # x_t and the target are rounded to ``dtype``; solving for x0 amplifies that rounding by
        # 1/|det|, which is large where alpha is tiny (epsilon prediction at the end of a cosine
        # schedule), so the bound follows the system's conditioning instead of a fixed tolerance
        ulp = torch.finfo(dtype).eps
        rounding = (k["c_noise"].abs() * xt.double().abs() + k["sigma"].abs() * target.double().abs()) * ulp
        bound = 1e-6 + 4 * rounding / det.abs()
        error = (x0_back - x0.double()).abs()
        assert (error <= bound).all(), f"x0 recovered with error {error.max():.3g} above the rounding bound"

    def test_loss_weight_is_none_or_per_sample(self, schedule):
        t = schedule.sample_timesteps((5, 2), torch.Generator().manual_seed(0), "cpu")
        w = schedule.loss_weight(t)
        if w is not None:
            assert w.shape == t.shape and torch.isfinite(w).all() and (w >= 0).all()

    def test_config_round_trips_through_the_spec_converter(self, config):
        conv = make_converter(Registry())
        assert conv.structure(conv.unstructure(config), type(config)) == config


# --------------------------------------------------------------------------- samplers


def sample_from(
    sampler: Sampler, model: Denoiser, x: torch.Tensor, steps: int, generators: list[torch.Generator] | None
) -> torch.Tensor:
    """One loop from a given starting x (no seeding)."""
    run = sampler.start(steps)
    for t in run.timesteps:
        x = run.step(model(run.scale_input(x, t), t), t, x, generators)
    return x
