"""Sharing models: ``Pipeline.save_pretrained`` writes an export folder, ``from_pretrained`` loads a
local folder or a hub id (from a pre-filled hub cache, offline), ``push_to_hub`` uploads the export.
No test contacts the network: HF_HUB_OFFLINE=1, and the upload goes to a recording stand-in for
``HfApi`` whose received folder is checked to be a loadable export."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from engine_fakes import one_thread  # noqa: F401  (autouse fixture: one intra-op thread)

import madkit
from madkit.cli import main
from madkit.engine.checkpoints import export_format
from madkit.engine.packaging.hub import HubError, resolve_pretrained

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny" / "madformer.toml"
QUICK = ["train.steps=2", "train.ckpt_every=2", "train.sample_num=2", "sampler.steps=2", "log.sinks=[]"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hub") / "tiny"
    assert main(["run", str(TINY), "--out", str(out), *(a for s in QUICK for a in ("--set", s))]) == 0
    return out


def hub_cache(root: Path, repo_id: str, folder: Path) -> Path:
    """The layout huggingface_hub's cache has after a download of ``repo_id`` at ``main``."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return root


def test_save_pretrained_then_from_pretrained_gives_the_same_images(trained, tmp_path):
    pipe = madkit.load(trained, device="cpu")
    folder = pipe.save_pretrained(tmp_path / "export")
    assert export_format.is_export(folder)
    again = madkit.Pipeline.from_pretrained(folder, device="cpu")
    assert torch.equal(pipe.generate(2, steps=2, output="uint8"), again.generate(2, steps=2, output="uint8"))


def test_from_pretrained_reads_a_hub_id_from_the_cache_offline(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = madkit.load(trained, device="cpu")
    cache = hub_cache(tmp_path / "hub", "someone/tiny-emoji", pipe.save_pretrained(tmp_path / "export"))
    from_hub = madkit.Pipeline.from_pretrained("someone/tiny-emoji", cache_dir=cache, device="cpu")
    assert torch.equal(pipe.generate(2, steps=2, output="uint8"), from_hub.generate(2, steps=2, output="uint8"))
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        madkit.Pipeline.from_pretrained("someone/absent", cache_dir=cache)


def test_push_to_hub_uploads_the_export(trained, tmp_path, monkeypatch):
    received = {}

    class RecordingApi:
        def __init__(self, token=None):
            received["token"] = token

        def create_repo(self, repo_id, **kwargs):
            received["created"] = (repo_id, kwargs)

        def upload_folder(self, repo_id, folder_path, **kwargs):
            shutil.copytree(folder_path, tmp_path / "uploaded")  # the temporary folder goes away afterwards
            received["uploaded"] = repo_id
            return "https://hub.example/commit/1"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    pipe = madkit.load(trained, device="cpu")
    assert pipe.push_to_hub("someone/tiny-emoji", private=True) == "https://hub.example/commit/1"
    assert received["created"][0] == received["uploaded"] == "someone/tiny-emoji"
    assert export_format.read_export(tmp_path / "uploaded").spec == export_format.read_export(pipe.save_pretrained(tmp_path / "mine")).spec


def test_init_from_an_export_folder(trained, tmp_path, capsys):
    from safetensors.torch import load_file

    folder = madkit.load(trained, device="cpu").save_pretrained(tmp_path / "export")
    out = tmp_path / "tuned"
    sets = [*QUICK, f"train.init_from={str(folder)!r}", "train.steps=1", "train.lr=1e-12"]
    assert main(["run", str(TINY), "--out", str(out), *(a for s in sets for a in ("--set", s))]) == 0
    assert f"starting from the weights of {folder}" in capsys.readouterr().out
    exported = load_file(folder / export_format.WEIGHTS_FILE)
    tuned = load_file(out / "checkpoints" / "00000001" / "model.safetensors")
    assert all(torch.allclose(exported[k], tuned[k], atol=1e-6) for k in exported)


def test_a_missing_local_run_is_named_as_a_folder_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    with pytest.raises(HubError, match=r"runs/quickstrat: no such folder \(runs exists; it holds quickstart\)"):
        resolve_pretrained("runs/quickstrat")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):  # no local folder "owner": a hub id
        resolve_pretrained("owner/name")


def test_an_export_names_the_plugins_it_needs_when_they_are_missing(trained, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "export"
    assert main(["export", str(trained), "--out", str(folder)]) == 0
    needed = export_format.read_export(folder).provenance["plugins"]
    assert needed["model madformer"] == {"distribution": "madkit", "version": madkit.__version__, "plugin": "models"}
    assert {"schedule ddpm-linear", "sampler ddim", "partitioner tiles", "data openmoji"} <= set(needed)
    again = madkit.load(folder).save_pretrained(tmp_path / "again")  # a re-export keeps the record
    assert export_format.read_export(again).provenance["plugins"] == needed
    capsys.readouterr()
    # another machine without the plugin that registers the diffusion schedules and samplers
    monkeypatch.setenv("MADKIT_DISABLE_PLUGINS", "diffusion")
    assert main(["sample", str(folder), "--num", "1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs plugins that are not installed" in err[0], err
    assert "schedule 'ddpm-linear'" in err[0] and f"pip install 'madkit=={madkit.__version__}'" in err[0]


def test_the_model_card_carries_hub_metadata(trained, tmp_path):
    from huggingface_hub import ModelCard

    folder = madkit.load(trained).save_pretrained(tmp_path / "export")
    card = ModelCard.load(folder / export_format.CARD_FILE)
    assert card.data.library_name == "madkit" and card.data.license == "cc-by-sa-4.0"  # OpenMoji's license
    assert {"madkit", "madformer", "unconditional"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert card.text.lstrip().startswith("# tiny")
