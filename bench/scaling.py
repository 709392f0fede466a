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
efficiency = t_step / (t_step + t_comm), for three ways to sum the gradients
(bandwidth in bits/s, latency a per-message assumption, 50 us by default):

- what distributed.py does now (the rank-order ring): the buffer of b bytes
  travels round the ring in C = ceil(b / chunk) chunks of distributed.ring_chunk's
  size, twice (the sums building up along ranks 0 -> N-1, then going on round
  to every rank), one hop a step: t_comm = 2 (C + N - 2) x (chunk / bandwidth +
  latency), plus the loss's 8 bytes, gathered and broadcast on trees:
  2 ceil(log2 N) x latency;
- a textbook ring allreduce (reduce-scatter and allgather; each chunk's sum
  starts at another rank, so its bits are not those of one process):
  t_comm = 2 (N - 1) / N x b / bandwidth + 2 (N - 1) x latency;
- what distributed.py did before (Gather to rank 0, add in rank order, Bcast):
  rank 0's link takes in N - 1 buffers, then a broadcast costing about a ring:
  t_comm = (N - 1) x b / bandwidth + the textbook ring's time.

Evaluation (every --eval-every steps, --eval-tokens tokens forward only) runs
on rank 0 while the other ranks wait; split across ranks, each would score
1/N of the tokens and the ranks would add N loss sums (a tree: 2 ceil(log2 N)
latencies). Per step that costs t_eval / eval_every against
t_eval / (N eval_every) + the reduction; the script prints both at 2 and 16
ranks. (Fewer rows per rank also run slower than the model assumes, which
favours rank 0 a little.)

The step time is the input that decides everything, and it must come from a
quiet machine: `--step-seconds` gives the reference LSTM's (then nothing is
measured, and only that config is modelled); without it each config's step
is measured here. QUIET_EVAL_TOKENS_PER_SEC is eval's speed from
docs/performance.md's quiet run (`--eval-tokens-per-sec` overrides it).

    env OPENBLAS_NUM_THREADS=1 nice -n 10 python bench/scaling.py          # needs ".[mpi]"
    python bench/scaling.py --steps 12 --reps 5
    python bench/scaling.py --no-mpi --step-seconds 0.228                    # the model alone, from a quiet step time
"""

from __future__ import annotations

import argparse
import json
import math
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
# eval's tokens/s for the reference LSTM, forward only, 2 threads: docs/performance.md's table from a quiet
# moment on 2026-12-02 (bench/speed.py); the lead replaces it with a fresh quiet measurement
QUIET_EVAL_TOKENS_PER_SEC = 78_488
EVAL_EVERY, EVAL_TOKENS = 200, 200_000  # the defaults (files/config.py's TrainConfig)


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


def tree_seconds(machines: int, latency: float) -> float:
    """A few bytes gathered to rank 0 and broadcast, each on a binomial tree."""
    return 2 * math.ceil(math.log2(machines)) * latency


def rank_order_ring_seconds(nbytes: int, machines: int, gbit: float, latency: float,
                            chunk: int | None = None) -> float:
    """distributed.sum_in_rank_order now: the gradients twice along the ring in chunks, plus the loss on trees."""
    from charrnn.step.distributed import ring_chunk
    chunk = min(chunk or ring_chunk(nbytes, machines), nbytes)
    hops = 2 * (math.ceil(nbytes / chunk) + machines - 2)
    return hops * (chunk * 8 / (gbit * 1e9) + latency) + tree_seconds(machines, latency)


def ring_seconds(nbytes: int, machines: int, gbit: float, latency: float) -> float:
    """A textbook ring allreduce (reduce-scatter, allgather)."""
    return 2 * (machines - 1) / machines * nbytes * 8 / (gbit * 1e9) + 2 * (machines - 1) * latency


def gather_bcast_seconds(nbytes: int, machines: int, gbit: float, latency: float) -> float:
    """distributed.sum_in_rank_order before: N - 1 buffers into rank 0, then a broadcast costing about a ring's."""
    return (machines - 1) * nbytes * 8 / (gbit * 1e9) + ring_seconds(nbytes, machines, gbit, latency)


COMMS = [("rank-order ring (now)", rank_order_ring_seconds), ("textbook ring", ring_seconds),
         ("gather + bcast (before)", gather_bcast_seconds)]


def eval_per_step(machines: int, latency: float, eval_tps: float, split: bool) -> float:
    """Seconds per training step that evaluation adds: on rank 0 alone, or split across the ranks."""
    t_eval = EVAL_TOKENS / eval_tps
    if not split:
        return t_eval / EVAL_EVERY
    return (t_eval / machines + tree_seconds(machines, latency)) / EVAL_EVERY


def parameter_count(cell: str, layers: int, hidden: int) -> int:
    """The config's parameters for the corpus's characters (no timing)."""
    from charrnn.core import model
    from charrnn.core.model import ModelConfig
    from charrnn.files import corpus

    vocab_size = len(set(corpus.read_text(CORPUS))) + 3
    config = ModelConfig(vocab_size=vocab_size, cell=cell, layers=layers, hidden=hidden, embed=E, dtype="float32")
    return sum(p.size for p in model.init_params(config, np.random.default_rng(0)).values())


def modelled(t_step: float, nbytes: int, latency: float, comm=rank_order_ring_seconds) -> dict:
    """{(Gbit/s, N): efficiency} of one config under a communication model."""
    return {(g, n): t_step / (t_step + comm(nbytes, n, g, latency)) for g in BANDWIDTHS for n in MACHINES}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12, help="training steps of each measured run")
    ap.add_argument("--reps", type=int, default=5, help="timed steps per config")
    ap.add_argument("--latency", type=float, default=50e-6, help="assumed seconds per message")
    ap.add_argument("--no-mpi", action="store_true", help="skip the 1- and 2-rank runs")
    ap.add_argument("--step-seconds", type=float, default=None,
                    help="the reference LSTM's step (B 64, T 100) measured on a quiet machine: model only that")
    ap.add_argument("--eval-tokens-per-sec", type=float, default=QUIET_EVAL_TOKENS_PER_SEC,
                    help="eval's forward-only tokens/s on one machine (quiet)")
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

    configs = CONFIGS[:1] if args.step_seconds else CONFIGS
    print(f"\nmodelled efficiency (latency {args.latency * 1e6:.0f} us per message, assumed), "
          + " / ".join(name for name, _ in COMMS) + ":\n")
    head = "| config | parameters | gradient bytes | step | " + " | ".join(
        f"N={n} @{g}G" for g in BANDWIDTHS for n in (8, 64)) + " | machines at >= 80% (10G; 25G) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    reference = None
    for name, cell, layers, hidden in configs:
        if args.step_seconds:
            t, n_params = args.step_seconds, parameter_count(cell, layers, hidden)
            source = "given"
        else:
            t, n_params = step_seconds(cell, layers, hidden, args.reps)
            source = "measured"
        nbytes = n_params * 4
        effs = [modelled(t, nbytes, args.latency, comm) for _, comm in COMMS]
        reference = reference or (t, nbytes, effs)
        cells = " | ".join(" / ".join(f"{e[g, n]:.0%}" for e in effs) for g in BANDWIDTHS for n in (8, 64))
        pays = ["/".join(_pays(e, g) for e in effs) for g in BANDWIDTHS]
        print(f"| {name} | {n_params:,} | {nbytes / 1e6:.2f} MB | {t * 1e3:.0f} ms ({source}) | {cells} | "
              f"{'; '.join(pays)} |")

    t, nbytes, effs = reference
    print(f"\nreference LSTM, every N (25 Gbit/s), {' / '.join(name for name, _ in COMMS)}: "
          + ", ".join(f"N={n} " + "/".join(f"{e[25, n]:.1%}" for e in effs) for n in MACHINES))
    for label, comm in COMMS:
        t_comm = comm(nbytes, 64, 25, args.latency)
        print(f"  {label}: N=64 at 25 Gbit/s communicates {t_comm * 1e3:.1f} ms a step; >= 80% needs a step "
              f"of {4 * t_comm * 1e3:.0f} ms or more")
    print(f"\nevaluation ({EVAL_TOKENS:,} tokens every {EVAL_EVERY} steps at {args.eval_tokens_per_sec:,.0f} "
          f"tokens/s), the reference LSTM's efficiency at 25 Gbit/s with the rank-order ring:")
    for n in (2, 16):
        comm = rank_order_ring_seconds(nbytes, n, 25, args.latency)
        on_root, split = (t / (t + comm + eval_per_step(n, args.latency, args.eval_tokens_per_sec, s))
                          for s in (False, True))
        print(f"  N={n:2d}: rank 0 evaluates {on_root:.1%}, split across ranks {split:.1%} "
              f"({'split' if split > on_root else 'rank 0'} by {abs(split - on_root) * 100:.1f} points)")


def _pays(effs: dict, gbit: int) -> str:
    """The most machines (of MACHINES) still at >= 80% efficiency."""
    n = max([n for n in MACHINES if effs[gbit, n] >= 0.8], default=1)
    return "64+" if n == MACHINES[-1] else str(n)


if __name__ == "__main__":
    main()
