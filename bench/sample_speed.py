"""Sampling and eval throughput of charrnn next to PyTorch (CPU), measured side by side.

A benchmark, not a test. Reference model: LSTM, 2 layers, H = 256, E = 64,
V = 65, float32. Each round times, one after another:

- sample, 1 stream: charrnn's `sampling.generate` and PyTorch stepping
  nn.Embedding + nn.LSTM + nn.Linear (same weights) one token at a time with
  torch.multinomial; tokens per second;
- sample, 64 streams: the same, tokens per second in total;
- eval: `evaluate.score_stream` with its defaults (what `charrnn eval` runs)
  over the held-out tenth of tinyshakespeare (random ids when the corpus is
  absent), PyTorch scoring the same streams, and a charrnn training step
  (forward, backward, clip, Adam; B 64, T 100; 8 steps a round) to compare
  per character.

With --before DIR, the sampling.py and evaluate.py found in DIR (say, the
files of an older commit: `git show REV:charrnn/sampling.py > DIR/sampling.py`)
run on the current model code in the same rounds, as a third column. The
machine is shared and noisy: each measurement starts when other processes
leave the CPUs alone (waiting up to 20 s), the script reports how much of the
machine they used anyway, and it prints medians over the rounds and ratios
taken within the run.

    python bench/sample_speed.py                      # 5 rounds
    python bench/sample_speed.py --rounds 9 --before /tmp/before

Needs the `torch` extra. PyTorch is limited to 2 threads, as NumPy's BLAS uses
the machine's 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import sys
import time

import numpy as np

import charrnn
from charrnn import evaluate, model, optim, sampling
from charrnn.model import ModelConfig
from charrnn.runtime import keep_freed_memory
from charrnn.vocab import EOS, SPECIAL_TOKENS, Vocab

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpora", "tinyshakespeare.txt")


def reference_model():
    """(params, config, vocab) of the reference model with V = 65 (3 specials + 62 characters)."""
    chars = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"[:62]
    vocab = Vocab(SPECIAL_TOKENS + tuple(sorted(chars)), "char")
    config = ModelConfig(vocab_size=vocab.size, cell="lstm", layers=2, hidden=256, embed=64)
    params = model.init_params(config, np.random.default_rng(0))
    # A trained stream-mode model all but never predicts EOS (it never saw one);
    # random weights would end a sample every ~65 tokens and time only start-up.
    params["head.bias"][EOS] = -30.0
    return params, config, vocab


def held_out_ids(vocab: Vocab) -> np.ndarray:
    """The last 10% of tinyshakespeare encoded (unknown characters become UNK), or random ids."""
    if os.path.exists(CORPUS):
        with open(CORPUS, encoding="utf-8") as f:
            text = f.read()
        return vocab.encode(text[int(len(text) * 0.9):]).astype(np.int64)
    return np.random.default_rng(2).integers(3, vocab.size, 111_540)


def load_before(directory: str):
    """(sampling, evaluate) modules from DIR's files, importing the current charrnn for everything else."""
    modules = []
    for name in ("sampling", "evaluate"):
        spec = importlib.util.spec_from_file_location(f"charrnn._before_{name}", os.path.join(directory, f"{name}.py"),
                                                      submodule_search_locations=None)
        module = importlib.util.module_from_spec(spec)
        module.__package__ = "charrnn"  # its relative imports resolve to the current package
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


def blas_kernel() -> str:
    """Which OpenBLAS kernels NumPy runs, as far as can be told, and whether the environment chose them.

    OPENBLAS_CORETYPE overrides OpenBLAS's own choice; some machines set it
    (with OPENBLAS_L2_SIZE) for older builds, and it can halve a current
    NumPy's GEMM speed. Unset both in the benchmark's command to measure what
    users get: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/...`.
    """
    try:
        from threadpoolctl import threadpool_info
        found = [i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"]
    except ImportError:
        found = []
    forced = os.environ.get("OPENBLAS_CORETYPE")
    name = found[0] if found else "unknown kernels (pip install threadpoolctl to see them)"
    return f"BLAS: {name}" + (f" (forced by OPENBLAS_CORETYPE={forced})" if forced else "")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine_cpu_seconds() -> float:
    """CPU seconds all processes have run (from /proc/stat; 0.0 where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(limit: float = 20.0, window: float = 0.3, share: float = 0.1) -> None:
    """Wait (up to `limit` seconds) until other processes use less than `share` of the machine."""
    deadline = time.monotonic() + limit
    cpus = os.cpu_count() or 1
    while time.monotonic() < deadline:
        machine, own = machine_cpu_seconds(), own_cpu_seconds()
        time.sleep(window)
        foreign = (machine_cpu_seconds() - machine) - (own_cpu_seconds() - own)
        if foreign < share * cpus * window:
            return


def timed_with_load(fn):
    """(seconds, foreign share): wall time of fn() and the share of the machine other processes used meanwhile."""
    machine, own, start = machine_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    foreign = (machine_cpu_seconds() - machine) - (own_cpu_seconds() - own)
    return wall, max(0.0, foreign / ((os.cpu_count() or 1) * wall)), result


# ---------------------------------------------------------------- charrnn


def charrnn_sample(sampling_module, params, config, vocab, n: int, length: int, seed: int) -> int:
    """Runs generate to the end; returns the number of tokens made."""
    made = 0
    for tokens, alive in sampling_module.generate(params, config, vocab, rng=np.random.default_rng(seed),
                                                  num_samples=n, length=length, temperature=1.0):
        made += int(alive.sum())
    return made


def charrnn_train_steps_fn(params, config, steps: int):
    """(fn, chars): fn runs `steps` reference training steps (B 64, T 100, Adam, clip 5); chars they train on."""
    params = {k: v.copy() for k, v in params.items()}
    opt = optim.make_optimizer("adam", params)
    data = np.random.default_rng(3).integers(3, config.vocab_size, (64, 101))
    x, y = data[:, :-1], data[:, 1:]

    def run():
        for _ in range(steps):
            _, grads, _ = model.loss_and_grads(params, config, x, y)
            optim.clip_grad_norm(grads, 5.0)
            opt.step(params, grads, 2e-3)

    return run, steps * x.size


# ---------------------------------------------------------------- PyTorch


class TorchLM:
    """The same model in torch.nn, loaded from charrnn's parameter dict unchanged."""

    def __init__(self, params, config):
        import torch

        self.torch = torch
        self.embedding = torch.nn.Embedding(config.vocab_size, config.embed)
        self.rnn = torch.nn.LSTM(config.embed, config.hidden, config.layers, batch_first=True)
        self.head = torch.nn.Linear(config.hidden, config.vocab_size)
        for module, prefix in ((self.embedding, "embedding."), (self.rnn, "rnn."), (self.head, "head.")):
            module.load_state_dict({k[len(prefix):]: torch.from_numpy(v.copy())
                                    for k, v in params.items() if k.startswith(prefix)})

    def sample(self, n: int, length: int, seed: int, start: int) -> int:
        torch = self.torch
        gen = torch.Generator().manual_seed(seed)
        banned = torch.tensor([1, 2])  # UNK and BOS, as charrnn bans them
        made = 0
        with torch.inference_mode():
            x = torch.full((n, 1), start, dtype=torch.long)
            state = None
            alive = torch.ones(n, dtype=torch.bool)
            for _ in range(length):
                out, state = self.rnn(self.embedding(x), state)
                logits = self.head(out[:, -1])  # (n, V)
                logits[:, banned] = -float("inf")
                x = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=gen)  # (n, 1)
                made += int(alive.sum())
                alive &= x[:, 0] != EOS
                if not alive.any():
                    break
        return made

    def score_stream(self, ids: np.ndarray, streams: int, chunk: int) -> float:
        """Total NLL, with the text cut into `streams` pieces as evaluate.score_stream cuts it."""
        torch = self.torch
        n_targets = len(ids) - 1
        B = min(streams, n_targets)
        S = -(-n_targets // B)
        pos = np.arange(B)[:, None] * S + np.arange(S)  # (B, S)
        valid = pos < n_targets
        pos = np.where(valid, pos, 0)
        x, y = torch.from_numpy(ids[pos]), torch.from_numpy(ids[pos + 1])
        valid = torch.from_numpy(valid)
        total, state = 0.0, None
        with torch.inference_mode():
            for t0 in range(0, S, chunk):
                sl = slice(t0, t0 + chunk)
                out, state = self.rnn(self.embedding(x[:, sl]), state)
                logits = self.head(out)
                nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                        y[:, sl].reshape(-1), reduction="none")
                total += float((nll * valid[:, sl].reshape(-1)).sum())
        return total


# ---------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--length1", type=int, default=3000, help="tokens sampled by charrnn's single stream")
    parser.add_argument("--length64", type=int, default=400, help="tokens sampled by each of 64 streams")
    parser.add_argument("--train-steps", type=int, default=8, help="training steps timed per round")
    parser.add_argument("--before", metavar="DIR", help="also time the sampling.py and evaluate.py in DIR")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(2)
    keep_freed_memory()  # what the charrnn command does at start-up
    params, config, vocab = reference_model()
    tlm = TorchLM(params, config)
    ids = held_out_ids(vocab)
    start = int(vocab.encode("\n")[0])
    # several steps, so that the training figure, like eval's, times about a second of work
    train_steps, train_chars = charrnn_train_steps_fn(params, config, args.train_steps)
    impls = {"now": (sampling, evaluate)}
    if args.before:
        impls["before"] = tuple(load_before(args.before))

    n_targets = len(ids) - 1
    streams = evaluate.stream_count(n_targets, 128) if hasattr(evaluate, "stream_count") else min(128, n_targets)
    losses = {name: ev.score_stream(params, config, ids).loss for name, (_, ev) in impls.items()}
    print(f"charrnn {charrnn.__version__}, torch {torch.__version__}, numpy {np.__version__}; "
          f"LSTM 2x256, E 64, V {config.vocab_size}, float32; {blas_kernel()}")
    print(f"eval: {len(ids):,} tokens; loss " + ", ".join(f"{k} {v:.6f}" for k, v in losses.items()) +
          f", torch ({streams} streams) {tlm.score_stream(ids, streams, 256) / n_targets:.6f}")

    # name -> a function that does the work and returns how many tokens it made or scored
    jobs = {}
    for name, (sm, ev) in impls.items():
        jobs[f"sample1/{name}"] = lambda sm=sm: charrnn_sample(sm, params, config, vocab, 1, args.length1, 0)
        jobs[f"sample64/{name}"] = lambda sm=sm: charrnn_sample(sm, params, config, vocab, 64, args.length64, 0)
        jobs[f"eval/{name}"] = lambda ev=ev: (ev.score_stream(params, config, ids), n_targets)[1]
    jobs["sample1/torch"] = lambda: tlm.sample(1, args.length1 // 8, 0, start)
    jobs["sample64/torch"] = lambda: tlm.sample(64, args.length64, 0, start)
    jobs["eval/torch"] = lambda: (tlm.score_stream(ids, streams, 256), n_targets)[1]
    jobs["train/now"] = lambda: (train_steps(), train_chars)[1]

    rates = {k: [] for k in jobs}
    foreign = []
    for rnd in range(args.rounds + 1):  # round 0 warms up
        for name, job in jobs.items():
            wait_for_quiet()  # start each measurement when other processes leave the CPUs alone
            elapsed, share, made = timed_with_load(job)
            if rnd:
                rates[name].append(made / elapsed)
                foreign.append(share)
    med = {k: statistics.median(v) for k, v in rates.items()}

    cols = list(impls) + ["torch"]
    print(f"\nmedians of {args.rounds} rounds, tokens per second (ratios: now / other)")
    header = "| measurement        | " + " | ".join(f"{c:>10}" for c in cols) + " | " + \
        " | ".join(f"{'now/' + c:>10}" for c in cols if c != "now") + " |"
    print(header)
    print("|" + "-" * (len(header) - 2) + "|")
    for label, key in (("sample, 1 stream", "sample1"), ("sample, 64 streams", "sample64"), ("eval", "eval")):
        values = [med[f"{key}/{c}"] for c in cols]
        ratios = [med[f"{key}/now"] / med[f"{key}/{c}"] for c in cols if c != "now"]
        print(f"| {label:<18} | " + " | ".join(f"{v:>10,.0f}" for v in values) + " | " +
              " | ".join(f"{r:>10.2f}" for r in ratios) + " |")
    print(f"| {'train step':<18} | {med['train/now']:>10,.0f} |")
    print(f"\nother processes used a median {statistics.median(foreign):.0%} (max {max(foreign):.0%}) of the "
          f"machine during the measurements")
    print("eval per character vs training: " + ", ".join(
        f"{name} {med[f'eval/{name}'] / med['train/now']:.2f}x" for name in impls))


if __name__ == "__main__":
    main()
