"""madkit: mixed autoregressive and diffusion image generation, assembled from plugins.

The public Python API (docs/api.md)::

    madkit.load(source) -> Pipeline          a trained model: run folder, checkpoint folder
    madkit.Pipeline                          .generate(num, labels=, seed=, steps=, guidance=, sampler=, output=)
    madkit.experiment(spec) -> Experiment    a spec (file, dict) built with fresh weights
    madkit.train(spec, out=) -> TrainResult  what `madkit run` does
    madkit.load_spec(spec) -> LoadedSpec     read and check a spec without building it
    madkit.Registry                          the installed plugins (Registry.load())
    madkit.SpecError                         every problem of a bad spec, in .lines

Names are imported on first use, so ``import madkit`` (and ``madkit --help``) stays fast.
"""

from __future__ import annotations

import importlib

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
    "TrainResult": "madkit.engine.train",
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
    if name == "__version__":
        # computed on first use: reading package metadata costs a noticeable part of `madkit --help`
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("madkit")
        except PackageNotFoundError:  # running from a source tree that was never installed
            value = "0.0.0+unknown"
    elif name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    else:
        raise AttributeError(f"module 'madkit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
