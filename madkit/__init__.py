"""madkit: mixed autoregressive and diffusion image generation, assembled from plugins."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("madkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
