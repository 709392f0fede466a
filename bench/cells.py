"""The five cells side by side: best validation loss at equal wall time and at equal parameter count.

A benchmark, not a test. For each cell, `charrnn train CORPUS --cell C
--max-time M` twice, one run after the other: once with the defaults' size
for the corpus (2 x 256 on tinyshakespeare: equal wall time, unequal
parameters), once with the hidden width that gives the reference LSTM's
parameter count (equal wall time and parameters). Prints the table (also
written to cells.md).

    python bench/cells.py                                     # 2 minutes a run on tinyshakespeare
    python bench/cells.py --minutes 1 --cells lstm peephole
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys

from charrnn.core.model import ModelConfig, param_shapes
from common import CORPUS  # this directory is on sys.path when the script runs

HERE = os.path.dirname(os.path.abspath(__file__))
CELLS = ("lstm", "gru", "peephole", "simple-gru", "rnn")


def n_params(cell, hidden, vocab_size, layers=2, embed=64):
    config = ModelConfig(vocab_size=vocab_size, cell=cell, layers=layers, hidden=hidden, embed=embed)
    return sum(math.prod(s) for s in param_shapes(config).values())


def matching_hidden(cell, target, vocab_size):
    """The hidden width whose parameter count is nearest the target's."""
    return min(range(8, 1025), key=lambda h: abs(n_params(cell, h, vocab_size) - target))


def train(corpus, minutes, cell, hidden, run_dir, extra):
    """One run; returns (steps, best validation loss, CPU seconds it got) read back from its log.

    The CPU seconds say how much of the machine a run had: on a shared machine two runs of
    equal wall time can get very different shares.
    """
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "charrnn", "train", corpus, "--max-time", f"{minutes}m", "--cell", cell,
           "--hidden", str(hidden), "--out", run_dir, "--eval-every", "250", "-q", *extra]
    print("$", " ".join(cmd), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    records = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
    best = min(r["val_loss"] for r in records if r.get("val_loss") is not None)
    return records[-1]["step"], best, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=CORPUS)
    parser.add_argument("--minutes", type=float, default=2)
    parser.add_argument("--hidden", type=int, default=256, help="the defaults' width, and the LSTM's")
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS[:4]))
    parser.add_argument("--out", default=os.path.join(HERE, "out", "cells"))
    parser.add_argument("charrnn_args", nargs="*", help="extra `charrnn train` options (after --)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with open(args.corpus, encoding="utf-8") as f:
        vocab_size = len(set(f.read())) + 3  # the specials
    target = n_params("lstm", args.hidden, vocab_size)

    rows = []
    for cell in args.cells:
        for label, hidden in (("equal time", args.hidden), ("equal params", matching_hidden(cell, target, vocab_size))):
            if label == "equal params" and hidden == args.hidden:
                continue  # the LSTM's own row
            steps, best, cpu = train(args.corpus, args.minutes, cell, hidden, os.path.join(args.out, f"{cell}-{hidden}"),
                                args.charrnn_args)
            rows.append(f"| {cell} | {label} | 2 x {hidden} | {n_params(cell, hidden, vocab_size):,} | {steps:,} "
                        f"| {cpu:,.0f} | {best:.4f} |")
            print(rows[-1], flush=True)
    table = "\n".join([f"Best validation loss (nats/char) in {args.minutes:g} minutes on "
                       f"{os.path.basename(args.corpus)}, charrnn's defaults otherwise", "",
                       "| cell | comparison | size | parameters | steps | CPU seconds | best val loss |",
                       "|---|---|---|---|---|---|---|", *rows])
    print(table)
    with open(os.path.join(args.out, "cells.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
