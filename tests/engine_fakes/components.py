"""Small but honest data source, codec, noise schedule and sampler for engine tests.

They implement the madkit interfaces for real (a DDIM sampler that denoises, a codec that changes
the resolution), so the engine is tested against the contracts, not against mocks.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from madkit.interfaces import Codec, DataSource, NoiseSchedule, Sampler


# --------------------------------------------------------------------------- data
class _Blobs(Dataset):
    """Smooth colour fields: a seeded 3x4x4 pattern per image, bilinearly upsampled, in [-1, 1]."""

    def __init__(self, num: int, size: int, classes: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        coarse = torch.randn(num, 3, 4, 4, generator=g)
        self.images = torch.tanh(F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False))
        self.classes = classes

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return self.images[i], (i % self.classes) if self.classes else 0


class BlobsSource(DataSource):
    def __init__(self, cfg: BlobsConfig):
        self.cfg = cfg
        self.image_shape = cfg.image_shape()
        self.num_classes = cfg.classes

    def dataset(self) -> Dataset:
        if self.cfg.root and not Path(self.cfg.root).is_dir():
            # what a real folder source does: name the path and the fix
            raise FileNotFoundError(
                f"data.root: dataset folder {self.cfg.root!r} does not exist; point data.root at a folder of images"
            )
        return _Blobs(self.cfg.num, self.cfg.size, self.cfg.classes, self.cfg.seed)


@attrs.frozen
class BlobsConfig:
    num: int = 24
    size: int = 8
    classes: int = 0
    seed: int = 0
    root: str = ""  # when set, must be an existing folder (exercises the missing-dataset path)

    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def num_classes(self) -> int:
        return self.classes

    def build(self) -> BlobsSource:
        return BlobsSource(self)


# --------------------------------------------------------------------------- codec
class PoolCodec(Codec):
    """Average-pool by ``factor`` (encode) and nearest-upsample (decode), latents scaled by ``scale``."""

    def __init__(self, factor: int, scale: float):
        self.factor, self.scale = factor, scale

    def latent_shape(self, image_shape):
        c, h, w = image_shape
        return (c, h // self.factor, w // self.factor)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, self.factor) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.interpolate(latents / self.scale, scale_factor=self.factor, mode="nearest")

    @property
    def cache_key(self) -> str:
        return f"pool{self.factor}x{self.scale}"


@attrs.frozen
class PoolCodecConfig:
    factor: int = 2
    scale: float = 1.0
    # a third-party codec whose build() fails (a device, a file) past every spec check: this message
    fail_build: str = ""

    def latent_shape(self, image_shape):
        return PoolCodec(self.factor, self.scale).latent_shape(image_shape)

    def build(self) -> PoolCodec:
        if self.fail_build:
            raise RuntimeError(self.fail_build)
        return PoolCodec(self.factor, self.scale)


# --------------------------------------------------------------------------- diffusion
def _alphas_cumprod(num_steps: int) -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02 * 1000 / num_steps, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


class VPSchedule(NoiseSchedule):
    prediction = "epsilon"

    def __init__(self, num_steps: int):
        self.num_steps = num_steps
        self.alphas_cumprod = _alphas_cumprod(num_steps)

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(like.device)[t.long()]
        return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))

    def sample_timesteps(self, shape, generator, device):
        return torch.randint(0, self.num_steps, shape, generator=generator, device=device)

    def add_noise(self, x0, noise, t):
        a = self._abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0, noise, t):
        return noise

    def diffusers_config(self):
        return {"num_train_timesteps": self.num_steps, "prediction_type": "epsilon"}


@attrs.frozen
class VPScheduleConfig:
    num_steps: int = 100

    def build(self) -> VPSchedule:
        return VPSchedule(self.num_steps)


class _DDIMRun:
    def __init__(self, alphas_cumprod: torch.Tensor, steps: int, device):
        n = alphas_cumprod.shape[0]
        self.abar = alphas_cumprod.to(device)
        self.timesteps = [torch.tensor(int(t), device=device) for t in torch.linspace(n - 1, 0, steps).round()]

    def model_time(self, t):
        return t.float()

    def scale_input(self, x, t):
        return x

    def step(self, model_output, t, x, generators):
        i = next(k for k, s in enumerate(self.timesteps) if int(s) == int(t))
        a = self.abar[int(t)]
        a_prev = self.abar[int(self.timesteps[i + 1])] if i + 1 < len(self.timesteps) else torch.ones_like(a)
        x0 = (x - (1 - a).sqrt() * model_output) / a.sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * model_output


class DDIMSampler(Sampler):
    def __init__(self, schedule: VPSchedule, steps: int):
        self.schedule, self.steps, self.guidance = schedule, steps, 1.0

    def start(self, steps=None, device="cpu"):
        return _DDIMRun(self.schedule.alphas_cumprod, steps or self.steps, device)


@attrs.frozen
class DDIMConfig:
    steps: int = 4

    def build(self, schedule) -> DDIMSampler:
        return DDIMSampler(schedule, self.steps)
