"""The training loop: take steps, evaluate, checkpoint.

(The module is loop.py, not train.py, because `charrnn.train` is the Python API's
function; see api.py.)

`train(run)` advances a `Run` (made by rundir.start_run or rundir.resume_run)
and is a generator of event dicts that the CLI renders. Nothing here prints;
the run directory's files are written through rundir (and its log through runlog).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from ..core import model, optim
from ..files import corpus
from ..step import distributed, parallel
from ..runs import rundir, runlog
from ..errors import ConfigError, TrainingError, option
from ..files.layout import BEST_FILE, LOG_FILE, MODEL_FILE, STATE_FILE
from ..runs.rundir import Run

# Overflow and NaN in a step are detected and reported explicitly; NumPy's warnings about them are noise.
QUIET_FP = {"over": "ignore", "invalid": "ignore", "divide": "ignore"}


def validation_loss(run: Run) -> float:
    """The run's task's mean loss on (the first eval_tokens of) the held-out data; nan when there is none."""
    corpus.check_mapped(run.val_ids, run.val_offsets)  # a cut file would kill the process (see there)
    return run.task.validation_loss(run)


def measure_speed(config: model.ModelConfig, tconfig, line_length: int | None = None, seconds: float = 0.5,
                  max_steps: int = 6) -> float:
    """Tokens per second of training steps (forward, backward, clip, update) of this model and batch shape.

    - config, tconfig: the model and the run's batch_size, seq_len, optimizer and clipping
    - line_length: lines mode: the mean tokens per example (a batch is B such lines); None: stream windows
    Runs on random ids and fresh weights, in tconfig.threads row blocks as training does, until
    `seconds` have passed (at least two timed steps after one untimed warm-up step, which also
    compiles the kernels), then returns the rate. Used for the pass estimate behind the automatic
    dropout; nothing is written.
    """
    rng = np.random.default_rng(0)
    params = model.init_params(config, rng)
    optimizer = optim.make_optimizer(tconfig.optim, params, **tconfig.optimizer_options())
    T = tconfig.seq_len if line_length is None else max(1, int(round(line_length)))
    ids = rng.integers(3, config.vocab_size, (tconfig.batch_size, T + 1)) if config.vocab_size > 3 else \
        np.zeros((tconfig.batch_size, T + 1), np.int64)
    x, y = ids[:, :-1], ids[:, 1:]
    parts = tconfig.threads
    drop = [np.random.default_rng([1, p]) for p in range(parts)] if config.dropout > 0 else None
    timed, start = 0, None
    with np.errstate(**QUIET_FP):
        while True:
            _, grads, _ = parallel.loss_and_grads(params, config, x, y, None, None, count=x.size, rngs=drop,
                                                  parts=parts)
            optim.clip_grad_norm(grads, tconfig.clip)
            optimizer.step(params, grads, 1e-3)
            now = time.monotonic()
            if start is None:
                start = now
            else:
                timed += 1
                if timed >= max_steps or (timed >= 2 and now - start >= seconds):
                    return timed * x.size / max(now - start, 1e-9)


def _budget_reached(run: Run):
    """The first budget the run has reached (by run.elapsed, as logged and saved), or None."""
    tc = run.tconfig
    if tc.max_steps is not None and run.step >= tc.max_steps:
        return "max_steps"
    if tc.max_epochs is not None and run.step >= tc.max_epochs * run.steps_per_epoch:
        return "max_epochs"
    if tc.max_time is not None and run.elapsed >= tc.max_time:
        return "max_time"
    return None


# Early stopping waits until the learning-rate schedule has made this share of its decay (a constant
# schedule: at once), unless the validation loss has risen past OVERFIT times its best. Before then a
# plateau is the noise of a high learning rate, which the decay still takes away: on tinyshakespeare a
# 30-minute run stopped at 1.4322 with its rate at 71% of the peak, where a 10-minute run, decayed, had
# reached 1.4220 (bench/data/budget.jsonl; issue 25). A rise of 3% is no such noise (the ladder's plateaus
# stayed within 1.3% of their best) but a model that only overfits, which the decay does not undo.
EARLY_STOP_DECAY = 0.5
OVERFIT = 1.03


def _stopped_early(run: Run) -> bool:
    """Whether the last tc.patience evaluations in a row brought no new best validation loss, with the
    warm-up over and either the learning rate for the next step at most EARLY_STOP_DECAY of the way from
    the peak (tc.lr) down to the schedule's floor, or the last validation loss above OVERFIT times the best."""
    tc = run.tconfig
    if not tc.patience or run.evals_since_best < tc.patience:
        return False
    if run.step < (run.schedule_start or 0) + tc.warmup:
        return False
    if run.last_val is not None and run.last_val > OVERFIT * run.best_val:
        return True
    floor = tc.lr * (tc.min_lr_ratio if tc.schedule == "cosine" else 1.0)
    return _learning_rate(run) <= floor + EARLY_STOP_DECAY * (tc.lr - floor)


def _learning_rate(run: Run) -> float:
    """The learning rate of the step run.step is about to take, from its schedule."""
    tc = run.tconfig
    if run.schedule_since is not None:
        return optim.learning_rate(run.step, tc.lr, tc.schedule, tc.warmup, run.schedule_steps, tc.min_lr_ratio,
                                   since=run.schedule_since, start=run.schedule_start)
    return optim.learning_rate(run.step, tc.lr, tc.schedule, tc.warmup, run.schedule_steps or (run.step + 1),
                               tc.min_lr_ratio, start=run.schedule_start)


def _schedule_steps(run: Run, steps_per_sec: float | None) -> int | None:
    """Total steps of the cosine schedule: from the step budgets, or estimated from the time budget."""
    tc = run.tconfig
    candidates = []
    if tc.max_steps is not None:
        candidates.append(tc.max_steps)
    if tc.max_epochs is not None:
        candidates.append(_whole_steps(tc.max_epochs * run.steps_per_epoch))
    if tc.max_time is not None and steps_per_sec:
        candidates.append(run.step + _whole_steps((tc.max_time - run.elapsed) * steps_per_sec, up=False))
    return max(1, min(candidates)) if candidates else None


# The most steps a schedule counts: a budget that buys more (10**300 epochs, a century at a million steps a
# second) is as good as endless, and an int stays storable in a run's files.
MAX_SCHEDULE_STEPS = 2**62


def _whole_steps(steps: float, up: bool = True) -> int:
    """A step count from a float (rounded up, or down), at most MAX_SCHEDULE_STEPS: never an OverflowError
    from an infinite product of a huge budget and a speed."""
    if not steps < MAX_SCHEDULE_STEPS:
        return MAX_SCHEDULE_STEPS
    return max(0, math.ceil(steps) if up else math.floor(steps))


def train(run: Run, should_stop=lambda: False, group=None):
    """Train until a budget is reached or should_stop() turns true; yields event dicts.

    group: the MPI ranks training together (distributed.world()), or None for one
    process. Every rank runs this loop in step; rank 0 alone evaluates and writes the
    log and checkpoints, and a stop asked of any rank stops all at the same step.

    Events: {"event": "start" | "step" | "eval" | "save" | "end", ...}. The
    latest checkpoint is saved at every evaluation, at the end, and on a stop
    request; the best whenever validation loss improves. After tc.patience
    evaluations in a row without a new best the run ends (reason "early_stop"). The last step of a
    session is always evaluated and logged. A non-finite loss or gradient
    raises TrainingError (on_nonfinite="stop") before anything is saved, or
    skips the step (on_nonfinite="skip").
    """
    tc = run.tconfig
    group = group or distributed.Solo()
    if tc.max_steps is None and tc.max_epochs is None and tc.max_time is None:
        raise ConfigError(f"no budget: give {option('max_steps')}, {option('max_epochs')} or {option('max_time')}")
    B = tc.batch_size
    if B % group.size:
        raise ConfigError(f"{option('batch_size', B)} must be a multiple of the {group.size} MPI ranks")
    writer = group.rank == 0
    if group.size > 1 and run.carry is not None:  # the saved state holds all B streams: keep this rank's
        rows = group.rows(B)
        run.carry = tuple(np.ascontiguousarray(s[:, rows]) for s in run.carry)
    tokens_per_step = B * tc.seq_len if tc.mode == "stream" else None
    session_start = time.monotonic()
    prior_elapsed = run.elapsed
    yield {"event": "start", "step": run.step, "steps_per_epoch": run.steps_per_epoch,
           "params": sum(p.size for p in run.params.values()), "vocab": run.vocab.size,
           "train_tokens": len(run.train_ids), "val_tokens": len(run.val_ids),
           "total_steps": _schedule_steps(run, None)}

    if tc.schedule == "cosine" and run.schedule_steps is None:
        run.schedule_steps = _schedule_steps(run, None)
    timing_steps, timing_start = 0, None
    final_val = None

    def stop_reason(asked):
        return _budget_reached(run) or ("early_stop" if _stopped_early(run) else None) or \
            ("interrupted" if asked else None)

    # a resumed run may already be at its budget: then nothing changes and nothing is written
    reason = stop_reason(group.agree(should_stop(), run.elapsed)[0])
    while reason is None:
        step_start = time.monotonic()
        corpus.check_mapped(run.train_ids, run.train_offsets)  # a cut file would kill the process (see there)
        batch = run.task.batch(run, run.step)
        state = None if batch.reset or run.carry is None else run.carry
        # dropout masks come from generators fixed by (seed, step, block), so a resumed run draws the same
        # (under MPI the blocks are numbered across ranks: rank r's blocks follow rank r-1's)
        rngs = ([np.random.default_rng([tc.seed, run.step, group.rank * tc.threads + p]) for p in range(tc.threads)]
                if run.config.dropout > 0 else None)
        with np.errstate(**QUIET_FP):
            # the loss and the gradients summed in a fixed order of row blocks (and of MPI ranks), and the
            # final state to carry (stream) and the tokens the whole batch scored (see the task's)
            loss, grads, final, n_tokens = run.task.loss_and_grads(run, batch, state, rngs, group)
            grad_norm = optim.clip_grad_norm(grads, tc.clip)
            optim.clip_grad_value(grads, tc.clip_value)
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if not finite and tc.on_nonfinite == "stop":
            raise TrainingError(
                f"the loss became non-finite at step {run.step + 1} (loss {loss}, gradient norm {grad_norm}); "
                f"{_what_was_kept(run)}. Try a lower {option('lr')} or {option('clip')}, or {option('on_nonfinite', 'skip')}")
        if tc.schedule == "cosine" and run.schedule_steps is None and timing_steps >= 5:
            # a time budget alone: fix the schedule's length from the measured speed, once
            run.schedule_steps = _schedule_steps(run, timing_steps / max(run.elapsed - timing_start, 1e-9))
        lr = _learning_rate(run)
        if finite:
            with np.errstate(**QUIET_FP):
                run.optimizer.step(run.params, grads, lr)
            if not all(np.isfinite(p).all() for p in run.params.values()):
                # finite gradients, yet an update overflowed: no later step can undo that, so even skip stops
                raise TrainingError(
                    f"the weights became non-finite at step {run.step + 1} (an update overflowed at learning "
                    f"rate {lr:g}); {_what_was_kept(run)}. Try a lower {option('lr')}")
            run.carry = final if tc.mode == "stream" else None
        else:
            run.skipped += 1
        run.step += 1
        now = time.monotonic()
        # every rank takes rank 0's clock and any rank's stop request, so all stop at the same step
        asked, run.elapsed = group.agree(should_stop(), prior_elapsed + now - session_start)
        if timing_start is None:
            timing_start = run.elapsed  # the first step warms caches; time from the second
        else:
            timing_steps += 1
        epoch = run.step / run.steps_per_epoch
        reason = stop_reason(asked)
        evaluating = run.step % tc.eval_every == 0 or reason is not None
        logging = run.step % tc.log_every == 0 or evaluating
        if finite:
            chars_per_sec = (tokens_per_step or n_tokens) / max(now - step_start, 1e-9)
            run.log_sum += loss
            run.log_count += 1
            event = {"event": "step", "step": run.step, "epoch": epoch, "loss": loss, "lr": lr,
                     "grad_norm": grad_norm, "chars_per_sec": chars_per_sec, "elapsed": run.elapsed}
        else:
            event = {"event": "skip", "step": run.step, "epoch": epoch, "lr": lr, "skipped": run.skipped,
                     "elapsed": run.elapsed}
        yield event
        if not finite or logging:
            mean_loss = val_loss = None
            if finite:
                mean_loss = run.log_sum / run.log_count  # mean over the steps since the last line
                # reset before saving, so a resumed run never counts these losses again
                run.log_sum, run.log_count = 0.0, 0
            if evaluating and writer:  # rank 0 evaluates alone (the others wait at the next step)
                final_val, improved = yield from _evaluate(run)
                val_loss = final_val  # None: no validation data
                if reason is None and _stopped_early(run):
                    reason = "early_stop"
            if evaluating and group.size > 1 and group.root_says(reason == "early_stop"):
                reason = "early_stop"  # rank 0 alone evaluated: its early stop ends every rank at this step
            # the line goes in before the save, so that the checkpoint counts it (run.log_bytes)
            if writer:
                run.log_bytes = runlog.append_log(run.path(LOG_FILE), runlog.step_record(event, mean_loss, val_loss),
                                                  sync=evaluating)
            if evaluating:
                yield from _save(run, group, writer and improved,
                                 final_val is not None and math.isfinite(final_val), final_val)
                # so that the corpus read so far does not stay mapped into memory (see there)
                corpus.release_pages(run.train_ids)
                corpus.release_pages(run.val_ids)

    yield {"event": "end", "reason": reason, "step": run.step, "elapsed": run.elapsed,
           "val_loss": final_val, "best_val": None if math.isinf(run.best_val) else run.best_val,
           "best_step": run.best_step, "patience": tc.patience,
           "model": run.path(MODEL_FILE), "best": run.path(BEST_FILE), "skipped": run.skipped}


def _what_was_kept(run: Run) -> str:
    """What a run that stops on an error leaves, for its message: the last checkpoint, or none yet."""
    if os.path.exists(run.path(STATE_FILE)):
        return "the last saved checkpoint is unchanged"
    return f"no checkpoint was saved yet (the same command with {option('out', run.directory)} starts the run again)"


def _evaluate(run: Run):
    """Evaluate; yields the eval event, returns (val loss or None, whether it is the best so far)."""
    with np.errstate(**QUIET_FP):
        val = validation_loss(run)
    improved = math.isfinite(val) and val < run.best_val
    run.last_val = val if math.isfinite(val) else None
    if improved:
        run.best_val, run.best_step, run.evals_since_best = val, run.step, 0
    elif not math.isnan(val):  # NaN: no validation data, nothing to be patient about
        run.evals_since_best += 1
    yield {"event": "eval", "step": run.step, "val_loss": val, "val_bits": val / math.log(2),
           "best": improved}
    return (None if math.isnan(val) else val), improved


def _save(run: Run, group, improved: bool, val_finite: bool, val_loss: float | None = None):
    """Save latest (and best when improved, or when there is none yet and no validation); yields save events.

    Under MPI every rank sends its rows of the carried state to rank 0, which alone writes.
    """
    carry = run.carry
    if group.size > 1 and carry is not None:
        carry = group.gather_rows(carry, run.tconfig.batch_size)
    if group.rank != 0:
        return
    best = improved or (not os.path.exists(run.path(BEST_FILE)) and not val_finite)
    local, run.carry = run.carry, carry
    try:
        path = rundir.save_checkpoint(run, best=best, val_loss=val_loss)
    finally:
        run.carry = local
    yield {"event": "save", "path": path, "kind": "latest"}
    if best:
        yield {"event": "save", "path": run.path(BEST_FILE), "kind": "best"}
