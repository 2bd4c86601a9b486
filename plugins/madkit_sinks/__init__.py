"""Built-in metric sinks: ``tensorboard`` (event files under RUN/tensorboard/)."""
