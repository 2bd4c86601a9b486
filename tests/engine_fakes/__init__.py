"""A test-only madkit plugin (``test-engine-*`` kinds) and helpers to train with it.

In-process tests use ``make_registry()``; CLI subprocess tests use ``cli_env(tmp)``, which installs
the plugin as a throwaway entry point (a dist-info folder on PYTHONPATH) and restricts loading to
it and the sinks plugin, so other plugins being edited in the same tree cannot break these tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from madkit.experiment_spec import dumps_toml, load_spec
from madkit.registry import Registry

TESTS_DIR = Path(__file__).resolve().parent.parent
ENTRY_POINT = "test-engine"

BASE_SPEC: dict[str, Any] = {
    "name": "tiny",
    "seed": 7,
    "data": {"kind": "test-engine-blobs", "num": 24, "size": 8, "classes": 3},
    "codec": {"kind": "test-engine-pool", "factor": 2},
    "model": {"kind": "test-engine-tiny", "width": 16},
    "schedule": {"kind": "test-engine-vp"},
    "sampler": {"kind": "test-engine-ddim", "steps": 3},
    "train": {
        "steps": 4,
        "batch": 4,
        "micro_batch": 2,
        "lr": 1e-3,
        "warmup": 0.25,
        "ema_decay": 0.9,
        "ckpt_every": 2,
        "log_every": 1,
        "sample_num": 4,
        "device": "cpu",
        "precision": "fp32",
        "latent_cache": "off",  # tests that want the cache point it at a temporary folder
        # one intra-op thread, as one_thread below: tiny models run faster, and a trainer in a forked
        # child (the kill tests) must not use an OpenMP pool the parent started (GNU OpenMP hangs)
        "threads": 1,
    },
    "log": {"sinks": ["tensorboard"], "progress": False},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~10x faster than contending ones.

    Import it into a test module (``from engine_fakes import one_thread``) to apply it there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_registry() -> Registry:
    from madkit_sinks import plugin as sinks

    from engine_fakes import plugin

    registry = Registry()
    registry.add_plugin(plugin, ENTRY_POINT)
    registry.add_plugin(sinks, "sinks")
    return registry


def serve_registry(monkeypatch, registry: Registry) -> Registry:
    """Make ``Registry.load()``, what every ``madkit`` command calls, return ``registry`` for one test:
    in-process CLI tests then see exactly the plugins the test chose."""
    monkeypatch.setattr(Registry, "load", classmethod(lambda cls, autoload=None: registry))
    return registry


def write_spec(folder: Path, name: str = "spec.toml", **sections: dict[str, Any]) -> Path:
    """BASE_SPEC with ``sections`` merged in (one level deep), written as TOML."""
    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE_SPEC.items()}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key].update(value)
        else:
            spec[key] = value
    path = Path(folder) / name
    path.write_text(dumps_toml(spec))
    return path


def load(path: Path, registry: Registry, sets: list[str] | None = None):
    return load_spec(path, sets, registry)


def cli_env(folder: Path) -> dict[str, str]:
    """Environment for ``python -m madkit`` / torchrun subprocesses that see the fake plugin."""
    dist = Path(folder) / "site" / "madkit_test_engine-0.0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: madkit-test-engine\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(f"[madkit.plugins]\n{ENTRY_POINT} = engine_fakes.plugin\n")
    env = dict(os.environ)
    paths = [str(dist.parent), str(TESTS_DIR), env.get("PYTHONPATH", "")]
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in paths if p),
        MADKIT_PLUGINS=f"{ENTRY_POINT},sinks",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def madkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "madkit", *args]
