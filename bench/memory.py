"""Peak memory of a training run, and preparation throughput, as the corpus grows (10 MB to 1 GB).

A benchmark, not a test. For each corpus size it writes a text file of
tinyshakespeare (bench/common.py's corpus) repeated, each copy with its
letters permuted by a seeded permutation (so no two copies are alike, while
the vocabulary stays the same), then measures

- preparation alone, in a fresh process: `textfile.scan` and
  `prepare.prepare_data` of the file as `charrnn train` runs them (read in
  chunks, vocabulary, ids written), its wall time (throughput in MB/s of the
  file) and how far its peak resident set grows (VmHWM);
- prepare + train: `charrnn train big.txt --max-steps 20 --hidden 64 ...`, a
  fresh run: reading, vocabulary, encoding and writing the ids, then training.
  Its peak resident set size is ru_maxrss from wait4 (the child's own figure);
  beside it, the largest resident set seen while it trains (VmRSS from
  /proc/PID/status, read every few milliseconds from the moment the run's log
  holds its first step until the process ends);
- train only: `charrnn train --resume RUN --max-steps 40`, which trains on the
  memory-mapped ids alone.

It prints one line per size, and the ratio of the largest corpus's figures to
the smallest's (the target: a 1 GB corpus's whole run at most 1.25x a 10 MB
one's, and preparation at 30 MB/s or more). Linux only. It checks the free disk
space first (a size needs about twice its corpus) and deletes each size's
files once it is measured.

    python bench/memory.py                       # 10 MB, 100 MB and 1 GB
    python bench/memory.py --sizes 10 50 --keep

Files go to a temporary directory (or --dir), removed afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import CORPUS  # this directory is on sys.path when the script runs

TRAIN_ARGS = ["--hidden", "64", "--embed", "32", "--layers", "1", "--batch-size", "32", "--seq-len", "64",
              "--eval-every", "10", "--eval-tokens", "20000", "--log-every", "1", "--quiet"]


def make_corpus(path: str, megabytes: int, seed: int = 0) -> int:
    """Write about `megabytes` MB of tinyshakespeare copies, each with its letters permuted; returns the bytes."""
    with open(CORPUS, "rb") as f:
        base = f.read()
    rng = np.random.default_rng(seed)
    lower, upper = bytes(range(97, 123)), bytes(range(65, 91))
    target = megabytes * 1_000_000
    written = 0
    with open(path, "wb") as f:
        while written < target:
            perm = rng.permutation(26)
            table = bytes.maketrans(lower + upper, bytes(lower[i] for i in perm) + bytes(upper[i] for i in perm))
            chunk = base.translate(table)[: target - written]
            f.write(chunk)
            written += len(chunk)
    return written


# Prepares a corpus file as `charrnn train` does, in this fresh process; prints seconds and VmHWM growth.
PREPARE = """
import sys, time
from charrnn import api
from charrnn.runs import prepare
from charrnn.files import textfile
from charrnn.files.config import TrainConfig
def peak():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0]) * 1024
before = peak()
start = time.perf_counter()
tconfig = TrainConfig(batch_size=32, seq_len=64)
text = api._read(sys.argv[1], "strict", tconfig)
prepare.prepare_data(sys.argv[2], text, None, tconfig)
print(time.perf_counter() - start, peak() - before)
"""


def prepare_only(corpus: str, out: str) -> tuple[float, float]:
    """(seconds, peak resident set growth in MB) of preparing corpus into the run directory out."""
    done = subprocess.run([sys.executable, "-c", PREPARE, corpus, out], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"preparing {corpus} failed: {done.stderr.strip()}")
    seconds, growth = done.stdout.split()
    return float(seconds), int(growth) / 1e6


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


def _cpu_name() -> str:
    """The CPU's model name, family and model (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        return f"{info['model name']}, family {info['cpu family']} model {info['model']}"
    except (OSError, KeyError, ValueError):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000], help="corpus sizes in MB")
    parser.add_argument("--dir", default=None, help="where to write corpora and runs")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    opts = parser.parse_args()

    root = opts.dir or tempfile.mkdtemp(prefix="charrnn-memory-")
    os.makedirs(root, exist_ok=True)
    free = shutil.disk_usage(root).free
    need = 2.5 * max(opts.sizes) * 1e6
    if free < need:
        raise SystemExit(f"{root}: {free / 1e9:.1f} GB free, the largest size needs about {need / 1e9:.1f} GB")
    print(f"{root}: {free / 1e9:.1f} GB free; {os.cpu_count()} CPUs; {_cpu_name()}")
    results = []
    try:
        baseline = peak_rss_mb(["--version"])[0]
        print(f"python + charrnn import: peak RSS {baseline:7.1f} MB")
        for mb in opts.sizes:
            corpus = os.path.join(root, f"corpus-{mb}mb.txt")
            run = os.path.join(root, f"run-{mb}mb")
            shutil.rmtree(run, ignore_errors=True)
            size = make_corpus(corpus, mb)
            seconds, growth = prepare_only(corpus, os.path.join(root, f"prepare-{mb}mb"))
            shutil.rmtree(os.path.join(root, f"prepare-{mb}mb"), ignore_errors=True)
            full, steps, steps_anon = peak_rss_mb(["train", corpus, "--out", run, "--max-steps", "20", *TRAIN_ARGS],
                                                  log=os.path.join(run, "log.jsonl"))
            only = peak_rss_mb(["train", "--resume", run, "--max-steps", "40", "--quiet"])[0]
            ids = os.path.getsize(os.path.join(run, "data", "train.npy")) + \
                os.path.getsize(os.path.join(run, "data", "val.npy"))
            results.append((mb, full, only, size / 1e6 / seconds))
            print(f"{size / 1e6:7.1f} MB corpus ({ids / 1e6:7.1f} MB of ids): prepare alone {seconds:6.2f} s "
                  f"({size / 1e6 / seconds:5.1f} MB/s, peak RSS +{growth:5.1f} MB); prepare + train peak RSS "
                  f"{full:6.1f} MB (while training {steps:6.1f} MB, {steps_anon:6.1f} MB of it anonymous); "
                  f"train only (resume) peak {only:6.1f} MB", flush=True)
            if not opts.keep:
                os.remove(corpus)
                shutil.rmtree(run, ignore_errors=True)
        if len(results) > 1:
            (mb0, full0, only0, _), (mb1, full1, only1, _) = results[0], results[-1]
            print(f"{mb1} MB against {mb0} MB: prepare + train peak RSS x{full1 / full0:.3f} (target at most 1.25), "
                  f"train only x{only1 / only0:.3f}; slowest preparation {min(r[3] for r in results):.1f} MB/s "
                  f"(target at least 30)")
    finally:
        if not opts.keep and opts.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
