"""``madformer`` model config and its validation.

The paper's two axes are plain values: the partitioner decides the number of blocks T, and
``diffusion_depth`` D of ``depth`` N decides how many layers denoise. Layer kinds are slots: by
default the first N - D layers are ``ar`` and the last D are ``diffusion``; set
``diffusion_layer.kind = "local-diffusion"`` for intra-block denoising or ``"mlp"`` for a per-token head.
The 2D RoPE is a slot too (``rope``, default kind ``axial``).
"""

from __future__ import annotations

from typing import Any

import attrs

from madkit.interfaces import SpecProblem
from madkit.spec import slot
from madkit.validators import non_negative, one_of, positive
from madkit_models.passes import DENOISE_STEPS

CONTEXTS = ("clean+condition", "clean", "condition")
# the timestep a clean block's embedding gets: "zero" (it is clean), or "twin": the timestep of its noised
# twin in training and the last timestep of its own denoising loop in sampling (the released checkpoint)
CLEAN_TIMESTEPS = ("zero", "twin")


@attrs.frozen
class MadformerConfig:
    partitioner: slot("partitioner")  # type: ignore[valid-type]
    embedder: slot("embedder")  # type: ignore[valid-type]
    ar_layer: slot("layer") | None = None  # type: ignore[valid-type]  # None = kind "ar"
    diffusion_layer: slot("layer") | None = None  # type: ignore[valid-type]  # None = kind "diffusion"
    rope: slot("rope") | None = None  # type: ignore[valid-type]  # None = kind "axial"
    width: int = attrs.field(default=1152, validator=positive)
    heads: int = attrs.field(default=18, validator=positive)
    mlp_hidden: int = attrs.field(default=4096, validator=positive)
    depth: int = attrs.field(default=28, validator=positive)  # N
    diffusion_depth: int = attrs.field(default=14, validator=non_negative)  # D
    shared_towers: bool = False
    # what the diffusion layers see: the clean stream and the AR condition (the method), only the clean
    # stream (the noisy block replaces the condition), or only the condition (one stream, no clean tower)
    context: str = attrs.field(default="clean+condition", validator=one_of(*CONTEXTS))
    hidden_loss_weight: float = attrs.field(default=0.1, validator=non_negative)
    # U-Net skips for the hidden-loss prediction: "none" (zeros: no leak) or "noisy" (from x_t)
    hidden_loss_skips: str = attrs.field(default="none", validator=one_of("none", "noisy"))
    conditioning: str = attrs.field(default="none", validator=one_of("none", "class"))
    label_dropout: float = attrs.field(default=0.1, validator=non_negative)
    clean_timestep: str = attrs.field(default="zero", validator=one_of(*CLEAN_TIMESTEPS))
    # training attention backend: "auto" (flex on CUDA, block-sparse elsewhere), "block-sparse" (SDPA per
    # group of query blocks over only the keys they may see), "flex" (FlexAttention block masks; no
    # backward on the CPU) or "sdpa" (dense boolean masks)
    attention: str = attrs.field(default="auto", validator=one_of("auto", "sdpa", "block-sparse", "flex"))
    # how cached generation runs a denoising step: eager, compiled (torch.compile), cuda-graph (captured
    # once per block and replayed; CUDA only, eager elsewhere) or compiled+cuda-graph
    denoise_step: str = attrs.field(default="eager", validator=one_of(*DENOISE_STEPS))
    # legacy key (specs stored before [model.rope] existed): the theta of the default axial RoPE
    rope_theta: float | None = attrs.field(default=None, validator=attrs.validators.optional(positive))
    init_std: float = attrs.field(default=0.02, validator=positive)

    # ------------------------------------------------------------------ derived geometry
    def token_grid(self, latent_shape: tuple[int, int, int]) -> tuple[int, int]:
        cell = self.embedder.cell
        return latent_shape[1] // cell, latent_shape[2] // cell

    def rope_config(self, registry) -> Any:
        if self.rope is not None:
            return self.rope
        axial = registry.get("rope", "axial").config_cls
        return axial() if self.rope_theta is None else axial(theta=self.rope_theta)

    def layer_configs(self, registry) -> tuple[Any, Any]:
        ar = self.ar_layer or registry.get("layer", "ar").config_cls()
        diff = self.diffusion_layer or registry.get("layer", "diffusion").config_cls()
        return ar, diff

    def is_class_conditional(self, num_classes: int) -> bool:
        """Whether the model built with ``num_classes`` uses labels (and so guidance): spec checks ask."""
        return self.conditioning == "class" and num_classes > 0

    def build(self, latent_shape, num_classes: int, registry):
        from madkit_models.madformer import MADFormer

        problems = list(self._problems(latent_shape, num_classes, registry))
        if problems:
            raise ValueError("; ".join(f"model.{p.path}: {p.message}" for p in problems))
        return MADFormer(self, tuple(latent_shape), num_classes, registry)

    # ------------------------------------------------------------------ validation
    def check(self, context: dict[str, Any]):
        if "latent_shape" not in context:
            return []
        return list(self._problems(context["latent_shape"], context.get("num_classes", 0), context["registry"]))

    def _problems(self, latent_shape, num_classes, registry):
        n, d = self.depth, self.diffusion_depth
        if d > n:
            yield SpecProblem("diffusion_depth", f"D = {d} diffusion layers exceed depth N = {n}; use D <= N")
        if d == 0:
            yield SpecProblem(
                "diffusion_depth", "D = 0 leaves no layer to denoise with a diffusion objective; use 1 <= D <= N"
            )
        if self.width % self.heads:
            yield SpecProblem("heads", f"width {self.width} is not divisible by heads {self.heads}")
        if self.rope is not None and self.rope_theta is not None:
            yield SpecProblem("rope_theta", "set the RoPE's theta in [model.rope] only; remove rope_theta")
        ar, diff = self.layer_configs(registry)
        if getattr(ar, "role", None) != "ar":
            yield SpecProblem(
                "ar_layer.kind",
                f"the first N - D layers must be AR layers, but kind {registry.kind_of('layer', ar)!r} has role "
                f"{getattr(ar, 'role', '?')!r}; AR layers cannot come after diffusion layers",
            )
        if getattr(diff, "role", None) != "diffusion":
            yield SpecProblem(
                "diffusion_layer.kind",
                f"the last D layers must denoise, but kind {registry.kind_of('layer', diff)!r} has role "
                f"{getattr(diff, 'role', '?')!r}",
            )
        if getattr(diff, "pattern", None) == "none" and self.context != "clean+condition":
            yield SpecProblem("context", "mlp denoising layers need the AR condition: use context = 'clean+condition'")
        if self.conditioning == "class" and num_classes <= 0:
            yield SpecProblem("conditioning", "class conditioning needs labelled data, but the data source has none")
        for problem in getattr(self.embedder, "check_dims", lambda: [])():
            yield SpecProblem("embedder", problem)
        c, h, w = latent_shape
        cell = self.embedder.cell
        if h % cell or w % cell:
            yield SpecProblem(
                "embedder", f"cell size {cell} does not divide the {h}x{w} latent grid; choose a divisor"
            )
            return
        grid = self.token_grid(latent_shape)
        if not self.width % self.heads:
            for p in self.rope_config(registry).problems(grid, self.width // self.heads):
                # the implicit default has no table of its own: its only rule is about the head dim
                where = "heads" if self.rope is None else ".".join(part for part in ("rope", p.path) if part)
                yield SpecProblem(where, p.message)
        part_problems = self.partitioner.problems(grid)
        for p in part_problems:
            yield SpecProblem(f"partitioner.{p.path}", p.message)
        if part_problems:
            return
        if self.embedder.requires_rectangular and self.partitioner.build(grid=grid).block_shape is None:
            yield SpecProblem(
                "embedder.kind",
                "this embedder needs rectangular blocks but the partitioner's blocks are not rectangles; "
                "use the tiles partitioner or a raster block_len that covers whole rows or divides a row",
            )
