"""Registration of the built-in metrics and feature extractors (entry point ``metrics``)."""

from madkit.hookspecs import hookimpl
from madkit_metrics.extractors.inception import InceptionConfig
from madkit_metrics.extractors.proxy import ProxyConfig
from madkit_metrics.fid import FidConfig
from madkit_metrics.isc import IsConfig
from madkit_metrics.kid import KidConfig
from madkit_metrics.prc import PrcConfig


@hookimpl
def madkit_register(registry):
    registry.register("extractor", "inception", InceptionConfig)
    registry.register("extractor", "proxy", ProxyConfig)
    registry.register("metric", "fid", FidConfig)
    registry.register("metric", "kid", KidConfig)
    registry.register("metric", "is", IsConfig)
    registry.register("metric", "prc", PrcConfig)
