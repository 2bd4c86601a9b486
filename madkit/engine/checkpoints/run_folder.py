"""The run folder: where a training run leaves everything a person or a tool needs afterwards.

    RUN/config.resolved.toml   the spec with every default spelled out (re-runnable as is)
        versions.json          madkit, python, every dependency and loaded plugin's version, the git
                               commit of a source checkout, the command line
        train.log              what the console showed (madkit.engine.training.console_log)
        metrics.jsonl          one JSON object per log step
        checkpoints/<step>/    see madkit.engine.checkpoints
        samples/step_<step>.png fixed-noise sample grids
        tensorboard/           event files from the tensorboard sink

Only rank 0 writes here.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import madkit
from madkit.atomic_files import atomic_write


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.resolved.toml"

    @property
    def versions(self) -> Path:
        return self.root / "versions.json"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def sample_grid(self, step: int) -> Path:
        return self.samples / f"step_{step:08d}.png"

    def prepare(self, resolved_toml: str, versions: dict[str, Any], resume_step: int) -> None:
        """Create the folder, write the spec and versions, and cut metrics back to ``resume_step``.

        A resumed run re-does the steps after its checkpoint, so their old metric lines go.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.samples.mkdir(exist_ok=True)
        _write_text(self.config, resolved_toml)
        _write_text(self.versions, json.dumps(versions, indent=2, sort_keys=True) + "\n")
        kept = [r for r in read_metrics(self.metrics) if r.get("step", 0) <= resume_step] if resume_step else []
        _write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))


def collect_versions(registry) -> dict[str, Any]:
    """Plain data only (it goes into every checkpoint, read back with weights_only)."""
    return {
        "madkit": madkit.__version__,
        "torch": str(torch.__version__),  # a TorchVersion, which weights_only loading refuses
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cuda": str(torch.version.cuda) if torch.version.cuda else None,
        "dependencies": dependency_versions(),
        "plugins": registry.versions(),
        "git": source_commit(),
        "command": list(sys.argv),
        "cwd": os.getcwd(),
    }


def dependency_versions(distribution: str = "madkit") -> dict[str, str]:
    """Installed version of every package ``distribution`` requires, optional extras included."""
    try:
        requirements = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return {}
    out = {}
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra that is not installed
    return dict(sorted(out.items()))


def source_commit() -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` when madkit runs from a git checkout of its own source, else None."""
    root = Path(madkit.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return None  # an installed copy that happens to sit inside some other repository
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


class MetricsFile:
    """Appends one JSON object per line, flushed at once (a killed run keeps what it logged)."""

    def __init__(self, path: Path):
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115  (open for the whole run; see close)

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record of a metrics.jsonl (a torn last line from a kill is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
