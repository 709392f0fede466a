"""A run: starting, resuming and saving it.

`start_run` (a new run) and `resume_run` (continue one) return a `Run`, which
the loop in loop.py advances and `save_checkpoint` writes. A run directory
holds the files named in layout.py:

    model.safetensors   latest weights + config + vocabulary (self-contained)
    best.safetensors    the weights with the lowest validation loss so far
    state.safetensors   everything needed to resume exactly (weights too)
    log.jsonl           one JSON object per logging step, appended to on resume (runlog.py)
    data/               the encoded training and validation ids (memory-mapped; prepare.py)
    run.json            the run's id and the fingerprint of its vocabulary and data (identity.py)

A state file belongs to one run (identity.py): `resume_run` proves it before anything in the directory
is written. A fresh run directory that never saved a checkpoint (its start was killed, ran
out of disk or diverged before its first save) holds no run: starting again with
the same --out clears what the failed start left (`start_run`). `writing` is the claim on a run
directory (its lock) while it is written; finding and loading models is models.py's.

Exact resume needs no RNG state: batches are fixed by the step number (and
for lines mode, a permutation seeded by (seed, epoch)), and dropout masks are
drawn from a generator seeded by (seed, step). Nothing here prints.
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np

from ..files import checkpoint, corpus
from ..data import batches
from ..core import model, optim
from ..core.cells import STATES
from ..files.config import RESUMABLE, SCHEDULE_KEYS, TrainConfig, is_number
from ..errors import CharRNNError, CheckpointError, ConfigError, option
from ..files.layout import (BEST_FILE, CHECKPOINTS, LOG_FILE, MODEL_FILE, RUN_FILE,
                            SNAPSHOTS_DIR, STATE_FILE, snapshot_name)
from ..tasks import registry as tasks
from ..tasks.base import Task, TaskData
from ..core.model import ModelConfig
from ..files.runlock import RunLock
from ..data.vocab import UNK, Vocab
from . import finetune, runlog
from .finetune import InitFrom
from .identity import new_identity, proven_identity
from .prepare import check_data_dir, data_dir, load_data, prepare_data


@dataclass
class Run:
    """Everything the loop needs; mutable, owned by one training process."""
    directory: str
    config: ModelConfig
    tconfig: TrainConfig
    vocab: Vocab
    params: dict
    optimizer: optim.Optimizer
    train_ids: np.ndarray              # (N,) encoded training text (memory-mapped)
    val_ids: np.ndarray                # (M,) encoded validation text (memory-mapped)
    train_offsets: np.ndarray | None   # lines mode: (n_lines + 1,) line boundaries
    val_offsets: np.ndarray | None
    step: int = 0                      # optimizer updates taken so far
    carry: tuple | None = None         # stream mode: hidden state carried into the next window
    best_val: float = math.inf
    best_step: int | None = None       # the step of the best validation loss
    evals_since_best: int = 0          # evaluations in a row without a new best (early stopping counts them)
    last_val: float | None = None      # the last validation loss (early stopping compares it with the best)
    elapsed: float = 0.0               # wall seconds spent training, over all sessions
    schedule_steps: int | None = None  # total steps the cosine schedule spans
    schedule_since: tuple | None = None  # (step, progress) where a resume re-aimed the cosine (optim.cosine_progress)
    schedule_start: int = 0            # the step the current schedule (tconfig's lr, schedule, warmup) starts at
    schedules: list = field(default_factory=list)  # the schedules before the current one: [{step, lr, schedule, warmup}]
    skipped: int = 0                   # non-finite steps skipped
    log_sum: float = 0.0               # loss summed since the last log line
    log_count: int = 0
    log_bytes: int = 0                 # length of log.jsonl after its last line (saved: resume cuts what follows)
    reaimed_lr: float | None = None    # set by resume_run when a new budget re-aimed the cosine decay: the
                                       # learning rate it goes on from (what api.train tells the user)
    data: TaskData = field(default_factory=TaskData)  # the task's own data (labels...) and batching cache
    origin: dict | None = None         # a fine-tuned run: the model it started from (finetune.origin)
    identity: dict | None = None       # {"id", "vocab", "data"}: the run's id and fingerprints (identity.py)

    @property
    def task(self) -> Task:
        """The run's task (tasks/): what it reads, batches, and how it scores."""
        return tasks.get(self.tconfig.task)

    @property
    def steps_per_epoch(self) -> int:
        if self.tconfig.mode == "stream":
            return batches.stream_windows(len(self.train_ids), self.tconfig.batch_size, self.tconfig.seq_len)
        return math.ceil((len(self.train_offsets) - 1) / self.tconfig.batch_size)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    @cached_property
    def unknown_share(self) -> float:
        """The share of the training tokens that are <unk> (a model file records it for eval's warning),
        counted once per process in blocks (the ids are memory-mapped)."""
        ids, count = self.train_ids, 0
        for i in range(0, len(ids), 1 << 24):
            count += int(np.count_nonzero(np.asarray(ids[i : i + (1 << 24)]) == UNK))
        corpus.release_pages(ids)
        return count / max(len(ids), 1)


def holds_run(directory) -> bool:
    """Whether directory holds a saved run: a checkpoint (state, latest or best model), never to be overwritten."""
    return any(os.path.lexists(os.path.join(directory, f)) for f in (STATE_FILE, MODEL_FILE, BEST_FILE))


# the files a start writes before its first checkpoint, under data/ (the novelty index: sample --novelty)
_DATA_FILES = ("train.npy", "val.npy", "train_offsets.npy", "val_offsets.npy", "train_index.npy",
               *dict.fromkeys(name for task in tasks.TASKS.values() for name in task.files))


def unsaved_start(directory) -> bool:
    """Whether directory holds what a start that never saved a checkpoint leaves: a run.json, or a log.jsonl
    charrnn wrote (every whole line a step record), and no checkpoint."""
    if holds_run(directory):
        return False
    if os.path.isfile(os.path.join(directory, RUN_FILE)) and not os.path.islink(os.path.join(directory, RUN_FILE)):
        return True
    return runlog.charrnn_log(os.path.join(directory, LOG_FILE))


def _clear_unsaved_start(directory) -> None:
    """Make a directory ready for a fresh start: remove what a start that never saved left (its log, run.json,
    data files, temp files). ConfigError when it holds a saved run, or a log.jsonl that charrnn did not write."""
    if holds_run(directory):
        raise ConfigError(f"{directory} already holds a run; continue it with {option('resume', directory)} "
                          f"or choose another {option('out')}")
    log = os.path.join(directory, LOG_FILE)
    if not (os.path.lexists(log) or os.path.lexists(os.path.join(directory, RUN_FILE))):
        return  # nothing of a run here (a new directory, or one that holds only a data folder)
    if not unsaved_start(directory):
        raise ConfigError(f"{directory} holds a {LOG_FILE} that is not a charrnn log; choose another {option('out')}")
    check_data_dir(directory)  # files are removed inside the run's own data folder only
    try:
        checkpoint.cleanup_temp_files(directory)
        checkpoint.cleanup_temp_files(data_dir(directory))
        for path in [os.path.join(data_dir(directory), name) for name in _DATA_FILES] + \
                [os.path.join(directory, RUN_FILE), log]:  # the log last: until then, the start is recognized
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    except OSError as exc:
        raise CheckpointError(f"cannot clear what the failed start left in {directory}: "
                              f"{exc.strerror or exc} ({exc.filename})") from None


def start_run(directory, train_text, val_text, config_options: dict,
              tconfig: TrainConfig, init: InitFrom | None = None,
              where: tuple = ("the corpus", "the validation text")) -> Run:
    """Create a new run directory and initialize the model.

    - train_text, val_text: textfile.TextFile or str (see prepare_data)
    - config_options: ModelConfig fields except vocab_size and classes (taken from the data)
    - init: start from this trained model's weights (its architecture is in config_options and its level in
      tconfig, as request.TrainingRequest.fine_tune checks them); the optimizer and the schedule start fresh
    - where: the two texts' names, for errors
    Refuses a directory that already holds a run, so nothing is overwritten; one whose start never
    saved a checkpoint is cleared and started again (see _clear_unsaved_start).
    """
    tconfig.check()
    _clear_unsaved_start(directory)
    task = tasks.get(tconfig.task)
    task.check(tconfig)
    ModelConfig(vocab_size=4, **task.model_fields(), **config_options)  # fail before any file is written
    vocab = prepare_data(directory, train_text, val_text, tconfig,
                         init.vocab if init else None, init.extend if init else False, where)
    data = load_data(directory, tconfig)
    config = ModelConfig(vocab_size=vocab.size, **task.model_fields(data[4]), **config_options)
    params = model.init_params(config, np.random.default_rng(tconfig.seed))
    origin = None
    if init is not None:
        params = finetune.inherit_params(init, params)
        origin = finetune.origin(init, vocab, directory, train_text, val_text, tconfig)
    run = Run(directory, config, tconfig, vocab, params,
              optim.make_optimizer(tconfig.optim, params, **tconfig.optimizer_options()), *data[:4],
              data=data[4], origin=origin)
    run.identity = new_identity(directory, vocab, data)
    return run


def resume_run(directory, overrides: dict | None = None, *, writer: bool = True) -> Run:
    """Load a run for continuing exactly where it stopped.

    - overrides: new values for options in RESUMABLE (budgets and cadence), and for any of SCHEDULE_KEYS
      (lr, schedule, warmup): a new learning-rate schedule from the current step, the others keeping the
      run's values; the schedule it ends is recorded in run.schedules (saved in the state file)
    - writer: False for an MPI rank other than 0, which reads the run but never touches its files
    """
    if not os.path.isdir(directory):
        raise CheckpointError(f"cannot resume: {directory} is not a run directory")
    if writer:
        checkpoint.cleanup_temp_files(directory)
        if os.path.isdir(os.path.join(directory, SNAPSHOTS_DIR)):
            checkpoint.cleanup_temp_files(os.path.join(directory, SNAPSHOTS_DIR))
    if not os.path.lexists(os.path.join(directory, STATE_FILE)):
        if unsaved_start(directory):
            raise CheckpointError(f"cannot resume: {directory} holds no {STATE_FILE}: its run stopped before its "
                                  f"first checkpoint. Start it again with the same options and "
                                  f"{option('out', directory)}")
        raise CheckpointError(f"cannot resume: {directory} holds no {STATE_FILE} (was the run ever saved?)")
    where = os.path.join(directory, STATE_FILE)
    arrays, meta = checkpoint.load_state(where)
    # everything in the file is checked before use: a hostile state file gets a CheckpointError
    try:
        config = ModelConfig.from_dict(meta["model"])
        # runs saved before the threads setting existed took each batch as one block
        tconfig = TrainConfig.from_dict({"threads": 1, "buckets": False, **meta["train"]})
        tconfig.check()
        tasks.get(tconfig.task).check(tconfig)
        vocab = Vocab.from_dict(meta["vocab"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise CheckpointError(f"{where}: missing or malformed entry {exc}") from None
    except CheckpointError:
        raise
    except CharRNNError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    progress = _checked_progress(meta.get("progress"), where)
    if vocab.size != config.vocab_size:
        raise CheckpointError(f"{where}: {vocab.size} tokens in the vocabulary, but the model has {config.vocab_size}")
    budget_before = (tconfig.max_steps, tconfig.max_epochs, tconfig.max_time)
    ended = {key: getattr(tconfig, key) for key in SCHEDULE_KEYS}
    for key, value in (overrides or {}).items():
        if key not in RESUMABLE + SCHEDULE_KEYS:
            raise ConfigError(f"{option(key)} cannot change when resuming a run")
        setattr(tconfig, key, value)
    new_schedule = any(key in SCHEDULE_KEYS for key in overrides or {})
    tconfig.check()
    budget_changed = budget_before != (tconfig.max_steps, tconfig.max_epochs, tconfig.max_time)

    # in param_shapes order, as a new run has them: sums over the parameters (the gradient norm) then
    # add in the same order, bit for bit; any others are kept for check_params to name
    params = {name: arrays.pop(f"param/{name}") for name in model.param_shapes(config) if f"param/{name}" in arrays}
    params.update({k[len("param/"):]: arrays.pop(k) for k in [k for k in arrays if k.startswith("param/")]})
    checkpoint.check_params(params, config, where)
    carry = _checked_carry(arrays, config, tconfig, where)
    unknown = sorted(k for k in arrays if not k.startswith("optim/"))
    if unknown:
        raise CheckpointError(f"{where}: unexpected tensors {', '.join(unknown[:5])}")
    optimizer = optim.make_optimizer(tconfig.optim, params, **tconfig.optimizer_options())
    try:
        optimizer.load_state_arrays({k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")})
    except ValueError as exc:  # the optimizer names what does not fit; here that makes a bad checkpoint
        raise CheckpointError(str(exc)) from None
    data = load_data(directory, tconfig)
    tasks.get(tconfig.task).check_data(data[4], config, where)
    origin = meta.get("origin")
    run = Run(directory, config, tconfig, vocab, params, optimizer, *data[:4], carry=carry,
              data=data[4], origin=origin if isinstance(origin, dict) else None)
    # before anything is written: the state must be this run's (a copied one would overwrite its model)
    run.identity = proven_identity(directory, meta.get("run"), vocab, data, where, writer)
    since = (progress.pop("schedule_since_step"), progress.pop("schedule_since_progress"))
    if (since[0] is None) != (since[1] is None) or (since[1] is not None and not 0 <= since[1] <= 1):
        raise CheckpointError(f"{where}: progress schedule_since_step and schedule_since_progress do not fit")
    run.schedule_since = None if since[0] is None else since
    for key, value in progress.items():
        setattr(run, key, value)
    run.schedules = _checked_schedules(meta.get("schedules", []), where)
    run.best_val = math.inf if run.best_val is None else run.best_val
    if writer:
        runlog.cut_log(run.path(LOG_FILE), run.log_bytes)
        _catch_up_model(run)
    if new_schedule:
        # the schedule so far ends here, and is recorded; the new one starts at this step, its cosine (if
        # any) spanning what is left of the budget, which the loop measures again as for a fresh run
        run.schedules.append({"step": run.schedule_start, **ended})
        run.schedule_start, run.schedule_since, run.schedule_steps = run.step, None, None
    elif budget_changed and tconfig.schedule == "cosine" and run.schedule_steps is not None \
            and run.step > run.schedule_start + tconfig.warmup:
        # the cosine schedule spans the whole run's budget: a new budget moves its end. From here the decay
        # goes on from where it stands to the floor at the new end, so the learning rate does not jump
        progress = optim.cosine_progress(run.step, tconfig.warmup, run.schedule_steps, run.schedule_since,
                                         run.schedule_start)
        run.reaimed_lr = optim.cosine_lr(progress, tconfig.lr, tconfig.min_lr_ratio)
        run.schedule_since, run.schedule_steps = (run.step, progress), None
    elif budget_changed:
        run.schedule_steps = None
    return run


def _catch_up_model(run: Run) -> None:
    """Export the latest model again when it is behind the state.

    A kill between a save's two renames leaves the model one save behind; a
    second such kill in the resumed run's first save would leave it two behind.
    Bringing it up to the state on resume keeps the lag at one save at most.
    """
    try:
        step = checkpoint.load_model(run.path(MODEL_FILE))[2]["training"]["step"]
    except (CharRNNError, OSError, KeyError, TypeError):  # missing or unreadable: write it afresh
        step = None
    if step != run.step:
        checkpoint.save_files([checkpoint.model_file(run.path(MODEL_FILE), run.params, run.config, model_meta(run))])


# progress counters of a state file: name -> (kind, whether it may be null)
_PROGRESS = {"step": ("count", False), "skipped": ("count", False), "log_count": ("count", False),
             "log_bytes": ("count", False), "schedule_steps": ("count", True),
             "elapsed": ("number", False), "log_sum": ("number", False), "best_val": ("number", True),
             "best_step": ("count", True), "evals_since_best": ("count", False),
             "schedule_since_step": ("count", True), "schedule_since_progress": ("number", True),
             "schedule_start": ("count", False), "last_val": ("number", True)}
# the value of a counter that older state files do not hold
_PROGRESS_ADDED = {"log_bytes": 0, "best_step": None, "evals_since_best": 0, "schedule_since_step": None,
                   "schedule_since_progress": None, "schedule_start": 0, "last_val": None}


def _checked_progress(progress, where: str) -> dict:
    """The progress counters of a state file, each checked; CheckpointError names the first bad one."""
    if not isinstance(progress, dict):
        raise CheckpointError(f"{where}: 'progress' is missing or not a JSON object")
    out = {}
    for key, (kind, nullable) in _PROGRESS.items():
        value = progress.get(key, _PROGRESS_ADDED.get(key, ...))
        if value is None and nullable:
            out[key] = None
            continue
        if not (is_number(value, integer=True) and 0 <= value < 2**63 if kind == "count" else is_number(value)):
            what = "a non-negative integer" if kind == "count" else "a finite number"
            shown = "missing" if value is ... else f"{value!r:.40}"
            raise CheckpointError(f"{where}: progress {key} is {shown}, expected {what}"
                                  f"{' or null' if nullable else ''}")
        out[key] = value
    return out


def _checked_schedules(schedules, where: str) -> list:
    """The schedules a state file records as ended (resume_run), each checked; CheckpointError otherwise."""
    ok = isinstance(schedules, list) and all(
        isinstance(s, dict) and set(s) == {"step", *SCHEDULE_KEYS} and is_number(s["step"], integer=True)
        and 0 <= s["step"] < 2**63 and is_number(s["lr"]) and s["lr"] > 0 and s["schedule"] in optim.SCHEDULES
        and is_number(s["warmup"], integer=True) and 0 <= s["warmup"] < 2**63 for s in schedules)
    if not ok:
        raise CheckpointError(f"{where}: 'schedules' must be a list of {{step, lr, schedule, warmup}} objects")
    return [dict(s) for s in schedules]


def _checked_carry(arrays: dict, config: ModelConfig, tconfig: TrainConfig, where: str):
    """Pop the carried hidden state from a state file's arrays: None, or (h,) / (h, c), each (L, B, H)."""
    keys = sorted(k for k in arrays if k.startswith("carry/"))
    if not keys:
        return None
    wanted = [f"carry/{i}" for i in range(STATES[config.cell])]
    if tconfig.mode != "stream" or keys != wanted:
        raise CheckpointError(f"{where}: carried state {', '.join(keys)} does not fit a {config.cell} "
                              f"model in {tconfig.mode} mode")
    shape = (config.layers, tconfig.batch_size, config.hidden)
    for key in keys:
        arr = arrays[key]
        if arr.shape != shape or arr.dtype != np.dtype(config.dtype):
            raise CheckpointError(f"{where}: {key} is {arr.shape} {arr.dtype}, expected {shape} {config.dtype}")
    return tuple(arrays.pop(key) for key in keys)


def model_meta(run: Run) -> dict:
    """What sample and eval need beside the weights: vocabulary, data options, training summary."""
    return {
        "tokens": list(run.vocab.tokens),
        "special": run.vocab.special,
        "level": run.vocab.level,
        "data": {"mode": run.tconfig.mode, "level": run.tconfig.level, "seq_len": run.tconfig.seq_len,
                 "task": run.tconfig.task, "ids_dtype": str(run.train_ids.dtype),  # as data/*.npy's headers say
                 "encoding": run.tconfig.encoding,  # eval, annotate and classify read files in it
                 "train_unknown": run.unknown_share},  # how often training saw <unk> (eval's warning)
        **run.task.metadata(run),
        "training": {"step": run.step, "epoch": run.step / run.steps_per_epoch, "elapsed": run.elapsed,
                     "best_val_loss": None if math.isinf(run.best_val) else run.best_val,
                     "optimizer": run.tconfig.optim, "lr": run.tconfig.lr},
        **({"origin": run.origin} if run.origin else {}),
        **({"run_id": run.identity["id"]} if run.identity else {}),
    }


def save_checkpoint(run: Run, best: bool = False, val_loss: float | None = None) -> str:
    """Write the state file, the latest model file and (when best) the best model. Returns the model file's path.

    All files are written in full before any replaces its predecessor, so a
    failed write (a full disk) leaves every previous file as it was. The state
    is renamed into place first: if the process dies between the renames,
    resuming is still exact and only the exported model lags one save behind.
    With tconfig.keep N and the validation loss of this save (val_loss), the model is also kept as a
    snapshot when it is among the N best evaluations (keep_snapshot).
    """
    arrays = {f"param/{k}": v for k, v in run.params.items()}
    arrays.update({f"optim/{k}": v for k, v in run.optimizer.state_arrays().items()})
    if run.carry is not None:
        arrays.update({f"carry/{i}": s for i, s in enumerate(run.carry)})
    progress = {key: getattr(run, key) for key in
                ("step", "elapsed", "schedule_steps", "skipped", "log_sum", "log_count", "log_bytes", "best_step",
                 "evals_since_best", "schedule_start", "last_val")}
    progress["best_val"] = None if math.isinf(run.best_val) else run.best_val
    progress["schedule_since_step"], progress["schedule_since_progress"] = run.schedule_since or (None, None)
    meta = {"model": run.config.to_dict(), "train": asdict(run.tconfig), "vocab": run.vocab.to_dict(),
            "progress": progress, **({"origin": run.origin} if run.origin else {}),
            **({"run": run.identity} if run.identity else {}),
            **({"schedules": run.schedules} if run.schedules else {})}
    files = [checkpoint.state_file(run.path(STATE_FILE), arrays, meta),
             checkpoint.model_file(run.path(MODEL_FILE), run.params, run.config, model_meta(run))]
    if best:
        files.append(checkpoint.model_file(run.path(BEST_FILE), run.params, run.config, model_meta(run)))
    drop = []
    if run.tconfig.keep and val_loss is not None and math.isfinite(val_loss):
        snapshot, drop = _snapshot_plan(run, val_loss)
        if snapshot is not None:
            files.append(checkpoint.model_file(snapshot, run.params, run.config, model_meta(run)))
    checkpoint.save_files(files)
    for path in drop:  # once the new one is whole: a kill before this leaves one snapshot too many, trimmed next time
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CheckpointError(f"cannot remove the snapshot {path}: {e.strerror or e}") from None
    return run.path(MODEL_FILE)


_SNAPSHOT = re.compile(r"step(\d{9})-val(\d+\.\d{4})\.safetensors")


def snapshots(directory) -> list[tuple[float, int, str]]:
    """The snapshots a run keeps (--keep), best first: (validation loss, step, path)."""
    folder = os.path.join(os.fspath(directory), SNAPSHOTS_DIR)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(float(m.group(2)), int(m.group(1)), os.path.join(folder, name))
             for name in names if (m := _SNAPSHOT.fullmatch(name))]
    return sorted(found)


def _snapshot_plan(run: Run, val_loss: float):
    """(the path to write this evaluation's snapshot to, or None when it is not among the keep best; the
    snapshots to remove once it is written). Snapshots of this step or later (a resumed run that takes
    them again) are replaced."""
    folder = run.path(SNAPSHOTS_DIR)
    if os.path.islink(folder) or (os.path.lexists(folder) and not os.path.isdir(folder)):
        raise CheckpointError(f"{folder} is not a folder of the run (a symbolic link or a file); charrnn writes a "
                              f"run's files only inside its directory: remove it to keep snapshots")
    os.makedirs(folder, exist_ok=True)
    kept = [s for s in snapshots(run.directory) if s[1] < run.step]
    path = run.path(os.path.join(SNAPSHOTS_DIR, snapshot_name(run.step, val_loss)))
    later = [s[2] for s in snapshots(run.directory) if s[1] >= run.step and s[2] != path]
    ranked = sorted(kept + [(round(val_loss, 4), run.step, path)])
    keep = ranked[: run.tconfig.keep]
    return (path if any(s[2] == path for s in keep) else None), later + [s[2] for s in ranked[run.tconfig.keep:]
                                                                          if s[2] != path]


def fresh_run_dir(name: str) -> str:
    """Make and return a new directory checkpoints/<name>, or <name>-2, -3, ... when that exists.

    The exclusive mkdir is the claim, so two trainers started together on one
    corpus get two directories; an existing directory is never reused.
    """
    name = re.sub(r"[^\w.-]+", "_", name) or "run"
    os.makedirs(CHECKPOINTS, exist_ok=True)
    base = os.path.join(CHECKPOINTS, name)
    candidate, n = base, 1
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{base}-{n}"


@contextmanager
def writing(directory, *, create: bool, lock: bool = True, made: bool = False):
    """Be the one process writing a run directory while the body runs (see runlock.RunLock).

    - create: make the directory when it does not exist (a fresh run); made: the caller just made it
    - lock: take the run's lock (False: --no-lock, or a process that is not the lock holder under MPI)
    The lock is taken before anything is written, so a second trainer fails before it touches the run.
    A directory made for the run is removed again if it is empty at the end (a start that failed).
    """
    directory = os.fspath(directory)
    if create:
        try:
            os.makedirs(directory)
            made = True
        except FileExistsError:  # it is there already (or another trainer just made it): lock it below
            pass
    held = None
    try:
        if lock and os.path.isdir(directory):  # a missing run to resume is resume_run's error to report
            held = RunLock(directory).acquire()
        yield
    finally:
        if held is not None:
            held.release()
        if made:
            try:
                os.rmdir(directory)  # only when empty
            except OSError:
                pass
