"""Training-step throughput of charrnn next to PyTorch (CPU), measured side by side.

A benchmark, not a test. For each configuration both frameworks train the same
model on the same batches with the same optimizer (Adam, global-norm clip 5,
float32), alternating one step each after a warm-up; each step of the headline
table starts when other processes leave the CPUs alone (common.measure). The
script prints the median characters per second of each and their ratio; the
physical limit, the characters per second at which the model's matrix FLOPs
would run at the float32 GEMM peak this script measures in the same run; and
the fraction of that limit each framework reaches (charrnn's is its model
FLOPs utilization, MFU). charrnn trains as `charrnn train` does: each batch in
--threads row blocks, one thread each (charrnn/step/parallel.py).

    python bench/speed.py            # reference model, cells, sizes, the sweep, sampling and eval
    python bench/speed.py --quick    # without the H x B sweep, and 3 rounds of sampling and eval

Sampling (one stream, 64 streams) and eval throughput next to PyTorch's come
last, from bench/sample_speed.py run as a subprocess.

Needs the `torch` extra (pip install -e ".[torch]"). PyTorch is limited to 2
threads, as NumPy's BLAS uses the machine's 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

import numpy as np

from charrnn.core import model, optim
from charrnn.step import parallel
from charrnn.core.model import ModelConfig
from charrnn.step.runtime import keep_freed_memory
from common import blas_kernel, measure, torch_lm  # this directory is on sys.path when the script runs

V = 65  # tinyshakespeare's character count


def gemm_peak(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 GEMM FLOP/s of this machine's NumPy BLAS (best of a few n^3 products)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)
    best = min(measure(lambda: np.matmul(a, a, out=out))[0] for _ in range(repeats))
    return 2 * n**3 / best


def step_product() -> str:
    """Which step product float32 training runs: charrnn/core/gemm.py's microkernel (its shape) or NumPy's BLAS."""
    try:
        from charrnn.core import gemm
    except ImportError:
        return "NumPy's BLAS (no numba)"
    if not gemm.available():
        return f"NumPy's BLAS ({gemm.unavailable_reason()})"
    nr, mr, _ = gemm.microkernels()
    return f"packed microkernel, {mr} rows x {nr} columns ({gemm.host_variants()[0]})"


def model_flops(cfg: ModelConfig, B: int, T: int) -> float:
    """Matrix FLOPs of one training step (forward + backward = 3x forward), by the architecture."""
    G, H, E = cfg.gates, cfg.hidden, cfg.embed
    per_token = 0
    for k in range(cfg.layers):
        n_in = E if k == 0 else H
        per_token += 2 * G * H * (n_in + H)
    per_token += 2 * H * V
    return 3 * per_token * B * T


class NumpyTrainer:
    threads = 2  # row blocks per batch, as charrnn train's --threads

    def __init__(self, cfg, params):
        self.cfg, self.params = cfg, {k: v.copy() for k, v in params.items()}
        self.opt = optim.make_optimizer("adam", self.params)

    def step(self, x, y):
        nll, grads, _ = parallel.loss_and_grads(self.params, self.cfg, x, y, None, None, count=y.size,
                                                parts=self.threads)
        optim.clip_grad_norm(grads, 5.0)
        self.opt.step(self.params, grads, 2e-3)
        return nll / y.size


class TorchTrainer:
    def __init__(self, cfg, params):
        import torch

        self.torch = torch
        self.net = torch_lm(cfg, params)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=2e-3)

    def step(self, x, y):
        torch = self.torch
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        self.opt.zero_grad(set_to_none=True)
        logits, _ = self.net(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
        self.opt.step()
        return loss.item()


def compare(cell, layers, H, B, T=100, E=64, reps=7, warmup=2, peak=None, quiet=True):
    """Median chars/s of each framework over `reps` alternated steps; returns a result row.

    - quiet: start each step when other processes leave the CPUs alone (common.measure)
    """
    cfg = ModelConfig(vocab_size=V, cell=cell, layers=layers, hidden=H, embed=E)
    params = model.init_params(cfg, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    data = rng.integers(0, V, (reps + warmup, B, T + 1))
    trainers = {"charrnn": NumpyTrainer(cfg, params), "torch": TorchTrainer(cfg, params)}
    times = {name: [] for name in trainers}
    foreign = []
    for i in range(reps + warmup):
        x, y = data[i, :, :-1], data[i, :, 1:]
        for name, trainer in trainers.items():
            elapsed, share, _ = measure(lambda: trainer.step(x, y), quiet=quiet)
            if i >= warmup:
                times[name].append(elapsed)
                foreign.append(share)
    ours, theirs = (B * T / statistics.median(times[n]) for n in ("charrnn", "torch"))
    row = {"config": f"{cell} {layers}x{H} B{B}", "charrnn": ours, "torch": theirs, "ratio": ours / theirs,
           "foreign": max(foreign)}
    if peak:
        row["limit"] = peak * B * T / model_flops(cfg, B, T)  # chars/s with every matrix FLOP at the peak
        row["mfu"], row["torch_mfu"] = ours / row["limit"], theirs / row["limit"]
    return row


def print_table(rows, title):
    print(f"\n{title}")
    print(f"| {'config':<20} | {'charrnn chars/s':>15} | {'torch chars/s':>13} | {'ratio':>5} "
          f"| {'limit chars/s':>13} | {'charrnn':>7} | {'torch':>5} |")
    print(f"|{'-' * 22}|{'-' * 17}|{'-' * 15}|{'-' * 7}|{'-' * 15}|{'-' * 9}|{'-' * 7}|")
    for r in rows:
        limit = f"{r['limit']:,.0f}" if "limit" in r else ""
        mfu = f"{r['mfu']:.0%}" if "mfu" in r else ""
        torch_mfu = f"{r['torch_mfu']:.0%}" if "torch_mfu" in r else ""
        print(f"| {r['config']:<20} | {r['charrnn']:>15,.0f} | {r['torch']:>13,.0f} | {r['ratio']:>5.2f} "
              f"| {limit:>13} | {mfu:>7} | {torch_mfu:>5} |", flush=True)
    print("(limit: the model's matrix FLOPs per character at the measured GEMM peak; charrnn, torch: "
          "the fraction of it reached)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the H x B sweep")
    parser.add_argument("--reps", type=int, default=7, help="timed steps per framework and configuration")
    parser.add_argument("--threads", type=int, default=NumpyTrainer.threads,
                        help="charrnn's row blocks per batch (charrnn train --threads)")
    parser.add_argument("--only", choices=["lstm", "gru", "rnn", "lstm512", "lstm128"], action="append",
                        help="run only these headline configurations (repeatable)")
    args = parser.parse_args()
    NumpyTrainer.threads = args.threads

    import torch
    torch.set_num_threads(2)
    keep_freed_memory()  # what the charrnn command does at start-up
    peak = gemm_peak()
    print(f"float32 GEMM peak (NumPy BLAS, 2048^3): {peak / 1e9:.0f} GFLOP/s; {blas_kernel()}; "
          f"torch {torch.__version__}, numpy {np.__version__}; T = 100, E = 64, V = {V}, Adam, clip 5; "
          f"charrnn kernels: {model.recurrence().__name__.split('.')[-1]}, {args.threads} row blocks; "
          f"step product: {step_product()}")
    headline = {"lstm": ("lstm", 2, 256), "gru": ("gru", 2, 256), "rnn": ("rnn", 2, 256),
                "lstm512": ("lstm", 2, 512), "lstm128": ("lstm", 1, 128)}
    rows = [compare(*headline[name], 64, reps=args.reps, peak=peak) for name in args.only or headline]
    print_table(rows, "Training step (forward, backward, clip, Adam): median chars/s")
    print(f"(each step started on a quiet machine; other processes then used at most "
          f"{max(r['foreign'] for r in rows):.0%} of it during a step)")
    if not args.quick:
        sweep = [compare("lstm", 2, H, B, reps=3, warmup=1, peak=peak, quiet=False)
                 for H in (128, 256, 512, 1024) for B in (16, 64, 256)]
        print_table(sweep, "LSTM 2 layers: how cost grows with H and B")
    print("\nSampling and eval (bench/sample_speed.py)", flush=True)
    sample_speed = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_speed.py")
    subprocess.run([sys.executable, sample_speed, "--rounds", "3" if args.quick else "5"], check=True)


if __name__ == "__main__":
    main()
