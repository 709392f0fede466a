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

The machine is shared and noisy: each measurement starts when other processes
leave the CPUs alone (common.measure), the script reports how much of the
machine they used anyway, and it prints medians over the rounds and ratios
taken within the run. To compare two versions of charrnn, run the script in a
worktree of each.

    python bench/sample_speed.py                      # 5 rounds
    python bench/sample_speed.py --rounds 9

Needs the `torch` extra. PyTorch is limited to 2 threads, as NumPy's BLAS uses
the machine's 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np

import charrnn
from charrnn.work import evaluate, sampling
from charrnn.core import model, optim
from charrnn.step import parallel
from charrnn.tasks import lm
from charrnn.core.model import ModelConfig
from charrnn.step.runtime import keep_freed_memory
from charrnn.data.vocab import EOS, SPECIAL_TOKENS, Vocab
from common import CORPUS, blas_kernel, measure, torch_lm  # this directory is on sys.path when the script runs


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


# ---------------------------------------------------------------- charrnn


def charrnn_sample(params, config, vocab, n: int, length: int, seed: int) -> int:
    """Runs generate to the end; returns the number of tokens made."""
    made = 0
    for tokens, alive in sampling.generate(params, config, vocab, rng=np.random.default_rng(seed),
                                           num_samples=n, length=length, temperature=1.0):
        made += int(alive.sum())
    return made


def charrnn_train_steps_fn(params, config, steps: int):
    """(fn, chars): fn runs `steps` reference training steps (B 64, T 100, Adam, clip 5, as charrnn train
    runs them: two row blocks); chars they train on."""
    params = {k: v.copy() for k, v in params.items()}
    opt = optim.make_optimizer("adam", params)
    data = np.random.default_rng(3).integers(3, config.vocab_size, (64, 101))
    x, y = data[:, :-1], data[:, 1:]

    def run():
        for _ in range(steps):
            _, grads, _ = parallel.loss_and_grads(params, config, x, y, None, None, count=y.size, parts=2)
            optim.clip_grad_norm(grads, 5.0)
            opt.step(params, grads, 2e-3)

    return run, steps * x.size


# ---------------------------------------------------------------- PyTorch


def torch_sample(net, n: int, length: int, seed: int, start: int) -> int:
    """Samples n streams of up to `length` tokens one step at a time with torch.multinomial; tokens made."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    banned = torch.tensor([1, 2])  # UNK and BOS, as charrnn bans them
    made = 0
    with torch.inference_mode():
        x = torch.full((n, 1), start, dtype=torch.long)
        state = None
        alive = torch.ones(n, dtype=torch.bool)
        for _ in range(length):
            logits, state = net(x, state)
            logits = logits[:, -1]  # (n, V)
            logits[:, banned] = -float("inf")
            x = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=gen)  # (n, 1)
            made += int(alive.sum())
            alive &= x[:, 0] != EOS
            if not alive.any():
                break
    return made


def torch_score_stream(net, ids: np.ndarray, streams: int, chunk: int) -> float:
    """Total NLL, with the text cut into `streams` pieces as evaluate.score_stream cuts it."""
    import torch

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
            logits, state = net(x[:, sl], state)
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
    args = parser.parse_args()

    import torch
    torch.set_num_threads(2)
    keep_freed_memory()  # what the charrnn command does at start-up
    params, config, vocab = reference_model()
    net = torch_lm(config, params)
    ids = held_out_ids(vocab)
    start = int(vocab.encode("\n")[0])
    # several steps, so that the training figure, like eval's, times about a second of work
    train_steps, train_chars = charrnn_train_steps_fn(params, config, args.train_steps)

    n_targets = len(ids) - 1
    streams = lm.stream_count(n_targets, 128)
    print(f"charrnn {charrnn.__version__}, torch {torch.__version__}, numpy {np.__version__}; "
          f"LSTM 2x256, E 64, V {config.vocab_size}, float32; {blas_kernel()}")
    print(f"eval: {len(ids):,} tokens; loss charrnn {evaluate.score_stream(params, config, ids).loss:.6f}, "
          f"torch ({streams} streams) {torch_score_stream(net, ids, streams, 256) / n_targets:.6f}")

    # name -> a function that does the work and returns how many tokens it made or scored
    jobs = {
        "sample1/charrnn": lambda: charrnn_sample(params, config, vocab, 1, args.length1, 0),
        "sample64/charrnn": lambda: charrnn_sample(params, config, vocab, 64, args.length64, 0),
        "eval/charrnn": lambda: (evaluate.score_stream(params, config, ids), n_targets)[1],
        "sample1/torch": lambda: torch_sample(net, 1, args.length1 // 8, 0, start),
        "sample64/torch": lambda: torch_sample(net, 64, args.length64, 0, start),
        "eval/torch": lambda: (torch_score_stream(net, ids, streams, 256), n_targets)[1],
        "train/charrnn": lambda: (train_steps(), train_chars)[1],
    }
    rates = {k: [] for k in jobs}
    foreign = []
    for rnd in range(args.rounds + 1):  # round 0 warms up
        for name, job in jobs.items():
            elapsed, share, made = measure(job)
            if rnd:
                rates[name].append(made / elapsed)
                foreign.append(share)
    med = {k: statistics.median(v) for k, v in rates.items()}

    print(f"\nmedians of {args.rounds} rounds, tokens per second")
    print(f"| {'measurement':<18} | {'charrnn':>10} | {'torch':>10} | {'ratio':>6} |")
    print(f"|{'-' * 20}|{'-' * 12}|{'-' * 12}|{'-' * 8}|")
    for label, key in (("sample, 1 stream", "sample1"), ("sample, 64 streams", "sample64"), ("eval", "eval")):
        ours, theirs = med[f"{key}/charrnn"], med[f"{key}/torch"]
        print(f"| {label:<18} | {ours:>10,.0f} | {theirs:>10,.0f} | {ours / theirs:>6.2f} |")
    print(f"| {'train step':<18} | {med['train/charrnn']:>10,.0f} |")
    print(f"\nother processes used a median {statistics.median(foreign):.0%} (max {max(foreign):.0%}) of the "
          f"machine during the measurements")
    print(f"eval per character vs training: {med['eval/charrnn'] / med['train/charrnn']:.2f}x")


if __name__ == "__main__":
    main()
