"""Exact resume across processes (issue 6): N steps in one go equal k steps, a save,
and N - k steps resumed by `python -m charrnn train --resume` in a new process,
bitwise, for every parameter, optimizer slot, carried hidden state, counter,
checkpoint and logged loss; and a companion test showing that the comparison
fails when any one saved component is lost or altered.

Every process runs with BLAS pinned to one thread, so the arithmetic is the
same in all of them. The first part of each split run stops at step k through
`train(run, should_stop=...)`, exactly as a Ctrl-C does in the CLI.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from charrnn.files import checkpoint, layout
from tiny_runs import NAMES, PINNED, read_log, stream_text, untimed


def lines_text():
    return "\n".join(NAMES[:16]) + "\n"


def labelled_text():
    return "".join(f"{'short' if len(n) < 4 else 'long'}\t{n}\n" for n in NAMES[:16])


# (name, mode, model options, training options): every cell type, both modes, dropout in two.
CONFIGS = [
    ("rnn-lines", "lines", dict(cell="rnn"), dict(optim="sgd", momentum=0.9, lr=0.05)),
    ("lstm-stream-dropout", "stream", dict(cell="lstm", layers=2, dropout=0.25),
     dict(optim="adam", schedule="cosine", warmup=2)),
    ("gru-stream", "stream", dict(cell="gru", dtype="float64"), dict(optim="rmsprop", clip_value=0.5)),
    ("lstm-stream-bf16", "stream", dict(cell="lstm", layers=2, precision="bf16"), dict(optim="adam")),
    ("gru-lines-dropout", "lines", dict(cell="gru", layers=2, dropout=0.3), dict(optim="adagrad", lr=0.05)),
    ("peephole-classify-bidirectional", "classify", dict(cell="peephole", layers=2, bidirectional=True, dropout=0.2),
     dict(optim="adam", task="classify")),
]
EXTRA_STEPS = 3  # N = steps_per_epoch + EXTRA_STEPS: the run crosses one epoch boundary

# Runs, in a fresh pinned process, for each config given: the whole run of N steps and the first
# parts (k steps, then a stop request and its save) for every k; prints {name: {"steps_per_epoch",
# "n", "ks"}} as JSON. (The resumes, each in a process of its own, are what must be fresh; the
# saving side made a config's runs in one process already, and now makes several configs' runs.)
DRIVER = r"""
import json, sys
from charrnn.files import corpus
from charrnn.work import loop as tr
from charrnn.runs import rundir
from charrnn.files.config import TrainConfig
made = {}
for spec in json.loads(sys.argv[1]):
    text = corpus.read_text(spec["corpus"])

    def start(directory, max_steps):
        tconfig = TrainConfig(**spec["train"], max_steps=max_steps)
        return rundir.start_run(directory, text, None, spec["model"], tconfig)

    probe = start(spec["root"] + "/probe", 1)
    spe = probe.steps_per_epoch
    n = spe + spec["extra"]
    ks = sorted({3, spe - 1, spe, n - 1})
    whole = start(spec["root"] + "/whole", n)
    for _ in tr.train(whole):
        pass
    for k in ks:
        run = start(spec["root"] + f"/split-{k}", n)
        for _ in tr.train(run, should_stop=lambda: run.step >= k):
            pass
    made[spec["name"]] = {"steps_per_epoch": spe, "n": n, "ks": ks}
print(json.dumps(made))
"""

# Resumes each run directory given, in a fresh pinned process, through the library.
RESUMER = r"""
import sys
from charrnn.work import loop as tr
from charrnn.runs import rundir
for directory in sys.argv[1:]:
    run = rundir.resume_run(directory)
    for _ in tr.train(run):
        pass
"""


def python(*args, **kw):
    return subprocess.Popen([sys.executable, *map(str, args)], env=PINNED, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return out


def differences(dir_a, dir_b) -> list[str]:
    """What differs between two finished runs, bitwise (an empty list when they are identical).

    Compares the state file (parameters, optimizer slots, carried state, progress
    counters but wall time), the latest and best models, and every log record but
    its timing fields.
    """
    found = []
    a, meta_a = checkpoint.load_state(os.path.join(dir_a, layout.STATE_FILE))
    b, meta_b = checkpoint.load_state(os.path.join(dir_b, layout.STATE_FILE))
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            found.append(f"state {name} missing")
        elif a[name].dtype != b[name].dtype or a[name].shape != b[name].shape or \
                a[name].tobytes() != b[name].tobytes():
            found.append(f"state {name}")
    pa, pb = dict(meta_a["progress"]), dict(meta_b["progress"])
    for progress in (pa, pb):  # wall time, and the log's length in bytes (its lines hold timings)
        progress.pop("elapsed"), progress.pop("log_bytes")
    if pa != pb:
        found.append(f"progress {pa} != {pb}")
    for key in ("model", "train", "vocab"):
        if meta_a[key] != meta_b[key]:
            found.append(f"state meta {key}")
    for name in (layout.MODEL_FILE, layout.BEST_FILE):
        ma, _, meta_ma = checkpoint.load_model(os.path.join(dir_a, name))
        mb, _, meta_mb = checkpoint.load_model(os.path.join(dir_b, name))
        found += [f"{name} {k}" for k in ma if ma[k].tobytes() != mb[k].tobytes()]
        ta, tb = dict(meta_ma["training"]), dict(meta_mb["training"])
        ta.pop("elapsed"), tb.pop("elapsed")
        if ta != tb:
            found.append(f"{name} training {ta} != {tb}")
    log_a, log_b = untimed(read_log(dir_a)), untimed(read_log(dir_b))
    if log_a != log_b:
        found.append("log")
    return found


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """For every config: the whole run and the first parts, made by two driver processes (one per core)
    that share the configs between them (a process each cost a start-up, numba's load mostly, five times)."""
    root = tmp_path_factory.mktemp("resume")
    for name, mode, _, _ in CONFIGS:
        (root / name).mkdir()
        (root / name / "corpus.txt").write_text(
            {"stream": lambda: stream_text(44), "lines": lines_text, "classify": labelled_text}[mode]())
    specs = []
    for name, mode, model_kw, train_kw in CONFIGS:
        # patience 0: these runs evaluate every step, and must take all their steps (early stopping has its
        # own tests; its counter is part of the saved progress that the comparison checks)
        base = dict(mode="lines" if mode == "classify" else mode, batch_size=2, seq_len=8, eval_every=1,
                    log_every=1, val_frac=0.2, patience=0)
        specs.append({"name": name, "root": str(root / name), "corpus": str(root / name / "corpus.txt"),
                      "extra": EXTRA_STEPS, "model": {"layers": 1, "hidden": 8, "embed": 8, **model_kw},
                      "train": {**base, **train_kw}})
    procs = [python("-c", DRIVER, json.dumps(specs[i::2])) for i in range(2)]
    made = {}
    for proc in procs:
        made.update(json.loads(finish(proc)))
    assert sorted(made) == sorted(spec["name"] for spec in specs)
    return root, made


@pytest.mark.parametrize("name", [c[0] for c in CONFIGS])
def test_resume_in_a_new_process_is_bit_exact(prepared, name):
    root, info = prepared
    info = info[name]
    spe, n, ks = info["steps_per_epoch"], info["n"], info["ks"]
    # mid-epoch, just before the wrap-around, exactly at it, and the last step
    assert ks == [3, spe - 1, spe, n - 1] and spe > 4
    whole = root / name / "whole"
    assert checkpoint.load_state(whole)[1]["progress"]["step"] == n
    procs = []
    for k in ks:
        split = root / name / f"split-{k}"
        assert checkpoint.load_state(split)[1]["progress"]["step"] == k
        assert [r["step"] for r in read_log(split)] == list(range(1, k + 1))
        procs.append(python("-m", "charrnn", "train", "--resume", split, "--quiet"))
        if len(procs) % 2 == 0:
            procs[-2].wait(timeout=120), procs[-1].wait(timeout=120)
    for proc in procs:
        assert finish(proc) == ""
    for k in ks:
        assert differences(whole, root / name / f"split-{k}") == [], f"k = {k}"
    state, _ = checkpoint.load_state(whole)
    mode = next(c[1] for c in CONFIGS if c[0] == name)
    assert any(key.startswith("carry/") for key in state) == (mode == "stream")
    assert any(key.startswith("optim/") and key != "optim/t" for key in state)


def _scale(arrays, prefix, factor):
    for key in [k for k in arrays if k.startswith(prefix)]:
        arrays[key] = arrays[key] * factor


def _nudge_one(arrays, key):
    arrays[key] = arrays[key].copy()
    flat = arrays[key].reshape(-1)
    flat[0] = np.nextafter(flat[0], np.inf)  # one ulp of one element


def _progress(key, value):
    def edit(arrays, meta):
        meta["progress"][key] = value
    return edit


# Each entry loses or alters one saved component of the state file; the resumed run must then differ.
MUTATIONS = {
    "carried state zeroed": lambda a, m: _scale(a, "carry/", 0),
    "carried state dropped": lambda a, m: [a.pop(k) for k in list(a) if k.startswith("carry/")],
    "optimizer slots reset": lambda a, m: _scale(a, "optim/m/", 0) or _scale(a, "optim/v/", 0),
    "optimizer step count reset": lambda a, m: a.update({"optim/t": np.array(0, np.int64)}),
    "step counter": lambda a, m: m["progress"].update(step=m["progress"]["step"] + 1),
    "log accumulators": lambda a, m: m["progress"].update(log_sum=1.0, log_count=1),
    "best validation loss": _progress("best_val", 0.5),
    "schedule span": _progress("schedule_steps", 1000),
    "schedule start": _progress("schedule_start", 1),
    "skipped count": _progress("skipped", 1),
    "seed (line order, dropout masks)": lambda a, m: m["train"].update(seed=1),
}


def test_resume_comparison_fails_when_a_saved_component_is_lost(prepared):
    """The comparison above can catch what it claims to: alter any one part of the saved state
    (every parameter in turn, too) and the resumed run no longer matches the whole run."""
    root, info = prepared
    name = "lstm-stream-dropout"
    source = root / name / "split-3"
    arrays, _ = checkpoint.load_state(source)
    mutations = dict(MUTATIONS)
    for key in sorted(k for k in arrays if k.startswith("param/")):
        mutations[f"parameter {key}"] = lambda a, m, key=key: _nudge_one(a, key)
    targets = {}
    for i, (what, mutate) in enumerate([("control", None), *mutations.items()]):
        target = root / name / f"mutant-{i}"
        shutil.copytree(source, target)
        if mutate is not None:
            arrays, meta = checkpoint.load_state(target)
            mutate(arrays, meta)
            for key in ("format_version", "charrnn_version", "kind"):
                meta.pop(key)
            checkpoint.save_state(target / layout.STATE_FILE, arrays, meta)
        targets[what] = target
    assert len(mutations) == len(MUTATIONS) + 11  # and the 11 parameters of a 2-layer LSTM
    finish(python("-c", RESUMER, *targets.values()))
    whole = root / name / "whole"
    assert differences(whole, targets.pop("control")) == []
    for what, target in targets.items():
        assert differences(whole, target), f"losing the {what} went unnoticed"


def test_a_trainer_killed_with_9_leaves_its_run_free_and_resuming_is_bit_exact(tmp_path):
    """kill -9 releases the run's lock with the process (issue 19): `charrnn train --resume` takes the
    run at once and ends exactly where a run that was never killed ends."""
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text(stream_text(44))
    options = ["--cell", "lstm", "--layers", "2", "--hidden", "8", "--embed", "8", "--dropout", "0.25",
               "--optim", "adam", "--lr", "0.01", "--schedule", "constant", "--warmup", "0", "--batch-size", "2",
               "--seq-len", "8", "--val-frac", "0.2", "--eval-every", "2", "--log-every", "1", "--patience", "0",
               "--quiet"]
    run = tmp_path / "run"
    first = python("-m", "charrnn", "train", corpus_file, *options, "--max-steps", 10**6, "--out", run)
    try:
        deadline = time.monotonic() + 60
        while not (run / layout.STATE_FILE).exists() or \
                checkpoint.load_state(run)[1]["progress"]["step"] < 4:
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.001)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert (run / layout.LOCK_FILE).exists()  # the file is left, the lock went with the process
    n = checkpoint.load_state(run)[1]["progress"]["step"] + 5
    resumed = python("-m", "charrnn", "train", "--resume", run, "--max-steps", n, "--quiet")
    whole = python("-m", "charrnn", "train", corpus_file, *options, "--max-steps", n, "--out", tmp_path / "whole")
    assert finish(resumed) == "" and finish(whole) == ""
    assert checkpoint.load_state(run)[1]["progress"]["step"] == n
    assert differences(tmp_path / "whole", run) == []
    assert not (run / layout.LOCK_FILE).exists()
