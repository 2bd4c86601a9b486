"""Built-in metric sinks: ``tensorboard`` (event files under RUN/tensorboard/), ``wandb`` and ``mlflow``
(tracker runs; optional packages, see each module)."""
