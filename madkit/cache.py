"""Where madkit keeps what it can rebuild: rendered data, encoded latents, trained proxy extractors.

    $MADKIT_CACHE_DIR               when set
    $XDG_CACHE_HOME/madkit          else, when XDG_CACHE_HOME is set
    ~/.cache/madkit                 otherwise

Subfolders: ``openmoji/`` (rendered emoji), ``latents/`` (the latent cache of runs whose
``train.latent_cache`` is ``auto``), ``extractors/`` (proxy feature extractors), ``inductor/``
(torch.compile's compiled graphs and kernels, unless ``TORCHINDUCTOR_CACHE_DIR`` is set). Everything
in it may be deleted at any time; it is rebuilt on demand.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "MADKIT_CACHE_DIR"


def cache_root() -> Path:
    if root := os.environ.get(ENV_VAR):
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "madkit"
