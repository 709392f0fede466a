"""Training-step throughput of charrnn next to PyTorch (CPU), measured side by side.

A benchmark, not a test. For each configuration both frameworks train the same
model on the same batches with the same optimizer (Adam, global-norm clip 5,
float32), alternating one step each after a warm-up; each step of the headline
table starts when other processes leave the CPUs alone (common.measure). The
script prints the median characters per second of each (the mean beside it) and their ratio; the
physical limit, the characters per second at which the model's matrix FLOPs
would run at the float32 GEMM peak this script measures in the same run; and
the fraction of that limit each framework reaches (charrnn's is its model
FLOPs utilization, MFU). charrnn trains as `charrnn train` does: each batch in
--threads row blocks, one thread each (charrnn/step/parallel.py).

    python bench/speed.py            # reference model, cells, sizes, the sweep, sampling and eval
    python bench/speed.py --quick    # without the H x B sweep, and 3 rounds of sampling and eval

The harness times parallel.loss_and_grads, the clip and the update. Beside it
(--loop, on by default with the headline table's first configuration) the
script times the product itself on the same settings: the steps of
`charrnn train`'s loop (work/loop.py, through charrnn.train, events, log lines
and all: the time between consecutive step events), and whole `charrnn train`
processes of 10 and 40 steps, (t40 - t10) / 30 a step. It prints each one's
median and mean, and their ratio to the harness's.

--precision bf16 trains charrnn's side with bfloat16 products (--precision
bf16) and adds PyTorch under bfloat16 autocast; the peaks then include the
bf16 GEMM peak (PyTorch's bfloat16 2048^3 product) and each side's share of
it. The per-core small-product peak (one step's product, 32 x H by H x 4H on
one thread, charrnn's own tiles) is printed beside the 2048^3 figure: it is
what bounds a recurrent step.

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
import tempfile
import time

import numpy as np

from charrnn.core import model, optim
from charrnn.step import parallel
from charrnn.core.model import ModelConfig
from charrnn.step.runtime import keep_freed_memory
from common import CORPUS, blas_kernel, measure, torch_lm  # this directory is on sys.path when the script runs

V = 65  # tinyshakespeare's character count


def gemm_peak(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 GEMM FLOP/s of this machine's NumPy BLAS (best of a few n^3 products)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)
    best = min(measure(lambda: np.matmul(a, a, out=out))[0] for _ in range(repeats))
    return 2 * n**3 / best


def bf16_peak(n: int = 2048, repeats: int = 5) -> float:
    """Measured bfloat16 GEMM FLOP/s of PyTorch (oneDNN: AVX512-BF16 or AMX where the CPU has them), 2048^3."""
    import torch

    a = torch.randn(n, n, dtype=torch.bfloat16)
    out = torch.empty_like(a)
    torch.matmul(a, a, out=out)
    best = min(measure(lambda: torch.matmul(a, a, out=out))[0] for _ in range(repeats))
    return 2 * n**3 / best


def small_product_peak(precision: str, B: int = 32, H: int = 256, repeats: int = 200) -> float:
    """FLOP/s of one LSTM step's product (B x H by H x 4H) on this thread by charrnn's tiles: the per-core
    bound of a recurrent step (float32: gemm.py; bf16: bf16.py, rounding the rows included)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((B, H)).astype(np.float32)
    w = rng.standard_normal((H, 4 * H)).astype(np.float32)
    c = np.empty((B, 4 * H), np.float32)
    if precision == "bf16":
        from charrnn.core import bf16

        tiles = bf16.microkernels()
        if tiles is None:
            return float("nan")
        packed = bf16.pack(w)

        def run():
            for _ in range(repeats):
                bf16.matmul(a, w, c, packed=packed, tiles=tiles)
    else:
        from charrnn.core import gemm

        if not gemm.available():
            return float("nan")
        packed = gemm.pack(w)

        def run():
            for _ in range(repeats):
                gemm.matmul(a, packed, c)
    run()
    best = min(measure(run)[0] for _ in range(5))
    return repeats * 2 * B * H * 4 * H / best


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
    precision = "float32"  # charrnn's products (--precision)

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
    def __init__(self, cfg, params, autocast: bool = False):
        import torch

        self.torch = torch
        self.net = torch_lm(cfg, params)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=2e-3)
        self.autocast = autocast  # bfloat16 autocast: bfloat16 products, float32 master weights

    def step(self, x, y):
        torch = self.torch
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            logits, _ = self.net(x)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
        self.opt.step()
        return loss.item()


def compare(cell, layers, H, B, T=100, E=64, reps=7, warmup=2, peak=None, quiet=True, bf16_peak=None):
    """Median chars/s of each framework over `reps` alternated steps; returns a result row.

    - quiet: start each step when other processes leave the CPUs alone (common.measure)
    - bf16_peak: with NumpyTrainer.precision bf16, the bfloat16 GEMM peak: PyTorch also trains under
      bfloat16 autocast, and each side's share of that peak is reported
    """
    cfg = ModelConfig(vocab_size=V, cell=cell, layers=layers, hidden=H, embed=E,
                      precision=NumpyTrainer.precision)
    params = model.init_params(cfg, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    data = rng.integers(0, V, (reps + warmup, B, T + 1))
    trainers = {"charrnn": NumpyTrainer(cfg, params), "torch": TorchTrainer(cfg, params)}
    if cfg.precision == "bf16":
        trainers["torch_bf16"] = TorchTrainer(cfg, params, autocast=True)
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
           "foreign": max(foreign), "charrnn_mean": B * T / statistics.mean(times["charrnn"]),
           "torch_mean": B * T / statistics.mean(times["torch"])}
    if peak:
        row["limit"] = peak * B * T / model_flops(cfg, B, T)  # chars/s with every matrix FLOP at the peak
        row["mfu"], row["torch_mfu"] = ours / row["limit"], theirs / row["limit"]
    if "torch_bf16" in times:
        row["torch_bf16"] = B * T / statistics.median(times["torch_bf16"])
        row["ratio_bf16"] = ours / row["torch_bf16"]
        if bf16_peak:
            limit16 = bf16_peak * B * T / model_flops(cfg, B, T)
            row["bf16_mfu"], row["torch_bf16_mfu"] = ours / limit16, row["torch_bf16"] / limit16
    return row


def loop_speed(cell, layers, H, B, T=100, E=64, steps=40, threads=None, precision="float32"):
    """The product's own step: (median, mean) chars/s of `charrnn train`'s loop, taken in this process
    through charrnn.train (events, log lines and all), from the time between consecutive step events after
    five warm-up steps; one evaluation, at the end, which is not counted."""
    import charrnn

    stamps = []

    def on_event(event, run):
        if event.get("event") == "step":
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        charrnn.train(CORPUS, os.path.join(out, "run"), on_event=on_event, **_train_options(
            cell, layers, H, B, T, E, steps, threads, precision))
    gaps = np.diff(stamps[5:])
    return B * T / float(np.median(gaps)), B * T / float(np.mean(gaps))


def process_speed(cell, layers, H, B, T=100, E=64, threads=None, precision="float32", short=10, long=40):
    """chars/s of whole `charrnn train` processes, timed from outside: (t(long) - t(short)) / (long - short)
    a step, start-up, preparation and the final evaluation and save cancelling out."""
    seconds = {}
    for steps in (short, long):
        options = _train_options(cell, layers, H, B, T, E, steps, threads, precision)
        args = [sys.executable, "-m", "charrnn", "train", CORPUS, "--quiet"]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            subprocess.run(args + ["--out", os.path.join(out, "run")], check=True)
            seconds[steps] = time.perf_counter() - start
    return B * T * (long - short) / (seconds[long] - seconds[short])


def _train_options(cell, layers, H, B, T, E, steps, threads, precision) -> dict:
    """The harness's settings as `charrnn train` options: Adam, clip 5, no dropout, constant lr, no
    evaluation before the end."""
    options = dict(cell=cell, layers=layers, hidden=H, embed=E, dropout=0.0, batch_size=B, seq_len=T,
                   optim="adam", lr=2e-3, clip=5.0, schedule="constant", warmup=0, max_steps=steps,
                   eval_every=steps, patience=0, eval_tokens=10_000, precision=precision)
    if threads is not None:
        options["threads"] = threads
    return options


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
    print("Means beside the medians (chars/s): " + "; ".join(
        f"{r['config']}: charrnn {r['charrnn_mean']:,.0f}, torch {r['torch_mean']:,.0f}" for r in rows))
    bf16_rows = [r for r in rows if "torch_bf16" in r]
    if bf16_rows:
        print("PyTorch under bfloat16 autocast (chars/s, charrnn's ratio to it, and the share of the bf16 peak "
              "of charrnn and of torch bf16): " + "; ".join(
                  f"{r['config']}: {r['torch_bf16']:,.0f}, {r['ratio_bf16']:.2f}x"
                  + (f", {r['bf16_mfu']:.0%} / {r['torch_bf16_mfu']:.0%}" if "bf16_mfu" in r else "")
                  for r in bf16_rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the H x B sweep")
    parser.add_argument("--reps", type=int, default=7, help="timed steps per framework and configuration")
    parser.add_argument("--threads", type=int, default=NumpyTrainer.threads,
                        help="charrnn's row blocks per batch (charrnn train --threads)")
    parser.add_argument("--only", choices=["lstm", "gru", "rnn", "lstm512", "lstm128"], action="append",
                        help="run only these headline configurations (repeatable)")
    parser.add_argument("--precision", choices=["float32", "bf16"], default="float32",
                        help="charrnn's products (charrnn train --precision); bf16 adds PyTorch under autocast")
    parser.add_argument("--no-loop", dest="loop", action="store_false",
                        help="skip timing charrnn train's own loop and whole processes")
    parser.add_argument("--loop-steps", type=int, default=40, help="steps of the loop timed in-process")
    args = parser.parse_args()
    NumpyTrainer.threads = args.threads
    NumpyTrainer.precision = args.precision

    import torch
    torch.set_num_threads(2)
    keep_freed_memory()  # what the charrnn command does at start-up
    peak = gemm_peak()
    peak16 = bf16_peak()
    print(f"bfloat16 GEMM peak (PyTorch, 2048^3): {peak16 / 1e9:.0f} GFLOP/s; one step's product on one core "
          f"(32x256 by 256x1024, charrnn's tiles): float32 {small_product_peak('float32') / 1e9:.0f}, "
          f"bf16 {small_product_peak('bf16') / 1e9:.0f} GFLOP/s")
    print(f"float32 GEMM peak (NumPy BLAS, 2048^3): {peak / 1e9:.0f} GFLOP/s; {blas_kernel()}; "
          f"torch {torch.__version__}, numpy {np.__version__}; T = 100, E = 64, V = {V}, Adam, clip 5; "
          f"charrnn kernels: {model.recurrence().__name__.split('.')[-1]}, {args.threads} row blocks; "
          f"step product: {step_product()}; precision {args.precision}")
    headline = {"lstm": ("lstm", 2, 256), "gru": ("gru", 2, 256), "rnn": ("rnn", 2, 256),
                "lstm512": ("lstm", 2, 512), "lstm128": ("lstm", 1, 128)}
    rows = [compare(*headline[name], 64, reps=args.reps, peak=peak, bf16_peak=peak16)
            for name in args.only or headline]
    print_table(rows, "Training step (forward, backward, clip, Adam): median chars/s")
    print(f"(each step started on a quiet machine; other processes then used at most "
          f"{max(r['foreign'] for r in rows):.0%} of it during a step)")
    if args.loop:
        first = headline[(args.only or list(headline))[0]]
        median, mean = loop_speed(*first, 64, steps=args.loop_steps, threads=args.threads, precision=args.precision)
        whole = process_speed(*first, 64, threads=args.threads, precision=args.precision)
        harness = rows[0]
        print(f"\nThe product's step, {harness['config']} ({args.threads} row blocks, {args.precision}): "
              f"charrnn train's loop in-process median {median:,.0f} / mean {mean:,.0f} chars/s; whole "
              f"processes (40 - 10 steps) {whole:,.0f}; the harness median {harness['charrnn']:,.0f} / mean "
              f"{harness['charrnn_mean']:,.0f}; loop / harness (medians) {median / harness['charrnn']:.2f}, "
              f"processes / harness {whole / harness['charrnn']:.2f}", flush=True)
    if not args.quick:
        sweep = [compare("lstm", 2, H, B, reps=3, warmup=1, peak=peak, quiet=False)
                 for H in (128, 256, 512, 1024) for B in (16, 64, 256)]
        print_table(sweep, "LSTM 2 layers: how cost grows with H and B")
    print("\nSampling and eval (bench/sample_speed.py)", flush=True)
    sample_speed = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_speed.py")
    subprocess.run([sys.executable, sample_speed, "--rounds", "3" if args.quick else "5"], check=True)


if __name__ == "__main__":
    main()
