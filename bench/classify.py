"""The classifier against a bag-of-characters logistic regression, on a corpus every Python carries.

A benchmark, not a test. Builds a labelled corpus from the running Python:
`prose` lines of its language reference (pydoc_data.topics: unindented lines
of at least four words, no `>>>`), `code` lines of its standard library's .py
files (no comments, no lines inside multi-line strings, where docstrings
live). Both are stripped of surrounding whitespace, so indentation gives
nothing away; duplicates go, the classes are balanced, and a seeded 20% is
held out for testing. Then:

- the baseline: multinomial logistic regression on each line's character
  frequencies (every character of the training lines, one feature each),
  written here in NumPy, full-batch Adam with a small L2 penalty;
- `charrnn train train.tsv --task classify --max-time M` for each variant,
  then `charrnn eval test.tsv --json`.

    python bench/classify.py                       # 2 minutes a variant
    python bench/classify.py --minutes 1 --per-class 2000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tokenize

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = {  # name -> extra `charrnn train` options: pooling x directions, and batches without buckets
    "lstm, mean pooling": [],
    "lstm, last state": ["--pool", "last"],
    "lstm, bidirectional, mean pooling": ["--bidirectional"],
    "lstm, bidirectional, last state": ["--bidirectional", "--pool", "last"],
    "lstm, mean pooling, shuffled batches (no buckets)": ["--no-buckets"],
}


def prose_lines():
    from pydoc_data.topics import topics

    for text in topics.values():
        for line in text.split("\n"):
            if line and not line[0].isspace() and ">>>" not in line and len(line.split()) >= 4:
                yield line.strip()


def code_lines():
    """Lines of code from the standard library, without comments and the insides of multi-line strings."""
    root = sysconfig.get_paths()["stdlib"]
    for directory, _, files in sorted(os.walk(root)):
        if "test" in directory or "site-packages" in directory:
            continue
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    source = f.read()
                tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
            except (OSError, UnicodeDecodeError, SyntaxError, tokenize.TokenError):
                continue
            skip = set()
            for tok in tokens:
                if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                    skip.update(range(tok.start[0], tok.end[0] + 1))
            lines = source.split("\n")
            for number, line in enumerate(lines, start=1):
                stripped = line.strip()
                if number not in skip and stripped and not stripped.startswith("#") and len(stripped) >= 8:
                    yield stripped


def build_corpus(out, per_class, seed):
    rng = np.random.default_rng(seed)
    pools = {label: sorted({line for line in source if "\t" not in line and len(line) <= 200})
             for label, source in (("prose", prose_lines()), ("code", code_lines()))}
    n = min(per_class, *map(len, pools.values()))  # balanced: as many lines of each
    examples = []
    for label, lines in pools.items():
        examples += [(label, lines[i]) for i in rng.choice(len(lines), size=n, replace=False)]
    order = rng.permutation(len(examples))
    n_test = len(examples) // 5
    test, train = [examples[i] for i in order[:n_test]], [examples[i] for i in order[n_test:]]
    for name, part in (("train.tsv", train), ("test.tsv", test)):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.writelines(f"{label}\t{text}\n" for label, text in part)
    return train, test


def bag_of_characters_baseline(train, test, steps=500, lr=0.05, l2=1e-4):
    """Test accuracy of a multinomial logistic regression on character frequencies."""
    chars = sorted({c for _, text in train for c in text})
    index = {c: i for i, c in enumerate(chars)}
    labels = sorted({label for label, _ in train})

    def features(part):
        X = np.zeros((len(part), len(chars) + 1))  # + the line's length, scaled
        for row, (_, text) in enumerate(part):
            for c in text:
                if c in index:
                    X[row, index[c]] += 1
            X[row, :-1] /= max(len(text), 1)
            X[row, -1] = len(text) / 100
        return X, np.array([labels.index(label) for label, _ in part])

    X, y = features(train)
    mean, std = X.mean(axis=0), X.std(axis=0) + 1e-8
    X = (X - mean) / std
    W, b = np.zeros((X.shape[1], len(labels))), np.zeros(len(labels))
    m = [np.zeros_like(W), np.zeros_like(b)]
    v = [np.zeros_like(W), np.zeros_like(b)]
    for t in range(1, steps + 1):  # full-batch Adam on the mean cross-entropy
        z = X @ W + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        grads = [X.T @ p / len(y) + l2 * W, p.mean(axis=0)]
        for param, g, mi, vi in zip((W, b), grads, m, v):
            mi *= 0.9
            mi += 0.1 * g
            vi *= 0.999
            vi += 0.001 * g * g
            param -= lr * (mi / (1 - 0.9 ** t)) / (np.sqrt(vi / (1 - 0.999 ** t)) + 1e-8)
    Xt, yt = features(test)
    predicted = (((Xt - mean) / std) @ W + b).argmax(axis=1)
    train_acc = float(((X @ W + b).argmax(axis=1) == y).mean())
    return float((predicted == yt).mean()), train_acc


def charrnn(out, minutes, name, extra):
    run = os.path.join(out, name.replace(", ", "-").replace(" ", "_"))
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "charrnn", "train", os.path.join(out, "train.tsv"), "--task", "classify",
           "--max-time", f"{minutes}m", "--out", run, "--eval-every", "100", "-q", *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    result = subprocess.run([sys.executable, "-m", "charrnn", "eval", os.path.join(out, "test.tsv"),
                             "-c", run, "--json"], check=True, capture_output=True, text=True)
    steps = [json.loads(line) for line in open(os.path.join(run, "log.jsonl"))][-1]["step"]
    return json.loads(result.stdout), steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2)
    parser.add_argument("--per-class", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", default=os.path.join(HERE, "out", "classify"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    train, test = build_corpus(args.out, args.per_class, args.seed)
    print(f"{len(train):,} training and {len(test):,} test lines in {args.out}", flush=True)
    baseline, baseline_train = bag_of_characters_baseline(train, test)
    rows = [f"| bag-of-characters logistic regression (NumPy) | {baseline:.4f} | | (train {baseline_train:.4f}) |"]
    print(rows[-1], flush=True)
    for name in args.variants:
        m, steps = charrnn(args.out, args.minutes, name, VARIANTS[name])
        rows.append(f"| charrnn {name}, {args.minutes:g} min | {m['accuracy']:.4f} | {m['macro_f1']:.4f} "
                    f"| {steps:,} steps, loss {m['loss']:.4f} |")
        print(rows[-1], flush=True)
    table = "\n".join([f"Test accuracy on {len(test):,} held-out lines (prose from pydoc_data.topics against "
                       f"standard-library code, {len(train):,} training lines)", "",
                       "| model | accuracy | macro-F1 | notes |", "|---|---|---|---|", *rows])
    print(table)
    with open(os.path.join(args.out, "classify.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
