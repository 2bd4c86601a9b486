"""Sharing exported models through the Hugging Face hub (``huggingface_hub``, which diffusers brings).

A hub repository of a madkit model holds exactly an export folder (``madkit export``, see
madkit.engine.packaging.export): the EMA weights with the spec and provenance in their metadata,
config.resolved.toml and a model card as README.md. So

- ``resolve_pretrained(source)``: a local run/checkpoint/export folder as it is, else a hub id
  (``owner/name``, optionally ``@revision``) downloaded into the hub cache (or found there when
  ``HF_HUB_OFFLINE=1``), whose snapshot folder is an export folder;
- ``push_folder(folder, repo_id)``: uploads an export folder to a model repository.

The hub is only contacted for a source that is not a local folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from madkit.engine.checkpoints import export_format as export
from madkit.errors import UserError
from madkit.hub_ids import HUB_ID, looks_like_hub_id, split_revision

FILES = (export.WEIGHTS_FILE, export.SPEC_FILE, export.CARD_FILE)


class HubError(UserError, ValueError):
    """A hub id that cannot be resolved, or a folder that cannot be pushed (``train.init_from``, ``madkit.load``):
    the user's to fix, so exit 2 with the message alone."""


def resolve_pretrained(source: str | Path, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local folder for ``source``: the folder itself when it exists, else the hub snapshot of the id."""
    path = Path(source)
    if path.exists():
        return path
    if not looks_like_hub_id(source):
        raise HubError(f"{source}: no such folder, and not a hub id of the form owner/name")
    if path.parent.is_dir() and path.parent != Path("."):
        # "runs/typo": the first part names a local folder, so it is a path with a typo, not a hub id
        near = sorted(p.name for p in path.parent.iterdir() if p.is_dir())[:8]
        raise HubError(
            f"{source}: no such folder ({path.parent} exists; it holds {', '.join(near) or 'no folders'}); "
            f"a hub id owner/name is looked up only when no local folder {path.parent} exists"
        )
    repo_id, at = split_revision(str(source))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(
            snapshot_download(repo_id, revision=revision or at, cache_dir=cache_dir, allow_patterns=list(FILES))
        )
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "HF_HUB_OFFLINE is set and it is not in the hub cache" if offline else "it could not be downloaded"
        raise HubError(f"{source}: {why}; check the id, or pass a local export folder") from None
    except (RepositoryNotFoundError, HfHubHTTPError) as exc:
        raise HubError(f"{source}: the hub refused it ({exc.__class__.__name__}); check the id and your token") from None
    if not export.is_export(folder):
        raise HubError(f"{source}: the hub repository holds no madkit export ({export.WEIGHTS_FILE} with madkit metadata)")
    return folder


def push_folder(
    folder: str | Path, repo_id: str, private: bool | None = None, token: str | None = None, message: str | None = None
) -> str:
    """Upload an export folder to the model repository ``repo_id`` (created if missing); returns the commit URL."""
    folder = Path(folder)
    manifest = export.read_export(folder)  # refuses anything that is not a complete export
    if not HUB_ID.match(repo_id):
        raise HubError(f"{repo_id!r} is not a hub id of the form owner/name")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=list(FILES),
        commit_message=message or f"madkit export ({manifest.provenance.get('run', 'model')})",
    )
    return str(getattr(info, "commit_url", info))
