"""Reading a run's log and drawing its loss curves (matplotlib, an optional extra)."""

from __future__ import annotations

import json
import math
import os

from . import atomic
from .errors import CharRNNError, CheckpointError


def read_log(path) -> list[dict]:
    """The records of a log.jsonl file, in order; a torn last line (a crash mid-write) is skipped."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no training log at {path}")
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue
            raise CheckpointError(f"{path}, line {number}: not JSON") from None
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


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
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    val = [(r["step"], r["val_loss"]) for r in records
           if isinstance(r.get("val_loss"), (int, float)) and math.isfinite(r["val_loss"])]
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
