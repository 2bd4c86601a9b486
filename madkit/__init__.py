"""madkit: mixed autoregressive and diffusion image generation, assembled from plugins.

The public Python API (docs/api.md)::

    madkit.load(source) -> Pipeline          a trained model: run folder, checkpoint folder
    madkit.Pipeline                          .generate(num, labels=, seed=, steps=, guidance=, sampler=, output=, trace=)
                                             .complete(images, keep=K, num=, seed=): keep K blocks, generate the rest
    madkit.experiment(spec) -> Experiment    a spec (file, dict) built with fresh weights
    madkit.train(spec, out=) -> TrainResult  what `madkit run` does
    madkit.load_spec(spec) -> LoadedSpec     read and check a spec without building it
    madkit.Registry                          the installed plugins (Registry.load())
    madkit.SpecError                         every problem of a bad spec, in .lines

Names are imported on first use, so ``import madkit`` (and ``madkit --help``) stays fast.
"""

from __future__ import annotations

import importlib

# the one place the version is written: pyproject.toml reads it from here (setuptools' attr:), and
# `madkit --version` answers without scanning the installed packages' metadata
__version__ = "0.1.0"

_PUBLIC = {
    "load": "madkit.api",
    "Pipeline": "madkit.api",
    "experiment": "madkit.api",
    "train": "madkit.api",
    "Experiment": "madkit.build",
    "load_spec": "madkit.experiment_spec",
    "LoadedSpec": "madkit.experiment_spec",
    "ExperimentSpec": "madkit.experiment_spec",
    "Registry": "madkit.registry",
    "SpecError": "madkit.spec",
    "TrainResult": "madkit.engine.training.loop",
}

__all__ = [
    "Experiment",
    "ExperimentSpec",
    "LoadedSpec",
    "Pipeline",
    "Registry",
    "SpecError",
    "TrainResult",
    "__version__",
    "experiment",
    "load",
    "load_spec",
    "train",
]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    else:
        raise AttributeError(f"module 'madkit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
