"""``mlflow``: metrics, sample grids and the resolved spec in an MLflow run.

Where the run goes: the spec's ``tracking_uri`` (``[[log.sinks]] kind = "mlflow"``), else MLflow's
environment, ``MLFLOW_TRACKING_URI`` (a tracking server, a database), else a local SQLite store
inside the run folder, RUN/mlflow.db, with artifacts under RUN/mlartifacts/ (browse it with
``mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db``). The spec's ``experiment``, else
``MLFLOW_EXPERIMENT_NAME``, names the experiment (default ``madkit``). The run is named after the run
folder; its id is kept in RUN/mlflow-run.json so a resumed training and a later ``madkit eval`` add
to the same MLflow run. The spec's values become parameters (a value a resumed run changes goes to
a ``changed.<key>`` tag: MLflow refuses to overwrite a parameter); the resolved spec is an artifact.

Needs ``mlflow`` or ``mlflow-skinny`` with SQLAlchemy (``pip install 'madkit[mlflow]'``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from madkit.errors import require_package
from madkit.interfaces import Sink, SpecProblem
from madkit_sinks.tensorboard import missing_package, plain_hparams

RUN_FILE = "mlflow-run.json"
BATCH = 100  # MLflow accepts at most 100 parameters per call
MAX_PARAM = 6000  # characters MLflow stores per parameter value


def local_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


@attrs.frozen
class MlflowConfig:
    # "" for each: the environment's MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME, else a SQLite store
    # in the run folder / "madkit"; a value set here wins
    tracking_uri: str = ""
    experiment: str = ""

    def build(self, run_dir: str | Path) -> MlflowSink:
        return MlflowSink(Path(run_dir), self.tracking_uri, self.experiment)

    def check(self, context: dict[str, Any]) -> list[SpecProblem]:
        return missing_package("mlflow", "mlflow", "mlflow")


class MlflowSink(Sink):
    def __init__(self, run_dir: Path, tracking_uri: str = "", experiment: str = ""):
        require_package("mlflow", "mlflow", "the mlflow sink")
        from mlflow import entities
        from mlflow.tracking import MlflowClient

        self._entities = entities
        run_dir.mkdir(parents=True, exist_ok=True)
        remote = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.tracking_uri = remote or local_tracking_uri(run_dir)
        # a client of its own: the user's global mlflow state (active run, URI) is left alone
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        record = run_dir / RUN_FILE
        stored = json.loads(record.read_text()) if record.is_file() else {}
        if stored.get("tracking_uri") == self.tracking_uri:
            self.run_id = stored["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "madkit"
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                experiment_id = experiment.experiment_id
            elif remote:
                experiment_id = self.client.create_experiment(name)
            else:  # the local store keeps its artifacts next to it, in the run folder
                experiment_id = self.client.create_experiment(name, artifact_location=str(run_dir / "mlartifacts"))
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            record.write_text(json.dumps({"tracking_uri": self.tracking_uri, "run_id": self.run_id}) + "\n")

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [self._entities.Metric(key, float(value), now, int(step)) for key, value in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_image(self, step: int, tag: str, image_uint8_hwc) -> None:
        self.client.log_image(self.run_id, np.asarray(image_uint8_hwc), f"{tag}/step_{step:08d}.png")

    def log_config(self, config: dict[str, Any]) -> None:
        from madkit.experiment_spec import dumps_toml

        have = self.client.get_run(self.run_id).data.params
        new, changed = [], []
        for key, value in plain_hparams(config).items():
            text = str(value)[:MAX_PARAM]
            if key not in have:
                new.append(self._entities.Param(key, text))
            elif have[key] != text:
                changed.append(self._entities.RunTag(f"changed.{key}", text))
        for i in range(0, len(new), BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + BATCH])
        if changed:
            self.client.log_batch(self.run_id, tags=changed)
        self.client.log_text(self.run_id, dumps_toml(config), "config.resolved.toml")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
