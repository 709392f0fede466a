"""How long charrnn takes to start: --help, the first sample on a machine (kernels compiled), and later ones.

A benchmark, not a test. It trains a tiny model once (a few seconds), then
times whole `charrnn` processes, each command `--reps` times (the median):

- `charrnn --help` and `charrnn info`, which never load numba;
- a cold `charrnn sample --length 1`: numba's on-disk cache empty, so the
  forward kernels of the model's cell are compiled first;
- a warm `charrnn sample --length 1`: the compiled kernels loaded from the cache;
- the same with CHARRNN_KERNELS=numpy, which imports no numba at all.

    python bench/startup.py [--cell lstm] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def timed(args, env, reps):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "charrnn", *args], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("the quick brown fox jumps over the lazy dog\n" * 200)
        run = os.path.join(tmp, "run")
        base = {**os.environ, "NUMBA_CACHE_DIR": os.path.join(tmp, "warm-cache")}
        subprocess.run([sys.executable, "-m", "charrnn", "train", corpus, "--out", run, "--max-steps", "2",
                        "--cell", args.cell, "--hidden", "32", "--quiet"], env=base, check=True)
        sample = ["sample", "--checkpoint", run, "--length", "1", "--seed", "1"]
        rows = [("charrnn --help", timed(["--help"], base, args.reps)),
                ("charrnn info", timed(["info", run], base, args.reps))]
        cold = []
        for i in range(args.reps):  # a fresh, empty cache each time
            env = {**os.environ, "NUMBA_CACHE_DIR": os.path.join(tmp, f"cold-{i}")}
            cold.append(timed(sample, env, 1))
        rows.append((f"sample --length 1, cold ({args.cell} kernels compiled)", statistics.median(cold)))
        rows.append(("sample --length 1, warm (kernels from the cache)", timed(sample, base, args.reps)))
        rows.append(("sample --length 1, CHARRNN_KERNELS=numpy",
                     timed(sample, {**base, "CHARRNN_KERNELS": "numpy"}, args.reps)))
    print(f"Start-up, median of {args.reps} processes each:")
    for name, seconds in rows:
        print(f"| {name:<52} | {seconds:6.2f} s |")


if __name__ == "__main__":
    main()
