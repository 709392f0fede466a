"""What a run says about itself: its loss curves drawn from its log records (runlog.read_log; matplotlib, an
optional extra), and durations as its messages write them."""

from __future__ import annotations


from ..files import atomic
from ..files.config import is_number
from ..errors import CharRNNError, CheckpointError


def format_duration(seconds: float) -> str:
    """Seconds as the messages write a duration: 45s, 2m05s, 1h02m05s (config.parse_duration reads these)."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


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
