"""The tagger against simple baselines, on two tasks built from what every Python carries.

A benchmark, not a test. Nothing is downloaded; the tasks come from the running Python:

- `syntax` (char level): each character of standard-library source is tagged with the
  kind of `tokenize` token it belongs to: name, keyword, operator, string, comment,
  number or whitespace (a character between tokens, indentation and line ends
  included). A syntax highlighter learned from characters. A sequence is a block of
  whole source lines (line ends included) of at most --block characters; whole files
  are held out for the test set, so its code was never seen.
  Baselines: the most frequent tag of each character (learned on the training
  set), and a unidirectional model of the same size, which is where the
  bidirectional one must win (a quote or `#` decides the characters after it).
- `entities` (word level, BIO): the language reference's prose (pydoc_data.topics),
  one sequence a line of at least four words, its tokens split at whitespace. The
  entities are mechanical: DOTTED, a dotted name (`os.path.join`, punctuation around
  it aside); CONST, a CONSTANT_CASE identifier (capitals, digits and underscores,
  with an underscore or at least four characters: `PYTHONPATH`, `SEEK_SET`); PEP, the
  two words `PEP` and a number (B-PEP I-PEP). Whole topics are held out.
  Baseline: a dictionary lookup, each word's most frequent tag in the training set
  (O for a word never seen).

For each task and variant: `charrnn train train.jsonl --task tag --max-time M`, then
`charrnn eval test.jsonl -c RUN --json`; the baselines are scored by the same
metrics (charrnn.core.tagger.metrics), so the figures compare like with like.

    python bench/tag.py                                 # both tasks, 2 minutes a variant
    python bench/tag.py --tasks syntax --minutes 1
    python bench/tag.py --baselines-only                # only build the data and score the baselines
"""

from __future__ import annotations

import argparse
import io
import json
import keyword
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tokenize
from collections import Counter, defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from charrnn.core import tagger  # noqa: E402

VARIANTS = {  # name -> extra `charrnn train` options
    "lstm, unidirectional": [],
    "lstm, bidirectional": ["--bidirectional"],
}

# ---------------------------------------------------------------- syntax: tokenize's token kinds per character

SYNTAX_TAGS = ("name", "keyword", "operator", "string", "comment", "number", "whitespace")


def _kind(tok) -> str | None:
    if tok.type == tokenize.NAME:
        return "keyword" if keyword.iskeyword(tok.string) else "name"
    if tok.type == tokenize.OP:
        return "operator"
    if tok.type == tokenize.STRING or tokenize.tok_name[tok.type].startswith("FSTRING"):
        return "string"
    if tok.type == tokenize.COMMENT:
        return "comment"
    if tok.type == tokenize.NUMBER:
        return "number"
    return None  # NEWLINE, NL, INDENT, DEDENT, ENDMARKER: whitespace


def tag_source(source: str) -> list[list[str]] | None:
    """Each line's characters' tags (line ends included), or None when tokenize refuses the file."""
    lines = source.splitlines(keepends=True)
    tags = [["whitespace"] * len(line) for line in lines]
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            kind = _kind(tok)
            if kind is None:
                continue
            (r0, c0), (r1, c1) = tok.start, tok.end
            for r in range(r0, r1 + 1):  # rows are 1-based
                first = c0 if r == r0 else 0
                last = c1 if r == r1 else len(lines[r - 1])
                tags[r - 1][first:last] = [kind] * (last - first)
    except (tokenize.TokenError, SyntaxError, IndentationError, IndexError):
        return None
    return tags


def source_files():
    root = sysconfig.get_paths()["stdlib"]
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        if "test" in directory or "site-packages" in directory or "idle_test" in directory:
            continue
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(directory, name)


def syntax_examples(path: str, block: int):
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read().replace("\r\n", "\n")
    except (OSError, UnicodeDecodeError):
        return
    tags = tag_source(source)
    if tags is None:
        return
    chars, kinds = [], []
    for line, line_tags in zip(source.splitlines(keepends=True), tags):
        if len(line) > block:
            continue
        if len(chars) + len(line) > block and chars:
            yield "".join(chars), kinds
            chars, kinds = [], []
        chars.extend(line)
        kinds.extend(line_tags)
    if chars and any(c != "\n" for c in chars):
        yield "".join(chars), kinds


def build_syntax(out, files: int, block: int, seed: int):
    rng = np.random.default_rng(seed)
    paths = list(source_files())
    paths = [paths[i] for i in sorted(rng.choice(len(paths), size=min(files, len(paths)), replace=False))]
    n_test = max(1, len(paths) // 5)
    test_paths = set(paths[i] for i in rng.choice(len(paths), size=n_test, replace=False))
    parts = {"train": [], "test": []}
    for path in paths:
        parts["test" if path in test_paths else "train"] += list(syntax_examples(path, block))
    for name, part in parts.items():
        write_jsonl(os.path.join(out, f"{name}.jsonl"), [{"tokens": text, "tags": kinds} for text, kinds in part])
    return [(list(t), k) for t, k in parts["train"]], [(list(t), k) for t, k in parts["test"]]


# ---------------------------------------------------------------- entities: dotted names, constants, PEPs

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_CONST = re.compile(r"_*[A-Z][A-Z0-9]*(?:_+[A-Z0-9]+)*_*")
_STRIP = "()[]{},.;:!?\"'`*"


def entity_tags(words: list[str]) -> list[str]:
    tags = ["O"] * len(words)
    for i, word in enumerate(words):
        core = word.strip(_STRIP)
        if word == "PEP" and i + 1 < len(words) and words[i + 1].strip(_STRIP).isdigit():
            tags[i], tags[i + 1] = "B-PEP", "I-PEP"
        elif tags[i] != "O":
            continue
        elif _DOTTED.fullmatch(core):
            tags[i] = "B-DOTTED"
        elif _CONST.fullmatch(core) and ("_" in core or len(core) >= 4) and any(c.isalpha() for c in core):
            tags[i] = "B-CONST"
    return tags


def build_entities(out, seed: int):
    from pydoc_data.topics import topics

    rng = np.random.default_rng(seed)
    keys = sorted(topics)
    test_keys = set(keys[i] for i in rng.choice(len(keys), size=len(keys) // 5, replace=False))
    parts = {"train": [], "test": []}
    for key in keys:
        for line in topics[key].split("\n"):
            words = line.split()
            if line and not line[0].isspace() and ">>>" not in line and len(words) >= 4:
                parts["test" if key in test_keys else "train"].append((words, entity_tags(words)))
    for name, part in parts.items():
        write_jsonl(os.path.join(out, f"{name}.jsonl"), [{"tokens": w, "tags": t} for w, t in part])
    return parts["train"], parts["test"]


# ---------------------------------------------------------------- baselines and charrnn


def write_jsonl(path, objects):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(o, ensure_ascii=False) + "\n" for o in objects)


def most_frequent_tag_baseline(train, test) -> dict:
    """Each token's most frequent training tag (the overall most frequent one for a token never seen),
    scored by charrnn's tagger metrics: the per-character baseline of `syntax`, the dictionary lookup of
    `entities`."""
    counts: dict[str, Counter] = defaultdict(Counter)
    overall = Counter()
    for tokens, tags in train:
        for token, tag in zip(tokens, tags):
            counts[token][tag] += 1
        overall.update(tags)
    default = overall.most_common(1)[0][0]
    best = {token: c.most_common(1)[0][0] for token, c in counts.items()}
    names = sorted(overall | Counter(t for _, tags in test for t in tags))
    ix = {n: i for i, n in enumerate(names)}
    true = np.array([ix[t] for _, tags in test for t in tags])
    predicted = np.array([ix[best.get(token, default)] for tokens, _ in test for token in tokens])
    offsets = np.concatenate([[0], np.cumsum([len(tokens) for tokens, _ in test])])
    return tagger.metrics(predicted, true, offsets, names)


def charrnn(out, minutes, name, extra, level):
    run = os.path.join(out, name.replace(", ", "-").replace(" ", "_"))
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "charrnn", "train", os.path.join(out, "train.jsonl"), "--task", "tag",
           "--level", level, "--max-time", f"{minutes}m", "--out", run, "--eval-every", "100", "-q", *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    result = subprocess.run([sys.executable, "-m", "charrnn", "eval", os.path.join(out, "test.jsonl"),
                             "-c", run, "--json"], check=True, capture_output=True, text=True)
    steps = [json.loads(line) for line in open(os.path.join(run, "log.jsonl"))][-1]["step"]
    return json.loads(result.stdout), steps


def row(name, m, notes=""):
    e = m.get("entities")
    macro = float(np.mean([r["f1"] for r in m["tags"] if r["support"]]))
    return (f"| {name} | {m['accuracy']:.4f} | {macro:.4f} | "
            f"{'' if not e else format(e['f1'], '.4f')} | {notes} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=("syntax", "entities"), default=["syntax", "entities"])
    parser.add_argument("--minutes", type=float, default=2)
    parser.add_argument("--files", type=int, default=200, help="syntax: how many standard-library files")
    parser.add_argument("--block", type=int, default=256, help="syntax: the most characters of one sequence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--baselines-only", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "out", "tag"))
    args = parser.parse_args()
    tables = []
    for task in args.tasks:
        out = os.path.join(args.out, task)
        os.makedirs(out, exist_ok=True)
        if task == "syntax":
            train, test = build_syntax(out, args.files, args.block, args.seed)
            baseline, level = "most frequent tag of each character", "char"
        else:
            train, test = build_entities(out, args.seed)
            baseline, level = "dictionary lookup (each word's most frequent tag)", "word"
        n_train, n_test = sum(len(t) for t, _ in train), sum(len(t) for t, _ in test)
        print(f"{task}: {len(train):,} training sequences ({n_train:,} tokens), {len(test):,} test sequences "
              f"({n_test:,} tokens) in {out}", flush=True)
        rows = [row(baseline, most_frequent_tag_baseline(train, test))]
        print(rows[-1], flush=True)
        for name in [] if args.baselines_only else args.variants:
            m, steps = charrnn(out, args.minutes, name, VARIANTS[name], level)
            rows.append(row(f"charrnn {name}, {args.minutes:g} min", m, f"{steps:,} steps, loss {m['loss']:.4f}"))
            print(rows[-1], flush=True)
        tables.append("\n".join([f"{task}: {len(test):,} held-out sequences ({n_test:,} tokens)", "",
                                 "| model | token accuracy | macro-F1 (tags) | entity F1 | notes |",
                                 "|---|---|---|---|---|", *rows]))
    text = "\n\n".join(tables)
    print(text)
    with open(os.path.join(args.out, "tag.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
