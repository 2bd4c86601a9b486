"""Registration of the built-in sinks (loaded through the ``madkit.plugins`` entry point ``sinks``)."""

from madkit.hookspecs import hookimpl
from madkit_sinks.tensorboard import TensorBoardConfig


@hookimpl
def madkit_register(registry):
    registry.register("sink", "tensorboard", TensorBoardConfig)
