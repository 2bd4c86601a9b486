"""Which checkpoint a run continues from (``train.resume``, ``--from``), and claiming the run folder
under its lock once every input is checked: nothing is written to a folder before then.
"""

from __future__ import annotations

from pathlib import Path

from madkit.engine import checkpoints
from madkit.engine.checkpoints import verify as checkpoint_verify
from madkit.engine.checkpoints.run_lock import RunFolderBusyError
from madkit.errors import ConfigError
from madkit.logs import get_logger

logger = get_logger(__name__)


class ResumeChoice:
    """The part of ``Trainer`` (loop.py) that picks the checkpoint to resume and claims the run folder."""

    def _resume_target(self) -> str | None:
        """The checkpoint to continue from (rank 0 decides; the others are told).

        An existing run folder is locked first, so no other writer changes it from here on."""
        root = self.run_dir.root
        if root.is_dir():
            self.lock.acquire()
        resume = self.cfg.resume
        if resume == "never":
            if (own := checkpoints.latest_checkpoint(root)) is not None:
                raise ConfigError(
                    f"train.resume = 'never', but {root} already holds checkpoints (newest {own}); "
                    "training into it would mix two runs. Use another --out folder, or resume = 'auto'"
                )
            if self.from_step is not None:
                raise ConfigError("--from continues a run folder's checkpoint; it contradicts train.resume = 'never'")
            return None
        if self.from_step is not None:
            return str(self._from_step_target())
        own, damaged = checkpoint_verify.newest_verified(root)
        if damaged:
            checkpoint_verify.warn_skipped(damaged, own)
            self._set_aside.append(([folder for folder, _ in damaged], "damaged"))
        if own is not None or resume == "auto":
            return str(own) if own else None
        return str(checkpoints.resolve_checkpoint(resume))  # an explicit start for a fresh run folder

    def _from_step_target(self) -> Path:
        """``--from STEP``: that checkpoint, verified; every newer one is to be set aside."""
        root, step = self.run_dir.root, self.from_step
        target = root / checkpoints.CHECKPOINTS / checkpoints.step_dir_name(step)
        if not target.is_dir():
            steps = ", ".join(str(s) for s, _ in checkpoints.list_checkpoints(root)) or "none"
            raise ConfigError(f"--from {step}: {root} has no checkpoint of step {step} (its checkpoints: {steps})")
        checkpoint_verify.verify_checkpoint(target)
        newer = [p for p in (root / checkpoints.CHECKPOINTS).iterdir() if p.name.isdigit() and int(p.name) > step]
        self._set_aside.append((sorted(newer), f"after-step-{step}"))
        return target

    def _claim_run_folder(self) -> None:
        """Rank 0, once every input is checked: lock (creating) the run folder, move aside what this run
        will not trust, and write the spec, the versions and the metrics cut back to the resumed step."""
        root = self.run_dir.root
        if not self.lock.held:
            root.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
            if (appeared := checkpoints.latest_checkpoint(root)) is not None:
                raise RunFolderBusyError(
                    f"another run wrote {appeared} into {root} while this one was starting; nothing was changed; "
                    "run the same command again to continue from it"
                )
        for folders, why in self._set_aside:
            if (moved := checkpoint_verify.set_aside(root, folders, why)) is not None:
                names = ", ".join(p.name for p in folders)
                logger.warning(f"moved checkpoint(s) {names} to {moved}")
        self.run_dir.prepare(self.loaded.to_toml(), self.versions, self.step)
        if self.console is not None:
            self.console.attach(self.run_dir.log, " ".join(self.versions["command"]))
