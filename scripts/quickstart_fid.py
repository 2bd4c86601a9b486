"""The quickstart's FID next to its floor: how far the README's first run is from real emoji.

    python scripts/quickstart_fid.py [RUN_DIR] [--seeds 5]

The quickstart trains on the ``train`` split of its OpenMoji selection; every ``holdout``-th emoji
is left out (``data.holdout``), and those held-out emoji are real images no model saw. With N = the
number of held-out emoji, this prints

- FID(N generated images, the training images): the quickstart's figure (mean over ``--seeds``
  sets of N, since N is small), and
- FID(the N held-out real emoji, the training images): the floor, what real emoji of the same
  kind score against the training set at the same count with the same extractor.

Features come from the offline proxy extractor trained on all of OpenMoji at the run's resolution
(12 emoji groups as labels): figures are labelled with its name and are not Inception FIDs. At this
sample size FID is strongly biased upward; only the gap between the two lines means something.
"""

from __future__ import annotations

import argparse
import statistics

import attrs

import madkit
from madkit.engine.evaluation.evaluate import compute_metrics, data_images, to_uint8, with_proxy_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", default="runs/quickstart")
    parser.add_argument("--seeds", type=int, default=5, help="sets of N generated images to average over")
    args = parser.parse_args(argv)

    pipe = madkit.load(args.run_dir, device="cpu")
    data = pipe.experiment.spec.data
    if not getattr(data, "holdout", 0):
        raise SystemExit(f"{args.run_dir}: its data holds nothing out (data.holdout = 0): no floor to compare with")
    train = attrs.evolve(data, split="train", hflip=False)
    heldout = attrs.evolve(data, split="heldout", hflip=False)
    # what `madkit eval runs/quickstart` uses: a proxy trained on all OpenMoji groups at this resolution
    extractor = with_proxy_data({"kind": "proxy"}, data, pipe.experiment.registry)
    held_images = next(data_images(heldout).batches(1 << 20))
    n = len(held_images)

    def fid(images) -> tuple[float, str]:
        result = compute_metrics(images, train, ("fid",), extractor)
        return result["fid"], result["extractor"]

    floor, name = fid(held_images)
    generated = [fid(to_uint8(pipe.generate(n, seed=seed, output="tensor")))[0] for seed in range(args.seeds)]
    spread = f" (min {min(generated):.2f}, max {max(generated):.2f})" if len(generated) > 1 else ""
    print(f"extractor {name}; reference: the {len(next(data_images(train).batches(1 << 20)))} training images")
    print(f"quickstart FID, {n} generated images, mean of {args.seeds} seeds: {statistics.mean(generated):.2f}{spread}")
    print(f"floor FID, the {n} held-out real emoji:                 {floor:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
