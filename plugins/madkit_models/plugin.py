"""Registration of the madformer model and its embedders."""

from madkit.hookspecs import hookimpl
from madkit_models.embedder_patch import PatchEmbedderConfig
from madkit_models.embedder_unet import UNetEmbedderConfig
from madkit_models.madformer_config import MadformerConfig


@hookimpl
def madkit_register(registry):
    registry.register("model", "madformer", MadformerConfig)
    registry.register("embedder", "patch", PatchEmbedderConfig)
    registry.register("embedder", "unet", UNetEmbedderConfig)
