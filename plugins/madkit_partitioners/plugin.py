"""Registration of the built-in partitioners (loaded through the ``madkit.plugins`` entry point)."""

from madkit.hookspecs import hookimpl
from madkit_partitioners.raster import RasterConfig
from madkit_partitioners.tiles import TilesConfig


@hookimpl
def madkit_register(registry):
    registry.register("partitioner", "raster", RasterConfig)
    registry.register("partitioner", "tiles", TilesConfig)
