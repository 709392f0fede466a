"""What a model file and its run say about themselves: `describe` (what `charrnn info` prints, as rows), the
loss curves drawn from the run's log records (runlog.read_log; matplotlib, an optional extra), and durations
as the messages write them."""

from __future__ import annotations

import math
import os

from ..core.cells import TORCH_CELLS
from ..files import atomic, layout
from ..runs import runlog
from ..errors import CharRNNError, CheckpointError


def format_duration(seconds: float) -> str:
    """Seconds as the messages write a duration: 45s, 2m05s, 1h02m05s (config.parse_duration reads these)."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def describe(params, config, vocab, meta: dict, model_file: str, task) -> list[tuple[str, str]]:
    """What `charrnn info` says about a model file: (label, text) rows, in order (architecture, parameters,
    whether it loads into torch.nn, vocabulary, tokens, data, training, origin, files); task: the model's
    (tasks/), which words its own rows. The texts quote the file's tokens, labels and paths as they are: a
    caller that prints them escapes them."""
    n_params = sum(p.size for p in params.values())
    data = meta.get("data", {})
    trained = meta.get("training", {})
    regular = [t for t in vocab.tokens[3:]]
    if vocab.level == "char":
        preview = "".join(regular[:60]).replace("\n", "\\n").replace("\t", "\\t") + \
            (" ..." if len(regular) > 60 else "")
    else:
        preview = _word_preview(regular)
    kind = task.model_details(config, meta)
    rows = [
        ("model", f"{config.cell} {config.layers} x {config.hidden}, embedding {config.embed}, "
                  f"dropout {config.dropout}, {config.dtype}"
                  f"{', bf16 products' if config.precision == 'bf16' else ''}{kind}"),
        ("parameters", f"{n_params:,}"),
        ("torch.nn", torch_loadable(config, task)),
        ("vocabulary", f"{vocab.size} {vocab.level} tokens (eos {vocab.eos}, unk {vocab.unk}, bos {vocab.bos})"),
        ("tokens", preview),
        ("data", task.data_line(data)),
    ]
    if trained:
        best = trained.get("best_val_loss")
        best_text = f"{best:.4f} nats ({best / math.log(2):.3f} bits) per {task.unit}" \
            if best is not None else "none"
        rows += [
            ("training", f"{trained.get('step', 0):,} steps, {trained.get('epoch', 0):.2f} epochs, "
                         f"{format_duration(trained.get('elapsed', 0))}, {trained.get('optimizer', '?')} "
                         f"lr {trained.get('lr', '?')}"),
            ("best val loss", best_text),
        ]
    run_dir = os.path.dirname(os.path.abspath(model_file))
    files = [name for name in (layout.MODEL_FILE, layout.BEST_FILE, layout.STATE_FILE, layout.LOG_FILE)
             if os.path.exists(os.path.join(run_dir, name))]
    origin = meta.get("origin")
    if isinstance(origin, dict) and origin.get("model_file"):
        step = origin.get("step")
        vocab_note = (f"vocabulary extended by {len(origin.get('added', []))} tokens"
                      if origin.get("vocab") == "extended" else f"vocabulary kept, {origin.get('unk_tokens', 0):,} "
                      f"tokens of its text UNK")
        rows.append(("initialised from", f"{origin['model_file']}" + (f" (step {step:,})" if isinstance(step, int)
                                                                      else "") + f"; {vocab_note}"))
    rows += [("file", model_file), ("run directory", f"{run_dir} ({', '.join(files)})")]
    return rows


def torch_loadable(config, task) -> str:
    """Whether a model's recurrent layers load into a torch.nn module, in words (a row of describe)."""
    cell = config.cell
    if cell in TORCH_CELLS:
        module = {'rnn': 'RNN', 'lstm': 'LSTM', 'gru': 'GRU'}[cell]
        options = ", ".join(f"{key}={value!r}" for key, value in task.torch_options(config).items())
        return f"loads into torch.nn.{module}{f'({options})' if options else ''} " \
               f"(load_state_dict, strict)"
    what = {"peephole": "the peephole weights rnn.weight_c{i,f,o}_l*", "simple-gru": "the simplified GRU's two gates"}
    return f"does not load: torch.nn has no {cell} cell ({what[cell]} fit no torch.nn module)"


def _word_preview(tokens: list[str], words: int = 20, spaces: int = 6) -> str:
    """Word-level tokens for `info`: words first, then whitespace tokens quoted (' ', '\\n'), so none is invisible."""
    plain = [t for t in tokens if not t.isspace()]
    blank = [t for t in tokens if t.isspace()]
    text = " ".join(plain[:words]) + (" ..." if len(plain) > words else "")
    if blank:
        text += (f"{'; ' if plain else ''}{len(blank)} whitespace token{'s' if len(blank) != 1 else ''}: "
                 + " ".join(repr(t) for t in blank[:spaces]) + (" ..." if len(blank) > spaces else ""))
    return text


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
    train, val = runlog.losses(records)
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
