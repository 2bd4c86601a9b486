"""Registration of the built-in data sources (loaded through the ``madkit.plugins`` entry point).

Sources whose libraries are optional (``datasets``, ``webdataset``) import them only when built,
so their kinds are always listed and validate without the extra installed.
"""

from madkit.hookspecs import hookimpl
from madkit_data.folder import FolderConfig
from madkit_data.hf_disk import HFDiskConfig
from madkit_data.openmoji import OpenMojiConfig
from madkit_data.webdataset_source import WebDatasetConfig


@hookimpl
def madkit_register(registry):
    registry.register("data", "openmoji", OpenMojiConfig)
    registry.register("data", "folder", FolderConfig)
    registry.register("data", "hf-disk", HFDiskConfig)
    registry.register("data", "webdataset", WebDatasetConfig)
