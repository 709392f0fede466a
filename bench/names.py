"""A names-like corpus of our own: one invented given name per line, like makemore's names.txt.

Names are built from syllables (an onset, a vowel group, an optional coda) with
weights chosen by hand, plus a few endings that given names often have; every
line is distinct and lowercase. Nothing is downloaded and no list of real
names is copied: the same seed gives the same file, byte for byte.

Invented names have a low entropy that a small model reaches in a minute, so
they cannot show what a longer budget buys. `--real` writes real ones instead:
the ASCII given names and family names of every locale of the Faker package
(installed separately, a benchmark's dependency, never charrnn's), lowercase,
distinct and sorted, then shuffled by the seed.

    python bench/names.py > names.txt                       # 30,000 lines
    python bench/names.py --real > realnames.txt            # about 29,000 real names (pip install faker)
    charrnn train names.txt --mode lines --max-time 2m      # docs/performance.md, "Names"
    python bench/names.py --report checkpoints/names        # best val loss, and the evaluations without a new best
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

ONSETS = {"": 6, "b": 3, "br": 1, "c": 2, "ch": 1, "d": 4, "f": 1, "g": 2, "gr": 1, "h": 2, "j": 3, "k": 3,
          "kr": 1, "l": 5, "m": 5, "n": 4, "p": 1, "r": 5, "s": 4, "sh": 2, "st": 1, "t": 4, "th": 1, "tr": 1,
          "v": 2, "w": 1, "y": 1, "z": 2}
VOWELS = {"a": 12, "e": 9, "i": 7, "o": 5, "u": 2, "y": 1, "ai": 1, "ay": 1, "ea": 1, "ee": 1, "ia": 2, "ie": 1,
          "io": 1, "oa": 1, "ou": 1}
CODAS = {"": 14, "l": 3, "n": 5, "r": 3, "s": 2, "th": 1, "m": 1, "nd": 1, "rt": 1, "x": 1, "ck": 1}
ENDINGS = {"": 20, "a": 6, "ah": 2, "ie": 2, "y": 3, "en": 2, "on": 2, "er": 2, "lyn": 1, "son": 1, "ette": 1,
           "iel": 1, "ina": 1, "ley": 1, "ric": 1, "ton": 1}
SYLLABLES = {1: 2, 2: 6, 3: 3, 4: 1}


def pick(rng: random.Random, table: dict) -> str:
    return rng.choices(list(table), weights=list(table.values()))[0]


def name(rng: random.Random) -> str:
    parts = []
    for _ in range(int(pick(rng, {str(k): v for k, v in SYLLABLES.items()}))):
        parts.append(pick(rng, ONSETS) + pick(rng, VOWELS) + pick(rng, CODAS))
    text = "".join(parts) + pick(rng, ENDINGS)
    # no tripled letters, as in real spelling
    out = []
    for ch in text:
        if len(out) >= 2 and out[-1] == out[-2] == ch:
            continue
        out.append(ch)
    return "".join(out)


def names(count: int, seed: int = 0) -> list[str]:
    """count distinct names, in the order first drawn."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < count:
        candidate = name(rng)
        if 2 <= len(candidate) <= 15:
            seen.setdefault(candidate)
    return list(seen)


def report(run_dir: str) -> str:
    """One line about a run from its log.jsonl: the best validation loss, when it came, how the run ended,
    and the longest stretch of evaluations without a new best before the best (what --patience must outlast)."""
    with open(os.path.join(run_dir, "log.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in records if r.get("val_loss") is not None]
    best, best_step, best_time, streak, longest = float("inf"), None, None, 0, 0
    for r in evals:
        if r["val_loss"] < best:
            longest = max(longest, streak)
            best, best_step, best_time, streak = r["val_loss"], r["step"], r["elapsed"], 0
        else:
            streak += 1
    if best_step is None:
        return f"{run_dir}: no validation losses logged"
    last = records[-1]
    return (f"{run_dir}: best val loss {best:.4f} nats at step {best_step} ({best_time:.0f}s); "
            f"{len(evals)} evaluations, ended at step {last['step']} ({last['elapsed']:.0f}s) "
            f"with {streak} evaluations since the best; longest stretch without a new best before it: {longest}")


def real_names(seed: int = 0) -> list[str]:
    """The distinct ASCII given and family names of Faker's locales, lowercase, in an order shuffled by seed."""
    import importlib
    import faker
    folder = os.path.join(os.path.dirname(faker.__file__), "providers", "person")
    found = set()
    for locale in sorted(os.listdir(folder)):
        if locale.startswith("_") or locale.endswith(".py"):
            continue
        provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        for attr in ("first_names", "first_names_male", "first_names_female", "first_names_nonbinary", "last_names"):
            table = getattr(provider, attr, None)
            if isinstance(table, (list, tuple, dict)):  # a dict weighs its names; some locales compute them
                found.update(n.strip().lower() for n in table if n.strip().isalpha() and n.strip().isascii())
    ordered = sorted(found)
    random.Random(seed).shuffle(ordered)
    return ordered


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=30_000, help="distinct names to write (default 30,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="-", help="file to write (default: stdout)")
    parser.add_argument("--report", nargs="+", metavar="RUN_DIR", help="summarize trained runs instead")
    parser.add_argument("--real", action="store_true", help="real names from the Faker package (--lines ignored)")
    args = parser.parse_args(argv)
    if args.report:
        for run_dir in args.report:
            print(report(run_dir))
        return
    text = "\n".join(real_names(args.seed) if args.real else names(args.lines, args.seed)) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
