"""Where early stopping would end a run, replayed from its log (issue 25: a run that only overfits).

A benchmark's analysis, not a test. Train once with `--patience 0`, so the run goes on to its budget and its
log holds every evaluation; then replay on that log each rule a run could have stopped by:

- patience alone (charrnn before): stop after P evaluations in a row without a new best;
- patience once the learning rate is half way down (charrnn now: loop.EARLY_STOP_DECAY and
  loop.OVERFIT): the same, but only at an evaluation whose step's rate is at most half way from the peak
  to the cosine floor, or whose loss is more than 3% above the best.

For each: the step and minute it stops at, the best validation loss it kept, and how far that is above the
best the whole run reached. The replay uses each evaluation's logged rate (the step's), where the loop
checks the next step's: at most one step apart.

    python bench/budget.py default --minutes 5 --sizes 2x512/d0/e0       # a run that only overfits
    python bench/early_stop.py /tmp/charrnn-budget/python-reference-2x512_d0_e0-5m
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from charrnn.files import checkpoint, layout  # noqa: E402
from charrnn.runs import runlog  # noqa: E402


def evaluations(run_dir: str) -> list[dict]:
    """The log's evaluations: step, elapsed, val_loss and lr (the step's)."""
    return [r for r in runlog.read_log(os.path.join(run_dir, layout.LOG_FILE)) if r.get("val_loss") is not None]


def replay(evals: list[dict], patience: int, wait_for: float | None = None, peak: float | None = None,
           floor: float | None = None, overfit: float = math.inf) -> dict:
    """Where a run with these evaluations stops early: after `patience` in a row without a new best, and
    (wait_for not None) only where the rate is at most floor + wait_for * (peak - floor) or the loss above
    overfit times the best. Returns the stopping evaluation (the last one when none stops it) and the best
    before it."""
    best, since = math.inf, 0
    for e in evals:
        best, since = (e["val_loss"], 0) if e["val_loss"] < best else (best, since + 1)
        decayed = wait_for is None or e["lr"] <= floor + wait_for * (peak - floor) or e["val_loss"] > overfit * best
        if since >= patience and decayed:
            return {"step": e["step"], "elapsed": e["elapsed"], "best": best, "stopped": True}
    last = evals[-1]
    return {"step": last["step"], "elapsed": last["elapsed"], "best": best, "stopped": False}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories trained with --patience 0")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--decay", type=float, default=0.5, help="the share of the decay to wait for")
    parser.add_argument("--overfit", type=float, default=1.03, help="a loss this many times the best stops at once")
    args = parser.parse_args(argv)
    print("| run | rule | stops at step | minute | best kept | above the run's best |")
    print("|---|---|---|---|---|---|")
    for run_dir in args.runs:
        evals = evaluations(run_dir)
        _, meta = checkpoint.load_state(run_dir)
        train = meta["train"]
        peak = train["lr"]
        floor = peak * (train.get("min_lr_ratio", 0.1) if train["schedule"] == "cosine" else 1.0)
        overall = min(e["val_loss"] for e in evals)
        name = os.path.basename(os.path.normpath(run_dir))
        for rule, result in (("patience alone", replay(evals, args.patience)),
                             (f"patience, rate {args.decay:g} down or loss {args.overfit:g}x best",
                              replay(evals, args.patience, args.decay, peak, floor, args.overfit)),
                             ("no early stop", replay(evals, 10**9))):
            ended = "" if result["stopped"] else " (the log's end)"
            print(f"| {name} | {rule} | {result['step']:,}{ended} | {result['elapsed'] / 60:.1f} "
                  f"| {result['best']:.4f} | {result['best'] - overall:+.4f} |")


if __name__ == "__main__":
    main()
