"""The component interfaces plugins implement.

Einops-style notation used in shapes below:
    n batch, c channels, h w grid height/width, t blocks, b cells (tokens) per block, d width.

A plugin registers, per interface, a frozen attrs *config* class whose ``build(**runtime)`` returns
the component. What ``runtime`` holds is documented per interface below ("built with").

One module per part of the pipeline, all re-exported here (``from madkit.interfaces import Sampler``):
problems.py (SpecProblem, Checkable), geometry.py (Partitioner, RotaryEmbedding, apply_rotary),
diffusion.py (NoiseSchedule, Sampler, SamplerRun), data.py (DataSource, Codec), model.py
(GenerativeModel, GenerationObserver, ReferenceLayout), evaluation.py (FeatureExtractor, FeatureSet, Metric, Sink).
"""

from madkit.interfaces.data import Codec, DataSource
from madkit.interfaces.diffusion import NoiseSchedule, Sampler, SamplerRun
from madkit.interfaces.evaluation import FeatureExtractor, FeatureSet, Metric, Sink
from madkit.interfaces.geometry import Partitioner, RotaryEmbedding, apply_rotary
from madkit.interfaces.model import GenerationObserver, GenerativeModel, ReferenceLayout
from madkit.interfaces.problems import Checkable, SpecProblem

__all__ = [
    "INTERFACES",
    "Checkable",
    "Codec",
    "DataSource",
    "FeatureExtractor",
    "FeatureSet",
    "GenerationObserver",
    "GenerativeModel",
    "Metric",
    "NoiseSchedule",
    "Partitioner",
    "ReferenceLayout",
    "RotaryEmbedding",
    "Sampler",
    "SamplerRun",
    "Sink",
    "SpecProblem",
    "apply_rotary",
]

INTERFACES = (
    "partitioner",  # token grid -> ordered blocks
    "rope",  # rotary position embedding of tokens on the grid
    "layer",  # one transformer layer for a role (ar / diffusion)
    "embedder",  # latent cells <-> tokens
    "model",  # a generative model assembled from the parts above
    "schedule",  # training side of diffusion: timesteps, noising, targets, loss
    "sampler",  # inference side of diffusion: step counts and update rules
    "data",  # image data sources
    "codec",  # image <-> latent (identity, VAE)
    "metric",  # sample-quality metrics (FID, KID, ...)
    "extractor",  # feature extractors metrics run on
    "sink",  # metric sinks (TensorBoard, ...)
)
