"""What the command line draws on stderr: its messages, made safe to print (`shown`, `info`), and the
progress of a training run (`TrainingView`: api.train's events as a tqdm bar on a terminal or one line per
evaluation, then the summary and the commands to try next).

Part of the entry points with cli.py: with it, the only module that prints or draws progress bars. Like
cli.py, it imports only the API, the errors and the constants (tests/test_architecture.py checks).
"""

from __future__ import annotations

import errno
import math
import os
import shlex
import sys

import click

from .api import format_duration


def info(message: str, quiet: bool = False) -> None:
    if not quiet:
        try:
            click.echo(message, err=True)
        except OSError as exc:
            if not reader_gone(exc):
                raise
            to_devnull(sys.stderr)


def reader_gone(exc: OSError) -> bool:
    """Whether a write failed because the reader of the stream went away (`charrnn train ... 2>&1 | head`)."""
    return isinstance(exc, BrokenPipeError) or exc.errno in (errno.EPIPE, errno.ECONNRESET)


def to_devnull(stream) -> None:
    """Send stream (sys.stdout or sys.stderr) to os.devnull from here on, once its reader has gone
    (`charrnn ... | head`): not an error, and Python's own flush at exit then cannot fail either. On stderr,
    messages are not the work: a trainer trains on, silently, to its budget (Ctrl-C still saves and stops)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (captured in-process): nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def shown(text) -> str:
    """Text from outside the tool (a file name, a token, a label, a message that quotes them) made safe to
    print on a terminal: every character that is not printable (controls such as ESC, BEL, a newline or
    tab; the bidirectional overrides such as U+202E; lone surrogates, which cannot be encoded) as its
    Python escape, such as \\x1b or \\u202e. The one place the command line makes such text harmless."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)



# ---------------------------------------------------------------- training


class TrainingView:
    """Draws api.train's events on stderr: messages, a progress bar (on a terminal) or one line per
    evaluation, and the summary."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.show_bar = not quiet and sys.stderr.isatty()
        self.bar = None
        self.last_val = None
        self.postfix: dict = {}
        self.step_mode = False
        self.start_step = 0
        self.start_elapsed = 0.0
        self.tokens_per_step = None  # stream mode: B x T, so the bar shows the session's average speed

    def speed(self, event: dict) -> float:
        """Tokens per second for the bar: in stream mode the session's average (its tokens over its time,
        evaluations included, as the last line's steps and time give it), else the last step's."""
        if self.tokens_per_step is None:
            return event["chars_per_sec"]
        seconds = event["elapsed"] - self.start_elapsed
        return (event["step"] - self.start_step) * self.tokens_per_step / seconds if seconds > 0 else 0.0
        self.val_tokens = None  # the run's validation tokens, from its start event

    def __call__(self, event: dict, run) -> None:
        """Show one event; once stderr's reader has gone, show nothing more (training goes on)."""
        try:
            self._show(event, run)
        except OSError as exc:
            if not reader_gone(exc):
                raise
            to_devnull(sys.stderr)
            self.quiet, self.show_bar, self.bar = True, False, None

    def _show(self, event: dict, run) -> None:
        kind, quiet, bar = event["event"], self.quiet, self.bar
        if kind == "message":
            info(shown(event["text"]), quiet)
        elif kind == "start":
            from tqdm import tqdm

            tc = run.tconfig
            self.start_step, self.start_elapsed = event["step"], run.elapsed
            self.tokens_per_step = tc.batch_size * tc.seq_len if tc.mode == "stream" else None
            self.val_tokens = event["val_tokens"]
            info(f"Run directory: {shown(run.directory)}\n"
                 f"Model: {run.config.cell} {run.config.layers}x{run.config.hidden}"
                 f"{run.task.model_summary(run.config)}, "
                 f"{event['params']:,} parameters, vocabulary {event['vocab']}{_capped(run)}, "
                 f"{event['train_tokens']:,} training and {event['val_tokens']:,} validation tokens", quiet)
            self.speed_key = "chars/s" if run.vocab.level == "char" else "tokens/s"
            if self.show_bar:
                total = event["total_steps"]
                self.step_mode = bool(total)
                if self.step_mode:
                    self.bar = tqdm(total=total, initial=min(run.step, total), unit="step", file=sys.stderr,
                                    leave=True, **bar_width(),
                                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")
                else:
                    self.bar = time_bar(tqdm, tc.max_time, run.elapsed, run.step)
        elif kind == "skip" and bar is not None and self.step_mode:
            bar.update(1)
        elif kind == "step" and bar is not None:
            if self.step_mode:
                bar.update(1)
            else:
                bar.n = min(event["elapsed"], bar.total)
                bar.steps = event["step"]
            self.postfix = {"loss": f"{event['loss']:.3f}", self.speed_key: f"{self.speed(event):,.0f}"}
            if self.last_val is not None:
                self.postfix["val"] = f"{self.last_val:.3f}"
            bar.set_postfix(self.postfix, refresh=True)
        elif kind == "eval":
            self.last_val = last_val = event["val_loss"]
            if bar is not None and last_val is not None and self.postfix:
                self.postfix["val"] = f"{last_val:.3f}"
                bar.set_postfix(self.postfix, refresh=True)
            if not self.show_bar and not quiet and last_val is not None and math.isfinite(last_val):
                info(f"step {event['step']}: val loss {last_val:.4f} nats ({event['val_bits']:.3f} bits)"
                     f"{'  (best)' if event['best'] else ''}")
        elif kind == "end":
            if bar is not None:
                bar.close()
            if event["reason"] == "early_stop" and event["step"] == self.start_step:
                info(f"The run has already stopped early ({event['patience']} evaluations without a new best); "
                     f"give a larger --patience, or --patience 0, to train further.", quiet)
            elif event["reason"] != "interrupted" and event["step"] == self.start_step:
                info("The run has already reached its budget; give a larger --max-steps, --max-epochs "
                     "or --max-time to train further.", quiet)
            summary(event, quiet, run.task.count_unit(run.vocab.level),
                     wrote=event["step"] != self.start_step, has_val=bool(self.val_tokens))
            diverged(event, run, quiet)
            next_steps(event, run, quiet)


BAR_COLUMNS = 80  # the bar's width where the terminal reports none (0 columns: a serial console, some IDEs)


def bar_width() -> dict:
    """tqdm's width options: follow the terminal's width as it changes, or BAR_COLUMNS where it reports 0
    columns (tqdm would then draw nothing at all)."""
    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = 0
    return {"dynamic_ncols": True} if columns > 0 else {"ncols": BAR_COLUMNS}


def time_bar(tqdm, total_seconds: float, elapsed: float, step: int):
    """A tqdm bar for a time budget: training time so far / the budget, as durations, and the step count,
    such as ` 12%|##    | 35s/5m00s, step 812 [4m25s left, loss=1.234, chars/s=30,000]`."""

    class TimeBar(tqdm):
        steps = step

        @property
        def format_dict(self):
            d = super().format_dict
            d.update(n_fmt=format_duration(d["n"]), total_fmt=format_duration(d["total"]), steps=f"{self.steps:,}",
                     left=format_duration(max(0.0, d["total"] - d["n"])))
            return d

    bar = TimeBar(total=total_seconds, initial=0, file=sys.stderr, leave=True, **bar_width(),
                  bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}, step {steps} [{left} left{postfix}]")
    bar.n = min(elapsed, total_seconds)
    return bar


def summary(event: dict, quiet: bool, unit: str = "token", wrote: bool = True, has_val: bool = False) -> None:
    """The run's last line: why it ended, its steps and time, its best validation loss, what it saved.
    wrote False: a session that took no step, and wrote nothing. has_val: the run holds validation data
    (then a run stopped before its first evaluation, by a signal during preparation, has no validation loss yet)."""
    best = event["best_val"]
    best_text = f"best val loss {best:.4f} ({best / math.log(2):.3f} bits/{unit})" if best is not None else \
        "no validation loss yet" if has_val else "no validation data"
    if best is not None and event.get("best_step") is not None:
        best_text += f" at step {event['best_step']:,}"
    why = {"max_steps": "step budget", "max_epochs": "epoch budget", "max_time": "time budget",
           "interrupted": "interrupted",
           "early_stop": f"stopped early: no new best val loss in {event.get('patience')} evaluations"}[event["reason"]]
    skipped = f", {event['skipped']} non-finite steps skipped" if event["skipped"] else ""
    if not os.path.exists(event["model"]):
        saved = "nothing saved"
    elif not wrote:
        saved = f"nothing new written ({os.path.dirname(event['model']) or '.'} is as it was)"
    elif os.path.exists(event["best"]):
        saved = f"saved {event['model']} (latest) and {event['best']} (best: sample and eval use it)"
    else:
        saved = f"saved {event['model']}"
    info(f"Done ({why}): {event['step']:,} steps in {format_duration(event['elapsed'])}, {best_text}{skipped}; "
         f"{saved}", quiet)


DIVERGED_RATIO = 1.5  # a best validation loss this many times a uniform guess's (ln V) is a run that diverged


def diverged(event: dict, run, quiet: bool) -> None:
    """Warn when even the best validation loss is far above a uniform guess over the outputs (ln V, or ln C
    for a classifier): the loss exploded without going non-finite, and the model is worse than no model."""
    best = event.get("best_val")
    outputs, what = run.task.outputs(run.config)  # a language model's softmax is over its whole vocabulary
    uniform = math.log(max(outputs, 2))
    if best is not None and math.isfinite(best) and best > DIVERGED_RATIO * uniform:
        info(f"Warning: the best validation loss, {best:,.4g}, is far above that of a uniform guess over the "
             f"{outputs:,} {what} (ln {outputs:,} = {uniform:.3f}): the "
             f"training diverged; try a lower --lr or --clip", quiet)


def next_steps(event: dict, run, quiet: bool) -> None:
    """One line after a run that saved a model: the commands to try it with, naming its run directory."""
    if not os.path.exists(event["model"]):
        return
    c = f"-c {shlex.quote(run.directory)}"
    info(f"Next: {run.task.next_line(c)}", quiet)


def _capped(run) -> str:
    """What the start line adds when --max-vocab bounded a fresh vocabulary: the most frequent tokens kept
    (at word level by default: config.WORD_MAX_VOCAB), the rest <unk>."""
    cap = run.tconfig.max_vocab
    if cap is None or run.origin is not None or run.vocab.size - len(run.vocab.special) < cap:
        return ""
    unit = "words" if run.vocab.level == "word" else "tokens"
    return f" (the {cap:,} most frequent {unit}, the rest <unk>: --max-vocab)"
