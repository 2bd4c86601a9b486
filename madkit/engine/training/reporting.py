"""Training records on rank 0: metrics.jsonl, sinks (TensorBoard...), a tqdm bar and plain log lines.

The bar uses ``disable=None``: it shows on a terminal and stays silent in CI logs and pipes, where
the plain line printed every ``log_every`` steps carries the same facts.
"""

from __future__ import annotations

import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from madkit.engine.checkpoints.run_folder import MetricsFile
from madkit.interfaces import Sink
from madkit.logs import report


def memory_gb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def format_line(step: int, total: int, record: dict[str, Any]) -> str:
    """``step 120/1000 | loss 0.1234 hidden 0.0200 | lr 3.00e-04 | grad 0.812 | 412.3 img/s | mem 2.41 GB``.

    ``record`` holds ``loss`` (the optimised term), other terms as ``loss/<name>``, ``lr``,
    ``grad_norm``, ``images_per_s`` and ``mem_gb``.
    """
    others = " ".join(f"{k.removeprefix('loss/')} {v:.4f}" for k, v in record.items() if k.startswith("loss/"))
    terms = f"loss {record['loss']:.4f}" + (f" {others}" if others else "")
    return (
        f"step {step}/{total} | {terms} | lr {record['lr']:.2e} | grad {record['grad_norm']:.3f} | "
        f"{record['images_per_s']:.1f} img/s | mem {record['mem_gb']:.2f} GB"
    )


def build_sinks(configs: Sequence[Any], registry, run_dir: Path, config: dict[str, Any] | None = None) -> list[Sink]:
    """One sink per entry of ``log.sinks`` (sink configs, as the spec structured them); ``config``
    (the resolved spec) is handed to each sink's ``log_config``."""
    from madkit.build import build_part

    sinks = [build_part(registry, "sink", c, run_dir=run_dir) for c in configs]
    if config is not None:
        for sink in sinks:
            sink.log_config(config)
    return sinks


def eval_tag(metric: str, record: dict[str, Any]) -> str:
    """``eval/fid/euler-s25-n1000``: one curve per sampling setting, plotted against the training step."""
    s = record["sampling"]
    settings = f"{s['sampler']}-s{s['steps']}-n{s['num']}"
    if s.get("guidance") is not None:
        settings += f"-g{s['guidance']:g}"
    if record["checkpoint"].get("weights") == "raw":
        settings += "-raw"
    return f"eval/{metric}/{settings}"


def log_eval_record(record: dict[str, Any], sinks: Sequence[Any], registry, run_dir: Path) -> None:
    """Send one ``madkit eval`` record's metric values to the run's sinks, at its checkpoint's step."""
    scalars = {eval_tag(name, record): float(value) for name, value in record["metric_values"].items()}
    for sink in build_sinks(sinks, registry, run_dir):
        try:
            sink.log_scalars(int(record["checkpoint"]["step"]), scalars)
        finally:
            sink.close()


class Reporter:
    """Rank 0 writes; other ranks hold a silent reporter so the loop needs no rank checks."""

    def __init__(
        self,
        active: bool,
        metrics_path: Path | None,
        sinks: list[Sink],
        total_steps: int,
        start_step: int,
        progress: bool,
    ):
        self.active = active
        self.total = total_steps
        self._metrics = MetricsFile(metrics_path) if active and metrics_path else None
        self._sinks = sinks if active else []
        self._bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            disable=None if (active and progress) else True,
        )

    def advance(self) -> None:
        self._bar.update(1)

    def log(self, step: int, record: dict[str, Any]) -> None:
        """One metrics record: a metrics.jsonl line, every sink, and a plain log line."""
        if not self.active:
            return
        self._metrics.write({"step": step, **record})
        scalars = {k: float(v) for k, v in record.items() if isinstance(v, (int, float))}
        for sink in self._sinks:
            sink.log_scalars(step, scalars)
        self.say(format_line(step, self.total, record))

    def image(self, step: int, tag: str, image_uint8_hwc: torch.Tensor) -> None:
        for sink in self._sinks:
            sink.log_image(step, tag, image_uint8_hwc)

    def say(self, text: str) -> None:
        if self.active:
            report(text)

    def close(self) -> None:
        self._bar.close()
        for sink in self._sinks:
            sink.close()
        if self._metrics:
            self._metrics.close()
