"""What a figure should be read beside: the sample-size caveat, and the data's own floor.

The floor, for a learned (proxy) extractor: real images no model trained on, measured against the
training images with the same extractor and metrics.

Inception FIDs have a literature to compare with; a proxy FID does not (pure noise can read 0.03 on
a proxy that learned a few dozen emoji), so each proxy figure is printed beside what real, unseen
images score. The held-out images come from the data's own held-out split where its config has one
(a ``split`` field that accepts ``"heldout"``, as the OpenMoji source's ``holdout`` makes); with no
held-out images there is no honest floor, and the record says so instead of inventing one (training
images against statistics that contain them would read too low).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from madkit.engine.evaluation.evaluate import data_images, extract
from madkit.interfaces import FeatureSet

HELDOUT = "heldout"


def heldout_config(data: Any) -> Any | None:
    """``data``'s held-out split as a data config, or None when the data has none (or it is empty)."""
    if not attrs.has(type(data)) or "split" not in attrs.fields_dict(type(data)):
        return None
    if getattr(data, "split") == HELDOUT:  # trained on the held-out split: nothing else is unseen
        return None
    try:
        heldout = attrs.evolve(data, split=HELDOUT)
    except (ValueError, TypeError):  # the source has no such split
        return None
    check = getattr(heldout, "check", None)
    if check is not None and any(True for _ in check({"check_resources": False})):
        return None  # e.g. OpenMoji with holdout = 0: nothing was held out
    return heldout


def measure_floor(data: Any, reference: FeatureSet, extractor: Any, metrics: Sequence[Any],
                  batch: int) -> dict[str, Any]:
    """``{"values": {...}, "num_real": n, "source": ...}``, or ``{"values": None, "why": ...}``."""
    heldout = heldout_config(data)
    if heldout is None:
        return {"values": None, "why": "the data has no held-out split (OpenMoji: set data.holdout = 4)"}
    real = extract(extractor, data_images(heldout), batch)
    values: dict[str, float] = {}
    skipped = []
    for metric in metrics:
        if metric.needs_reference:
            try:
                values.update(metric.compute(real, reference))
            except ValueError:  # e.g. KID subsets larger than the held-out split: that metric has no floor
                skipped.append(metric.name)
    return {"values": values, "num_real": real.count, "source": real.source, "skipped": skipped}


def describe_floor(floor: dict[str, Any] | None, key: str = "fid") -> str:
    """``" (floor 0.012: 42 held-out real images vs the training images)"`` for a record's line."""
    if not floor:
        return ""
    values = floor.get("values")
    if values is None:
        return f" (no floor: {floor.get('why', 'no held-out images')})"
    if key not in values:
        return ""
    return f" (floor {values[key]:.4g}: {floor['num_real']} held-out real images vs the training images)"


# Below this many images FID's upward bias (it shrinks like 1/N) and its noise dominate differences
# between models; 2,048 is also the Inception feature width, below which the covariance is singular.
RELIABLE_NUM = 2048


def sample_size_note(num: int) -> str | None:
    """A warning for FID-style figures from too few images, or None."""
    if num >= RELIABLE_NUM:
        return None
    return (
        f"note: {num} images is a small sample: FID is biased upward and noisy at this size (it falls as the "
        f"count grows), so compare only figures measured with the same count; use --num {RELIABLE_NUM} or more "
        "(the paper's protocol: 8,000) for figures to quote"
    )
