"""Registration of the built-in sinks (loaded through the ``madkit.plugins`` entry point ``sinks``).

Each sink's package (tensorboard, wandb, mlflow) is imported only when a run uses that sink.
"""

from madkit.hookspecs import hookimpl
from madkit_sinks.mlflow_sink import MlflowConfig
from madkit_sinks.tensorboard import TensorBoardConfig
from madkit_sinks.wandb_sink import WandbConfig


@hookimpl
def madkit_register(registry):
    registry.register("sink", "tensorboard", TensorBoardConfig)
    registry.register("sink", "wandb", WandbConfig)
    registry.register("sink", "mlflow", MlflowConfig)
