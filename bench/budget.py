"""What a time budget buys: best validation loss by model size, budget and corpus (issue 25's sweep).

A benchmark, not a test. Each point is one `charrnn train CORPUS --max-time M` in a subprocess, with the
model size given (--layers, --hidden) or left to the automatic settings ("auto"), every other setting
left to them (dropout, batch, schedule and evaluation cadence follow the passes the budget buys). Each
result is appended, one JSON object a line, to bench/data/budget.jsonl with the machine it ran on, its
load average, the settings the run chose, its steps, passes and speed, and why it ended. The automatic
size (files/config.py: AUTO_SIZES, TOKENS_PER_PARAM, MIN_STEPS, PARAMS_PER_TOKEN) is chosen from these records, and
tests/test_auto_settings.py holds the rule to them.

    python bench/names.py --out /tmp/names.txt
    python bench/budget.py tinyshakespeare --minutes 2 10 --sizes 2x256 2x384 2x512
    python bench/budget.py /tmp/names.txt --lines --minutes 2 10 --sizes 2x128 2x256 2x512
    python bench/budget.py tinyshakespeare --minutes 2 5 10 30 --sizes auto    # the ladder of the defaults
    python bench/budget.py default --minutes 5 --sizes auto                    # README's `charrnn train`
    python bench/budget.py --table [--ladder]                                   # what is recorded
    python bench/budget.py --plot docs/budget.png                               # loss against budget

Measure on a quiet machine: the script waits for one (bench/common.py) and records the load average
before and after each run; quote no point whose load was high. Unset OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE in its command where the machine sets them.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

from common import CORPUS, REPO, _machine_cpu_seconds, wait_for_quiet  # this directory is on sys.path

DATA = os.path.join(REPO, "bench", "data", "budget.jsonl")
# a size's extras after LAYERSxHIDDEN (or auto): a letter, then the option's value
OPTIONS = {"b": "--batch-size", "d": "--dropout", "l": "--lr", "s": "--seq-len", "t": "--threads",
           "o": "--optim", "p": "--precision", "e": "--patience",  # e0: no early stopping
           "m": "--max-epochs"}  # m8: at most 8 passes, beside the time budget
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def machine() -> dict:
    """The CPU (model name, family and model), the ISA flags that choose charrnn's kernels, the cores,
    and the OpenBLAS kernels NumPy runs."""
    info = {"cpu": "unknown", "family": None, "model": None, "isa": [], "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().split("\n\n")[0].splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info.update(cpu=fields.get("model name", "unknown"), family=fields.get("cpu family"),
                    model=fields.get("model"))
        flags = set(fields.get("flags", "").split())
        info["isa"] = [flag for flag in ISA_FLAGS if flag in flags]
    except OSError:
        pass
    info["blas"] = blas_corename()
    return info


def blas_corename() -> str:
    """The kernels of the OpenBLAS inside NumPy's wheel (its own report), or "unknown"."""
    import numpy
    for path in glob.glob(os.path.dirname(numpy.__file__) + ".libs/libscipy_openblas*"):
        try:
            corename = ctypes.CDLL(path).scipy_openblas_get_corename64_
        except (OSError, AttributeError):
            continue
        corename.restype = ctypes.c_char_p
        return "OpenBLAS " + corename().decode()
    return "unknown"


def corpus_path(name: str) -> str | None:
    """The file to train on: tinyshakespeare's (../shared/corpora), None for `default` (what `charrnn
    train` trains on without a file: the built-in python-reference), else the path given."""
    return {"tinyshakespeare": CORPUS, "default": None}.get(name, name)


def run_point(corpus: str, lines: bool, minutes: float, size: str, work: str) -> dict:
    """Train one point; returns its record (see the module docstring)."""
    name = "python-reference" if corpus_path(corpus) is None else \
        os.path.splitext(os.path.basename(corpus_path(corpus)))[0]
    run_dir = os.path.join(work, f"{name}-{size.replace('/', '_')}-{minutes:g}m")
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "charrnn", "train", *([corpus_path(corpus)] if corpus_path(corpus) else []),
           "--max-time", f"{minutes:g}m",
           "--out", run_dir, *(["--mode", "lines"] if lines else [])]
    shape, *extras = size.split("/")
    if shape != "auto":
        layers, hidden = shape.split("x")
        cmd += ["--layers", layers, "--hidden", hidden]
    for extra in extras:  # b64: --batch-size 64; d0.3: --dropout 0.3; pbf16: --precision bf16 ...
        cmd += [OPTIONS[extra[0]], extra[1:]]
    wait_for_quiet()
    load_before = os.getloadavg()[0]
    machine_before, ours_before = _machine_cpu_seconds(), _cpu_seconds()
    start = time.perf_counter()
    print("$", " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    # the CPU time of everything else on the machine while the run trained, as a share of all its cores
    foreign = (_machine_cpu_seconds() - machine_before) - (_cpu_seconds() - ours_before)
    sys.stderr.write(done.stderr)
    settings_line = re.search(r"Settings for ([\d,]+) ", done.stderr)  # the training tokens the rule saw
    from charrnn.files import layout
    from charrnn.runs import runlog
    records = runlog.read_log(os.path.join(run_dir, layout.LOG_FILE))
    evals = [r for r in records if r.get("val_loss") is not None]
    best = min(evals, key=lambda r: r["val_loss"])
    from charrnn.files import checkpoint
    _, meta = checkpoint.load_state(run_dir)
    settings = {k: meta.get("model", {}).get(k) for k in ("layers", "hidden", "embed", "dropout", "precision")}
    settings.update({k: meta.get("train", {}).get(k) for k in ("batch_size", "seq_len", "optim", "lr", "schedule",
                                                                "eval_every", "threads", "patience")})
    last = records[-1]
    return {"corpus": name, "mode": "lines" if lines else "stream", "minutes": minutes, "size": size,
            "n_tokens": int(settings_line.group(1).replace(",", "")) if settings_line else None,
            "best_val_loss": round(best["val_loss"], 4), "best_step": best["step"],
            "best_elapsed": round(best["elapsed"], 1), "steps": last["step"], "passes": round(last["epoch"], 2),
            "elapsed": round(last["elapsed"], 1), "process_seconds": round(wall, 1),
            "stopped_early": last["elapsed"] < 0.95 * minutes * 60,
            "tokens_per_sec": round(sum(r.get("chars_per_sec", 0) for r in records[-20:]) / min(20, len(records))),
            "settings": settings, "load_before": round(load_before, 2),
            "foreign_share": round(max(0.0, foreign) / ((os.cpu_count() or 1) * wall), 3),
            "load_after": round(os.getloadavg()[0], 2), "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def _cpu_seconds() -> float:
    """CPU seconds of this process and the runs it has waited for."""
    import resource
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def read_records(path: str = DATA) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def table(records: list[dict]) -> str:
    """The records as a Markdown table, by corpus, budget and size."""
    rows = ["| corpus | budget | size, batch, precision | dropout | best val loss | steps | passes | ended | tokens/s | load | others' CPU |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["corpus"], r["minutes"], r["size"])):
        s = r["settings"]
        size = f"{s['layers']}x{s['hidden']} b{s['batch_size']} {s.get('precision') or 'float32'}" + \
            (" (auto)" if r["size"] == "auto" else "")
        ended = f"early, {r['elapsed'] / 60:.1f} min" if r["stopped_early"] else "budget"
        rows.append(f"| {r['corpus']} | {r['minutes']:g} min | {size} | {s['dropout']} | {r['best_val_loss']:.4f} "
                    f"| {r['steps']:,} | {r['passes']:.1f} | {ended} | {r['tokens_per_sec']:,} "
                    f"| {r['load_before']}-{r['load_after']} | {_share(r)} |")
    return "\n".join(rows)


def latest_defaults(records: list[dict]) -> list[dict]:
    """The defaults' own runs ("auto"), the latest at each corpus, mode and budget: the defaults change,
    and the ladder is what the current ones buy."""
    latest = {}
    for r in records:  # in the order they were recorded
        if r["size"] == "auto":
            latest[r["corpus"], r["mode"], r["minutes"]] = r
    return list(latest.values())


def _share(record: dict) -> str:
    share = record.get("foreign_share")
    return "not recorded" if share is None else f"{100 * share:.1f}%"


def plot(records: list[dict], out: str) -> None:
    """Best validation loss against budget, one line per corpus and size (the defaults' ladder bold)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # the corpora measured at more than one budget: a single budget draws no line
    corpora = sorted(c for c in {r["corpus"] for r in records} if len({r["minutes"] for r in records
                                                                        if r["corpus"] == c}) > 1)
    fig, axes = plt.subplots(1, len(corpora), figsize=(5.5 * len(corpora), 4), squeeze=False)
    records = [r for r in records if r["size"] != "auto"] + latest_defaults(records)
    for ax, corpus in zip(axes[0], corpora):
        for size in sorted({r["size"] for r in records if r["corpus"] == corpus and "/" not in r["size"]}):
            runs = [r for r in records if r["corpus"] == corpus and r["size"] == size]
            xs, ys = zip(*sorted((r["minutes"], r["best_val_loss"]) for r in runs))
            s = runs[0]["settings"]
            ax.plot(xs, ys, marker="o", linewidth=3 if size == "auto" else 1,
                    label="defaults now" if size == "auto" else
                    f"{size}, batch {s['batch_size']}, {s.get('precision') or 'float32'}")
        ax.set_xticks(sorted({r["minutes"] for r in records if r["corpus"] == corpus}))
        ax.set_xlabel("budget (minutes, --max-time)")
        ax.set_ylabel("best validation loss (nats/token)")
        ax.set_title(corpus)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="?", help="a text file, tinyshakespeare (../shared/corpora), or default "
                        "(no file: the built-in corpus `charrnn train` takes)")
    parser.add_argument("--lines", action="store_true", help="train in lines mode (a names list)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[2.0])
    parser.add_argument("--sizes", nargs="+", default=["auto"], help="LAYERSxHIDDEN or auto (the defaults), then "
                        "/bBATCH /dDROPOUT /lLR /sSEQ_LEN /tTHREADS /oOPTIM /pPRECISION /ePATIENCE /mMAX_EPOCHS to set those too "
                        "(2x256/b64/d0.3, auto/pbf16)")
    parser.add_argument("--work", default="/tmp/charrnn-budget", help="where the runs are written")
    parser.add_argument("--data", default=DATA, help="the records file to append to")
    parser.add_argument("--table", action="store_true", help="print the recorded points and exit")
    parser.add_argument("--ladder", action="store_true", help="with --table: only the defaults' own runs "
                        "(the latest at each corpus and budget)")
    parser.add_argument("--plot", metavar="PNG", help="draw the recorded points and exit")
    args = parser.parse_args(argv)
    if args.table or args.plot:
        records = read_records(args.data)
        if args.ladder:
            records = latest_defaults(records)
        if args.plot:
            plot(records, args.plot)
        print(table(records))
        return
    if not args.corpus:
        parser.error("give a corpus (or --table / --plot)")
    os.makedirs(os.path.dirname(args.data), exist_ok=True)
    for minutes in args.minutes:
        for size in args.sizes:
            record = run_point(args.corpus, args.lines, minutes, size, args.work)
            with open(args.data, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            print(table([record]).splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
