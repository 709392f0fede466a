"""A run's log (log.jsonl): one JSON object per logging step, its format written and read here only.

A record (`step_record`) is what the loop's "step" or "skip" event says (step, epoch, lr, elapsed, and for
a step its gradient norm and tokens per second), with the mean training loss since the last line ("loss"),
the steps skipped so far for a non-finite loss ("skipped_nonfinite", a skip) and the validation loss of
an evaluated step ("val_loss"). The loop appends one per logging step (`append_log`, which returns the
log's new length: a state file saves it, and a resume cuts what a killed process wrote after its last
save, `cut_log`). `read_log` is the one reader, and `losses` the curves it holds (`charrnn plot`);
`charrnn_log` tells whether a file is a log that a start which never saved could have left, and so may
be removed. The log is never opened through a symbolic link.
"""

from __future__ import annotations

import json
import os

from ..files import atomic
from ..files.config import is_number
from ..errors import CheckpointError

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


def _open_log(path, flags: int) -> int:
    """The run's log opened for writing (atomic.open_fd: never through a symbolic link); CheckpointError else."""
    try:
        return atomic.open_fd(path, flags)
    except OSError as exc:
        raise CheckpointError(f"cannot write the run's log {path}: {exc.strerror or exc}") from None


def step_record(event: dict, loss: float | None = None, val_loss: float | None = None) -> dict:
    """The log record of a loop's "step" or "skip" event (see the module's docstring).

    - loss: a step's mean training loss over the steps since the last record
    - val_loss: the validation loss when the step was evaluated (None: not evaluated, or no validation data)
    """
    record = {k: v for k, v in event.items() if k != "event"}
    if event["event"] == "skip":
        record["skipped_nonfinite"] = record.pop("skipped")
    else:
        record["loss"] = loss
    if val_loss is not None:
        record["val_loss"] = val_loss
    return record


def losses(records: list[dict]) -> tuple[list, list]:
    """(training, validation) losses of a log's records, each a list of (step, loss): finite numbers only."""
    train = [(r["step"], r["loss"]) for r in records if is_number(r.get("loss"))]
    val = [(r["step"], r["val_loss"]) for r in records if is_number(r.get("val_loss"))]
    return train, val


def append_log(path, record: dict, sync: bool = False) -> int:
    """Append one record to the log at path; sync: fsync it, as a checkpoint that counts it is about to be
    saved. Returns the log's length after it (what a state file saves as the run's log_bytes)."""
    fd = _open_log(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "a", encoding="utf-8") as f:  # the descriptor atomic.open_fd opened
        f.write(json.dumps(record) + "\n")
        f.flush()
        if sync:
            os.fsync(f.fileno())
        return f.tell()


def cut_log(path, length: int) -> None:
    """Drop log lines written after the checkpoint was saved (by a process killed before its next save).

    - length: the log's length when the checkpoint was saved (0: nothing is cut)
    The resumed run takes those steps again and logs them again, so the log reads as if
    the run had never stopped; a line cut short by the crash goes too.
    """
    if length and os.path.lexists(path):
        fd = _open_log(path, os.O_WRONLY)
        try:
            if os.fstat(fd).st_size > length:
                os.ftruncate(fd, length)
        finally:
            os.close(fd)


_LEFTOVER_LOG_LIMIT = 64 << 20  # bytes: a log longer than this is not one a start that never saved could write


def charrnn_log(path) -> bool:
    """Whether path is a regular file every whole line of which is a log record (a line cut short by a
    kill may end it): what a start that never saved could have written, and so may be removed."""
    try:
        if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > _LEFTOVER_LOG_LIMIT:
            return False
        with open(path, "rb") as f:
            lines = f.read(_LEFTOVER_LOG_LIMIT + 1).split(b"\n")
    except OSError:
        return False
    for line in lines[:-1]:  # the last is empty, or a line cut short
        problem, record = _parse_line(line)
        if problem is not None or record is None:  # not a record with a step
            return False
    return True
