"""The limits that grow with the data (issue 28): peak memory and preparation speed at 10 MB, 100 MB and 1 GB.

A benchmark, not a test: the lead runs it on a quiet machine. bench/memory.py measures char-level
stream mode on permuted Shakespeare, whose vocabulary never grows; this one generates text whose
vocabulary grows as real text's does, and measures every path a large corpus takes:

- the corpus: words drawn from a Zipf law over an open vocabulary (`--zipf`, 1.3 by default: rank r
  has probability proportional to r**-1.3, with no largest rank, so new words keep appearing: the
  distinct words grow about as N**(1/1.3), as Heaps' law has it), each rank spelled as syllables;
  lines of 3 to 24 words (about 60 characters), a blank line between paragraphs; an ASCII variant and
  an accented one (about a word in four carries an accented letter: é, ü, ñ, ø, ç, ...);
- preparation alone (`prepare.prepare_data` of the file as `charrnn train` reads it), in a fresh
  process, for char and word level in stream and lines mode and each variant: seconds (MB/s of the
  file), how far the peak resident set grew, the vocabulary reached (word level: the distinct words
  the counts kept, and the vocabulary's size);
- whole runs, `charrnn train FILE --max-steps 10` of a tiny model: char stream, word stream (no
  --max-vocab: the default cap, 10,000 words), char lines; then `sample --novelty` on the char stream run (its index
  built: the external sort);
- the read-whole paths that remain or were removed: `eval FILE` and `annotate FILE --max-chars 2000`
  with the char model; a classifier's labelled file (`label<TAB>line`, `--task classify`) and a
  tagger's JSON Lines file (`--task tag`), each trained for 10 steps.

Every figure is the child's own peak resident set, VmHWM read from /proc/PID/status by the child itself
as it exits (a wrapper registers it with atexit), never ru_maxrss of a forked child (which can carry
its parent's high-water mark). Linux only. For each path it prints one line per size, then the ratio
of the largest size's peak to the smallest's (the targets: at most 1.25 for every whole run and for
--novelty; preparation at least 30 MB/s in every mode on both variants).

    python bench/limits.py                     # 10 MB, 100 MB and 1 GB (needs about 8 GB of disk at 1 GB)
    python bench/limits.py --max-mb 100        # stop at 100 MB
    python bench/limits.py --sizes 1 --only prepare  # a smoke test

Files go to a temporary directory (or --dir), removed afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--layers", "1", "--hidden", "32", "--embed", "16", "--batch-size", "8", "--seq-len", "32",
        "--max-steps", "10", "--eval-every", "10", "--eval-tokens", "2000", "--quiet"]
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "an", "el", "is", "or", "th", "st", "re", "de",
             "ma", "po", "li", "gu", "be", "co", "fa", "hu", "ja", "we", "zi", "ye", "qu", "xo", "ni", "to"]
ACCENTED = str.maketrans("aeinouc", "áéîñøüç")
PATHS = ("prepare", "runs", "novelty", "read", "tasks")


# ---------------------------------------------------------------- the corpus


def spell(rank: int) -> str:
    """A word for a rank: its base-32 digits as syllables (every rank its own word)."""
    out = []
    while True:
        out.append(SYLLABLES[rank & 31])
        rank >>= 5
        if not rank:
            return "".join(out)


class Words:
    """Words of ranks, spelled once each (a cache of the first 2**20 ranks; rarer ones are spelled anew)."""

    def __init__(self, accented: bool):
        self.accented = accented
        self.cache = [self.word(r) for r in range(1 << 20)]

    def word(self, rank: int) -> str:
        w = spell(rank)
        return w.translate(ACCENTED) if self.accented and rank % 4 == 1 else w

    def __getitem__(self, rank: int) -> str:
        return self.cache[rank] if rank < len(self.cache) else self.word(rank)


def make_corpus(path: str, megabytes: int, accented: bool, zipf: float = 1.3, seed: int = 0,
                labels: bool = False, tags: bool = False) -> int:
    """Write about `megabytes` MB of generated text to path; returns its bytes.

    - labels: each line a classifier's example, `LABEL<TAB>text` (the label: the line's first word's rank mod 4)
    - tags: each line a tagger's JSON Lines object: its words and a tag each (the rank's parity)
    """
    rng = np.random.default_rng(seed)
    words = Words(accented)
    target = megabytes * 1_000_000
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            ranks = rng.zipf(zipf, 50_000) - 1
            lengths = rng.integers(3, 25, 50_000 // 3)
            lines, at = [], 0
            for n in lengths.tolist():
                if at + n > len(ranks):
                    break
                chunk = ranks[at:at + n].tolist()
                at += n
                text = " ".join(words[r] for r in chunk)
                if labels:
                    text = f"L{chunk[0] % 4}\t{text}"
                elif tags:
                    text = json.dumps({"tokens": [words[r] for r in chunk], "tags": [f"T{r % 2}" for r in chunk]},
                                      ensure_ascii=False)
                lines.append(text)
                if not (labels or tags) and rng.random() < 0.1:
                    lines.append("")  # a paragraph ends
            block = "\n".join(lines) + "\n"
            f.write(block)
            written += len(block.encode("utf-8"))
    return written


# ---------------------------------------------------------------- measuring a child


# Runs the command line (or a preparation) in this process and writes its VmHWM at exit to argv[1] (the
# command line ends with os._exit, which skips atexit: that is wrapped too).
WRAP = """
import atexit, os, sys
PEAK_FILE = sys.argv[1]
def hwm():
    with open("/proc/self/status") as f:
        peak = int(f.read().split("VmHWM:")[1].split()[0]) * 1024
    with open(PEAK_FILE, "w") as out:
        out.write(str(peak))
atexit.register(hwm)
_exit = os._exit
def exit_after_hwm(code):
    sys.stdout.flush()
    hwm()
    _exit(code)
os._exit = exit_after_hwm
what, args = sys.argv[2], sys.argv[3:]
if what == "prepare":
    import json
    from charrnn import api
    from charrnn.runs import prepare
    from charrnn.files import textfile
    from charrnn.files.config import TrainConfig
    corpus, out, mode, level = args
    tc = TrainConfig(batch_size=8, seq_len=32, mode=mode, level=level)
    text = api._read(corpus, "strict", tc)
    s = textfile.scan(text, level, mode)
    vocab = prepare.prepare_data(out, text, None, tc)
    print(json.dumps({"vocab": vocab.size, "counted": len(s.counts.as_dict())}))
else:
    sys.argv = ["charrnn", *args]
    from charrnn.cli import main
    main()
"""


def measure(what: str, args: list[str], root: str) -> tuple[float, float, str]:
    """(seconds, peak resident set in MB, stdout) of a fresh process running `charrnn ARGS` (what "cli") or a
    preparation (what "prepare"); SystemExit when it fails."""
    peak_file = os.path.join(root, "peak")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if os.path.exists(peak_file):
        os.remove(peak_file)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAP, peak_file, what, *map(str, args)], capture_output=True,
                          text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{what} {' '.join(map(str, args))} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    with open(peak_file) as f:
        peak = int(f.read()) / 1e6
    return seconds, peak, done.stdout


# ---------------------------------------------------------------- the measurements


def prepare_rows(root: str, corpora: dict, mb: int) -> list[tuple]:
    rows = []
    for variant, (path, size) in corpora.items():
        for mode in ("stream", "lines"):
            for level in ("char", "word"):
                out = os.path.join(root, "prep")
                seconds, peak, stdout = measure("prepare", [path, out, mode, level], root)
                got = json.loads(stdout.strip().splitlines()[-1])
                shutil.rmtree(out, ignore_errors=True)
                rows.append((f"prepare {level} {mode} {variant}", mb, seconds, peak,
                             f"{size / 1e6 / seconds:6.1f} MB/s, vocabulary {got['vocab']:,} "
                             f"({got['counted']:,} distinct tokens counted)"))
    return rows


def run_rows(root: str, corpora: dict, mb: int, paths: set) -> list[tuple]:
    rows = []
    path, size = corpora["ascii"]
    char_run = os.path.join(root, "run-char")
    if paths & {"runs", "novelty", "read"}:
        seconds, peak, _ = measure("cli", ["train", path, "--out", char_run, *TINY], root)
        rows.append(("train char stream", mb, seconds, peak, ""))
    if "runs" in paths:
        for name, extra in (("word stream", ["--level", "word"]), ("char lines", ["--mode", "lines"])):
            run = os.path.join(root, "run-other")
            seconds, peak, _ = measure("cli", ["train", path, "--out", run, *extra, *TINY], root)
            rows.append((f"train {name}", mb, seconds, peak, "default --max-vocab" if "word" in name else ""))
            shutil.rmtree(run, ignore_errors=True)
    if "novelty" in paths:
        args = ["sample", "-c", char_run, "-n", "3", "--length", "200", "--seed", "1", "--novelty"]
        seconds, peak, _ = measure("cli", args, root)
        rows.append(("sample --novelty (index built)", mb, seconds, peak, ""))
        seconds, peak, _ = measure("cli", args, root)
        rows.append(("sample --novelty (index read)", mb, seconds, peak, ""))
    if "read" in paths:
        seconds, peak, _ = measure("cli", ["eval", path, "-c", char_run, "-q"], root)
        rows.append(("eval FILE", mb, seconds, peak, f"{size / 1e6 / seconds:6.1f} MB/s"))
        out = os.path.join(root, "page.html")
        seconds, peak, _ = measure("cli", ["annotate", path, "-c", char_run, "--max-chars", "2000", "--out", out], root)
        rows.append(("annotate FILE --max-chars 2000", mb, seconds, peak, ""))
    shutil.rmtree(char_run, ignore_errors=True)
    if "tasks" in paths:
        for task, kind in (("classify", "labels"), ("tag", "tags")):
            file = os.path.join(root, f"{task}.txt")
            bytes_ = make_corpus(file, mb, False, labels=kind == "labels", tags=kind == "tags")
            run = os.path.join(root, f"run-{task}")
            level = ["--level", "word"] if task == "tag" else []
            seconds, peak, _ = measure("cli", ["train", file, "--task", task, *level, "--out", run, *TINY], root)
            rows.append((f"train --task {task} ({kind} file)", mb, seconds, peak, f"{bytes_ / 1e6:.0f} MB file"))
            shutil.rmtree(run, ignore_errors=True)
            os.remove(file)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000], help="corpus sizes in MB")
    parser.add_argument("--max-mb", type=int, default=None, help="leave out the sizes above this (100: stop at 100 MB)")
    parser.add_argument("--only", nargs="+", choices=PATHS, default=list(PATHS), help="which paths to measure")
    parser.add_argument("--zipf", type=float, default=1.3, help="the word law's exponent (larger: fewer new words)")
    parser.add_argument("--dir", default=None, help="where to write corpora and runs")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    opts = parser.parse_args()
    sizes = [mb for mb in opts.sizes if opts.max_mb is None or mb <= opts.max_mb]
    paths = set(opts.only)

    root = opts.dir or tempfile.mkdtemp(prefix="charrnn-limits-")
    os.makedirs(root, exist_ok=True)
    free = shutil.disk_usage(root).free
    need = 8 * max(sizes) * 1e6
    if free < need:
        raise SystemExit(f"{root}: {free / 1e9:.1f} GB free, the largest size needs about {need / 1e9:.1f} GB")
    print(f"{root}: {free / 1e9:.1f} GB free; {os.cpu_count()} CPUs; python {sys.version.split()[0]}", flush=True)
    table = []
    try:
        for mb in sizes:
            corpora = {}
            for variant in ("ascii", "accented") if "prepare" in paths else ("ascii",):
                path = os.path.join(root, f"corpus-{mb}mb-{variant}.txt")
                started = time.perf_counter()
                corpora[variant] = (path, make_corpus(path, mb, variant == "accented", opts.zipf))
                print(f"# wrote {corpora[variant][1] / 1e6:.1f} MB ({variant}) in {time.perf_counter() - started:.0f} s",
                      flush=True)
            rows = (prepare_rows(root, corpora, mb) if "prepare" in paths else []) + run_rows(root, corpora, mb, paths)
            for name, size, seconds, peak, note in rows:
                print(f"{name:42s} {size:6d} MB  {seconds:8.2f} s  peak RSS {peak:8.1f} MB  {note}", flush=True)
            table += rows
            if not opts.keep:
                for path, _ in corpora.values():
                    os.remove(path)
        if len(sizes) > 1:
            print(f"\n{sizes[-1]} MB against {sizes[0]} MB, peak RSS (target at most 1.25 for whole runs and "
                  f"--novelty; preparation at least 30 MB/s):")
            for name in dict.fromkeys(row[0] for row in table):
                first = next(r for r in table if r[0] == name and r[1] == sizes[0])
                last = next(r for r in table if r[0] == name and r[1] == sizes[-1])
                print(f"  {name:42s} x{last[3] / first[3]:.3f}")
    finally:
        if not opts.keep and opts.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
