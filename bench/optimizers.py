"""Which optimizer learns most in the same wall time? The evidence for the default.

A benchmark, not a test. Trains `charrnn train CORPUS --max-time M --optim O`
for each optimizer, one after the other, everything else left to charrnn's
defaults (each optimizer gets its own default learning rate), and prints the
best validation loss each reached as a table (also written to optimizers.md).

    python bench/optimizers.py                      # 2 minutes each on tinyshakespeare
    python bench/optimizers.py --minutes 10 --optims adam adagrad
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

from common import CORPUS  # this directory is on sys.path when the script runs

HERE = os.path.dirname(os.path.abspath(__file__))
OPTIMIZERS = ("adam", "rmsprop", "adagrad", "sgd")


def train(corpus, minutes, optim, run_dir, extra):
    """One run; returns (lr, steps, best validation loss) read back from its log."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "charrnn", "train", corpus, "--max-time", f"{minutes}m",
           "--optim", optim, "--out", run_dir, "--eval-every", "250", *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    records = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
    best = min(r["val_loss"] for r in records if r.get("val_loss") is not None)
    lrs = [r["lr"] for r in records if r.get("lr") is not None]
    return max(lrs), records[-1]["step"], best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=CORPUS)
    parser.add_argument("--minutes", type=float, default=2)
    parser.add_argument("--optims", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    parser.add_argument("--out", default=os.path.join(HERE, "out", "optimizers"))
    parser.add_argument("charrnn_args", nargs="*", help="extra `charrnn train` options (after --)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    rows = []
    for optim in args.optims:
        lr, steps, best = train(args.corpus, args.minutes, optim, os.path.join(args.out, optim), args.charrnn_args)
        rows.append(f"| {optim} | {lr:g} | {steps:,} | {best:.4f} |")
    table = "\n".join([f"Best validation loss (nats/char) in {args.minutes:g} minutes on "
                       f"{os.path.basename(args.corpus)}, charrnn's defaults otherwise", "",
                       "| optimizer | peak lr | steps | best val loss |", "|---|---|---|---|", *rows])
    print(table)
    with open(os.path.join(args.out, "optimizers.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
