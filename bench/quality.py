"""Validation loss against wall time: charrnn's defaults next to the same model in PyTorch.

A benchmark, not a test. Trains `charrnn train CORPUS --max-time M` (charrnn's
own defaults for a corpus of that size and budget) in a subprocess, then the
same architecture and hyperparameters in PyTorch (CPU, 2 threads) on the same
split for the same wall-clock budget, evaluating on the held-out split at the
same cadence. Writes the curves as a table (stdout and quality.md) and a PNG.

    python bench/quality.py                     # 10 minutes each on tinyshakespeare
    python bench/quality.py --minutes 2 --only charrnn

The convention of char-rnn and nanoGPT: the first 90% of the text trains, the
last 10% validates.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CORPUS = os.path.join(HERE, "..", "..", "shared", "corpora", "tinyshakespeare.txt")


def run_charrnn(corpus, minutes, out_dir, extra):
    """Train with the CLI; returns (config dict, [(elapsed s, val loss)])."""
    run_dir = os.path.join(out_dir, "charrnn-run")
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "charrnn", "train", corpus, "--max-time", f"{minutes}m", "--out", run_dir, *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    from charrnn import checkpoint
    _, meta = checkpoint.load_state(os.path.join(run_dir, "state.safetensors"))
    curve = []
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if record.get("val_loss") is not None:
                curve.append((record["elapsed"], record["val_loss"]))
    return meta, curve


def run_torch(corpus, minutes, meta, eval_every_s):
    """The same model, data split, batches and optimizer settings in PyTorch; [(elapsed s, val loss)]."""
    import torch

    from charrnn import batches, corpus as corpus_mod
    from charrnn.vocab import Vocab
    torch.set_num_threads(2)
    torch.manual_seed(0)
    mc, tc = meta["model"], meta["train"]
    vocab = Vocab.from_dict(meta["vocab"])
    train_text, val_text = corpus_mod.split_text(corpus_mod.read_text(corpus), tc["val_frac"])
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(mc["vocab_size"], mc["embed"])
            rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[mc["cell"]]
            self.rnn = rnn(mc["embed"], mc["hidden"], mc["layers"], batch_first=True, dropout=mc["dropout"])
            self.drop = torch.nn.Dropout(mc["dropout"])  # charrnn also drops the top layer's output
            self.head = torch.nn.Linear(mc["hidden"], mc["vocab_size"])

        def forward(self, x, state=None):
            out, state = self.rnn(self.embedding(x), state)
            return self.head(self.drop(out)), state

    net = LM()
    opt = {"adam": lambda p: torch.optim.Adam(p, lr=tc["lr"]),
           "rmsprop": lambda p: torch.optim.RMSprop(p, lr=tc["lr"]),
           "adagrad": lambda p: torch.optim.Adagrad(p, lr=tc["lr"]),
           "sgd": lambda p: torch.optim.SGD(p, lr=tc["lr"], momentum=tc["momentum"])}[tc["optim"]](net.parameters())
    B, T = tc["batch_size"], tc["seq_len"]
    windows = batches.stream_windows(len(train_ids), B, T)
    budget = minutes * 60

    def val_loss():
        net.eval()
        n = len(val_ids) - 1
        streams = min(128, n)
        S = n // streams
        ids = torch.from_numpy(val_ids[: streams * S + 1].astype(np.int64))
        x = ids[:-1].reshape(streams, S)
        y = ids[1:].reshape(streams, S)
        total, state = 0.0, None
        with torch.no_grad():
            for t0 in range(0, S, 256):
                logits, state = net(x[:, t0:t0 + 256], state)
                total += torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), y[:, t0:t0 + 256].reshape(-1), reduction="sum").item()
        net.train()
        return total / (streams * S)

    from charrnn import optim as our_optim
    curve, step, state, schedule_steps = [], 0, None, None
    start = time.monotonic()
    next_eval = eval_every_s
    while time.monotonic() - start < budget:
        window = step % windows
        x, y = batches.stream_batch(train_ids, B, T, window)
        if window == 0:
            state = None
        # charrnn's schedule, its length fixed the way charrnn fixes it: from the speed of the first steps
        if step == 6 and schedule_steps is None:
            schedule_steps = int(step / (time.monotonic() - start) * budget)
        for group in opt.param_groups:
            group["lr"] = our_optim.learning_rate(step, tc["lr"], tc["schedule"], tc["warmup"],
                                                  schedule_steps or step + 1, tc["min_lr_ratio"])
        logits, state = net(torch.from_numpy(x), state)
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc["clip"]:
            torch.nn.utils.clip_grad_norm_(net.parameters(), tc["clip"])
        opt.step()
        step += 1
        if time.monotonic() - start >= next_eval:
            curve.append((time.monotonic() - start, val_loss()))
            next_eval += eval_every_s
            print(f"torch  {curve[-1][0]:6.0f}s  val {curve[-1][1]:.4f}", flush=True)
    curve.append((time.monotonic() - start, val_loss()))
    return curve


def at(curve, seconds):
    """Best validation loss reached by `seconds` of wall time (nan if none yet)."""
    values = [v for t, v in curve if t <= seconds + 1e-9]
    return min(values) if values else math.nan


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--only", choices=["charrnn", "torch"], default=None)
    parser.add_argument("--out", default=os.path.join(HERE, "out", "quality"))
    parser.add_argument("charrnn_args", nargs="*", help="extra `charrnn train` options (after --)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    meta, ours = run_charrnn(args.corpus, args.minutes, args.out, args.charrnn_args)
    curves = {"charrnn": ours}
    eval_every_s = max(ours[0][0], 10.0) if ours else 30.0
    if args.only != "charrnn":
        curves["torch"] = run_torch(args.corpus, args.minutes, meta, eval_every_s)

    mc, tc = meta["model"], meta["train"]
    lines = [f"Validation loss (nats/char) on {os.path.basename(args.corpus)}, best reached by each time; "
             f"model {mc['cell']} {mc['layers']}x{mc['hidden']} E{mc['embed']} dropout {mc['dropout']}, "
             f"{tc['optim']} lr {tc['lr']} {tc['schedule']}, B{tc['batch_size']} T{tc['seq_len']}", "",
             "| minutes | " + " | ".join(curves) + " |", "|---|" + "---|" * len(curves)]
    marks = sorted({1, 2, 5, args.minutes} | {m for m in range(1, int(args.minutes) + 1)})
    for m in marks:
        if m <= args.minutes:
            lines.append(f"| {m:g} | " + " | ".join(f"{at(c, m * 60):.4f}" for c in curves.values()) + " |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "quality.md"), "w") as f:
        f.write(table + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        for name, c in curves.items():
            ax.plot([t / 60 for t, _ in c], [v for _, v in c], marker="o", markersize=3, label=name)
        ax.set_xlabel("wall time (minutes)")
        ax.set_ylabel("validation loss (nats/char)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "quality.png"))
    except ImportError:
        print("(matplotlib not installed: no plot)")


if __name__ == "__main__":
    main()
