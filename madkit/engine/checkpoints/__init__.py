"""Checkpoints and the run folder they live in: one import for what the rest of madkit uses.

    layout.py      names, completeness, listing          saving.py    atomic writes, pruning (whole layout)
    loading.py     state, spec, weights, shapes, fit     sharded.py   the torch.distributed.checkpoint layout
    verify.py      damage checks, choosing, set-aside    weights.py   what sampling loads (checkpoint or export)
    export_format.py  reading an export folder           run_folder.py / run_lock.py / disk_space.py
    read_lease.py  readers' leases that pruning respects   output_folder.py  sample folders that never mix
"""

from madkit.engine.checkpoints.layout import (  # noqa: F401
    CHECKPOINTS,
    EMA_FILE,
    FILES,
    MODEL_FILE,
    SHARDED_DIR,
    STATE_FILE,
    CheckpointError,
    IncompatibleCheckpointError,
    has_all_files,
    is_complete,
    is_sharded,
    latest_checkpoint,
    list_checkpoints,
    step_dir_name,
    unwrapped_name,
)
from madkit.engine.checkpoints.loading import (  # noqa: F401
    all_spec_differences,
    check_compatible,
    load_state,
    load_weights,
    reading_newest,
    resolve_checkpoint,
    spec_differences,
    stored_shapes,
    stored_spec,
    stored_state_value,
)
from madkit.engine.checkpoints.saving import (  # noqa: F401
    checkpoint_folder,
    commit_folder,
    discard_failed_save,
    ensure_free_for,
    load_unwrapped,
    prune,
    save_checkpoint,
    sweep_temp_folders,
    temp_folder,
    unwrapped_state_dict,
    write_state,
    writing_into,
)
from madkit.engine.checkpoints.verify import CorruptCheckpointError, choose_checkpoint, newest_verified  # noqa: F401
