"""Peak memory of a training run and how it grows with corpus size.

A benchmark, not a test. For each corpus size it generates a text file of
English-like words (seeded, so every run sees the same text), then measures
the peak resident set size (ru_maxrss from wait4, the child's own figure) of

- prepare + train: `charrnn train big.txt --max-steps 20 --hidden 64 ...`, a
  fresh run: reading, vocabulary, encoding and writing the ids, then training;
  and, of the same run, the largest resident set seen while it trains (VmRSS
  from /proc/PID/status, read by this script every few milliseconds from the
  moment the run's log holds its first step until the process ends): what
  training holds once the corpus is prepared;
- train only: `charrnn train --resume RUN --max-steps 40`, which trains on the
  memory-mapped ids alone (what the spec bounds: no text held as a str).

It prints one line per size, with the size of the encoded id array beside it,
and the growth from the smallest to the largest corpus. Linux only.

    python bench/memory.py                 # 10 MB and 100 MB
    python bench/memory.py --sizes 10 50 100 --keep

Files go to a temporary directory (or --dir), removed afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her she there been one all we their has would when if so no will "
         "more can out up who them some could into time only than other its about two may then do first "
         "any my now such like our over man me even most made after also did many before must through "
         "back years where much your way well down should because each just those people how too little "
         "state good very make world still own see men work long get here between both life being under "
         "never day same another know while last might us great old year off come since against go came "
         "right used take three ROMEO: JULIET: KING, Queen; (lord) 'tis! what? 1842 -- end.").split()

TRAIN_ARGS = ["--hidden", "64", "--embed", "32", "--layers", "1", "--batch-size", "32", "--seq-len", "64",
              "--eval-every", "10", "--eval-tokens", "20000", "--log-every", "1", "--quiet"]


def make_corpus(path: str, megabytes: int, seed: int = 0) -> int:
    """Write about `megabytes` MB of words and newlines to path; returns the size in bytes."""
    rng = np.random.default_rng(seed)
    words = np.array([w.encode() for w in WORDS], dtype=object)
    target = megabytes * 1_000_000
    written = 0
    with open(path, "wb") as f:
        while written < target:
            picks = words[rng.integers(0, len(words), 200_000)]
            breaks = rng.random(200_000) < 0.08  # a line break after about one word in twelve
            chunk = b"".join(w + (b"\n" if nl else b" ") for w, nl in zip(picks, breaks))
            chunk = chunk[: target - written]
            f.write(chunk)
            written += len(chunk)
    return written


def _resident_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) of a live process in KiB; (0, 0) once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith(("VmRSS:", "RssAnon:"))}
    except (FileNotFoundError, ProcessLookupError):
        return 0, 0
    return status.get("VmRSS", 0), status.get("RssAnon", 0)


def peak_rss_mb(args: list[str], log: str | None = None) -> tuple[float, float, float]:
    """Run `python -m charrnn ARGS`; returns (peak RSS, largest RSS while training, its anonymous part), MB.

    - log: the run's log.jsonl; once it holds a line (the first step is done), the child's
      resident set is read every 2 ms until it exits. Without it the last two figures are 0.
    Peak RSS is the child's own ru_maxrss from wait4 (KiB on Linux).
    """
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    largest = (0, 0)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps it, with its rusage, once it exits
        if pid:
            break
        training = log is not None and os.path.exists(log) and os.path.getsize(log) > 0
        if training:
            largest = max(largest, _resident_kib(proc.pid))
        time.sleep(0.002 if training else 0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"charrnn {' '.join(args)} failed ({proc.returncode}): {err.strip()}")
    return usage.ru_maxrss / 1024, largest[0] / 1024, largest[1] / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100], help="corpus sizes in MB")
    parser.add_argument("--dir", default=None, help="where to write corpora and runs")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    opts = parser.parse_args()

    root = opts.dir or tempfile.mkdtemp(prefix="charrnn-memory-")
    os.makedirs(root, exist_ok=True)
    results = []
    try:
        baseline = peak_rss_mb(["--version"])[0]
        print(f"python + charrnn import: peak RSS {baseline:7.1f} MB")
        for mb in opts.sizes:
            corpus = os.path.join(root, f"corpus-{mb}mb.txt")
            run = os.path.join(root, f"run-{mb}mb")
            shutil.rmtree(run, ignore_errors=True)
            size = make_corpus(corpus, mb)
            full, steps, steps_anon = peak_rss_mb(["train", corpus, "--out", run, "--max-steps", "20", *TRAIN_ARGS],
                                                  log=os.path.join(run, "log.jsonl"))
            only = peak_rss_mb(["train", "--resume", run, "--max-steps", "40", "--quiet"])[0]
            ids = os.path.getsize(os.path.join(run, "data", "train.npy")) + \
                os.path.getsize(os.path.join(run, "data", "val.npy"))
            results.append((mb, full, steps, only))
            print(f"{size / 1e6:6.1f} MB corpus ({ids / 1e6:6.1f} MB of ids): prepare + train peak RSS "
                  f"{full:7.1f} MB (during its training steps {steps:6.1f} MB, {steps_anon:6.1f} MB of it anonymous, "
                  f"the rest mapped file pages); "
                  f"train only (resume) peak {only:7.1f} MB")
        if len(results) > 1:
            (mb0, full0, steps0, only0), (mb1, full1, steps1, only1) = results[0], results[-1]
            print(f"growth {mb0} MB -> {mb1} MB corpus: prepare + train {full1 - full0:+.1f} MB, "
                  f"its training steps {steps1 - steps0:+.1f} MB, train only {only1 - only0:+.1f} MB")
    finally:
        if not opts.keep and opts.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
