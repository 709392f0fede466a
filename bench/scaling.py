"""Data-parallel scaling: measured on this machine, then modelled for 2-64 machines.

A benchmark, not a test. It measures, on this machine:

- chars/s of `charrnn train` with 1 process and with `mpiexec -n 2` (one BLAS
  and one kernel thread per rank, `--threads 1`), the reference model
  (LSTM 2 x 256, E 64, B 64, T 100, Adam, float32), from the runs' own
  log.jsonl (median chars_per_sec over the steps after the first);
- the bytes one step's gradient reduction carries: every parameter's gradient,
  one flat buffer in the model's dtype;
- the compute time of one training step (forward, backward, clip, Adam) of each
  config in the Performance table (DESIGN.md's reference model, GRU, RNN, H 512,
  1 x 128), in-process, median of --reps.

From those it models each config on N = 2..64 machines, each keeping B = 64
rows (the global batch grows with N), no overlap of communication with compute,
efficiency = t_step / (t_step + t_comm), for two ways to sum the gradients:

- a ring allreduce, as the issue asked: t_comm = 2 (N - 1) / N x bytes /
  bandwidth + 2 (N - 1) x latency;
- what distributed.py does (a fixed order: Gather to rank 0, add in rank
  order, Bcast): rank 0's link takes in N - 1 buffers, then the broadcast
  costs about what a ring does (MPICH sends large messages as a scatter and an
  allgather): t_comm = (N - 1) x bytes / bandwidth + 2 (N - 1) / N x bytes /
  bandwidth + 2 (N - 1) x latency.

The latency per message (--latency, 50 us), the bandwidths (10 and 25 Gbit/s)
and the broadcast's cost are assumptions, not measurements.

    env OPENBLAS_NUM_THREADS=1 nice -n 10 python bench/scaling.py          # needs ".[mpi]"
    python bench/scaling.py --steps 12 --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import CORPUS

CONFIGS = [  # (name, cell, layers, hidden): the Performance table's configs, B 64, T 100, E 64
    ("LSTM 2x256 (reference)", "lstm", 2, 256),
    ("GRU 2x256", "gru", 2, 256),
    ("RNN 2x256", "rnn", 2, 256),
    ("LSTM 2x512", "lstm", 2, 512),
    ("LSTM 1x128", "lstm", 1, 128),
]
B, T, E = 64, 100, 64
MACHINES = [2, 4, 8, 16, 32, 64]
BANDWIDTHS = [10, 25]  # Gbit/s


def env_one_thread() -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE"):
        env.pop(name, None)
    return env


def run_chars_per_sec(ranks: int, steps: int, workdir: str) -> float:
    """Median chars/s of a `charrnn train` run of the reference model on `ranks` processes."""
    out = os.path.join(workdir, f"ranks{ranks}")
    cmd = [sys.executable, "-m", "charrnn", "train", CORPUS, "--out", out, "--cell", "lstm", "--layers", "2",
           "--hidden", "256", "--embed", "64", "--batch-size", str(B), "--seq-len", str(T), "--optim", "adam",
           "--lr", "2e-3", "--dropout", "0", "--threads", "1", "--max-steps", str(steps), "--log-every", "1",
           "--eval-every", str(steps), "--eval-tokens", "2000", "--quiet"]
    if ranks > 1:
        cmd = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(ranks)] + cmd
    subprocess.run(cmd, env=env_one_thread(), check=True)
    with open(os.path.join(out, "log.jsonl")) as f:
        speeds = [json.loads(line)["chars_per_sec"] for line in f][1:]
    return statistics.median(speeds)


def step_seconds(cell: str, layers: int, hidden: int, reps: int) -> tuple[float, int]:
    """(median seconds of one training step with B 64, T 100, in this process; parameter count)."""
    from charrnn.data import batches
    from charrnn.files import corpus
    from charrnn.core import model, optim
    from charrnn.core.model import ModelConfig

    text = corpus.read_text(CORPUS)
    vocab_size = len(set(text)) + 3
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab_size, B * T * (reps + 2) + 1)
    config = ModelConfig(vocab_size=vocab_size, cell=cell, layers=layers, hidden=hidden, embed=E, dtype="float32")
    params = model.init_params(config, rng)
    opt = optim.make_optimizer("adam", params)
    times = []
    for k in range(reps + 1):
        x, y = batches.stream_batch(ids, B, T, k)
        start = time.perf_counter()
        _, _, cache = model.forward(params, config, x, y, None, None)
        grads, _ = model.backward(params, config, cache, count=y.size)
        optim.clip_grad_norm(grads, 5.0)
        opt.step(params, grads, 2e-3)
        if k:  # the first step warms caches and compiles kernels
            times.append(time.perf_counter() - start)
    return statistics.median(times), sum(p.size for p in params.values())


def ring_seconds(nbytes: int, machines: int, gbit: float, latency: float) -> float:
    return 2 * (machines - 1) / machines * nbytes * 8 / (gbit * 1e9) + 2 * (machines - 1) * latency


def gather_bcast_seconds(nbytes: int, machines: int, gbit: float, latency: float) -> float:
    """distributed.sum_in_rank_order: N - 1 buffers into rank 0, then a broadcast costing about a ring's."""
    return (machines - 1) * nbytes * 8 / (gbit * 1e9) + ring_seconds(nbytes, machines, gbit, latency)


def modelled(t_step: float, nbytes: int, latency: float, comm=ring_seconds) -> dict:
    """{(Gbit/s, N): efficiency} of one config under a communication model."""
    return {(g, n): t_step / (t_step + comm(nbytes, n, g, latency)) for g in BANDWIDTHS for n in MACHINES}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12, help="training steps of each measured run")
    ap.add_argument("--reps", type=int, default=5, help="timed steps per config")
    ap.add_argument("--latency", type=float, default=50e-6, help="assumed seconds per ring message")
    ap.add_argument("--no-mpi", action="store_true", help="skip the 1- and 2-rank runs")
    args = ap.parse_args(argv)

    if not args.no_mpi:
        work = tempfile.mkdtemp(prefix="charrnn-scaling-")
        try:
            one = run_chars_per_sec(1, args.steps, work)
            two = run_chars_per_sec(2, args.steps, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"measured, reference LSTM, B {B} global, --threads 1 per rank, one BLAS thread each:")
        print(f"  1 process : {one:,.0f} chars/s")
        print(f"  2 ranks   : {two:,.0f} chars/s  ({two / one:.2f}x)")

    print("\nmeasured per-step compute (B 64, T 100, one process, float32, Adam); modelled efficiency "
          f"(latency {args.latency * 1e6:.0f} us per message, assumed), ring allreduce / distributed.py's "
          "gather and broadcast:\n")
    head = "| config | parameters | gradient bytes per step | step (measured) | " + " | ".join(
        f"N={n} @{g}G" for g in BANDWIDTHS for n in (8, 64)) + " | machines at >= 80% (10G / 25G) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, cell, layers, hidden in CONFIGS:
        t, n_params = step_seconds(cell, layers, hidden, args.reps)
        nbytes = n_params * 4
        ring = modelled(t, nbytes, args.latency)
        ours = modelled(t, nbytes, args.latency, gather_bcast_seconds)
        cells = " | ".join(f"{ring[g, n]:.0%} / {ours[g, n]:.0%}" for g in BANDWIDTHS for n in (8, 64))
        pays = [f"{_pays(ring, g)} / {_pays(ours, g)}" for g in BANDWIDTHS]
        print(f"| {name} | {n_params:,} | {nbytes / 1e6:.2f} MB | {t * 1e3:.0f} ms | {cells} | {'; '.join(pays)} |")


def _pays(effs: dict, gbit: int) -> str:
    """The most machines (of MACHINES) still at >= 80% efficiency."""
    n = max([n for n in MACHINES if effs[gbit, n] >= 0.8], default=1)
    return "64+" if n == MACHINES[-1] else str(n)


if __name__ == "__main__":
    main()
