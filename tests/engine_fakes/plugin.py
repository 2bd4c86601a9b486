"""Registers the test-only kinds; every name starts with ``test-engine-`` so none can collide."""

from engine_fakes.components import BlobsConfig, DDIMConfig, PoolCodecConfig, VPScheduleConfig
from engine_fakes.model import TinyModelConfig
from madkit.hookspecs import hookimpl


@hookimpl
def madkit_register(registry):
    registry.register("model", "test-engine-tiny", TinyModelConfig)
    registry.register("data", "test-engine-blobs", BlobsConfig)
    registry.register("codec", "test-engine-pool", PoolCodecConfig)
    registry.register("schedule", "test-engine-vp", VPScheduleConfig)
    registry.register("sampler", "test-engine-ddim", DDIMConfig)
