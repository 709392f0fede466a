"""The hostile-input sweep of issue 29, as real `charrnn` processes: what careless users, full disks,
signals, pipes and crafted files do to the command line, counted.

A benchmark-style script, not a test (tests/test_hostile.py keeps the sweep's categories as Hypothesis
properties in-process). Each scenario is one small function in a registry; many take variants
(generated damage: offsets, seeds, fields). Every command runs as a child process

- with a timeout (a hang when it runs past it),
- with its address space limited (RLIMIT_AS, --limit-mb, 2 GB by default) and its peak resident
  memory read back by wait4 (unbounded memory when it is above --rss-mb, or it ran out),
- in its own session, so a scenario can send it signals or close its pipes,

and its result is classed: a traceback (stderr holds "Traceback" or "Exception ignored", the exit is
not in the scenario's expected set, it died of a signal, or a failure's last line is not one
`Error: ...` line); data loss (a victim file outside the run changed, a run directory left neither
resumable nor restartable, work thrown away; each scenario checks its own); a hang; unbounded memory
(also: work growing much faster than its input, measured at two sizes). Misleading messages are
counted beside them.

    python bench/hostile.py                  # every scenario; a summary table at the end
    python bench/hostile.py --list           # the scenarios and their variants
    python bench/hostile.py --only symlink_log --only state_from_another_run -v

Tiny runs only (the NumPy reference kernels, CHARRNN_KERNELS=numpy, unless --numba): the whole sweep
takes a few minutes on two cores. Files go to a temporary folder (or --dir), removed unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TINY = ["--cell", "lstm", "--layers", "1", "--hidden", "8", "--embed", "8", "--dropout", "0", "--schedule",
        "constant", "--warmup", "0", "--batch-size", "2", "--seq-len", "8", "--patience", "0"]
WORDS = "the quick brown fox jumps over a lazy dog and then sleeps".split()
NAMES = ("anna bob carl dave emma fred gina hugo iris jack kate liam mona nick olga paul quinn rosa sam tina ugo "
         "vera walt xena yann zoe").split()
CLF_LINES = ([f"code\t{x}" for x in ("def f(x): return x", "import os, sys", "x = [a for a in b]", "pass")]
             + [f"prose\t{x}" for x in ("The cat sat.", "A dog ran.", "She said so.", "We went home.")])
VICTIM = b"a victim file outside the run: nothing charrnn does may change it\n" * 40


def words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "\n"


# ---------------------------------------------------------------- running one command


@dataclass
class Result:
    args: list
    rc: int | None          # exit status, or -N for death by signal N, None when it was still running
    out: bytes
    err: str
    peak: int               # peak resident set, bytes (wait4)
    seconds: float
    timed_out: bool


@dataclass
class Finding:
    scenario: str
    kind: str               # traceback, data loss, hang, memory, misleading
    what: str


@dataclass
class Sweep:
    work: str
    timeout: float
    limit: int              # RLIMIT_AS of every child, bytes
    rss_bound: int          # peak RSS above this is unbounded memory, bytes
    env: dict
    verbose: bool = False
    runs: int = 0
    findings: list = field(default_factory=list)
    scenario: str = ""
    _n: int = 0

    # -- places

    def place(self) -> str:
        self._n += 1
        path = os.path.join(self.work, f"s{self._n:04d}")
        os.makedirs(path)
        return path

    def base(self, name: str, where: str | None = None) -> str:
        """A fresh copy of the prepared run `name` ('a', 'b', 'lines', 'clf'), in its own folder."""
        target = os.path.join(where or self.place(), "run")
        shutil.copytree(os.path.join(self.work, "base", name), target, symlinks=True)
        return target

    def corpus(self, name: str) -> str:
        return os.path.join(self.work, "base", name)

    # -- processes

    def start(self, args, *, stdin=None, stdout=None, stderr=None, fsize=None, limit=None, env=None):
        """Start `python -m charrnn ARGS` in its own session, limited; returns the Popen."""
        as_limit = limit or self.limit

        def limits():
            resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
            if fsize is not None:  # a disk that fills up: writes past fsize fail with EFBIG
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        out = stdout if stdout is not None else tempfile.TemporaryFile(dir=self.work)
        err = stderr if stderr is not None else tempfile.TemporaryFile(dir=self.work)
        proc = subprocess.Popen([sys.executable, "-m", "charrnn", *map(str, args)], stdin=stdin or subprocess.DEVNULL,
                                stdout=out, stderr=err, env={**self.env, **(env or {})}, preexec_fn=limits,
                                start_new_session=True, cwd=self.work)
        proc._files = (out if stdout is None else None, err if stderr is None else None)
        proc._args, proc._t0 = list(map(str, args)), time.monotonic()
        return proc

    def finish(self, proc, timeout: float | None = None, *, expect=(0, 1, 2), stop_signal=None) -> Result:
        """Wait for proc (killing it after timeout: a hang), class the result, return it."""
        deadline = proc._t0 + (timeout or self.timeout)
        timed_out, usage, status = False, None, None
        while True:
            try:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            except ChildProcessError:  # reaped already by Popen.poll: its status, without its peak
                pid, status, usage = proc.pid, None, None
            if pid:
                break
            if time.monotonic() > deadline and not timed_out:
                timed_out = True
                if stop_signal is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:  # a run meant to go on until stopped: stop it as a user would, then wait a while
                    os.killpg(proc.pid, stop_signal)
                    deadline += 20
                    stop_signal = None
                    timed_out = False
                    continue
            time.sleep(0.01)
        rc = proc.returncode if status is None else os.waitstatus_to_exitcode(status)
        proc.returncode = rc
        seconds = time.monotonic() - proc._t0
        out = err = b""
        if proc._files[0] is not None:
            proc._files[0].seek(0)
            out = proc._files[0].read()
        if proc._files[1] is not None:
            proc._files[1].seek(0)
            err = proc._files[1].read()
        text = err.decode("utf-8", "replace")
        result = Result(proc._args, None if timed_out else rc, out, text, usage.ru_maxrss * 1024 if usage else 0,
                        seconds, timed_out)
        self.runs += 1
        self.judge(result, expect, messages=proc._files[1] is not None)
        return result

    def run(self, args, *, expect=(0, 1, 2), timeout=None, stdin=None, fsize=None, limit=None, env=None) -> Result:
        return self.finish(self.start(args, stdin=stdin, fsize=fsize, limit=limit, env=env), timeout, expect=expect)

    def python(self, code: str, *, expect=(0,), timeout=None) -> Result:
        """A child running Python code against the API (as `python -c`), classed like a command."""
        files = (tempfile.TemporaryFile(dir=self.work), tempfile.TemporaryFile(dir=self.work))
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=files[0], stderr=files[1], env=self.env,
                                cwd=self.work, start_new_session=True, stdin=subprocess.DEVNULL)
        proc._files = files
        proc._args, proc._t0 = ["python", "-c", code[:60]], time.monotonic()
        return self.finish(proc, timeout, expect=expect)

    # -- classing

    def note(self, kind: str, what: str) -> None:
        self.findings.append(Finding(self.scenario, kind, what))
        if self.verbose:
            print(f"    {kind}: {what}", file=sys.stderr)

    def judge(self, r: Result, expect, messages: bool = True) -> None:
        """Class one result; messages: False where its stderr went elsewhere (a pipe the scenario closed)."""
        name = " ".join(r.args).replace("\n", "; ")[:90]
        if r.timed_out:
            self.note("hang", f"{name}: still running after {r.seconds:.0f}s")
            return
        lines = r.err.rstrip("\n").split("\n") if r.err.strip() else []
        if "Traceback" in r.err or "Exception ignored" in r.err:
            self.note("traceback", f"{name}: {lines[-1][:120] if lines else ''}")
        elif r.rc is not None and r.rc < 0 and -r.rc not in [-e for e in expect if e < 0]:
            self.note("traceback", f"{name}: died of signal {signal.Signals(-r.rc).name}, no message")
        elif r.rc not in expect:
            self.note("traceback", f"{name}: exit {r.rc} (expected {expect}): {lines[-1][:100] if lines else ''}")
        elif messages and r.rc in (1, 2):
            if not lines or not lines[-1].startswith("Error: ") or sum(x.startswith("Error: ") for x in lines) != 1:
                self.note("traceback", f"{name}: exit {r.rc} without one clean Error line: {r.err[-120:]!r}")
        if "out of memory" in r.err:
            self.note("memory", f"{name}: ran out of memory ({r.peak >> 20} MB)")
        elif r.peak > self.rss_bound:
            self.note("memory", f"{name}: peak RSS {r.peak >> 20} MB")

    # -- what a run directory must stay

    def usable(self, run: str, corpus: str) -> str | None:
        """'resumed' or 'restarted' when the run can be continued either way; a data-loss finding otherwise."""
        first = self.run(["train", "--resume", run, "--max-steps", 3, "-q"])
        if first.rc == 0:
            return "resumed"
        second = self.run(["train", corpus, *TINY, "--max-steps", 2, "--eval-every", 2, "--out", run, "-q"])
        if second.rc == 0:
            return "restarted"
        self.note("data loss", f"{run} can be neither resumed ({first.err.strip()[-80:]}) nor restarted "
                               f"({second.err.strip()[-80:]})")
        return None

    def untouched(self, path: str, before: bytes, what: str) -> None:
        try:
            with open(path, "rb") as f:
                now = f.read()
        except OSError:
            now = None
        if now != before:
            self.note("data loss", f"{what}: {path} changed ({len(before)} -> {None if now is None else len(now)} bytes)")


# ---------------------------------------------------------------- crafted files (in this process)


def read_model(path):
    from charrnn.files import checkpoint
    return checkpoint.load_tensors(path)


def write_raw(path, arrays, meta) -> None:
    import numpy as np
    import safetensors.numpy
    data = safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                                  metadata={"charrnn": json.dumps(meta)})
    with open(path, "wb") as f:
        f.write(data)


def edit_models(run: str, edit) -> None:
    """edit(arrays, meta) applied to the run's model and best files."""
    for name in ("best.safetensors", "model.safetensors"):
        path = os.path.join(run, name)
        if os.path.exists(path):
            arrays, meta = read_model(path)
            edit(arrays, meta)
            write_raw(path, arrays, meta)


def edit_bytes(path: str, edit) -> None:
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data = edit(data)
    with open(path, "wb") as f:
        f.write(bytes(data))


# ---------------------------------------------------------------- the registry

SCENARIOS: dict[str, tuple[str, object, list]] = {}


def scenario(category: str, variants=(None,)):
    def register(fn):
        SCENARIOS[fn.__name__] = (category, fn, list(variants))
        return fn
    return register


READERS = ("info", "sample", "eval", "annotate")


def read_with(s: Sweep, run: str, commands=READERS, expect=(0, 1, 2)) -> None:
    text = s.corpus("text.txt")
    args = {"info": ["info", run], "sample": ["sample", "-c", run, "--length", 20, "--seed", 1],
            "eval": ["eval", "-c", run],
            "annotate": ["annotate", text, "-c", run, "--out", os.path.join(os.path.dirname(run), "page.html"), "-q"],
            "classify": ["classify", s.corpus("clf.tsv"), "-c", run], "plot": ["plot", run],
            "resume": ["train", "--resume", run, "--max-steps", 6, "-q"]}
    for command in commands:
        s.run(args[command], expect=expect)


# ---- data loss


@scenario("data loss", ["b", "lines"])
def state_from_another_run(s: Sweep, other):
    run = s.base("a")
    shutil.copyfile(os.path.join(s.work, "base", other, "state.safetensors"), os.path.join(run, "state.safetensors"))
    with open(os.path.join(run, "model.safetensors"), "rb") as f:
        model = f.read()
    r = s.run(["train", "--resume", run, "--max-steps", 8, "-q"])
    if r.rc == 0:
        s.note("data loss", f"resumed with {other}'s state: trained on through the wrong vocabulary")
    else:
        s.untouched(os.path.join(run, "model.safetensors"), model, f"a refused state from run {other}")


@scenario("data loss", ["train.lock", "log.jsonl", "state.safetensors", "model.safetensors", "best.safetensors",
                        "data/train.npy", "loss.png", "annotate.html"])
def symlink_to_a_victim(s: Sweep, entry):
    where = s.place()
    run = s.base("a", where)
    victim = os.path.join(where, "victim.txt")
    with open(victim, "wb") as f:
        f.write(VICTIM)
    path = os.path.join(run, entry)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(victim, path)
    s.run(["train", "--resume", run, "--max-steps", 6, "-q"])
    read_with(s, run, ("sample", "eval", "annotate", "plot"))
    s.run(["annotate", s.corpus("text.txt"), "-c", run, "-q"])
    s.untouched(victim, VICTIM, f"a symlinked {entry}")


def _log_steps(run) -> list[int]:
    try:
        with open(os.path.join(run, "log.jsonl"), encoding="utf-8", errors="replace") as f:
            return [json.loads(line)["step"] for line in f if line.strip().startswith("{")]
    except (OSError, ValueError, KeyError):
        return []


def _state_step(run) -> int | None:
    try:
        from charrnn.files import checkpoint
        return checkpoint.load_state(run)[1]["progress"]["step"]
    except Exception:  # noqa: BLE001 - no state (yet), or unreadable
        return None


@scenario("data loss")
def stderr_closed_mid_run(s: Sweep, _):
    """`charrnn train ... 2>&1 | head`: stderr is a pipe whose reader goes away."""
    where = s.place()
    run = os.path.join(where, "run")
    read_end, write_end = os.pipe()
    proc = s.start(["train", s.corpus("a.txt"), *TINY, "--max-steps", 3000, "--eval-every", 50, "--log-every", 5,
                    "--out", run], stderr=write_end)
    os.close(write_end)
    os.read(read_end, 200)  # the first lines
    os.close(read_end)      # head exits
    r = s.finish(proc, 120, expect=(0, 1, 130, 141, -signal.SIGPIPE))
    logged, saved = _log_steps(run), _state_step(run)
    if r.rc not in (0,) and (saved is None or (logged and max(logged) > saved)):
        s.note("data loss", f"closed stderr: exit {r.rc}, log at step {max(logged) if logged else None}, "
                            f"last checkpoint at {saved}")


@scenario("data loss")
def lock_deleted_mid_run(s: Sweep, _):
    where = s.place()
    run = s.base("a", where)
    first = s.start(["train", "--resume", run, "--max-steps", 10**6, "--eval-every", 200, "-q"])
    lock = os.path.join(run, "train.lock")
    deadline = time.monotonic() + 30
    while not os.path.exists(lock) and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.exists(lock):
        os.unlink(lock)
    second = s.start(["train", "--resume", run, "--max-steps", 10**6, "--eval-every", 200, "-q"])
    time.sleep(4)
    both = alive(first) and alive(second)
    for proc in (first, second):
        if alive(proc):
            os.killpg(proc.pid, signal.SIGINT)
    for proc in (first, second):
        s.finish(proc, 60, expect=(0, 1, 130))
    if both:
        s.note("data loss", "with train.lock deleted, a second --resume trains the run beside the first")


@scenario("data loss", ["kill -9 after the first log line", "sgd lr 1e20", "fsize 4 KB", "api seq_len np.int64"])
def unusable_after_early_death(s: Sweep, how):
    where = s.place()
    run = os.path.join(where, "run")
    corpus = s.corpus("a.txt")
    if how == "kill -9 after the first log line":
        proc = s.start(["train", corpus, *TINY, "--max-steps", 10**6, "--eval-every", 10**5, "--log-every", 1,
                        "--out", run, "-q"])
        deadline = time.monotonic() + 60
        while not _log_steps(run) and time.monotonic() < deadline and alive(proc):
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        s.finish(proc, 30, expect=(-signal.SIGKILL,))
    elif how == "sgd lr 1e20":
        r = s.run(["train", corpus, *TINY, "--optim", "sgd", "--momentum", 0, "--lr", "1e20", "--max-steps", 50,
                   "--eval-every", 40, "--log-every", 1, "--out", run, "-q"])
        if "last saved checkpoint is unchanged" in r.err and _state_step(run) is None:
            s.note("misleading", "non-finite loss: 'the last saved checkpoint is unchanged' where none exists")
    elif how == "fsize 4 KB":
        s.run(["train", corpus, *TINY, "--max-steps", 4, "--eval-every", 2, "--out", run, "-q"], fsize=4096)
    else:
        s.python(f"import numpy as np, charrnn\ncharrnn.train({corpus!r}, {run!r}, seq_len=np.int64(16), "
                 f"max_steps=2, eval_every=2, hidden=8, layers=1, embed=8, batch_size=2)", expect=(0, 1))
    if os.path.isdir(run):
        s.usable(run, corpus)


@scenario("data loss", [1, 2, 3, 4])
def kill_9_at_a_random_moment(s: Sweep, seed):
    run = s.base("a")
    proc = s.start(["train", "--resume", run, "--max-steps", 10**6, "--eval-every", 3, "-q"])
    time.sleep(0.6 + random.Random(seed).random() * 1.5)
    os.killpg(proc.pid, signal.SIGKILL)
    s.finish(proc, 30, expect=(-signal.SIGKILL, 0, 1))
    s.usable(run, s.corpus("a.txt"))


@scenario("data loss", ["SIGINT", "SIGTERM", "SIGINT twice"])
def signal_a_trainer(s: Sweep, sig):
    run = s.base("a")
    proc = s.start(["train", "--resume", run, "--max-steps", 10**6, "--eval-every", 50, "-q"])
    time.sleep(1.5)
    signum = signal.SIGTERM if sig == "SIGTERM" else signal.SIGINT
    os.killpg(proc.pid, signum)
    if sig == "SIGINT twice":
        time.sleep(0.001)
        os.killpg(proc.pid, signum)
    r = s.finish(proc, 60, expect=(128 + signum,))
    if r.rc == 128 + signum:
        s.usable(run, s.corpus("a.txt"))


# ---- tracebacks


@scenario("tracebacks", ["eval", "annotate"])
def loss_above_709_nats(s: Sweep, command):
    import numpy as np
    run = s.base("a")

    def huge(arrays, meta):
        rng = np.random.default_rng(0)
        arrays["head.bias"] = (rng.standard_normal(arrays["head.bias"].shape) * 1e4).astype(np.float32)
    edit_models(run, huge)
    read_with(s, run, (command,))


@scenario("tracebacks", ["invalid UTF-8", "100,000-deep JSON", "NaN and huge numbers", "not objects"])
def plot_a_hostile_log(s: Sweep, what):
    run = s.base("a")
    line = {"invalid UTF-8": b"\xff\xfe\xfd{\"step\": 1}", "100,000-deep JSON": b"[" * 100_000 + b"]" * 100_000,
            "NaN and huge numbers": b'{"step": 1e999, "val_loss": NaN, "train_loss": -Infinity}',
            "not objects": b'[1, 2]\n"step"\n{"step": [3], "val_loss": {"a": 1}}'}[what]
    with open(os.path.join(run, "log.jsonl"), "ab") as f:
        f.write(line + b"\n")
    read_with(s, run, ("plot", "resume"))


@scenario("tracebacks", ["origin.added an int", "origin.unk_tokens a string", "a lone surrogate token",
                         "control characters in tokens"])
def info_on_hostile_metadata(s: Sweep, what):
    run = s.base("a")

    def edit(arrays, meta):
        origin = {"model_file": "/x/model.safetensors", "step": 3, "vocab": "kept", "base_tokens": 5, "added": [],
                  "unk_tokens": 0, "unseen": [], "n_unseen": 0}
        if what == "origin.added an int":
            meta["origin"] = {**origin, "vocab": "extended", "added": 5}
        elif what == "origin.unk_tokens a string":
            meta["origin"] = {**origin, "unk_tokens": "many"}
        elif what == "a lone surrogate token":
            meta["tokens"][5] = "\ud800"
        else:
            meta["tokens"][5:8] = ["\x1b", "\x07", "\u202e"]
    edit_models(run, edit)
    r = s.run(["info", run])
    if what == "control characters in tokens" and any(c in r.out.decode("utf-8", "replace") for c in "\x1b\x07\u202e"):
        s.note("misleading", "control characters of a vocabulary printed raw to the terminal")
    read_with(s, run, ("sample", "eval"))


@scenario("tracebacks", ["float64 1e308", "float64 -1e308", "float32 3e38", "float32 -3e38"])
def annotate_extreme_head_weights(s: Sweep, what):
    import numpy as np
    dtype, value = what.split()
    run = s.base("a")

    def edit(arrays, meta):
        for name, array in arrays.items():
            arrays[name] = array.astype(dtype)
        arrays["head.weight"][:] = float(value)
        meta["model"]["dtype"] = dtype
    edit_models(run, edit)
    read_with(s, run, ("annotate", "eval", "sample"))
    del np


@scenario("tracebacks")
def max_time_1e308_without_steps(s: Sweep, _):
    where = s.place()
    proc = s.start(["train", s.corpus("a.txt"), *TINY, "--max-time", "1" + "0" * 308, "--eval-every", 20,
                    "--out", os.path.join(where, "run"), "-q"])
    # a budget beyond any machine: trained and stopped by Ctrl-C, or refused as a usage error (exit 2)
    s.finish(proc, 12, expect=(0, 2, 130), stop_signal=signal.SIGINT)


@scenario("tracebacks", ["-1", str(-(2**63)), str(2**64)])
def sample_seed(s: Sweep, seed):
    s.run(["sample", "-c", s.base("a"), "--seed", seed, "--length", 10])


def endless_sampler(s: Sweep) -> str:
    """A copy of run 'a' whose model never ends a sample (the end-of-text token's bias far below)."""
    run = s.base("a")

    def no_eos(arrays, meta):
        arrays["head.bias"][meta["special"]["eos"] if isinstance(meta.get("special"), dict) else 0] = -50.0
    edit_models(run, no_eos)
    return run


def alive(proc) -> bool:
    """Whether proc still runs, without reaping it (finish reads its peak memory when it is reaped)."""
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


@scenario("tracebacks", [0.001, 0.01])
def two_sigints_to_sample(s: Sweep, gap):
    run = endless_sampler(s)
    proc = s.start(["sample", "-c", run, "--length", 10**8, "-n", 2, "--seed", 1])
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(gap)
    os.killpg(proc.pid, signal.SIGINT)
    s.finish(proc, 30, expect=(130,))


API_CALLS = ["charrnn.load(b'run')", "charrnn.load(['run'])", "charrnn.load(3)",
             "m.generate(prime=None, length=5)", "m.generate(length='5')", "m.generate(length=5, seed=-1)",
             "m.generate(length=5, temperature='hot')", "m.generate(length=5, top_k=2.5)", "m.samples('2', length=5)",
             "m.score(b'text')", "m.score(3)", "m.annotate(None)", "m.annotate('abc', top_k='3')",
             "c.classify(['def f'], top_k=-1)", "c.classify(['def f'], top_k=0)", "c.classify(3)",
             "c.evaluate(3)", "c.classify([b'x'])", "m.annotate('abc', max_chars=-1)", "m.stream(length=None)"]


@scenario("tracebacks", API_CALLS)
def api_argument_types(s: Sweep, call):
    code = (f"import charrnn\nfrom charrnn.errors import CharRNNError\nm = charrnn.load({s.corpus('a')!r})\n"
            f"c = charrnn.load({s.corpus('clf')!r})\n"
            f"try:\n    r = {call}\n    r = list(r) if hasattr(r, '__next__') else r\n"
            f"    import sys\n    if 'top_k' in {call!r} and ('=-1' in {call!r} or '=0' in {call!r}):\n"
            f"        sys.exit('silently answered ' + repr(r)[:60])\n"
            f"except CharRNNError as e:\n    print('Error:', e)\n")
    s.python(code)


@scenario("tracebacks")
def truncate_train_npy_while_training(s: Sweep, _):
    import numpy as np
    where = s.place()
    corpus = os.path.join(where, "big.txt")
    with open(corpus, "w") as f:
        f.write(words(400_000))
    run = os.path.join(where, "run")
    proc = s.start(["train", corpus, *TINY, "--max-steps", 10**6, "--eval-every", 10**5, "--out", run, "-q"])
    ids = os.path.join(run, "data", "train.npy")
    deadline = time.monotonic() + 60
    while not _log_steps(run) and time.monotonic() < deadline and alive(proc):
        time.sleep(0.05)
    if os.path.exists(ids):
        os.truncate(ids, 200)
    time.sleep(3)
    if alive(proc):
        os.killpg(proc.pid, signal.SIGINT)
    s.finish(proc, 30, expect=(1, 130))
    del np


@scenario("tracebacks", ["info", "eval", "train"])
def newline_in_a_file_name(s: Sweep, command):
    where = s.place()
    bad = os.path.join(where, "two\nlines.txt")
    with open(bad, "wb") as f:
        f.write(b"\x00\x01 binary")
    args = {"info": ["info", bad], "eval": ["eval", bad, "-c", s.base("a")],
            "train": ["train", bad, *TINY, "--max-steps", 2, "--out", os.path.join(where, "r")]}[command]
    s.run(args)


# ---- crafted files that must keep being refused


@scenario("crafted files", list(range(8)))
def truncated_model(s: Sweep, seed):
    run = s.base("a")
    size = os.path.getsize(os.path.join(run, "best.safetensors"))
    cut = random.Random(seed).randrange(size)
    for name in ("best.safetensors", "model.safetensors"):
        os.truncate(os.path.join(run, name), cut)
    read_with(s, run, ("info", "eval") if seed % 2 else ("sample", "annotate"))


@scenario("crafted files", list(range(8)))
def flipped_model(s: Sweep, seed):
    run = s.base("a")
    rng = random.Random(seed)

    def flip(data):
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        return data
    for name in ("best.safetensors", "model.safetensors"):
        edit_bytes(os.path.join(run, name), flip)
    read_with(s, run, ("info", "eval") if seed % 2 else ("sample", "annotate"))


META_EDITS = {
    "tokens removed": lambda m: m.pop("tokens"), "special a string": lambda m: m.__setitem__("special", "x"),
    "level unknown": lambda m: m.__setitem__("level", "byte"), "model a list": lambda m: m.__setitem__("model", [1]),
    "hidden 10**30": lambda m: m["model"].__setitem__("hidden", 10**30),
    "vocab_size negative": lambda m: m["model"].__setitem__("vocab_size", -1),
    "seq_len a string": lambda m: m["data"].__setitem__("seq_len", "16"),
    "step 1e400 as digits": lambda m: m["training"].__setitem__("step", 10**400),
    "best_val_loss NaN": lambda m: m["training"].__setitem__("best_val_loss", float("nan")),
    "format_version 99": lambda m: m.__setitem__("format_version", 99),
    "kind state": lambda m: m.__setitem__("kind", "state"),
    "tokens all one": lambda m: m.__setitem__("tokens", m["tokens"][:3] + [m["tokens"][5]] * (len(m["tokens"]) - 3)),
}


@scenario("crafted files", sorted(META_EDITS))
def model_metadata(s: Sweep, what):
    run = s.base("a")
    edit_models(run, lambda arrays, meta: META_EDITS[what](meta))
    read_with(s, run, ("info", "sample", "eval"))


@scenario("crafted files", ["truncated", "flipped", "step a string", "param wrong shape", "optim slot missing",
                            "carry NaN-free huge", "vocab short", "lr 10**400"])
def damaged_state(s: Sweep, what):
    import numpy as np
    run = s.base("a")
    path = os.path.join(run, "state.safetensors")
    if what == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    elif what == "flipped":
        edit_bytes(path, lambda d: d[:100] + bytes([d[100] ^ 0x5a]) + d[101:])
    else:
        arrays, meta = read_model(path)
        if what == "step a string":
            meta["progress"]["step"] = "4"
        elif what == "param wrong shape":
            arrays["param/head.bias"] = np.zeros(3, np.float32)
        elif what == "optim slot missing":
            arrays.pop(sorted(k for k in arrays if k.startswith("optim/"))[0])
        elif what == "carry NaN-free huge":
            arrays["carry/0"] = np.full_like(arrays["carry/0"], 3e38)
        elif what == "vocab short":
            meta["vocab"]["tokens"].pop()
        else:
            meta["train"]["lr"] = 10**400
        write_raw(path, arrays, meta)
    with open(os.path.join(run, "model.safetensors"), "rb") as f:
        model = f.read()
    r = s.run(["train", "--resume", run, "--max-steps", 6, "-q"])
    if r.rc:
        s.untouched(os.path.join(run, "model.safetensors"), model, f"a refused state ({what})")


@scenario("crafted files", ["pickled", "2-D", "float", "Fortran", "ids past the vocabulary", "truncated"])
def replaced_ids(s: Sweep, what):
    import numpy as np
    run = s.base("a")
    path = os.path.join(run, "data", "val.npy" if what == "truncated" else "train.npy")
    ids = np.load(path)
    if what == "pickled":
        np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    elif what == "2-D":
        np.save(path, ids.reshape(1, -1))
    elif what == "float":
        np.save(path, ids.astype(np.float32))
    elif what == "Fortran":
        np.save(path, np.asfortranarray(np.stack([ids, ids], 1)))
    elif what == "ids past the vocabulary":
        np.save(path, np.full_like(ids, 250))
    else:
        os.truncate(path, os.path.getsize(path) // 2)
    read_with(s, run, ("resume", "eval", "sample"))


# ---- hangs: work that grows faster than its input (two sizes, the time ratio)


def _startup(s: Sweep) -> float:
    """Seconds a command takes to start, load a model and end (taken off the timings below)."""
    if not hasattr(s, "_startup"):
        s._startup = min(s.run(["info", s.base("a")]).seconds for _ in range(2))
    return s._startup


def _superlinear(s: Sweep, what: str, small: float, large: float, ratio: float) -> None:
    small, large = max(small - _startup(s), 0.0), max(large - _startup(s), 0.0)
    if small > 0.2 and large / small > ratio:
        s.note("hang", f"{what}: {small:.1f}s, then {large:.1f}s for twice the input (x{large / small:.1f})")


@scenario("hangs")
def vocabulary_of_one_token_repeated(s: Sweep, _):
    times = []
    for n in (40_000, 80_000):
        run = s.base("a")
        edit_models(run, lambda arrays, meta: meta.__setitem__("tokens", meta["tokens"][:3] + ["a"] * n))
        times.append(s.run(["info", run], timeout=90).seconds)
    _superlinear(s, "a vocabulary of one token repeated (info)", *times, ratio=2.8)


@scenario("hangs")
def one_long_line_at_word_level(s: Sweep, _):
    times = []
    for mb in (16, 32):
        where = s.place()
        corpus = os.path.join(where, "line.txt")
        with open(corpus, "wb") as f:
            f.write(b"abcdefghij" * (mb * 100_000) + b"\n")
        r = s.run(["train", corpus, *TINY, "--level", "word", "--max-steps", 1, "--out", os.path.join(where, "r"),
                   "-q"], timeout=120)
        times.append(r.seconds)
        os.unlink(corpus)
    _superlinear(s, "one long line without spaces at word level (train)", *times, ratio=2.8)


@scenario("hangs")
def classifier_with_many_labels(s: Sweep, _):
    times = []
    for n in (1500, 3000):
        where = s.place()
        corpus = os.path.join(where, "many.tsv")
        with open(corpus, "w") as f:
            f.writelines(f"label{i}\tsome text {i % 7}\n" for i in range(n) for _ in range(2))
        r = s.run(["train", corpus, "--task", "classify", *TINY, "--max-steps", 1, "--eval-every", 1,
                   "--out", os.path.join(where, "r"), "-q"], timeout=120)
        times.append(r.seconds)
    _superlinear(s, "a classifier's preparation against its number of labels", *times, ratio=2.8)


# ---- memory without a bound


@scenario("memory", ["corpus /dev/zero", "corpus /dev/urandom", "--val /dev/zero", "eval /dev/zero",
                     "eval /dev/urandom", "annotate /dev/zero", "classify /dev/zero", "classify stdin /dev/zero"])
def endless_input(s: Sweep, what):
    where = s.place()
    command, device = what.rsplit(" ", 1)
    out = os.path.join(where, "r")
    args = {"corpus": ["train", device, *TINY, "--max-steps", 2, "--out", out],
            "--val": ["train", s.corpus("a.txt"), "--val", device, *TINY, "--max-steps", 2, "--out", out],
            "eval": ["eval", device, "-c", s.base("a")], "annotate": ["annotate", device, "-c", s.base("a"), "--json"],
            "classify": ["classify", device, "-c", s.base("clf")],
            "classify stdin": ["classify", "-", "-c", s.base("clf")]}[command]
    if command == "classify stdin":
        with open(device, "rb") as stdin:
            s.run(args, stdin=stdin)
    else:
        s.run(args)


@scenario("memory", ["-n 2 --length 10**9", "-n 100000 --length 20"])
def sample_memory(s: Sweep, what):
    run = endless_sampler(s)
    if what.startswith("-n 2"):
        proc = s.start(["sample", "-c", run, "-n", 2, "--length", 10**9, "--seed", 1], stdout=subprocess.DEVNULL)
        proc._files = (None, proc._files[1])
        r = s.finish(proc, 10, expect=(130,), stop_signal=signal.SIGINT)
        grown = r.peak
        base = s.run(["info", run]).peak
        if grown - base > 40 << 20:
            s.note("memory", f"sample -n 2: {(grown - base) >> 20} MB more than a start-up after 10 s")
    else:
        s.run(["sample", "-c", run, "-n", 100_000, "--length", 20, "--seed", 1])


@scenario("memory")
def classifier_with_10000_labels(s: Sweep, _):
    import numpy as np
    from charrnn.files import checkpoint
    from charrnn.core import model
    from charrnn.core.model import ModelConfig
    where = s.place()
    run = os.path.join(where, "run")
    os.makedirs(run)
    tokens = ["<eos>", "<unk>", "<bos>"] + sorted(set("abcdefghijklmnopqrstuvwxyz "))
    config = ModelConfig(vocab_size=len(tokens), classes=10_000, layers=1, hidden=8, embed=8)
    params = model.init_params(config, np.random.default_rng(0))
    base_meta = read_model(os.path.join(s.work, "base", "clf", "model.safetensors"))[1]
    meta = {"tokens": tokens, "special": base_meta["special"], "level": "char", "data": base_meta["data"],
            "labels": [f"l{i}" for i in range(10_000)]}
    checkpoint.save_model(os.path.join(run, "model.safetensors"), params, config, meta)
    text = os.path.join(where, "t.tsv")
    with open(text, "w") as f:
        f.writelines(f"l{i}\tsome words\n" for i in range(0, 10_000, 97))
    s.run(["eval", text, "-c", run])


@scenario("memory")
def one_50mb_line_in_lines_mode(s: Sweep, _):
    where = s.place()
    corpus = os.path.join(where, "line.txt")
    with open(corpus, "wb") as f:
        f.write(b"abcdefghij" * 5_000_000 + b"\n" + b"short line\n" * 10)
    s.run(["train", corpus, *TINY, "--mode", "lines", "--level", "word", "--max-steps", 1,
           "--out", os.path.join(where, "r")], timeout=120)
    os.unlink(corpus)


@scenario("memory", ["info", "sample", "eval"])
def header_declares_a_1gb_tensor(s: Sweep, command):
    run = s.base("a")
    for name in ("best.safetensors", "model.safetensors"):
        path = os.path.join(run, name)
        with open(path, "rb") as f:
            data = f.read()
        (n,) = struct.unpack("<Q", data[:8])
        header, body = json.loads(data[8:8 + n]), data[8 + n:]
        header["zz_extra"] = {"dtype": "U8", "shape": [1 << 30], "data_offsets": [len(body), len(body) + (1 << 30)]}
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text + body)
            f.truncate(8 + len(text) + len(body) + (1 << 30))
    read_with(s, run, (command,))


@scenario("memory", ["eval", "annotate"])
def a_100mb_text(s: Sweep, command):
    path = os.path.join(s.work, "base", "big.txt")
    if not os.path.exists(path):
        with open(path, "w") as f:
            chunk = words(20_000)
            for _ in range(100 * 1024 * 1024 // len(chunk)):
                f.write(chunk)
    run = s.base("a")
    args = ["eval", path, "-c", run] if command == "eval" else ["annotate", path, "-c", run, "--out",
                                                                   os.path.join(os.path.dirname(run), "p.html")]
    r = s.run(args, timeout=240)
    bound = (350 << 20) if command == "annotate" else 200 * (1 << 20) + int(1.2 * os.path.getsize(path))
    if r.peak > bound and r.peak <= s.rss_bound:
        s.note("memory", f"{command} of a 100 MB text: peak RSS {r.peak >> 20} MB (bound {bound >> 20} MB)")


# ---- messages that mislead


@scenario("messages", ["--temp 1e308", "--eval-every 10**21", "damaged run exits 2", "sample out of memory"])
def misleading_message(s: Sweep, what):
    run = s.base("a")
    if what == "--temp 1e308":
        r = s.run(["sample", "-c", run, "--temp", "1e308", "--length", 10, "--seed", 1])
        if "weights" in r.err:
            s.note("misleading", "--temp 1e308 blames broken weights")
    elif what == "--eval-every 10**21":
        r = s.run(["train", "--resume", run, "--eval-every", str(10**21)])
        if "must be an integer" in r.err:
            s.note("misleading", "--eval-every 10**21 says 'must be an integer'")
    elif what == "damaged run exits 2":
        for name in ("state.safetensors", "model.safetensors", "best.safetensors"):
            os.unlink(os.path.join(run, name))
        r = s.run(["train", s.corpus("a.txt"), *TINY, "--max-steps", 2, "--out", run])
        if r.rc == 2:
            s.note("misleading", "a damaged run directory exits 2, the usage-error code")
    else:
        # ten million samples: refused for memory, or (sampled in groups) made until Ctrl-C stops them
        proc = s.start(["sample", "-c", run, "-n", 10**7, "--length", 10], limit=1 << 30)
        r = s.finish(proc, 15, expect=(0, 1, 130), stop_signal=signal.SIGINT)
        if "--batch-size" in r.err:
            s.note("misleading", "sample's out-of-memory message suggests --batch-size")


# ---------------------------------------------------------------- the base runs, the sweep, the table


def prepare(s: Sweep) -> None:
    base = os.path.join(s.work, "base")
    os.makedirs(base)
    texts = {"a.txt": words(200), "b.txt": words(200, 1).upper() + "0123456789 ,;:!?\n" * 20,
             "lines.txt": "\n".join(NAMES * 3) + "\n", "clf.tsv": "\n".join(CLF_LINES * 4) + "\n",
             "text.txt": words(40, 3)}
    for name, text in texts.items():
        with open(os.path.join(base, name), "w", encoding="utf-8") as f:
            f.write(text)
    for name, corpus, extra in (("a", "a.txt", []), ("b", "b.txt", []), ("lines", "lines.txt", ["--mode", "lines"]),
                                ("clf", "clf.tsv", ["--task", "classify"])):
        r = subprocess.run([sys.executable, "-m", "charrnn", "train", os.path.join(base, corpus), *TINY, *extra,
                            "--max-steps", "4", "--eval-every", "2", "--out", os.path.join(base, name), "-q"],
                           env=s.env, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"cannot prepare the base run {name}: {r.stderr}")


KINDS = ("traceback", "data loss", "hang", "memory", "misleading")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the scenarios and their variants, and exit")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these scenarios")
    parser.add_argument("--timeout", type=float, default=60, help="seconds a command may run (default 60)")
    parser.add_argument("--limit-mb", type=int, default=2048, help="address space of each child (default 2048)")
    parser.add_argument("--rss-mb", type=int, default=600, help="peak RSS counted as unbounded (default 600)")
    parser.add_argument("--numba", action="store_true", help="run the compiled kernels (default: NumPy reference)")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each finding as it is found")
    args = parser.parse_args(argv)
    if args.list:
        for name, (category, _, variants) in SCENARIOS.items():
            shown = "" if variants == [None] else f"  [{len(variants)}: {', '.join(map(str, variants))[:80]}]"
            print(f"{category:14} {name}{shown}")
        print(f"{len(SCENARIOS)} scenarios, {sum(len(v) for _, _, v in SCENARIOS.values())} with their variants")
        return
    unknown = [n for n in args.only if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)} (see --list)")
    work = args.dir or tempfile.mkdtemp(prefix="charrnn-hostile-")
    os.makedirs(work, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if not args.numba:
        env["CHARRNN_KERNELS"] = "numpy"
    s = Sweep(work, args.timeout, args.limit_mb << 20, args.rss_mb << 20, env, verbose=args.verbose)
    started = time.monotonic()
    prepare(s)
    rows, tried = [], 0
    try:
        for name, (category, fn, variants) in SCENARIOS.items():
            if args.only and name not in args.only:
                continue
            for variant in variants:
                label = name if variant is None else f"{name}[{variant}]"
                s.scenario = label
                t0, runs0, found0 = time.monotonic(), s.runs, len(s.findings)
                if args.verbose:
                    print(f"  {label}", file=sys.stderr)
                try:
                    fn(s, variant)
                except Exception as exc:  # noqa: BLE001 - the harness's own failure is reported, not hidden
                    s.note("harness", f"{type(exc).__name__}: {exc}")
                tried += 1
                rows.append((category, label, s.runs - runs0, s.findings[found0:], time.monotonic() - t0))
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    report(rows, tried, s, time.monotonic() - started)


def report(rows, tried, s: Sweep, seconds: float) -> None:
    print(f"\n{'category':14} {'scenarios':>9} {'runs':>5} " + " ".join(f"{k:>10}" for k in KINDS))
    for category in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == category]
        counts = [sum(1 for r in mine if any(f.kind == k for f in r[3])) for k in KINDS]
        print(f"{category:14} {len(mine):>9} {sum(r[2] for r in mine):>5} " + " ".join(f"{c:>10}" for c in counts))
    totals = [sum(1 for r in rows if any(f.kind == k for f in r[3])) for k in KINDS]
    print(f"{'all':14} {tried:>9} {s.runs:>5} " + " ".join(f"{c:>10}" for c in totals))
    print("(a column counts the scenarios with at least one finding of its kind)")
    failing = [r for r in rows if r[3]]
    if failing:
        print(f"\nScenarios with findings ({len(failing)}):")
        for _, label, _, found, _ in failing:
            for f in found[:3]:
                print(f"  {label}: {f.kind}: {f.what[:150]}")
            if len(found) > 3:
                print(f"  {label}: ... {len(found) - 3} more")
    harness = [f for f in s.findings if f.kind == "harness"]
    print(f"\n{tried} scenarios, {s.runs} runs in {seconds:.0f}s"
          + (f"; {len(harness)} scenario(s) failed in the harness itself" if harness else ""))


if __name__ == "__main__":
    main()
