"""The FID protocol over checkpoints (``madkit eval --last K``, madkit/engine/evaluation/protocol.py) and
evaluation split over torchrun's ranks (madkit/engine/evaluation/ranks.py).

One tiny model is trained for 3 steps with a checkpoint after each; metrics use the offline proxy
extractor (the OpenMoji default), trained once into a temporary cache shared with the subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import environment, train_tiny  # noqa: F401 (environment: autouse fixture for this module)

from madkit.cli import main
from madkit.engine.evaluation.points import Evaluator

ARGS = ["--num", "8", "--steps", "2", "--batch", "4"]
SETTINGS = "ema-ddim-s2-n8-seed0-proxy"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("runs") / "tiny", "train.ckpt_every=1", "train.keep_ckpts=3")


@pytest.fixture
def generations(monkeypatch) -> list[int]:
    """Each call of the image generator, by checkpoint step."""
    calls: list[int] = []
    real = Evaluator._generate

    def counting(self, run, *args, **kwargs):
        calls.append(run.step)
        return real(self, run, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "_generate", counting)
    return calls


def record(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "eval" / f"{name}.json").read_text())


def test_the_protocol_writes_k_records_and_their_summary_then_reuses_them(run_dir, generations, capsys):
    assert main(["eval", str(run_dir), "--last", "2", *ARGS]) == 0
    assert generations == [2, 3]
    records = [record(run_dir, f"{step:08d}-{SETTINGS}") for step in (2, 3)]
    summary = record(run_dir, f"mean2-00000002-00000003-{SETTINGS}")
    fids = [r["fid"] for r in records]
    assert summary["kind"] == "checkpoint-mean" and [c["step"] for c in summary["checkpoints"]] == [2, 3]
    assert summary["summary"]["fid"]["values"] == fids and summary["summary"]["fid"]["n"] == 2
    assert summary["fid"] == pytest.approx(sum(fids) / 2)
    assert summary["fid_std"] == pytest.approx(abs(fids[0] - fids[1]) / 2**0.5)  # sample std of two values
    within = summary["summary"]["fid"]["mean_within_checkpoint_std"]
    assert within == pytest.approx(sum(r["fid_std"] for r in records) / 2) and within > 0
    assert "fid_bootstrap" not in summary["summary"]  # counts are settings, not averaged
    assert summary["sampling"]["num"] == 8 and summary["reference"]["num"] == 64
    out = capsys.readouterr().out
    assert "mean of 2 checkpoints (steps 2, 3): fid" in out and "8 generated vs 64 reference images" in out

    # resumable: a second run generates nothing and leaves every record untouched
    paths = [run_dir / "eval" / f"{step:08d}-{SETTINGS}.json" for step in (2, 3)]
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert main(["eval", str(run_dir), "--last", "2", *ARGS]) == 0
    assert generations == [2, 3] and [p.stat().st_mtime_ns for p in paths] == stamps
    # a lost record is the only one recomputed; --checkpoints names steps
    paths[0].unlink()
    assert main(["eval", str(run_dir), "--checkpoints", "2,3", *ARGS]) == 0
    assert generations == [2, 3, 2] and paths[1].stat().st_mtime_ns == stamps[1]
    assert record(run_dir, f"00000002-{SETTINGS}")["generated_hash"] == records[0]["generated_hash"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--last", "5"], "holds 3 complete checkpoint(s) (1, 2, 3), fewer than the 5 asked for"),
        (["--checkpoints", "2,7"], "no complete checkpoint at step(s) [7]"),
        (["--checkpoints", "x"], "--checkpoints 'x': expected comma-separated steps"),
        (["--last", "2", "--checkpoints", "2"], "not both"),
        (["--last", "0"], "--last must be at least 1"),
        (["--last", "2", "--name", "mine"], "drop --name and --shard"),
        (["--metric-set", "kid.subsets=2"], "name a metric of --metrics (fid)"),
    ],
)
def test_protocol_mistakes_are_usage_errors(run_dir, capsys, extra, message):
    assert main(["eval", str(run_dir), *ARGS, *extra]) == 2
    assert message in capsys.readouterr().err


def test_the_bootstrap_is_a_metric_setting(run_dir):
    assert main(["eval", str(run_dir), *ARGS, "--metric-set", "fid.bootstrap=0", "--name", "no-spread"]) == 0
    assert record(run_dir, "no-spread")["metric_values"].keys() == {"fid"}
    assert main(["eval", str(run_dir), *ARGS, "--metric-set", "fid.bootstrap=1", "--name", "bad"]) == 2


def test_two_torchrun_ranks_write_the_record_one_process_writes(run_dir, tmp_path):
    assert main(["eval", str(run_dir), *ARGS, "--name", "one-process"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        # torchrun itself, through the interpreter running the tests (the script may not be on PATH)
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "madkit", "eval",
         str(run_dir), "--num-images", "8", "--steps", "2", "--batch", "3", "--name", "two-ranks"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports
    one, two = record(run_dir, "one-process"), record(run_dir, "two-ranks")
    assert two["shards"] == 2 and one["shards"] == 1
    assert two["generated_hash"] == one["generated_hash"]  # the same images, pixel for pixel
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-6)
    assert two["fid_std"] == pytest.approx(one["fid_std"], rel=1e-5)
    assert two["reference"] == one["reference"] and two["settings"] == one["settings"]
    parts = sorted(p.name for p in (run_dir / "eval" / "two-ranks.parts").iterdir())
    assert parts == ["shard-0-of-2.pt", "shard-1-of-2.pt"]
