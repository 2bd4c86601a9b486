"""The tracker sinks through a real ``madkit run`` and ``madkit eval``: wandb in offline mode, mlflow
with its local store in the run folder, TensorBoard's hyperparameters and evaluation metrics. Each
tracker's own files are read back (no server, no network).

The packages are in the ``test`` extra; without one of them its checks are skipped, saying which.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import environment  # noqa: F401 (autouse: private cache, offline hub, one thread)

from madkit.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "experiments" / "tiny" / "madformer.toml"
SINKS = ["tensorboard", "wandb", "mlflow"]
EVAL_TAG = "eval/fid/ddim-s1-n4"


def available(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> Path:
    missing = [p for p in ("tensorboard", "wandb", "mlflow") if not available(p)]
    if missing:
        pytest.skip(f"not installed: {missing} (pip install -e '.[test]' installs them)")
    patch = pytest.MonkeyPatch()
    patch.setenv("WANDB_MODE", "offline")
    patch.setenv("WANDB_SILENT", "true")
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path_factory.mktemp("tracked") / "tiny"
    sets = ["train.steps=4", "train.log_every=2", "train.ckpt_every=4", "train.sample_num=2", "sampler.steps=1",
            f"log.sinks={json.dumps(SINKS)}"]
    try:
        assert main(["run", str(TINY), "--out", str(out), *(a for s in sets for a in ("--set", s))]) == 0
        assert main(["eval", str(out), "--num", "4", "--steps", "1", "--batch", "4"]) == 0
    finally:
        patch.undo()
    return out


def fid(out: Path) -> float:
    (record,) = (json.loads(p.read_text()) for p in (out / "eval").glob("*.json"))
    return record["fid"]


def test_tensorboard_gets_hparams_and_eval_metrics(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(tracked / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("loss")] == [2, 4]
    (point,) = events.Scalars(EVAL_TAG)
    assert point.step == 4 and point.value == pytest.approx(fid(tracked), rel=1e-6)
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.lr"].number_value == pytest.approx(1e-3)
    assert start.hparams["model.kind"].string_value == "madformer"


def test_wandb_offline_run_holds_metrics_config_and_eval(tracked):
    from tracker_files import wandb_config, wandb_history

    folder = tracked / "wandb"
    assert (folder / "madkit-run-id").is_file()
    rows = wandb_history(folder)
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    metrics = [json.loads(line) for line in (tracked / "metrics.jsonl").read_text().splitlines()]
    assert losses == [(m["step"], pytest.approx(m["loss"])) for m in metrics]
    (evaluated,) = [r for r in rows if EVAL_TAG in r]
    assert evaluated["step"] == 4 and evaluated[EVAL_TAG] == pytest.approx(fid(tracked))
    config = wandb_config(folder)
    assert config["train.lr"] == pytest.approx(1e-3) and config["data.kind"] == "openmoji"


def test_mlflow_local_run_holds_metrics_params_images_and_eval(tracked):
    from madkit_sinks.mlflow_sink import RUN_FILE, local_tracking_uri
    from mlflow.tracking import MlflowClient

    stored = json.loads((tracked / RUN_FILE).read_text())
    assert stored["tracking_uri"] == local_tracking_uri(tracked)
    client = MlflowClient(tracking_uri=stored["tracking_uri"])
    run_id = stored["run_id"]
    metrics = [json.loads(line) for line in (tracked / "metrics.jsonl").read_text().splitlines()]
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert history == [(m["step"], pytest.approx(m["loss"])) for m in metrics]
    (evaluated,) = client.get_metric_history(run_id, EVAL_TAG)
    assert evaluated.step == 4 and evaluated.value == pytest.approx(fid(tracked))
    run = client.get_run(run_id)
    assert run.data.params["train.lr"] == "0.001" and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "samples")] == ["samples/step_00000004.png"]


def test_trackers_configured_in_the_spec(tmp_path, monkeypatch):
    """[[log.sinks]] tables carry each tracker's settings (here through --set); they win over the
    environment, which the earlier tests use."""
    missing = [p for p in ("tensorboard", "wandb", "mlflow") if not available(p)]
    if missing:
        pytest.skip(f"not installed: {missing}")
    from madkit_sinks.mlflow_sink import RUN_FILE
    from mlflow.tracking import MlflowClient
    from tracker_files import wandb_records

    monkeypatch.setenv("WANDB_MODE", "online")  # the spec's mode = "offline" must win (no network here)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-the-environment")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sinks = ('log.sinks=[{kind="wandb", project="madkit-tests", mode="offline", tags=["ci", "tiny"]}, '
             '{kind="mlflow", experiment="tiny-experiment"}, {kind="tensorboard", subdir="tb"}]')
    out = tmp_path / "run"
    sets = ["train.steps=2", "train.ckpt_every=2", "train.sample_num=1", "sampler.steps=1", sinks]
    assert main(["run", str(TINY), "--out", str(out), *(a for s in sets for a in ("--set", s))]) == 0
    assert list((out / "tb").glob("events.out.tfevents.*"))
    (run_file,) = (out / "wandb").rglob("run-*.wandb")
    (started,) = [r.run for r in wandb_records(run_file) if r.HasField("run")][:1]
    assert started.project == "madkit-tests" and list(started.tags) == ["ci", "tiny"]
    stored = json.loads((out / RUN_FILE).read_text())
    client = MlflowClient(tracking_uri=stored["tracking_uri"])
    experiment = client.get_experiment(client.get_run(stored["run_id"]).info.experiment_id)
    assert experiment.name == "tiny-experiment"
    resolved = (out / "config.resolved.toml").read_text()  # the tables, written back as TOML
    assert 'kind = "wandb"' in resolved and 'project = "madkit-tests"' in resolved
