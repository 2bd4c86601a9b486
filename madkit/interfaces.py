"""The component interfaces plugins implement.

Einops-style notation used in shapes below:
    n batch, c channels, h w grid height/width, t blocks, b cells (tokens) per block, d width.

A plugin registers, per interface, a frozen attrs *config* class whose ``build(**runtime)`` returns
the component. What ``runtime`` holds is documented per interface below ("built with").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from typing import Any, Iterable, Protocol

import attrs
import numpy as np
import torch
from torch import nn

INTERFACES = (
    "partitioner",  # token grid -> ordered blocks
    "rope",  # rotary position embedding of tokens on the grid
    "layer",  # one transformer layer for a role (ar / diffusion)
    "embedder",  # latent cells <-> tokens
    "model",  # a generative model assembled from the parts above
    "schedule",  # training side of diffusion: timesteps, noising, targets, loss
    "sampler",  # inference side of diffusion: step counts and update rules
    "data",  # image data sources
    "codec",  # image <-> latent (identity, VAE)
    "metric",  # sample-quality metrics (FID, KID, ...)
    "extractor",  # feature extractors metrics run on
    "sink",  # metric sinks (TensorBoard, ...)
)


class SpecProblem(Exception):
    """A semantic problem found while checking a spec; ``path`` is relative to the checked table."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path, self.message = path, message


class Checkable(Protocol):
    """Config classes may implement ``check(context)`` to report cross-field problems.

    It returns an iterable of ``SpecProblem`` (paths relative to the config's own table). The
    ``context`` is a dict of derived facts: ``image_shape``, ``latent_shape``, ``registry``.
    """

    def check(self, context: dict[str, Any]) -> Iterable[SpecProblem]: ...


# --------------------------------------------------------------------------- partitioner
class Partitioner(ABC):
    """Orders the cells of an h x w token grid into t blocks of b cells.

    Built with ``grid=(h, w)``. Subclasses define ``_order()``; everything else derives from it.
    ``partition`` and ``merge`` are exact inverses.
    """

    def __init__(self, grid: tuple[int, int]):
        self.grid = (int(grid[0]), int(grid[1]))

    @abstractmethod
    def _order(self) -> torch.Tensor:
        """Long tensor [t, b]: flat raster cell index (row * w + col) of each block's cells."""

    @property
    @abstractmethod
    def block_shape(self) -> tuple[int, int] | None:
        """(rows, cols) when every block is a rectangle laid out raster inside, else None."""

    @property
    def rectangular(self) -> bool:
        return self.block_shape is not None

    @cached_property
    def order(self) -> torch.Tensor:
        return self._order()

    @property
    def num_blocks(self) -> int:
        return self.order.shape[0]

    @property
    def block_size(self) -> int:
        return self.order.shape[1]

    @cached_property
    def positions(self) -> torch.Tensor:
        """Long tensor [t, b, 2]: (row, col) of every cell on the original grid."""
        w = self.grid[1]
        return torch.stack((self.order // w, self.order % w), dim=-1)

    @cached_property
    def _inverse(self) -> torch.Tensor:
        flat = self.order.flatten()
        inv = torch.empty_like(flat)
        inv[flat] = torch.arange(flat.numel())
        return inv

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """[..., c, h, w] -> [..., t, b, c]."""
        h, w = self.grid
        if tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"partitioner built for a {h}x{w} grid got a tensor of shape {tuple(x.shape)}")
        flat = x.flatten(-2)[..., self.order.to(x.device).flatten()]  # [..., c, t*b]
        return flat.unflatten(-1, tuple(self.order.shape)).movedim(-3, -1)

    def merge(self, blocks: torch.Tensor) -> torch.Tensor:
        """[..., t, b, c] -> [..., c, h, w]; the exact inverse of ``partition``."""
        t, b = self.order.shape
        if tuple(blocks.shape[-3:-1]) != (t, b):
            raise ValueError(f"expected [..., {t}, {b}, c] blocks, got shape {tuple(blocks.shape)}")
        flat = blocks.movedim(-1, -3).flatten(-2)[..., self._inverse.to(blocks.device)]
        return flat.unflatten(-1, self.grid)


# --------------------------------------------------------------------------- positions
def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate) -> torch.Tensor:
    """The one rotary formula every RoPE kind shares: ``x * cos + rotate(x) * sin``, computed in fp32
    and cast back to x's dtype (bf16 angles would blur positions). x [..., L, e]; cos/sin [L, e]."""
    x32 = x.float()
    return (x32 * cos + rotate(x32) * sin).to(x.dtype)


class RotaryEmbedding(ABC):
    """Rotary position embedding (RoPE) of tokens on an h x w token grid.

    Built with ``grid=(h, w)`` (the token grid) and ``head_dim=e``. A kind supplies two things, and
    attention applies them to queries and keys with ``apply_rotary``:

    - ``tables(positions)``: (cos, sin), each float32 [L, e], for the (row, col) of L tokens. A row
      depends only on its own token's position: the tables of one block are exactly those rows of
      the whole grid's tables, so the KV-cached path, the uncached path and training see the same
      numbers, and a noised block gets exactly the rows of its clean twin (both sit at one place).
    - ``rotate(x)``: how head dims pair up, a signed permutation of the last dim with
      ``rotate(rotate(x)) == -x`` (rotate-half pairs dim i with dim i + e/2; madkit's axial kind
      pairs within each axis' half). Linear and elementwise up to the permutation, so attention
      kernels can fuse ``x * cos + rotate(x) * sin`` with the q/k norms.

    Tables are computed once, when the model is built, and are shared by every head.
    """

    def __init__(self, grid: tuple[int, int], head_dim: int):
        self.grid = (int(grid[0]), int(grid[1]))
        self.head_dim = int(head_dim)

    @abstractmethod
    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions long [L, 2] (row, col) -> (cos, sin) float32 [L, e] on positions' device."""

    @abstractmethod
    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """[..., e] -> [..., e]: the signed pairing of head dims (same shape and dtype)."""

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [..., L, e] with the tables of its L tokens."""
        return apply_rotary(x, cos, sin, self.rotate)


# --------------------------------------------------------------------------- diffusion
class NoiseSchedule(ABC):
    """Training side of diffusion. Built with no runtime arguments.

    Timesteps ``t`` are in the schedule's own convention (int64 step indices in [0, N-1] for
    DDPM-family schedules, float t in [0, 1] for flow matching). The model never sees them raw: its
    timestep embedding gets ``model_time(t)`` (float32; N-step scale for both, e.g. flow t * 1000),
    so one model input works for discrete DDPM steps and continuous flow time alike.
    Data may have any trailing dims: x0 [n, c, h, w] with t [n], or x0 [n, t, b, c] with t [n, t].
    """

    prediction: str  # "epsilon" | "v" | "x0" | "velocity"

    @abstractmethod
    def sample_timesteps(self, shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
        """Training timesteps of the given shape (e.g. [n, t]: one per block), independent per element.

        Drawn with ``generator`` (on its device) and returned on ``device``."""

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t for clean x0 and noise (same shape); t broadcasts from the LEFT over x0's trailing dims."""

    @abstractmethod
    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target of the model output (epsilon, v, x0 or velocity)."""

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The scalar fed to the model's timestep embedding (float)."""
        return t.float()

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor | None:
        """Per-sample loss weights, or None for uniform."""
        return None

    @abstractmethod
    def diffusers_config(self) -> dict[str, Any]:
        """Scheduler config keys (betas, prediction type, ...) samplers must share with training."""


class SamplerRun(Protocol):
    """One denoising loop for one batch (diffusers schedulers keep per-loop state)::

        run = sampler.start(steps, device)
        x = noise * sampler.init_noise_sigma
        for t in run.timesteps:
            out = model(run.scale_input(x, t), run.model_time(t))
            x = run.step(out, t, x, generators)
    """

    # 0-d tensors in the schedule's timestep convention, noisiest first; step through them in order
    timesteps: list[torch.Tensor]

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the model's timestep embedding gets; equals the schedule's ``model_time(t)``."""
        ...

    def scale_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model input for state x at t (identity for DDPM-family and flow samplers)."""
        ...

    def step(
        self, model_output: torch.Tensor, t: torch.Tensor, x: torch.Tensor, generators: list[torch.Generator] | None
    ) -> torch.Tensor:
        """x at the next timestep, same shape and dtype as x; ``generators`` has one entry per batch
        element (dim 0) so each image's noise is independent of the batch it is in."""
        ...


class Sampler(ABC):
    """Inference side of diffusion. Built with ``schedule=NoiseSchedule``.

    ``steps`` and ``guidance`` come from the spec and may be overridden per call.
    """

    steps: int
    guidance: float

    @abstractmethod
    def start(self, steps: int | None = None, device: torch.device | str = "cpu") -> SamplerRun:
        """A fresh denoising loop (new diffusers scheduler state)."""

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def apply_guidance(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """Classifier-free guidance: uncond + scale * (cond - uncond); ``scale`` defaults to ``guidance``.

        The model runs both passes (and should skip the unconditional one when the scale is 1.0).
        """
        scale = self.guidance if scale is None else scale
        return uncond + scale * (cond - uncond)


# --------------------------------------------------------------------------- data and codecs
class DataSource(ABC):
    """Images for training and reference statistics. Built with no runtime arguments.

    ``dataset()`` returns a torch map-style or iterable dataset of ``(image, label)`` where image is
    float [3, h, w] in [-1, 1] and label an int (0 when unconditional).
    """

    image_shape: tuple[int, int, int]
    num_classes: int  # 0 when the data has no labels

    @abstractmethod
    def dataset(self) -> torch.utils.data.Dataset: ...

    def describe(self) -> str:
        return type(self).__name__


class Codec(ABC):
    """Image <-> latent. Built with no runtime arguments; moved with ``to(device)``."""

    @abstractmethod
    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]: ...

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] in [-1, 1] -> [n, c, h, w] latents, scaled for diffusion."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[n, c, h, w] -> [n, 3, H, W] in [-1, 1]."""

    def to(self, device) -> Codec:
        return self

    @property
    def cache_key(self) -> str:
        """Identifies this codec's latents for on-disk caching."""
        return type(self).__name__


# --------------------------------------------------------------------------- model
@attrs.frozen
class ReferenceLayout:
    """How a model's weights appear in the MADFormer authors' released checkpoint (``madkit import-reference``).

    ``tensors`` maps each reference tensor name to (this model's state-dict name, the tensor's shape in
    the reference file); a tensor is only ever reshaped (same values in the same order), never
    transposed or split. ``args`` maps training arguments the reference stores (``args.diff_depth``,
    ...) to (the value this model implies, the spec key it comes from), so a file trained with another
    geometry is refused by name.
    """

    tensors: dict[str, tuple[str, tuple[int, ...]]]
    args: dict[str, tuple[Any, str]]


class GenerativeModel(nn.Module):
    """What the engine trains and samples from. Built with ``latent_shape=(c, h, w)`` and
    ``num_classes``. Implementations live in plugins (e.g. ``madformer``).

    Optional methods the trainer uses: ``set_activation_checkpointing(enabled)``,
    ``no_weight_decay() -> set of names`` and ``compile_targets() -> modules`` (by default the members
    of the outermost ``nn.ModuleList``s): the blocks ``train.compile`` compiles and that a sharded
    strategy (``train.strategy = "fsdp"``) makes one FSDP unit each. A sharded block's weights are
    gathered only when the block is called as a module (``block(...)``), so ``loss`` and
    ``generate`` must not call a block's other methods or read its parameters directly.
    """

    @property
    def class_conditional(self) -> bool:
        """Whether ``generate`` uses labels, and so classifier-free guidance (data with labels does not
        make a model conditional: its config must ask for it)."""
        return False

    def loss(
        self,
        latents: torch.Tensor,
        labels: torch.Tensor | None,
        schedule: NoiseSchedule,
        generators: list[torch.Generator],
    ) -> dict[str, torch.Tensor]:
        """Training losses for a batch of clean latents [n, c, h, w]; key ``loss`` is what is optimised.

        ``generators`` holds one generator per example (len n), seeded by the trainer from (seed,
        step, the example's position in the global batch). Every random draw for example i (its
        timesteps, its noise, its label dropout) must come from ``generators[i]`` and nothing else
        (``madkit.per_example`` stacks such draws), and the returned terms must be means over the
        examples. Then one global batch trains on the same randomness, and gives the same gradient,
        however the trainer splits it into ranks and micro-batches, and a resumed run draws exactly
        what an uninterrupted one would.
        """
        raise NotImplementedError

    def generate(
        self,
        sampler: Sampler,
        generators: list[torch.Generator],
        labels: torch.Tensor | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Latents [n, c, h, w] for n = len(generators); image i's randomness comes from generators[i]."""
        raise NotImplementedError

    def compute_cost(self, steps: int) -> dict[str, Any]:
        """Parameters, training FLOPs per image and sampling cost for ``steps`` denoising steps."""
        raise NotImplementedError

    def reference_layout(self) -> ReferenceLayout:
        """This model's weights under the released reference checkpoint's names. Raise
        NotImplementedError (with the reason) when the model has no counterpart there."""
        raise NotImplementedError(f"{type(self).__name__} has no counterpart in the released reference checkpoint")


# --------------------------------------------------------------------------- metrics and sinks
class FeatureExtractor(ABC):
    """Maps uint8 images [n, 3, H, W] (any H, W) to named features.

    Built with ``data=`` the data config of the evaluation (an extractor trained on data, like the
    offline proxy, uses it when its own config names no data; others ignore it).
    """

    # Names the network AND its weights ("inception-v3-compat", "openmoji-proxy-1a2b3c4d"); every
    # metric result carries it, so a proxy FID is never mistaken for Inception FID.
    name: str
    # What ``features`` returns: "pool" (the embedding FID, KID and PRC compare) and, for
    # classifiers, "logits" (what the Inception Score reads).
    roles: tuple[str, ...]

    @abstractmethod
    def features(self, images_uint8: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 [n, 3, H, W] -> {role: float32 [n, f_role] on the CPU}."""


@attrs.frozen
class FeatureSet:
    """One image set seen through one extractor: its features, or only their statistics.

    ``features`` maps role -> float32 [n, f] (empty for a statistics file that kept no features);
    ``stats`` holds (mu [f], sigma [f, f]) float64 of the "pool" features when they were loaded
    rather than computed. ``content_hash`` identifies the uint8 pixels (sha256 over the images in order).
    """

    extractor: str
    count: int
    content_hash: str
    source: str  # for humans: a folder, a stats file, a data source
    features: dict[str, torch.Tensor] = attrs.Factory(dict)
    stats: tuple[np.ndarray, np.ndarray] | None = None

    def pool_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu [f], sigma [f, f]) in float64: the Gaussian FID fits (mean, unbiased covariance)."""
        if self.stats is not None:
            return self.stats
        if "pool" not in self.features:
            raise ValueError(f"{self.source}: no 'pool' features to compute statistics from")
        if self.count < 2:
            raise ValueError(f"{self.source}: statistics need at least 2 images, got {self.count}")
        x = self.features["pool"].double().numpy()
        return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))  # [1, 1] for one feature


class Metric(ABC):
    """A sample-quality metric computed from features. Built with no runtime arguments."""

    name: str
    role: str = "pool"  # which extractor output it reads
    needs_reference: bool = True
    needs_reference_features: bool = False  # False: the reference's statistics suffice (FID)

    @abstractmethod
    def compute(self, generated: FeatureSet, reference: FeatureSet | None) -> dict[str, float]:
        """Result keys are the metric's own ("fid"; "kid", "kid_std"; ...); never the extractor's name."""


class Sink(ABC):
    """Receives scalar metrics and images during training, and evaluation results afterwards.

    Built with ``run_dir``. A sink that keeps a tracker run (wandb, mlflow) should remember it in the
    run folder, so that a resumed run and a later ``madkit eval`` add to the same tracker run.
    """

    @abstractmethod
    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Training metrics every ``log_every`` steps; ``madkit eval`` results as ``eval/<metric>/<settings>``."""

    def log_image(self, step: int, tag: str, image_uint8_hwc) -> None:
        return None

    def log_config(self, config: dict[str, Any]) -> None:
        """The resolved spec (nested plain data), once when training starts or resumes."""
        return None

    def close(self) -> None:
        return None
