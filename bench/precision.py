"""bf16 against float32 at equal steps: does --precision bf16 keep the model's quality? (issue 24)

A quality run, not a test. It trains `charrnn train CORPUS --max-steps N` twice with the same settings and
seed, once with --precision float32 and once with bf16, one after the other on a quiet machine, and prints
each run's best validation loss, its whole-process time and the relative difference of the losses (the
issue's bar: within 0.5%).

    python bench/precision.py                                     # tinyshakespeare, 5,000 steps
    python bench/precision.py --steps 5000 -- --batch-size 32 --threads 2 --layers 2 --hidden 256

Everything after `--` is passed to both runs. Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in its command
where the machine sets them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from budget import machine  # this directory is on sys.path
from common import CORPUS, wait_for_quiet

from charrnn.files import layout
from charrnn.runs import runlog


def train(corpus: str, steps: int, precision: str, extra: list[str], work: str) -> dict:
    """One run to `steps` (or an early stop); its best validation loss, the step it came at, the steps it ran
    and the seconds the process took."""
    out = os.path.join(work, precision)
    cmd = [sys.executable, "-m", "charrnn", "train", corpus, "--max-steps", str(steps), "--precision", precision,
           "--out", out, *extra]
    shutil.rmtree(out, ignore_errors=True)
    wait_for_quiet()
    load = os.getloadavg()[0]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    records = runlog.read_log(os.path.join(out, layout.LOG_FILE))
    best = min((r for r in records if r.get("val_loss") is not None), key=lambda r: r["val_loss"])
    return {"precision": precision, "best_val_loss": round(best["val_loss"], 4), "best_step": best["step"],
            "steps": records[-1]["step"], "seconds": round(seconds, 1), "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="?", default=CORPUS, help="a text file (default: tinyshakespeare)")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--work", default="/tmp/charrnn-precision", help="where the two runs are written")
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    runs = [train(args.corpus, args.steps, precision, extra, args.work) for precision in ("float32", "bf16")]
    cpu = machine()
    print(f"{cpu['cpu']} (family {cpu['family']} model {cpu['model']}), {', '.join(cpu['isa'])}; {cpu['blas']}")
    print("| precision | best val loss | at step | steps run | process seconds | steps a second | load before-after |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['precision']} | {r['best_val_loss']:.4f} | {r['best_step']:,} | {r['steps']:,} | "
              f"{r['seconds']:.1f} | {r['steps'] / r['seconds']:.1f} | {r['load_before']}-{r['load_after']} |")
    f32, b16 = runs
    print(f"bf16 against float32: {100 * (b16['best_val_loss'] / f32['best_val_loss'] - 1):+.2f}% loss, "
          f"{(b16['steps'] / b16['seconds']) / (f32['steps'] / f32['seconds']):.2f}x the steps a second "
          f"(whole processes: an early stop ends a run before --steps)")


if __name__ == "__main__":
    main()
