"""Validation loss against wall time: charrnn's defaults next to the same model in PyTorch.

A benchmark, not a test. Trains `charrnn train CORPUS --max-time M` (charrnn's
own defaults for a corpus of that size and budget) in a subprocess, then the
same architecture and hyperparameters in PyTorch (CPU, 2 threads) on the run's
own encoded split, in the same batches, for the same wall-clock budget. Both
are scored alike: PyTorch's weights, exported as a charrnn parameter dict, go
through the very evaluation charrnn's trainer runs (evaluate.score_stream on
the first eval_tokens of the held-out ids). Writes the curves as a table
(stdout and quality.md) and a PNG.

Like with like in the optimizer too: PyTorch's Adam, AdamW, RMSprop and SGD
are charrnn's rules, but torch.optim.Adagrad adds eps after the square root
(p -= lr g / (sqrt(s) + eps)), where charrnn, like min-char-rnn, adds it inside
(p -= lr g / sqrt(s + eps)); PyTorch runs charrnn's rule here (CharrnnAdagrad).
What still differs: each framework initializes its own weights.

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

from common import CORPUS, to_params, torch_lm  # this directory is on sys.path when the script runs

HERE = os.path.dirname(os.path.abspath(__file__))


def run_charrnn(corpus, minutes, out_dir, extra):
    """Train with the CLI; returns (run directory, its state file's metadata, [(elapsed s, val loss)])."""
    run_dir = os.path.join(out_dir, "charrnn-run")
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "charrnn", "train", corpus, "--max-time", f"{minutes}m", "--out", run_dir, *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    from charrnn.files import checkpoint
    _, meta = checkpoint.load_state(run_dir)
    curve = []
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if record.get("val_loss") is not None:
                curve.append((record["elapsed"], record["val_loss"]))
    return run_dir, meta, curve


def charrnn_adagrad(params, lr: float, eps: float):
    """A torch optimizer with charrnn's Adagrad rule: s += g*g; p -= lr * g / sqrt(s + eps)."""
    import torch

    class CharrnnAdagrad(torch.optim.Optimizer):
        @torch.no_grad()
        def step(self):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        s = self.state[p].setdefault("sum", torch.zeros_like(p))
                        s.addcmul_(p.grad, p.grad)
                        p.addcdiv_(p.grad, (s + group["eps"]).sqrt_(), value=-group["lr"])

    return CharrnnAdagrad(params, {"lr": lr, "eps": eps})


def run_torch(run_dir, minutes, meta, eval_every_s):
    """The same model, data, batches and optimizer rule in PyTorch; [(elapsed s, val loss by charrnn's eval)]."""
    import torch

    from charrnn.data import batches
    from charrnn.files import corpus
    from charrnn.work import evaluate
    from charrnn.core import optim as our_optim
    from charrnn.runs import prepare
    from charrnn.core.model import ModelConfig
    torch.set_num_threads(2)
    torch.manual_seed(0)
    config, tc = ModelConfig.from_dict(meta["model"]), meta["train"]
    if tc["mode"] != "stream":
        raise SystemExit("bench/quality.py compares stream-mode runs only")
    train_ids, val_ids = (corpus.load_ids(os.path.join(prepare.data_dir(run_dir), f"{name}.npy"), mmap=False)
                          for name in ("train", "val"))
    # what train.validation_loss scores in stream mode
    val_ids = val_ids if tc["eval_tokens"] is None else val_ids[: tc["eval_tokens"] + 1]

    net = torch_lm(config)
    opt = {"adam": lambda p: (torch.optim.AdamW(p, lr=tc["lr"], weight_decay=tc["weight_decay"])
                              if tc["weight_decay"] else torch.optim.Adam(p, lr=tc["lr"])),
           "rmsprop": lambda p: torch.optim.RMSprop(p, lr=tc["lr"], alpha=our_optim.RMSprop().alpha,
                                                    eps=our_optim.RMSprop().eps),
           "adagrad": lambda p: charrnn_adagrad(p, lr=tc["lr"], eps=our_optim.Adagrad().eps),
           "sgd": lambda p: torch.optim.SGD(p, lr=tc["lr"], momentum=tc["momentum"])}[tc["optim"]](net.parameters())
    B, T = tc["batch_size"], tc["seq_len"]
    windows = batches.stream_windows(len(train_ids), B, T)
    budget = minutes * 60

    def val_loss():
        return evaluate.score_stream(to_params(net), config, val_ids).loss

    val_loss()  # once before the clock starts: charrnn's kernels compile on first use
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
    parser.add_argument("--corpus", default=CORPUS)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--only", choices=["charrnn", "torch"], default=None)
    parser.add_argument("--out", default=os.path.join(HERE, "out", "quality"))
    parser.add_argument("charrnn_args", nargs="*", help="extra `charrnn train` options (after --)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    run_dir, meta, ours = run_charrnn(args.corpus, args.minutes, args.out, args.charrnn_args)
    curves = {"charrnn": ours}
    eval_every_s = max(ours[0][0], 10.0) if ours else 30.0
    if args.only != "charrnn":
        curves["torch"] = run_torch(run_dir, args.minutes, meta, eval_every_s)

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
