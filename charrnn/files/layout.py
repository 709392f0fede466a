"""The names of the files in a run directory, and where runs live by default.

A leaf: it imports nothing of charrnn, so both the checkpoint format (which opens a run
directory's model or state file) and the run directory code can share it.
"""

import os

CHECKPOINTS = "checkpoints"         # runs live in checkpoints/<name> unless --out says otherwise
MODEL_FILE = "model.safetensors"    # latest weights + config + vocabulary (self-contained)
BEST_FILE = "best.safetensors"      # the weights with the lowest validation loss so far
STATE_FILE = "state.safetensors"    # everything needed to resume exactly (weights too)
LOG_FILE = "log.jsonl"              # one JSON object per logging step, appended to on resume
PLOT_FILE = "loss.png"              # what `charrnn plot` writes by default
DATA_DIR = "data"                   # the encoded training and validation ids (memory-mapped)
LOCK_FILE = "train.lock"            # held (fcntl.flock) by the one trainer writing the run; see runlock.py
LABELS_FILE = "labels.json"         # in DATA_DIR, task classify: the label names in id order
RUN_FILE = "run.json"               # the run's id and its data's fingerprint (identity.py: which run a state belongs to)
SNAPSHOTS_DIR = "snapshots"         # --keep N: the N best evaluations' model files, named by step and val loss


def snapshot_name(step: int, val_loss: float) -> str:
    """The file name of the snapshot of an evaluation (in SNAPSHOTS_DIR): its step and validation loss."""
    return f"step{step:09d}-val{val_loss:.4f}.safetensors"


def run_model_file(directory) -> str:
    """The model file that stands for a run directory: BEST_FILE when it exists, else MODEL_FILE.

    The one rule for every reader (the CLI's sample, eval and info, and checkpoint.load_model
    from Python), so the same run directory always means the same weights.
    """
    best = os.path.join(os.fspath(directory), BEST_FILE)
    return best if os.path.isfile(best) else os.path.join(os.fspath(directory), MODEL_FILE)
