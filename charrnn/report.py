"""Reading a run's log and drawing its loss curves (matplotlib, an optional extra)."""

from __future__ import annotations

import json
import os

from . import atomic
from .config import is_number
from .errors import CharRNNError, CheckpointError


# A log line is a few hundred bytes; a longer one is not a record, and is not read whole.
MAX_LOG_LINE = 1 << 20


def read_log(path) -> list[dict]:
    """The step records of a log.jsonl file, in order: the one reader of a run's log.

    A torn last line (a crash mid-write) is skipped. Any other line that is not a record (not UTF-8, not
    JSON, nested too deeply for the parser, longer than MAX_LOG_LINE bytes, or with a step that is not a
    step number) is a CheckpointError naming its line: the log was damaged, and a plot of what is left
    would mislead. Lines that are JSON objects without a step are passed over. Memory holds the records
    and one line at a time.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"no training log at {path}")
    records, bad = [], None  # bad: the problem of the last bad line, an error once another line follows
    try:
        with open(path, "rb") as f:
            number = 0
            while True:
                raw = f.readline(MAX_LOG_LINE + 1)
                if not raw:
                    break
                number += 1
                if not raw.strip():
                    continue
                if bad is not None:
                    raise CheckpointError(bad)
                if len(raw) > MAX_LOG_LINE:
                    while raw and not raw.endswith(b"\n"):  # pass over the rest of the line
                        raw = f.readline(MAX_LOG_LINE + 1)
                    problem, record = f"longer than {MAX_LOG_LINE:,} bytes", None
                else:
                    problem, record = _parse_line(raw)
                if problem is not None:
                    bad = f"{path}, line {number}: {problem}"
                elif record is not None:
                    records.append(record)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    return records


def _parse_line(raw: bytes) -> tuple[str | None, dict | None]:
    """(problem or None, the record or None) of one log line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 (byte {exc.start})", None
    try:
        record = json.loads(text)
    except ValueError:  # not JSON, or an integer of more digits than Python converts (4,300)
        return "not JSON", None
    except RecursionError:
        return "not a log record (JSON nested too deeply)", None
    if not isinstance(record, dict) or "step" not in record:
        return None, None
    step = record["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"step {step!r:.40} is not a step number", None
    return None, record


def plot_losses(records: list[dict], out_path: str, title: str = "") -> None:
    """Write a PNG of training loss and validation loss (nats/token) against step, atomically.

    OSError (naming out_path) when it cannot be written; a previous file there is left as it was.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CharRNNError("charrnn plot needs matplotlib: pip install matplotlib") from None
    train = [(r["step"], r["loss"]) for r in records if is_number(r.get("loss"))]  # finite, within a float
    val = [(r["step"], r["val_loss"]) for r in records if is_number(r.get("val_loss"))]
    if not train and not val:
        raise CheckpointError("the log has no losses to plot yet")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="training loss", linewidth=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val), label="validation loss", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        atomic.write_file(out_path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
