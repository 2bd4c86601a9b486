"""Registration of the built-in codecs (loaded through the ``madkit.plugins`` entry point)."""

from madkit.hookspecs import hookimpl
from madkit_codecs.identity import IdentityConfig
from madkit_codecs.sd_vae import SDVAEConfig


@hookimpl
def madkit_register(registry):
    registry.register("codec", "identity", IdentityConfig)
    registry.register("codec", "sd-vae", SDVAEConfig)
