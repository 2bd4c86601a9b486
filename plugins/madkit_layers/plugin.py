"""Registration of the built-in layer kinds."""

from madkit.hookspecs import hookimpl
from madkit_layers.kinds import ArLayerConfig, DiffusionLayerConfig, LocalDiffusionLayerConfig, MlpLayerConfig


@hookimpl
def madkit_register(registry):
    registry.register("layer", "ar", ArLayerConfig)
    registry.register("layer", "diffusion", DiffusionLayerConfig)
    registry.register("layer", "local-diffusion", LocalDiffusionLayerConfig)
    registry.register("layer", "mlp", MlpLayerConfig)
