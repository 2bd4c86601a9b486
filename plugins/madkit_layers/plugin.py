"""Registration of the built-in layer kinds and the RoPE kinds they use."""

from madkit.hookspecs import hookimpl
from madkit_layers.kinds import ArLayerConfig, DiffusionLayerConfig, LocalDiffusionLayerConfig, MlpLayerConfig
from madkit_layers.rope import AxialRopeConfig, ReferenceRopeConfig


@hookimpl
def madkit_register(registry):
    registry.register("layer", "ar", ArLayerConfig)
    registry.register("layer", "diffusion", DiffusionLayerConfig)
    registry.register("layer", "local-diffusion", LocalDiffusionLayerConfig)
    registry.register("layer", "mlp", MlpLayerConfig)
    registry.register("rope", "axial", AxialRopeConfig)
    registry.register("rope", "madformer-reference", ReferenceRopeConfig)
