"""Seeds derived from named coordinates, and capture/restore of the global RNGs.

Randomness the trainer controls never flows through one long-lived generator: each use gets a
fresh generator seeded from (spec seed, purpose, coordinates), e.g. ("loss", step, example index
in the global batch; ``indexed_generators`` makes a step's worth at once). That makes a resumed run
draw exactly what an uninterrupted run would, makes the draws independent of how a batch is split
into ranks and micro-batches, and makes sample grids use the same noise at every step. The global
RNGs (which plugins may use, e.g. for dropout or augmentation) are captured into checkpoints as plain tensors and ints, so
``torch.load(weights_only=True)`` reads them back.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

_PURPOSES = {"loss": 1, "data": 2, "sample": 3, "init": 4, "workers": 5, "augment": 6, "complete": 7}


def derive_seed(seed: int, purpose: str, *coords: int) -> int:
    """A well-mixed 63-bit seed for ``purpose`` at ``coords`` (no collisions between purposes)."""
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, _PURPOSES[purpose], *(int(c) for c in coords)]
    words = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


def generator(seed: int, purpose: str, *coords: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, purpose, *coords))
    return g


def indexed_generators(
    seed: int, purpose: str, coords: tuple[int, ...], indices: Sequence[int], device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One generator per index, seeded by (seed, purpose, coords, index) and nothing else.

    One SeedSequence serves them all: its output words are a fixed stream (asking for more words
    never changes the first ones), and index i takes words 2i and 2i + 1. So a generator does not
    depend on which other indices are asked for with it, and a step's examples cost one hash call
    instead of one each."""
    if not indices:
        return []
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, _PURPOSES[purpose], *(int(c) for c in coords)]
    words = np.random.SeedSequence(entropy).generate_state(2 * (max(indices) + 1), dtype=np.uint32)
    out = []
    for i in indices:
        g = torch.Generator(device=device)
        g.manual_seed((int(words[2 * i]) << 31) ^ int(words[2 * i + 1]))
        out.append(g)
    return out


def seed_globals(seed: int, rank: int) -> None:
    """Seed torch, numpy and python RNGs differently per rank (model init is then broadcast by DDP)."""
    _seed_all(derive_seed(seed, "init", rank))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's CPU generators seeded from ``seed`` inside the block and restored
    after it: draws made by code madkit does not control (a data source's transforms) become a
    function of ``seed``, and whoever uses the global generators next finds them untouched."""
    python, numpy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    _seed_all(seed)
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)


def capture() -> dict[str, Any]:
    """The global RNG states as plain data (tensors, ints, strings, tuples)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_tuples(value: Any) -> Any:
    # random.setstate insists on tuples; keep it robust to lists from other serialisers
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value
