"""One prepared check on a CUDA device: speed, memory and MFU at the FFHQ geometry, a torchrun run, the GPU tests.

    python benchmarks/device_check.py [--json device_check.json]    # CUDA; about 8 minutes on one H200
    python benchmarks/device_check.py --only train-step,sample       # some sections
    python benchmarks/device_check.py --cpu-smoke                    # every section at tiny sizes on the CPU

Sections, each in its own process under its own time budget (``--budget NAME=SECONDS``), so a failure,
a crash or a timeout in one still leaves the others' figures; the JSON is rewritten after each section:

  train-step  The FFHQ-1024 model (1.3 B parameters, 7,936 tokens per image) through benchmarks/step.py's
              ``measure``: bf16 autocast, FlexAttention, the blocks compiled, the trainer's AdamW; without
              and with activation checkpointing. img/s, TFLOP/s and MFU from the model's analytic training
              FLOPs (``model.compute_cost``, as ``madkit flops`` prints them) over the device's dense bf16
              peak (benchmarks/train.py's table by device name, or ``--peak-tflops``); peak memory.
  sample      Cached block-wise generation (``generate_latents``, the model's own ``generate``) of the FFHQ
              model with random weights under bf16 autocast, at 25 and 250 sampler steps: img/s of
              latents (the SD-VAE decode is not included: its weights are not on the device machine).
              The denoising step runs as ``--denoise-step`` says (default cuda-graph: captured once per
              block and replayed; the CPU smoke runs it eagerly, as cuda-graph does off CUDA).
  torchrun    ``torchrun --nproc_per_node=1 -m madkit run`` of the tiny spec on generated images (precision
              auto, so bf16), with ``train.strategy`` ddp, and fsdp compiled: exit status, img/s, final loss.
  pytest-gpu  ``pytest -m gpu``.

Without CUDA it stops at once with exit code 2 unless ``--cpu-smoke`` is given: then every section runs
the same code at tiny sizes on the CPU (the tiny spec for both models, fewer steps, no compilation),
which is how the script itself is tested. Exit code 0 when every section passed, 1 otherwise.

A device machine without network needs madkit's missing dependencies as wheels first:
benchmarks/device_setup.sh says how.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TINY_SPEC = ROOT / "experiments/tiny/madformer.toml"
FFHQ_SPEC = ROOT / "experiments/madformer_ffhq.toml"
# seconds per section on the device (8 minutes in all) and in a CPU smoke run
BUDGETS = {"train-step": 200, "sample": 110, "torchrun": 90, "pytest-gpu": 80}
SMOKE_BUDGETS = {"train-step": 240, "sample": 120, "torchrun": 240, "pytest-gpu": 240}


# --------------------------------------------------------------------------- sections (run in a child process)
def section_train_step(args, record: Callable[[str, object], None]) -> None:
    import torch

    measure, peak_flops = _benchmark("step").measure, _benchmark("train").peak_flops
    config, device = ("tiny", "cpu") if args.cpu_smoke else ("ffhq", "cuda")
    peak = peak_flops(args.peak_tflops)
    record("peak_tflops", peak / 1e12 if peak else None)
    for checkpointing in (False, True):
        result = measure(
            config,
            device,
            steps=args.steps,
            warmup=args.warmup,
            dtype=torch.bfloat16,
            batch=args.train_batch,
            compile=not (args.no_compile or args.cpu_smoke),  # compiling costs minutes on a CPU
            activation_checkpointing=checkpointing,
        )
        result["mfu"] = result["train_tflops_per_s"] * 1e12 / peak if peak else None
        record("with_activation_checkpointing" if checkpointing else "without_activation_checkpointing", result)
        _release_memory()


def section_sample(args, record: Callable[[str, object], None]) -> None:
    import torch

    from madkit.build import build_experiment
    from madkit.generation import generate_latents
    from madkit.experiment_spec import load_spec
    from madkit.registry import Registry

    device = "cpu" if args.cpu_smoke else "cuda"
    registry = Registry.load()
    spec = load_spec(TINY_SPEC if args.cpu_smoke else FFHQ_SPEC, [], registry, check_resources=False).spec
    experiment = build_experiment(spec, registry, device=device)
    model = experiment.model.eval()
    model.denoise_step = args.denoise_step
    record("denoise_step", args.denoise_step)
    peak = _benchmark("train").peak_flops(args.peak_tflops)
    batch = args.sample_batch

    def autocast():
        return torch.autocast(device, dtype=torch.bfloat16)

    def generate(steps: int) -> float:
        _sync(device)
        start = time.perf_counter()
        for _ in generate_latents(
            model, experiment.sampler, range(batch), seed=0, batch=batch, steps=steps, autocast=autocast
        ):
            pass
        _sync(device)
        return time.perf_counter() - start

    record("blocks", model.T)
    record("warmup_s", generate(2))  # compilation, mask and plan caches
    for steps in args.sample_steps:
        left = args.deadline - time.monotonic()
        previous = [v for k, v in _RESULT["figures"].items() if k.startswith("steps_")]
        if previous:  # time scales with the steps: skip a run that cannot finish, say so
            last = previous[-1]
            predicted = last["seconds"] * steps / last["steps"]
            if predicted > left:
                record(
                    f"steps_{steps}", {"steps": steps, "skipped": f"predicted {predicted:.0f} s > {left:.0f} s left"}
                )
                continue
        seconds = generate(steps)
        flops = model.compute_cost(steps)["sample_flops_per_image"] * batch
        record(
            f"steps_{steps}",
            {
                "steps": steps,
                "images": batch,
                "seconds": seconds,
                "images_per_s": batch / seconds,
                "tflops_per_s": flops / seconds / 1e12,
                "mfu": flops / seconds / peak if peak else None,
            },
        )


def section_torchrun(args, record: Callable[[str, object], None]) -> None:
    from madkit.engine.checkpoints.run_folder import read_metrics

    device = "cpu" if args.cpu_smoke else "cuda"
    with tempfile.TemporaryDirectory(prefix="madkit-device-check-") as tmp:
        images = _write_images(Path(tmp) / "images", 64, 16)
        # on the GPU the sharded run is also compiled: FSDP's hooks around compiled blocks
        compiled = [] if args.cpu_smoke else ["train.compile=true"]
        for strategy, extra in (("ddp", []), ("fsdp", compiled)):
            out = Path(tmp) / strategy
            sets = [
                *extra,
                "data.kind=folder",
                f"data.root={images}",
                "data.resolution=16",
                f"train.device={device}",
                f"train.steps={args.torchrun_steps}",
                "train.ckpt_every=1000000",
                "train.log_every=1",
                "train.sample_num=2",
                "train.sample_steps=2",
                f"train.strategy={strategy}",
                "log.sinks=[]",
                "log.progress=false",
            ]
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=1",
                "-m",
                "madkit",
                "run",
                str(TINY_SPEC),
                "--out",
                str(out),
                *[f"--set={s}" for s in sets],
            ]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_child_env(), check=False)
            result = {"returncode": proc.returncode, "seconds": time.perf_counter() - start}
            records = read_metrics(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else []
            if records:
                later = records[len(records) // 2 :]  # past compilation and warm-up
                result.update(
                    images_per_s=statistics.median(r["images_per_s"] for r in later),
                    final_loss=records[-1]["loss"],
                    steps=records[-1]["step"],
                )
            if proc.returncode:
                result["output_tail"] = (proc.stdout + proc.stderr)[-3000:]
            record(strategy, result)
            if proc.returncode:
                raise RuntimeError(f"torchrun with train.strategy = {strategy} exited with {proc.returncode}")


def section_pytest_gpu(args, record: Callable[[str, object], None]) -> None:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rfEs"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_child_env(), check=False)
    output = proc.stdout + proc.stderr
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", output)}
    record("returncode", proc.returncode)
    record("seconds", time.perf_counter() - start)
    record("counts", counts)
    record("output_tail", output[-3000:])
    # 5: nothing collected (no GPU tests selected) is not a failure of the tests
    if proc.returncode not in (0, 5):
        raise RuntimeError(f"pytest -m gpu exited with {proc.returncode}: {counts}")


SECTIONS = {
    "train-step": section_train_step,
    "sample": section_sample,
    "torchrun": section_torchrun,
    "pytest-gpu": section_pytest_gpu,
}


# --------------------------------------------------------------------------- helpers
_RESULT: dict = {"status": "running", "figures": {}, "error": None}


def _benchmark(name: str):
    """Another script of benchmarks/ as a module (step.py's ``measure``, train.py's peak table)."""
    import importlib.util

    key = f"madkit_benchmark_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.pop("MADKIT_PLUGINS", None)
    return env


def _write_images(folder: Path, count: int, size: int) -> Path:
    """``count`` small PNGs (coloured gradients and discs) for the torchrun section's folder data source."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    generator = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    for i in range(count):
        a, b, c = generator.uniform(0, 1, 3)
        disc = ((xx - a) ** 2 + (yy - b) ** 2 < (0.2 + 0.2 * c) ** 2).astype(float)
        rgb = np.stack([xx * a + disc * (1 - a), yy * b, (1 - xx) * c + disc * 0.5], axis=-1).clip(0, 1)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def run_section(args) -> int:
    """The child: run one section, recording each figure into ``args.result`` as soon as it exists."""
    path = Path(args.result)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.deadline = time.monotonic() + args.budget_s

    def record(key: str, value) -> None:
        _RESULT["figures"][key] = value
        _write_json(path, _RESULT)

    try:
        if args.cpu_smoke:
            import torch

            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        SECTIONS[args.section](args, record)
        _RESULT["status"] = "ok"
    except BaseException as exc:  # noqa: BLE001  (recorded for the parent, which reports every section)
        _RESULT.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
    _write_json(path, _RESULT)
    return 0 if _RESULT["status"] == "ok" else 1


def environment(args) -> dict:
    import torch

    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "mode": "cpu-smoke" if args.cpu_smoke else "cuda",
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, memory_gb=props.total_memory / 2**30, multiprocessors=props.multi_processor_count)
    else:
        env.update(device=platform.processor() or "cpu", threads=torch.get_num_threads())
    peak = _benchmark("train").peak_flops(args.peak_tflops)
    env["peak_bf16_tflops"] = peak / 1e12 if peak else None
    return env


def run_child(args, name: str, budget: float, result: Path) -> dict:
    """Run section ``name`` in a new process group; kill the whole group when it outlives ``budget``."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in _passed_options(args).items()]
    flags += [flag for flag, on in (("--cpu-smoke", args.cpu_smoke), ("--no-compile", args.no_compile)) if on]
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--section",
        name,
        "--result",
        str(result),
        f"--budget-s={budget}",
        *flags,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_child_env(), start_new_session=True)
    timed_out = False
    try:
        proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun workers and pytest's children too
        proc.wait()
    outcome = json.loads(result.read_text()) if result.is_file() else {"figures": {}}
    if timed_out:
        outcome.update(status="timeout", error=f"stopped after its budget of {budget:.0f} s")
    elif outcome.get("status") in (None, "running"):
        outcome.update(status="failed", error=f"the section's process died (exit code {proc.returncode})")
    outcome.update(seconds=time.perf_counter() - start, budget_s=budget)
    return outcome


def _passed_options(args) -> dict:
    keep = ("peak_tflops", "steps", "warmup", "train_batch", "sample_batch", "denoise_step", "torchrun_steps")
    options = {k: getattr(args, k) for k in keep}
    options["sample_steps"] = ",".join(str(s) for s in args.sample_steps)
    return {k: v for k, v in options.items() if v is not None}


def summary(name: str, outcome: dict) -> str:
    """One line of figures per section for the table."""
    f = outcome.get("figures", {})

    def num(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    if name == "train-step":
        parts = []
        for key, label in (("without_activation_checkpointing", "no AC"), ("with_activation_checkpointing", "AC")):
            r = f.get(key)
            if r:
                parts.append(
                    f"{label}: {num(r['images_per_s'], '.2f')} img/s, {num(r['train_tflops_per_s'], '.3g')} "
                    f"TFLOP/s, MFU {num(r['mfu'] and 100 * r['mfu'], '.1f')}%, "
                    f"peak {num(r['peak_mem_gb'], '.1f')} GB (batch {r['batch']})"
                )
        return "; ".join(parts)
    if name == "sample":
        return "; ".join(
            f"{r['steps']} steps: "
            + (
                r["skipped"]
                if "skipped" in r
                else f"{num(r['images_per_s'], '.3f')} img/s, {num(r['tflops_per_s'], '.3g')} TFLOP/s"
            )
            for k, r in f.items()
            if k.startswith("steps_")
        )
    if name == "torchrun":
        return "; ".join(
            f"{k}: exit {r['returncode']}, {num(r.get('images_per_s'), '.1f')} img/s, "
            f"loss {num(r.get('final_loss'), '.4f')}"
            for k, r in f.items()
        )
    if name == "pytest-gpu":
        return ", ".join(f"{n} {w}" for w, n in f.get("counts", {}).items())
    return ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from madkit_models.passes import DENOISE_STEPS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="device_check.json", help="where to write the results")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {list(SECTIONS)}")
    p.add_argument("--cpu-smoke", action="store_true", help="every section at tiny sizes on the CPU")
    p.add_argument("--budget", action="append", default=[], metavar="NAME=SECONDS", help="a section's time budget")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak per device (default: table)")
    p.add_argument("--no-compile", action="store_true", help="train-step without torch.compile")
    p.add_argument("--steps", type=int, default=None, help="train-step: measured steps (5; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="train-step: steps before measuring (3; smoke 1)")
    p.add_argument("--train-batch", type=int, default=None, help="train-step: images per step (4)")
    p.add_argument("--sample-batch", type=int, default=None, help="sample: images generated together (8; smoke 2)")
    p.add_argument("--sample-steps", default=None, help="sample: comma-separated step counts (25,250; smoke 2,5)")
    p.add_argument(
        "--denoise-step", default="cuda-graph", choices=DENOISE_STEPS, help="sample: how a step runs (cuda-graph)"
    )
    p.add_argument("--torchrun-steps", type=int, default=None, help="torchrun: optimizer steps (30; smoke 4)")
    # internal: one section in this process
    p.add_argument("--section", choices=list(SECTIONS), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--budget-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    smoke = args.cpu_smoke
    defaults = {
        "steps": 2 if smoke else 5,
        "warmup": 1 if smoke else 3,
        "train_batch": 4,
        "sample_batch": 2 if smoke else 8,
        "sample_steps": "2,5" if smoke else "25,250",
        "torchrun_steps": 4 if smoke else 30,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.sample_steps = [int(s) for s in str(args.sample_steps).split(",") if s.strip()]
    except ValueError:
        p.error(f"--sample-steps {args.sample_steps!r}: expected comma-separated integers such as 25,250")
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"--only: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    args.budgets = dict(SMOKE_BUDGETS if smoke else BUDGETS)
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in SECTIONS or not re.fullmatch(r"\d+(\.\d+)?", seconds):
            p.error(f"--budget {item!r}: expected NAME=SECONDS with NAME one of {list(SECTIONS)}")
        args.budgets[name] = float(seconds)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.section:
        return run_section(args)
    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(
            f"device_check.py: torch {torch.__version__} sees no CUDA device; this check needs one "
            "(run it on the GPU machine, or pass --cpu-smoke to exercise the script on the CPU at tiny sizes)",
            file=sys.stderr,
        )
        return 2
    out = Path(args.json)
    report = {"script": "benchmarks/device_check.py", "env": environment(args), "sections": {}}
    print(
        f"device check: {report['env'].get('device')}, torch {report['env']['torch']}, "
        f"{report['env']['mode']}; sections {', '.join(args.sections)}; results -> {out}",
        flush=True,
    )
    _write_json(out, report)
    with tempfile.TemporaryDirectory(prefix="madkit-device-check-") as tmp:
        for name in args.sections:
            print(f"[{name}] running (budget {args.budgets[name]:.0f} s)", flush=True)
            outcome = run_child(args, name, args.budgets[name], Path(tmp) / f"{name}.json")
            report["sections"][name] = outcome
            _write_json(out, report)
            print(
                f"[{name}] {outcome['status']} in {outcome['seconds']:.0f} s"
                + (f": {outcome['error']}" if outcome.get("error") else ""),
                flush=True,
            )
    print()
    print(f"{'section':<11} {'status':<8} {'seconds':>7}  figures")
    for name, outcome in report["sections"].items():
        print(f"{name:<11} {outcome['status']:<8} {outcome['seconds']:>7.0f}  {summary(name, outcome)}")
    print(f"\nwrote {out}")
    return 0 if all(o["status"] == "ok" for o in report["sections"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
