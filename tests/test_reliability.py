"""Reliability (issue 6): kill -9 at random moments, Ctrl-C and SIGTERM, one writer per run
(issue 19), a full disk, divergence, run files whose contents lie (state, model metadata, line offsets),
no pickle anywhere, and hostile corpora. Exact resume across processes is in
test_resume.py; checkpoint files with broken bytes are in test_checkpoint.py.

The subprocess tests run `python -m charrnn` with tiny models on the NumPy reference
(see CHILD_ENV) and BLAS pinned to one thread, so that every process computes the
same numbers. Where the process is not what is tested (a second trainer refused by
the lock, a resume after a signal, divergence, hostile corpora), cli.main runs in
this process through `invoke`.
"""

import ast
import errno
import fcntl
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import charrnn
from charrnn.files import checkpoint, corpus, layout
from charrnn.work import loop as tr
from charrnn.runs import models, runlog, rundir
from charrnn.tasks import registry as tasks
from charrnn.files.config import TrainConfig
from charrnn.errors import CharRNNError, CheckpointError
from charrnn.files.runlock import RunLock
from tiny_runs import PINNED, REFERENCE, TINY, compiled, invoke, read_log, stream_text, untimed

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and permissions")


# The children here test the process and its files (signals, kill -9, the lock), not the arithmetic, so
# most run the NumPy reference (tiny_runs.REFERENCE says why): the kill -9 test alone starts 28. More than
# a quarter of the kills land on the compiled kernels all the same (the path users run):
# test_kill_9_on_the_compiled_kernels_never_tears_a_checkpoint.
CHILD_ENV = {**PINNED, **REFERENCE}


def popen(args, code=None, **env):
    """`python -m charrnn ARGS`, or `python -c CODE ARGS` where CODE ends by calling charrnn's main()."""
    head = [sys.executable, "-m", "charrnn"] if code is None else [sys.executable, "-c", code]
    return subprocess.Popen([*head, *map(str, args)], env={**CHILD_ENV, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def charrnn_run(*args, code=None, timeout=60, **env):
    proc = popen(args, code, **env)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, out, err


def assert_one_line_error(code, out, err, *fragments, exit_code=1):
    assert code == exit_code, err
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err
    return lines[0]


def temp_files(directory):
    return sorted(p.name for p in Path(directory).rglob(".*.tmp"))


def digests(directory, skip=()):
    """sha256 of every file under directory, by relative path."""
    out = {}
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file() and path.name not in skip:
            out[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def wait_for(condition, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def model_step(directory):
    return checkpoint.load_model(os.path.join(directory, layout.MODEL_FILE))[2]["training"]["step"]


# Runs charrnn's main() with every checkpoint write going out in 512-byte pieces with a pause
# between them, so that a save takes long enough for signals and kills to land inside it. The
# first write of a save creates the file named by CHARRNN_TEST_SAVING, if set.
SLOW_SAVES = r"""
import os, sys, time
from charrnn.files import checkpoint
real_write_all = checkpoint._write_all
marker = os.environ.get("CHARRNN_TEST_SAVING")
pause = float(os.environ.get("CHARRNN_TEST_PAUSE", "0.0002"))

def slow_write_all(out, buf):
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
    view = memoryview(buf).cast("B")
    for i in range(0, view.nbytes, 512):
        real_write_all(out, view[i:i + 512])
        time.sleep(pause)

checkpoint._write_all = slow_write_all
from charrnn.cli import main
main()
"""


# ---------------------------------------------------------------- kill -9


def test_resuming_brings_a_lagging_model_up_to_the_state(tmp_path, corpus_file):
    """A kill between a save's renames leaves the model a save behind the state; resume exports it
    again, so that a second such kill cannot leave it two behind."""
    run = tmp_path / "run"
    assert invoke(["train", corpus_file, *TINY, "--max-steps", 1, "--eval-every", 1, "--quiet", "--out", run]).exit_code == 0
    shutil.copy(run / layout.MODEL_FILE, tmp_path / "step1.safetensors")
    assert invoke(["train", "--resume", run, "--max-steps", 2, "--quiet"]).exit_code == 0
    shutil.copy(tmp_path / "step1.safetensors", run / layout.MODEL_FILE)  # as a kill after the state's rename
    assert model_step(run) == 1
    resumed = rundir.resume_run(str(run))
    assert resumed.step == 2 and model_step(run) == 2
    params = checkpoint.load_model(run / layout.MODEL_FILE)[0]
    for name, value in params.items():
        np.testing.assert_array_equal(value, resumed.params[name])


def test_kill_9_at_random_moments_never_tears_a_checkpoint(tmp_path, corpus_file):
    """25 seeded SIGKILLs while training with a save after every step (slowed, so that most kills land
    inside a save). After each: every checkpoint loads, the model is the state's step or the one before,
    and the log holds the state's steps (plus at most the one being saved). The next --resume removes the
    leftover temp files. In the end the run, finished normally, equals a run that was never killed."""
    kill_at_random_moments(tmp_path, corpus_file, trials=25, seed=20240606, min_torn=5)


def test_kill_9_on_the_compiled_kernels_never_tears_a_checkpoint(tmp_path, corpus_file):
    """The same on the path users run: 10 kills (of the file's 37, more than a quarter) of children on the
    compiled kernels, in their own run (its bits are not the reference's), ending equal to a run of
    those kernels that was never killed."""
    compiled("kernels")  # numba loads here (else a skip, or CI's failure, naming why)
    kill_at_random_moments(tmp_path, corpus_file, trials=10, seed=20261207, min_torn=2, CHARRNN_KERNELS="numba")


def kill_at_random_moments(tmp_path, corpus_file, trials: int, seed: int, min_torn: int, **env):
    """`trials` seeded SIGKILLs of `train --resume` children (env: their extra environment), checked as
    test_kill_9_at_random_moments_never_tears_a_checkpoint says; at least min_torn of them inside a save."""
    run = tmp_path / "run"
    code, _, err = charrnn_run("train", corpus_file, *TINY, "--max-steps", 2, "--eval-every", 1, "--quiet",
                               "--out", run, **env)
    assert code == 0, err
    rng = random.Random(seed)
    torn = 0
    for trial in range(trials):
        leftovers = temp_files(run)
        log_size = os.path.getsize(run / layout.LOG_FILE)
        proc = popen(["train", "--resume", run, "--max-steps", 10**6, "--eval-every", 1, "--quiet"], SLOW_SAVES,
                     **env)
        try:
            if trial % 5 == 4:  # now and then, at any moment from the start: importing, resuming, training
                time.sleep(rng.uniform(0.0, 0.4))
            else:  # once training is under way, during a step or (mostly) a save
                wait_for(lambda: os.path.getsize(run / layout.LOG_FILE) > log_size, proc)
                time.sleep(rng.uniform(0.0, 0.03))
            assert proc.poll() is None
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.communicate()
        assert proc.returncode == -signal.SIGKILL

        if os.path.getsize(run / layout.LOG_FILE) != log_size:  # it got as far as resuming
            assert not set(leftovers) & set(temp_files(run)), "resume did not remove the leftover temp files"
        torn += bool(temp_files(run))
        _, meta = checkpoint.load_state(run)  # never torn: it loads, and everything in it is valid
        step = meta["progress"]["step"]
        assert model_step(run) in (step - 1, step)  # the state is written first, the model right after
        checkpoint.load_model(run / layout.BEST_FILE)
        logged = [r["step"] for r in read_log(run)]
        assert logged in (list(range(1, step + 1)), list(range(1, step + 2))), (step, logged[-3:])
    assert torn >= min_torn, "too few kills landed inside a save to test it"

    # finish the run normally, then compare with a run that was never interrupted
    _, meta = checkpoint.load_state(run)
    final = meta["progress"]["step"] + 3
    code, _, err = charrnn_run("train", "--resume", run, "--max-steps", final, "--quiet", **env)
    assert code == 0 and "Warning" not in err, err  # no fall-back from the kernels asked for
    assert temp_files(run) == []
    code, _, err = charrnn_run("train", corpus_file, *TINY, "--max-steps", final, "--eval-every", 1, "--quiet",
                               "--out", tmp_path / "reference", **env)
    assert code == 0, err
    a, meta_a = checkpoint.load_state(run)
    b, meta_b = checkpoint.load_state(tmp_path / "reference")
    assert meta_a["progress"]["step"] == meta_b["progress"]["step"] == final
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name
    assert untimed(read_log(run)) == untimed(read_log(tmp_path / "reference"))


# ---------------------------------------------------------------- SIGINT and SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_saves_says_where_and_exits_128_plus_n(tmp_path, corpus_file, sig):
    run = tmp_path / "run"
    proc = popen(["train", corpus_file, *TINY, "--max-steps", 10**6, "--eval-every", 10**6, "--log-every", 1,
                  "--out", run])
    try:
        wait_for(lambda: (run / layout.LOG_FILE).exists(), proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig == (130 if sig == signal.SIGINT else 143)
    assert out == "" and "Traceback" not in err
    assert "Stopping after this step" in err
    assert "Done (interrupted)" in err and f"saved {run / layout.MODEL_FILE}" in err
    _, meta = checkpoint.load_state(run)
    step = meta["progress"]["step"]
    assert step >= 1 and model_step(run) == step
    log = read_log(run)
    assert [r["step"] for r in log] == list(range(1, step + 1)) and "val_loss" in log[-1]
    assert temp_files(run) == []
    code, _, err = invoke(["train", "--resume", run, "--max-steps", step + 2, "--quiet"])
    assert code == 0, err
    assert read_log(run)[-1]["step"] == step + 2


def test_more_signals_during_the_save_do_not_damage_it(tmp_path, corpus_file):
    """Ctrl-C, then Ctrl-C again (and SIGTERM) while the checkpoint is being written: the save completes."""
    run, saving = tmp_path / "run", tmp_path / "saving"
    proc = popen(["train", corpus_file, *TINY, "--max-steps", 10**6, "--eval-every", 10**6, "--log-every", 1,
                  "--out", run], SLOW_SAVES, CHARRNN_TEST_SAVING=str(saving), CHARRNN_TEST_PAUSE="0.005")
    try:
        wait_for(lambda: (run / layout.LOG_FILE).exists(), proc)
        assert not saving.exists()
        proc.send_signal(signal.SIGINT)
        wait_for(saving.exists, proc)
        for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGINT):
            proc.send_signal(sig)
            time.sleep(0.01)
        assert proc.poll() is None, "a second signal interrupted the save"
        while proc.poll() is None:  # and more while it finishes and exits
            proc.send_signal(signal.SIGINT)
            time.sleep(0.005)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Done (interrupted)" in err
    _, meta = checkpoint.load_state(run)
    step = meta["progress"]["step"]
    assert model_step(run) == step and read_log(run)[-1]["step"] == step
    assert temp_files(run) == []
    code, _, err = invoke(["train", "--resume", run, "--max-steps", step + 1, "--quiet"])
    assert code == 0, err


# ---------------------------------------------------------------- one writer per run


def stop(proc):
    """Ctrl-C a trainer and wait for it: it saves and exits 130."""
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err


def busy_error(directory, pid):
    return (rf"Error: {re.escape(str(directory))} is being trained by process {pid} \(started \d\d:\d\d:\d\d\); "
            rf"wait for it, or train into another --out")


@pytest.mark.parametrize("second", ["fresh", "resume"])
def test_a_second_trainer_on_a_run_fails_at_once_and_the_first_trains_on(tmp_path, corpus_file, second):
    """Two trainers on one run directory: the second fails with one line naming the first, while the first
    trains on, and the first's log then holds every step once, in order."""
    run = tmp_path / "run"
    first = popen(["train", corpus_file, *TINY, "--max-steps", 10**6, "--eval-every", 2, "--log-every", 1,
                   "--quiet", "--out", run])
    try:
        wait_for(lambda: (run / layout.STATE_FILE).exists(), first)
        args = ([corpus_file, *TINY, "--out", run] if second == "fresh" else ["--resume", run]) + ["--max-steps", 3]
        code, out, err = invoke(["train", *args])
        assert first.poll() is None, "the first trainer stopped: the second did not fail at once"
        line = assert_one_line_error(code, out, err)
        assert re.fullmatch(busy_error(run, first.pid), line), line
    finally:
        stop(first)
    steps = [r["step"] for r in read_log(run)]
    assert len(steps) >= 2 and steps == list(range(1, len(steps) + 1))
    assert checkpoint.load_state(run)[1]["progress"]["step"] == steps[-1]
    assert not (run / layout.LOCK_FILE).exists()  # released on the way out


def test_a_trainer_refused_by_the_lock_writes_nothing_into_the_run(tmp_path, corpus_file):
    run = tmp_path / "run"
    code, _, err = invoke(["train", corpus_file, *TINY, "--max-steps", 2, "--quiet", "--out", run])
    assert code == 0, err
    (run / ".model.safetensors.1234.tmp").write_bytes(b"left by a crash")  # what a resume would clean up
    with RunLock(run):  # this process holds the run; the trainers below open the lock file anew, and
        before = digests(run)  # flock refuses a second open file description in the same process too
        for args in ([corpus_file, *TINY, "--max-steps", 4, "--out", run], ["--resume", run, "--max-steps", 4]):
            code, out, err = invoke(["train", *args])
            assert re.fullmatch(busy_error(run, os.getpid()), assert_one_line_error(code, out, err))
            assert digests(run) == before
    assert not (run / layout.LOCK_FILE).exists()
    code, _, err = invoke(["train", "--resume", run, "--max-steps", 4, "--quiet"])  # free again
    assert code == 0, err
    assert temp_files(run) == [] and model_step(run) == 4


def test_a_killed_trainer_leaves_no_lock_behind(tmp_path, corpus_file):
    """kill -9 skips every cleanup, and the lock goes with the process all the same."""
    run = tmp_path / "run"
    proc = popen(["train", corpus_file, *TINY, "--max-steps", 10**6, "--eval-every", 1, "--quiet", "--out", run])
    try:
        wait_for(lambda: (run / layout.STATE_FILE).exists(), proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert (run / layout.LOCK_FILE).exists()  # the file stays, the lock does not
    with RunLock(run):
        pass


def test_two_fresh_runs_of_one_corpus_started_together_get_two_directories(tmp_path, corpus_file):
    procs = [subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(corpus_file), *TINY, "--max-steps", "3",
                               "--log-every", "1", "--quiet"], cwd=tmp_path, env=CHILD_ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["corpus", "corpus-2"]
    for name in ("corpus", "corpus-2"):
        run = tmp_path / "checkpoints" / name
        assert [r["step"] for r in read_log(run)] == [1, 2, 3] and model_step(run) == 3


def test_fresh_run_names_are_claimed_atomically(tmp_path, monkeypatch):
    """Sixteen claims of one name at the same moment: sixteen directories, made by the claims themselves."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints" / "x").mkdir(parents=True)  # an existing directory is never reused, even empty
    barrier, claimed = threading.Barrier(16), []

    def claim():
        barrier.wait()
        claimed.append(rundir.fresh_run_dir("x"))
    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(os.path.join("checkpoints", f"x-{n}") for n in range(2, 18))
    assert all(os.path.isdir(path) for path in claimed)


def test_readers_need_no_lock_and_always_see_a_complete_file(tmp_path, corpus_file):
    """sample, eval and info, and the log as plot reads it, while the trainer saves after every step."""
    run = tmp_path / "run"
    proc = popen(["train", corpus_file, *TINY, "--max-steps", 10**6, "--eval-every", 1, "--log-every", 1,
                  "--quiet", "--out", run])
    seen, reads = set(), 0
    try:
        wait_for(lambda: (run / layout.MODEL_FILE).exists(), proc)
        while len(seen) < 5 or reads < 60:
            assert proc.poll() is None and reads < 3000, (reads, seen)
            for args in (["sample", "-c", run, "--length", 5, "--seed", 0, "-q"], ["eval", "-c", run, "--json", "-q"],
                         ["info", run]):
                code, out, err = invoke(args)
                # stderr: nothing, or eval's warning that this tiny held-out split holds an unknown token
                assert code == 0 and all(line.startswith("Warning: ") for line in err.splitlines()), err
                reads += 1
            seen.add(models.load_checkpoint(run)[3]["training"]["step"])
            steps = [r["step"] for r in runlog.read_log(run / layout.LOG_FILE)]
            assert steps == list(range(1, len(steps) + 1))
    finally:
        stop(proc)


def test_a_filesystem_that_cannot_lock_is_refused_unless_no_lock(tmp_path, corpus_file, monkeypatch):
    def cannot_lock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(fcntl, "flock", cannot_lock)
    run = tmp_path / "run"
    code, out, err = invoke(["train", corpus_file, *TINY, "--max-steps", 2, "--out", run])
    line = assert_one_line_error(code, out, err, f"cannot lock {run}", "No locks available", "--no-lock")
    assert not run.exists(), line  # nothing left behind
    code, _, err = invoke(["train", corpus_file, *TINY, "--max-steps", 2, "-q", "--no-lock", "--out", run])
    assert code == 0, err
    code, _, err = invoke(["train", "--resume", run, "--max-steps", 3, "-q", "--no-lock"])
    assert code == 0, err
    assert model_step(run) == 3 and not (run / layout.LOCK_FILE).exists()


def test_deleting_the_lock_file_mid_run_does_not_let_a_second_trainer_in(tmp_path, corpus_file):
    """The lock is on the run directory itself: train.lock only says who holds it, and removing it (by hand,
    or by a cleanup script) frees nothing."""
    run = tmp_path / "run"
    first = popen(["train", corpus_file, *TINY, "--max-steps", 10**6, "--eval-every", 2, "--log-every", 1,
                   "--quiet", "--out", run])
    try:
        wait_for(lambda: (run / layout.STATE_FILE).exists(), first)
        assert (run / layout.LOCK_FILE).read_text().split()[0] == str(first.pid)
        os.unlink(run / layout.LOCK_FILE)
        code, out, err = invoke(["train", "--resume", run, "--max-steps", 3])
        line = assert_one_line_error(code, out, err)
        assert line == f"Error: {run} is being trained by another process; wait for it, or train into another --out"
        assert first.poll() is None, "the first trainer stopped"
    finally:
        stop(first)
    steps = [r["step"] for r in read_log(run)]
    assert steps == list(range(1, len(steps) + 1))  # one trainer's steps, each once
    assert checkpoint.load_state(run)[1]["progress"]["step"] == steps[-1]


# ---------------------------------------------------------------- symbolic links in a run directory

VICTIM = b"a file of the user's, outside the run\n" * 100


@pytest.fixture
def linked_run(tmp_path, corpus_file):
    """(run, victim, link): a 2-step run, and a victim file outside it that a run file may be made to point to."""
    run = tmp_path / "run"
    code, _, err = invoke(["train", corpus_file, *TINY, "--max-steps", 2, "--eval-every", 1, "-q", "--out", run])
    assert code == 0, err
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)

    def link(name):
        path = run / name
        if path.exists():
            path.rename(tmp_path / (path.name + ".real"))
        path.symlink_to(victim)
        return path
    return run, victim, link


@pytest.mark.parametrize("name", [layout.LOCK_FILE, layout.MODEL_FILE, layout.BEST_FILE, "data/train_index.npy"])
def test_a_linked_run_file_that_is_replaced_whole_is_replaced_never_written_through(linked_run, name):
    """train.lock and the checkpoints are written by atomic.py: the rename replaces the link itself."""
    run, victim, link = linked_run
    path = link(name)
    code, out, err = invoke(["train", "--resume", run, "--max-steps", 4, "-q"])
    if name == "data/train_index.npy":  # written by sample --novelty, the one writer of that file
        code, out, err = invoke(["sample", "-c", run, "--novelty", "--length", 5, "-q"])
    assert code == 0 and "Traceback" not in err, err
    assert victim.read_bytes() == VICTIM
    assert not path.is_symlink()
    if name != layout.LOCK_FILE:  # released: removed
        assert path.stat().st_size > 0 and temp_files(run) == []


@pytest.mark.parametrize("name", [layout.LOG_FILE, layout.RUN_FILE])
def test_a_linked_log_or_identity_is_refused_in_one_line_and_its_target_untouched(linked_run, name):
    """log.jsonl is appended to and cut, not replaced: a link there is refused (atomic.open_fd), before
    anything in the run is written."""
    run, victim, link = linked_run
    link(name)
    before = digests(run)
    code, out, err = invoke(["train", "--resume", run, "--max-steps", 4])
    line = assert_one_line_error(code, out, err, str(run / name))
    assert "symbolic link" in line or "Too many levels" in line, line
    assert victim.read_bytes() == VICTIM and digests(run) == before


def test_a_fifo_for_a_log_is_refused_without_hanging(tmp_path, corpus_file):
    run = tmp_path / "run"
    assert invoke(["train", corpus_file, *TINY, "--max-steps", 2, "-q", "--out", run]).exit_code == 0
    (run / layout.LOG_FILE).unlink()
    os.mkfifo(run / layout.LOG_FILE)
    code, out, err = invoke(["train", "--resume", run, "--max-steps", 4])
    assert_one_line_error(code, out, err, "not a regular file", str(run / layout.LOG_FILE))


def test_a_fresh_start_never_writes_through_links(tmp_path, corpus_file):
    """A directory given as --out that holds a linked log.jsonl or data folder: refused, nothing written there."""
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_bytes(VICTIM)
    for name in (layout.LOG_FILE, layout.DATA_DIR):
        out = tmp_path / f"out-{name}"
        out.mkdir()
        (out / name).symlink_to(victim_dir if name == layout.DATA_DIR else victim_dir / "keep.txt")
        code, stdout, err = invoke(["train", corpus_file, *TINY, "--max-steps", 2, "--out", out])
        assert_one_line_error(code, stdout, err, exit_code=2 if name == layout.LOG_FILE else 1)
        assert sorted(os.listdir(victim_dir)) == ["keep.txt"] and (victim_dir / "keep.txt").read_bytes() == VICTIM


def test_run_files_are_opened_for_writing_in_one_place():
    """Outside atomic.py no module opens a file for writing (builtin open with w, a, x or +; os.open
    with a writing flag; os.truncate): every run file is written through atomic.open_fd, which follows
    no link (os.fdopen wraps a descriptor it opened). The one exception is os.devnull, where the CLI
    sends output whose reader has gone."""
    writing_flags = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}
    for path in sorted(Path(charrnn.__file__).parent.rglob("*.py")):
        if path.name == "atomic.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.name}:{node.lineno}"
            func = node.func
            name = func.id if isinstance(func, ast.Name) else \
                f"{func.value.id}.{func.attr}" if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                else None
            if name == "open" and len(node.args) >= 2:
                mode = node.args[1]
                assert isinstance(mode, ast.Constant) and not set(str(mode.value)) & set("wax+"), where
            elif name == "open":
                assert not any(k.arg == "mode" for k in node.keywords), where
            elif name == "os.open":
                flags = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
                devnull = ast.unparse(node.args[0]) == "os.devnull"
                assert devnull or not flags & writing_flags, where
            else:
                assert name not in ("os.truncate", "os.mkfifo", "io.open"), where


# ---------------------------------------------------------------- a closed stderr


def test_a_closed_stderr_costs_no_work(tmp_path, corpus_file):
    """`charrnn train ... 2>&1 | head`: once head has gone, the trainer trains on silently (its output is a
    view of the run, not the work), and a later Ctrl-C saves and stops as ever."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(corpus_file), *TINY, "--max-steps",
                             str(10**6), "--eval-every", "1", "--log-every", "1", "--out", str(run)],
                            env=CHILD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr.readline()  # its first line, as head reads it
        proc.stderr.close()  # as head does after its lines: the trainer's next line meets a closed pipe
        logged = lambda: len(read_log(run)) if (run / layout.LOG_FILE).exists() else 0  # noqa: E731
        seen = logged()
        deadline = time.monotonic() + 30
        while logged() < seen + 5:  # an evaluation line went to the closed pipe at every one of these steps
            assert proc.poll() is None, f"the trainer stopped (exit {proc.returncode})"
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
        proc.wait()
    step = checkpoint.load_state(run)[1]["progress"]["step"]
    assert [r["step"] for r in read_log(run)] == list(range(1, step + 1)) and model_step(run) == step
    code, _, err = invoke(["train", "--resume", run, "--max-steps", step + 2, "-q"])
    assert code == 0, err


# ---------------------------------------------------------------- a full disk


def tiny_run(directory, **kw):
    options = {"cell": "lstm", "layers": 1, "hidden": 8, "embed": 8}
    tconfig = TrainConfig(**{"batch_size": 2, "seq_len": 8, "eval_every": 2, "log_every": 1,
                                "max_steps": 6, **kw})
    return rundir.start_run(directory, stream_text(400), None, options, tconfig)


def assert_ends_as_a_fresh_run(run, tmp_path):
    """Train run (a resumed tiny_run) to its end and check its weights and log are those of a tiny_run
    trained from scratch without interruption, bit for bit."""
    for _ in tr.train(run):
        pass
    reference = tiny_run(tmp_path / "reference")
    for _ in tr.train(reference):
        pass
    for name in run.params:
        assert run.params[name].tobytes() == reference.params[name].tobytes(), name
    assert untimed(read_log(run.directory)) == untimed(read_log(tmp_path / "reference"))


class DiskFull:
    """Writes each checkpoint file in 256-byte pieces and counts them; once armed, the piece numbered
    `fail_at` (0-based) raises ENOSPC."""

    def __init__(self, monkeypatch):
        self.real = checkpoint._write_all
        self.calls = 0
        self.fail_at = None
        monkeypatch.setattr(checkpoint, "_write_all", self)

    def __call__(self, out, buf):
        view = memoryview(buf).cast("B")
        for i in range(0, view.nbytes, 256):
            if self.fail_at is not None and self.calls == self.fail_at:
                self.calls += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.calls += 1
            self.real(out, view[i:i + 256])


@pytest.mark.parametrize("where", ["first write", "middle", "last write"])
def test_a_full_disk_during_a_save_leaves_the_previous_checkpoint_byte_identical(tmp_path, monkeypatch, where):
    disk = DiskFull(monkeypatch)
    run = tiny_run(tmp_path / "run")
    events = tr.train(run)
    for event in events:
        if event["event"] == "step" and event["step"] == 3:
            break
    # the save at step 2 wrote the state, the latest and the best model: count its writes
    saved = digests(tmp_path / "run", skip=(layout.LOG_FILE,))
    writes_per_save = disk.calls
    assert writes_per_save > 6
    disk.calls = 0
    disk.fail_at = {"first write": 0, "middle": writes_per_save // 2, "last write": writes_per_save - 1}[where]
    with pytest.raises(CheckpointError) as info:
        for event in events:
            pass
    message = str(info.value)
    assert "No space left on device" in message and "\n" not in message
    assert digests(tmp_path / "run", skip=(layout.LOG_FILE,)) == saved
    assert temp_files(tmp_path / "run") == []
    # resuming continues from step 2 and ends exactly where a run without the full disk ends
    monkeypatch.undo()
    resumed = rundir.resume_run(tmp_path / "run")
    assert resumed.step == 2
    assert_ends_as_a_fresh_run(resumed, tmp_path)


def test_a_full_disk_through_the_cli_is_one_line_and_exit_1(tmp_path, corpus_file, monkeypatch):
    run = tmp_path / "run"
    code, _, err = invoke(["train", corpus_file, *TINY, "--max-steps", 2, "--eval-every", 1, "-q", "--out", run])
    assert code == 0, err
    saved = digests(run, skip=(layout.LOG_FILE,))
    disk = DiskFull(monkeypatch)
    disk.fail_at = 3
    code, out, err = invoke(["train", "--resume", run, "--max-steps", 4, "-q"])
    line = assert_one_line_error(code, out, err, "cannot write checkpoint", "No space left on device")
    assert str(run) in line
    assert digests(run, skip=(layout.LOG_FILE,)) == saved and temp_files(run) == []


def test_run_files_are_created_0644_under_umask_022(tmp_path):
    old = os.umask(0o022)
    try:
        for _ in tr.train(tiny_run(tmp_path / "run", max_steps=2)):
            pass
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {layout.MODEL_FILE, layout.BEST_FILE, layout.STATE_FILE, layout.LOG_FILE, "train.npy", "val.npy"}
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o644, path.name


# ---------------------------------------------------------------- divergence


def no_nonfinite_values(directory):
    """Every checkpoint in the run loads, which checks that every tensor is finite."""
    for name in (layout.MODEL_FILE, layout.BEST_FILE):
        params, _, _ = checkpoint.load_model(os.path.join(directory, name))
        assert all(np.isfinite(p).all() for p in params.values())
    arrays, _ = checkpoint.load_state(directory)
    assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")


# the weights grow until the loss is no longer finite (at step 10 or so)
DIVERGING = ["--optim", "sgd", "--lr", "1e38", "--clip", "0"]


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, corpus_file):
    run = tmp_path / "run"
    code, _, err = invoke(["train", corpus_file, *TINY, *DIVERGING, "--max-steps", 1, "-q", "--out", run])
    assert code == 0, err
    saved = digests(run, skip=(layout.LOG_FILE,))
    code, out, err = invoke(["train", "--resume", run, "--max-steps", 100, "--eval-every", 1000, "-q"])
    line = assert_one_line_error(code, out, err, "non-finite at step ")
    bad_step = int(line.split("at step ")[1].split()[0])
    assert bad_step >= 2
    assert digests(run, skip=(layout.LOG_FILE,)) == saved, "the last good checkpoint changed"
    assert temp_files(run) == []

    # with a save after every step, each checkpoint written is finite and the last is the step before
    code, out, err = invoke(["train", corpus_file, *TINY, *DIVERGING, "--max-steps", 100, "--eval-every", 1,
                             "-q", "--out", tmp_path / "every"])
    assert_one_line_error(code, out, err, f"non-finite at step {bad_step}")
    assert checkpoint.load_state(tmp_path / "every")[1]["progress"]["step"] == bad_step - 1
    no_nonfinite_values(tmp_path / "every")


def test_an_update_that_overflows_the_weights_stops_before_anything_is_saved(tmp_path, corpus_file):
    """Adam's first step at this learning rate overflows float32 although loss and gradient are finite."""
    run = tmp_path / "run"
    code, out, err = invoke(["train", corpus_file, *TINY, "--optim", "adam", "--lr", "1e38", "--max-steps", 5,
                             "--eval-every", 1, "-q", "--out", run])
    assert_one_line_error(code, out, err, "weights became non-finite at step 1", "--lr")
    assert not (run / layout.STATE_FILE).exists() and not (run / layout.MODEL_FILE).exists()
    assert temp_files(run) == []


def test_on_nonfinite_skip_skips_and_counts_through_the_cli(tmp_path, corpus_file):
    run = tmp_path / "run"
    code, out, err = invoke(["train", corpus_file, *TINY, *DIVERGING, "--on-nonfinite", "skip",
                             "--max-steps", 16, "--eval-every", 4, "--log-every", 1, "--out", run])
    assert code == 0 and out == "" and "Traceback" not in err, err
    log = read_log(run)
    skipped = [r for r in log if "skipped_nonfinite" in r]
    assert skipped, "this learning rate was expected to diverge"
    assert [r["skipped_nonfinite"] for r in skipped] == list(range(1, len(skipped) + 1))
    assert f"{len(skipped)} non-finite steps skipped" in err
    assert all(math.isfinite(r["loss"]) for r in log if "loss" in r)
    _, meta = checkpoint.load_state(run)
    assert meta["progress"]["step"] == 16 and meta["progress"]["skipped"] == len(skipped)
    no_nonfinite_values(run)


def test_a_nan_at_a_given_step_through_the_cli(tmp_path, corpus_file, monkeypatch):
    task = tasks.get("lm")
    real = task.loss_and_grads

    def nan_at_step_5(run, *args):
        loss, grads, final, n = real(run, *args)
        if run.step + 1 == 5:
            grads = {k: np.full_like(v, np.nan) for k, v in grads.items()}  # a finite loss, a NaN gradient
        return loss, grads, final, n
    monkeypatch.setattr(task, "loss_and_grads", nan_at_step_5)
    run = tmp_path / "run"
    code, out, err = invoke(["train", corpus_file, *TINY, "--max-steps", 10, "--eval-every", 3, "-q", "--out", run])
    assert_one_line_error(code, out, err, "non-finite at step 5")
    assert checkpoint.load_state(run)[1]["progress"]["step"] == 3
    code, out, err = invoke(["train", corpus_file, *TINY, "--max-steps", 10, "--eval-every", 3, "-q",
                             "--on-nonfinite", "skip", "--out", tmp_path / "skip"])
    assert code == 0, err
    assert [r["step"] for r in read_log(tmp_path / "skip") if "skipped_nonfinite" in r] == [5]


# ---------------------------------------------------------------- a start that never saved


def assert_restartable(run, corpus_file, tmp_path, steps=4):
    """`--resume` says in one line to start again with the same --out; doing so clears what the failed start
    left and gives exactly the run a start into a new directory gives."""
    code, out, err = invoke(["train", "--resume", run, "--max-steps", steps])
    assert_one_line_error(code, out, err, "before its first checkpoint", f"--out {run}")
    args = [corpus_file, *TINY, "--max-steps", steps, "--eval-every", 2, "--log-every", 1, "-q"]
    code, _, err = invoke(["train", *args, "--out", run])
    assert code == 0, err
    code, _, err = invoke(["train", *args, "--out", tmp_path / "reference"])
    assert code == 0, err
    a, b = checkpoint.load_state(run)[0], checkpoint.load_state(tmp_path / "reference")[0]
    assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert untimed(read_log(run)) == untimed(read_log(tmp_path / "reference"))
    assert temp_files(run) == []


def test_a_start_killed_during_its_first_save_can_be_started_again(tmp_path, corpus_file):
    run, saving = tmp_path / "run", tmp_path / "saving"
    proc = popen(["train", corpus_file, *TINY, "--max-steps", 10**6, "--eval-every", 2, "--log-every", 1, "-q",
                  "--out", run], SLOW_SAVES, CHARRNN_TEST_SAVING=str(saving), CHARRNN_TEST_PAUSE="0.05")
    try:
        wait_for(saving.exists, proc)  # the first save has begun: its state file is being written, slowly
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert (run / layout.LOG_FILE).exists() and not (run / layout.STATE_FILE).exists()
    assert temp_files(run)  # the first save's temp file
    assert_restartable(run, corpus_file, tmp_path)


def test_a_full_disk_before_the_first_save_can_be_started_again(tmp_path, corpus_file, monkeypatch):
    run = tmp_path / "run"
    disk = DiskFull(monkeypatch)
    disk.fail_at = 0
    code, out, err = invoke(["train", corpus_file, *TINY, "--max-steps", 4, "--eval-every", 2, "-q", "--out", run])
    assert_one_line_error(code, out, err, "No space left on device")
    assert (run / layout.LOG_FILE).exists() and not (run / layout.STATE_FILE).exists()
    monkeypatch.undo()
    assert_restartable(run, corpus_file, tmp_path)


def test_a_loss_non_finite_before_the_first_save_says_so_and_can_be_started_again(tmp_path, corpus_file):
    run = tmp_path / "run"
    code, out, err = invoke(["train", corpus_file, *TINY, *DIVERGING, "--max-steps", 100, "--eval-every", 1000,
                             "--log-every", 1, "-q", "--out", run])
    line = assert_one_line_error(code, out, err, "non-finite at step", "no checkpoint was saved yet", f"--out {run}")
    assert "unchanged" not in line
    assert (run / layout.LOG_FILE).exists() and not (run / layout.STATE_FILE).exists()
    assert_restartable(run, corpus_file, tmp_path)


def test_numpy_numbers_as_settings_are_the_numbers_they_hold(tmp_path, corpus_file):
    """charrnn.train(seq_len=np.int64(8)) used to fail at the first save (not JSON), after the first log line."""
    run = charrnn.train(str(corpus_file), str(tmp_path / "run"), seq_len=np.int64(8), batch_size=np.int32(2),
                        hidden=np.int64(8), layers=np.uint8(1), embed=np.int16(8), lr=np.float32(0.5),
                        dropout=np.float64(0.0), max_steps=np.int64(3), eval_every=np.int64(2),
                        schedule="constant", warmup=np.int64(0))
    _, meta = checkpoint.load_state(run)
    assert meta["progress"]["step"] == 3
    assert meta["train"]["seq_len"] == 8 and meta["model"]["hidden"] == 8 and meta["train"]["lr"] == float(np.float32(0.5))
    charrnn.train(resume=run, max_steps=np.int64(5))
    assert checkpoint.load_state(run)[1]["progress"]["step"] == 5


def test_a_leftover_of_an_earlier_version_can_be_started_again_and_a_foreign_log_is_kept(tmp_path, corpus_file):
    """A directory left by a start that never saved, made before run.json existed (a log and data, nothing
    else) is cleared and started again; a log.jsonl that charrnn did not write is never removed."""
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "train_offsets.npy").write_bytes(b"left by a lines-mode start")
    (run / layout.LOG_FILE).write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "lo')  # cut short by a kill
    assert_restartable(run, corpus_file, tmp_path)
    assert not (run / "data" / "train_offsets.npy").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / layout.LOG_FILE).write_text("my own notes\n")
    code, out, err = invoke(["train", corpus_file, *TINY, "--max-steps", 2, "--out", mine])
    assert_one_line_error(code, out, err, "not a charrnn log", exit_code=2)
    assert (mine / layout.LOG_FILE).read_text() == "my own notes\n"


# ---------------------------------------------------------------- hostile run files on --resume
# (hostile checkpoint bytes are in test_checkpoint.py; these files are valid safetensors whose
# contents lie, or run data that was tampered with)


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory):
    """A stream-mode LSTM run and a lines-mode GRU run, 3 steps each."""
    root = tmp_path_factory.mktemp("saved")
    for name, mode, cell, text in (("stream", "stream", "lstm", stream_text(400)),
                                   ("lines", "lines", "gru", "\n".join(stream_text(60).split()) + "\n")):
        tconfig = TrainConfig(mode=mode, batch_size=2, seq_len=8, eval_every=3, log_every=1, max_steps=3)
        run = rundir.start_run(root / name, text, None, {"cell": cell, "layers": 1, "hidden": 8, "embed": 8}, tconfig)
        for _ in tr.train(run):
            pass
    return root


# In a fresh process: how much the peak resident memory grows while loading the file (the parser is
# native code, which tracemalloc cannot see).
PEAK_GROWTH = r"""
import resource, sys
from charrnn.files import checkpoint
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    checkpoint.load_tensors(sys.argv[1])
except checkpoint.CheckpointError as exc:
    print(exc)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KB (Linux)")
@pytest.mark.parametrize("length, size, message", [
    (2**63, 2**33, "header too large"), (2**31, 2**31, "header too large"),
    (100_000_001, 100_000_001, "header too large"), (99_999_999, 1000, "invalid header length"),
])
def test_header_length_bombs_are_refused_before_any_large_allocation(tmp_path, length, size, message):
    """The file is (sparsely) as long as its header claims, where the filesystem allows; or it is short."""
    path = tmp_path / "bomb"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", length) + b"{")
        f.truncate(size + 8 + 16)
    out = subprocess.run([sys.executable, "-c", PEAK_GROWTH, str(path)], capture_output=True, text=True, check=True)
    error, growth = out.stdout.splitlines()
    assert message in error and str(path) in error
    assert int(growth) < 5_000_000


def edited_state(source, target, edit):
    """Copy the run at source to target, with edit(arrays, meta) applied to its state file."""
    shutil.copytree(source, target)
    arrays, meta = checkpoint.load_state(target)
    edit(arrays, meta)
    for key in ("format_version", "charrnn_version", "kind"):
        meta.pop(key)
    checkpoint.save_state(target / layout.STATE_FILE, arrays, meta)
    return target


def _set(section, key, value):
    return lambda a, m: m[section].__setitem__(key, value)


HOSTILE_STATES = {
    "carried state of the wrong shape": lambda a, m: a.update({"carry/0": np.zeros((1, 3, 8), np.float32)}),
    "carried state of the wrong dtype": lambda a, m: a.update({"carry/1": a["carry/1"].astype(np.float64)}),
    "a third carried state": lambda a, m: a.update({"carry/2": a["carry/0"]}),
    "a parameter of the wrong shape": lambda a, m: a.update({"param/head.bias": np.zeros(3, np.float32)}),
    "a parameter of the wrong dtype": lambda a, m: a.update({"param/head.bias": a["param/head.bias"].astype("f8")}),
    "a missing parameter": lambda a, m: a.pop("param/head.weight"),
    "an extra parameter": lambda a, m: a.update({"param/rnn.weight_hh_l1": np.zeros((32, 8), np.float32)}),
    "an unknown tensor": lambda a, m: a.update({"payload": np.zeros(3, np.float32)}),
    "an optimizer slot of the wrong shape": lambda a, m: a.update({"optim/m/head.bias": np.zeros(2, np.float32)}),
    "a negative optimizer step": lambda a, m: a.update({"optim/t": np.array(-1, np.int64)}),
    "step as a string": _set("progress", "step", "3"),
    "step as a float": _set("progress", "step", 2.5),
    "step negative": _set("progress", "step", -1),
    "step true": _set("progress", "step", True),
    "best_val as a string": _set("progress", "best_val", "low"),
    "elapsed null": _set("progress", "elapsed", None),
    "log_bytes negative": _set("progress", "log_bytes", -5),
    "schedule_steps as a list": _set("progress", "schedule_steps", [1]),
    "a progress counter missing": lambda a, m: m["progress"].pop("log_count"),
    "progress as a list": lambda a, m: m.__setitem__("progress", [3]),
    "no vocabulary": lambda a, m: m.pop("vocab"),
    "a vocabulary one token short": lambda a, m: m["vocab"]["tokens"].pop(),
    "a model config that does not fit the weights": _set("model", "hidden", 9),
    "an unknown cell": _set("model", "cell", "transformer"),
    "batch size as a string": _set("train", "batch_size", "2"),
    "batch size zero": _set("train", "batch_size", 0),
    "an unknown optimizer": _set("train", "optim", "lbfgs"),
    "a fractional validation budget": _set("train", "eval_tokens", 1.5),
    "a negative seed": _set("train", "seed", -1),
    "a learning rate beyond any float": _set("train", "lr", 10**400),
    "a warm-up beyond any float": _set("train", "warmup", 10**400),
    "a step beyond any float": _set("progress", "step", 10**400),
    "an elapsed time beyond any float": _set("progress", "elapsed", 10**400),
    "lines mode for stream data": _set("train", "mode", "lines"),
    "training options as a list": lambda a, m: m.__setitem__("train", []),
    "a run id that is not one": lambda a, m: m["run"].__setitem__("id", "../../etc"),
    "the run's identity as a list": lambda a, m: m.__setitem__("run", [1]),
    "the data fingerprint of other data": lambda a, m: m["run"].__setitem__("data", "0" * 64),
}


def test_an_optimizer_state_that_does_not_fit_is_refused_in_the_optimizers_words(saved_runs, tmp_path):
    """optim raises a plain ValueError; resuming makes it a CheckpointError with the same message."""
    run = edited_state(saved_runs / "stream", tmp_path / "run", HOSTILE_STATES["a negative optimizer step"])
    with pytest.raises(CheckpointError, match=r"^\w+ state: 't' must be a non-negative 0-d integer array$"):
        rundir.resume_run(run, {"max_steps": 6})


@pytest.mark.parametrize("what", HOSTILE_STATES)
def test_a_state_file_whose_contents_lie_is_refused_before_use(saved_runs, tmp_path, what):
    run = edited_state(saved_runs / "stream", tmp_path / "run", HOSTILE_STATES[what])
    before = digests(run)
    with pytest.raises(CheckpointError) as info:
        rundir.resume_run(run, {"max_steps": 6})
    assert "\n" not in str(info.value)
    assert digests(run) == before


@pytest.mark.parametrize("option", ["--lr", "--max-epochs", "--clip", "--momentum"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_non_finite_options_are_refused_before_they_reach_a_checkpoint(tmp_path, corpus_file, option, value):
    """The state file stores options as strict JSON: infinity and NaN would make every save fail."""
    code, out, err = invoke(["train", corpus_file, *TINY, "--max-steps", 2, option, value, "--out", tmp_path / "r"])
    assert_one_line_error(code, out, err, "must be", exit_code=2)  # an option value: a usage error
    assert not (tmp_path / "r").exists()


def test_a_hostile_state_file_through_the_cli_is_one_line(saved_runs, tmp_path):
    run = edited_state(saved_runs / "stream", tmp_path / "run", HOSTILE_STATES["carried state of the wrong shape"])
    code, out, err = invoke(["train", "--resume", run, "--max-steps", 6])
    assert_one_line_error(code, out, err, str(run / layout.STATE_FILE), "carry/0")


def _offsets(ids_len, offsets):
    return {
        "going back": offsets[::-1],
        "past the end": np.append(offsets[:-1], ids_len + 7),
        "short of the end": np.append(offsets[:-1], ids_len - 1),
        "not starting at 0": np.concatenate([[1], offsets[1:]]),
        "negative": np.concatenate([[-4], offsets[1:]]),
        "no lines": np.zeros(1, np.int64),
        "empty": np.zeros(0, np.int64),
        "2**62": np.append(offsets[:-1], 2**62),
    }


@pytest.mark.parametrize("which", ["train", "val"])
def test_tampered_line_offsets_are_refused_before_use(saved_runs, tmp_path, which):
    source = saved_runs / "lines"
    n_ids = len(corpus.load_ids(source / "data" / f"{which}.npy"))
    offsets = np.array(corpus.load_ids(source / "data" / f"{which}_offsets.npy"))
    for i, (what, bad) in enumerate(_offsets(n_ids, offsets).items()):
        if which == "val" and what == "no lines":
            continue  # a held-out split may be empty
        run = tmp_path / f"run-{i}"
        shutil.copytree(source, run)
        np.save(run / "data" / f"{which}_offsets.npy", bad.astype(np.int64))
        with pytest.raises(CheckpointError, match=f"{which}_offsets.npy"):
            rundir.resume_run(run, {"max_steps": 6})


SCALARS = (st.none() | st.booleans() | st.integers(-3, 3) | st.integers(-2**70, 2**70) | st.floats(-3, 3)
           | st.floats() | st.text(max_size=5) | st.sampled_from(["lstm", "adam", "cosine", "lines", "float64"]))
HOSTILE_MODEL_META = {
    "training as a list": lambda m: m.__setitem__("training", [1]),
    "data as a list": lambda m: m.__setitem__("data", [1]),
    "an unknown data mode": lambda m: m["data"].__setitem__("mode", 5),
    "step as a string": lambda m: m["training"].__setitem__("step", "x"),
    "best validation loss as a string": lambda m: m["training"].__setitem__("best_val_loss", "low"),
    "elapsed as a list": lambda m: m["training"].__setitem__("elapsed", [1]),
}


@pytest.mark.parametrize("command", ["info", "sample", "eval"])
def test_model_metadata_that_lies_is_one_line_for_sample_eval_and_info(saved_runs, tmp_path, command):
    for i, (what, edit) in enumerate(HOSTILE_MODEL_META.items()):
        run = tmp_path / f"run-{i}"
        shutil.copytree(saved_runs / "stream", run)
        for name in (layout.MODEL_FILE, layout.BEST_FILE):
            params, config, meta = checkpoint.load_model(run / name)
            edit(meta)
            checkpoint.save_model(run / name, params, config,
                                  {k: v for k, v in meta.items() if k not in ("format_version", "charrnn_version",
                                                                              "kind", "model")})
        args = [command, run] if command == "info" else [command, "-c", run]
        code, out, err = invoke(args + (["--length", 5, "--seed", 0] if command == "sample" else []))
        assert str(run) in assert_one_line_error(code, out, err), what


def test_eval_refuses_damaged_held_out_line_offsets(saved_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(saved_runs / "lines", run)
    n_ids = len(corpus.load_ids(run / "data" / "val.npy"))
    offsets = np.array(corpus.load_ids(run / "data" / "val_offsets.npy"))
    for what, bad in _offsets(n_ids, offsets).items():
        if what == "no lines":
            continue
        np.save(run / "data" / "val_offsets.npy", bad.astype(np.int64))
        code, out, err = invoke(["eval", "-c", run])
        assert code == 1 and out == "" and "Traceback" not in err, what
        assert len(err.strip().splitlines()) == 1 and err.startswith("Error: "), what


JSON_VALUES = st.recursive(SCALARS,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                        max_size=3),
                           max_leaves=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(["progress", "train", "model", "run"]), data=st.data())
def test_fuzz_the_state_metadata(saved_runs, tmp_path_factory, section, data):
    """Any JSON value in place of any entry of the state's progress, training options or model config:
    resuming refuses it with a CheckpointError, or the run resumes and trains with only charrnn's errors."""
    _, meta = checkpoint.load_state(saved_runs / "stream")
    key = data.draw(st.sampled_from(sorted(meta[section])), label="key")
    value = data.draw(JSON_VALUES, label="value")
    run = tmp_path_factory.mktemp("fuzz") / "run"
    try:
        edited_state(saved_runs / "stream", run, _set(section, key, value))
    except CheckpointError:
        return  # not even writable (NaN, or a string the JSON encoder refuses)
    try:
        resumed = rundir.resume_run(run, {"max_steps": 5})
    except CheckpointError:
        return
    try:
        for _ in tr.train(resumed):
            pass
    except CharRNNError:
        pass
    finally:
        shutil.rmtree(run)


# ---------------------------------------------------------------- a state must belong to its run


def other_text(n_words=400):
    """A corpus of other characters than stream_text's: its vocabulary is larger, its ids differ."""
    return "".join(chr(ord("A") + i % 40) for i in range(n_words * 5)) + "\n"


@pytest.mark.parametrize("other", ["same corpus and settings", "a smaller vocabulary", "a larger vocabulary"])
def test_a_state_from_another_run_is_refused_before_anything_is_written(tmp_path, other):
    """`cp other/state.safetensors run/; charrnn train --resume run`: refused in one line, and nothing in the
    run changes (the model catch-up used to overwrite its model with the other run's weights first)."""
    run, source = tmp_path / "run", tmp_path / "other"
    text = {"same corpus and settings": stream_text(400), "a smaller vocabulary": "ab ba " * 300,
            "a larger vocabulary": other_text()}[other]
    for directory, corpus_text in ((run, stream_text(400)), (source, text)):
        for _ in tr.train(tiny_run(directory) if directory == run else
                          rundir.start_run(directory, corpus_text, None, {"cell": "lstm", "layers": 1, "hidden": 8,
                                                                          "embed": 8},
                                           TrainConfig(batch_size=2, seq_len=8, eval_every=2, max_steps=4))):
            pass
    shutil.copy(source / layout.STATE_FILE, run / layout.STATE_FILE)
    before = digests(run)
    with pytest.raises(CheckpointError, match="does not belong to the run") as info:
        rundir.resume_run(run, {"max_steps": 8})
    assert "\n" not in str(info.value)
    assert digests(run) == before
    code, out, err = invoke(["train", "--resume", run, "--max-steps", 8])
    assert_one_line_error(code, out, err, "does not belong to the run", "put the run's own state.safetensors back")
    assert digests(run) == before


def made_the_old_way(directory):
    """Strip what a run made before run ids does not hold: run.json, the state's "run" and the models' "run_id"."""
    os.unlink(directory / layout.RUN_FILE)
    arrays, meta = checkpoint.load_state(directory)
    meta.pop("run")
    for key in checkpoint.RESERVED_META:
        meta.pop(key)
    checkpoint.save_state(directory / layout.STATE_FILE, arrays, meta)
    for name in (layout.MODEL_FILE, layout.BEST_FILE):
        params, config, meta = checkpoint.load_model(directory / name)
        meta.pop("run_id")
        checkpoint.save_model(directory / name, params, config,
                              {k: v for k, v in meta.items() if k not in (*checkpoint.RESERVED_META, "model")})


def test_a_run_made_before_run_ids_adopts_one_and_resumes_bit_exact(tmp_path):
    """The migration: the first resume gives the run an id (run.json, then every save), and the run
    continues exactly as one that was never stopped."""
    run = tiny_run(tmp_path / "run")
    for _ in tr.train(run, should_stop=lambda: run.step >= 4):  # at an evaluation, as an uninterrupted run
        pass
    made_the_old_way(tmp_path / "run")
    assert "run" not in checkpoint.load_state(tmp_path / "run")[1]
    resumed = rundir.resume_run(tmp_path / "run")
    assert resumed.step == 4
    adopted = json.loads((tmp_path / "run" / layout.RUN_FILE).read_text())["id"]
    assert re.fullmatch(r"[0-9a-f]{32}", adopted) and resumed.identity["id"] == adopted
    assert_ends_as_a_fresh_run(resumed, tmp_path)
    assert checkpoint.load_state(tmp_path / "run")[1]["run"]["id"] == adopted
    assert checkpoint.load_model(tmp_path / "run" / layout.MODEL_FILE)[2]["run_id"] == adopted
    # and from now on a state of another run is refused there too
    shutil.copy(tmp_path / "reference" / layout.STATE_FILE, tmp_path / "run" / layout.STATE_FILE)
    with pytest.raises(CheckpointError, match="does not belong to the run"):
        rundir.resume_run(tmp_path / "run")


@pytest.mark.parametrize("other", ["a smaller vocabulary", "a larger vocabulary"])
def test_a_state_of_another_run_made_before_run_ids_is_refused_there(tmp_path, other):
    """Two runs made the old way: no ids to compare, but the other state's vocabulary is not the run's
    model's, or the run's ids do not fit it."""
    text = {"a smaller vocabulary": "ab ba " * 300, "a larger vocabulary": other_text()}[other]
    options = {"cell": "lstm", "layers": 1, "hidden": 8, "embed": 8}
    for directory, corpus_text in (("run", stream_text(400)), ("other", text)):
        run = rundir.start_run(tmp_path / directory, corpus_text, None, options,
                               TrainConfig(batch_size=2, seq_len=8, eval_every=2, max_steps=2))
        for _ in tr.train(run):
            pass
        made_the_old_way(tmp_path / directory)
    shutil.copy(tmp_path / "other" / layout.STATE_FILE, tmp_path / "run" / layout.STATE_FILE)
    before = digests(tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not belong to the run"):
        rundir.resume_run(tmp_path / "run")
    assert digests(tmp_path / "run") == before


def test_data_changed_under_a_run_or_a_damaged_identity_are_refused(saved_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(saved_runs / "stream", run)
    ids = corpus.load_ids(run / "data" / "val.npy")
    corpus.save_ids(run / "data" / "val.npy", ids[::-1].copy())  # the same ids, in another order
    with pytest.raises(CheckpointError, match="not those it was started with"):
        rundir.resume_run(run)
    shutil.rmtree(run)
    shutil.copytree(saved_runs / "stream", run)
    for damaged in (b"{", b"[]", b'{"id": "x", "vocab": "y", "data": "z"}', b"[" * 100_000):
        (run / layout.RUN_FILE).write_bytes(damaged)
        code, out, err = invoke(["train", "--resume", run, "--max-steps", 5])
        assert_one_line_error(code, out, err, str(run / layout.RUN_FILE))


# ---------------------------------------------------------------- no pickle anywhere

PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "torch"}


def test_no_pickle_anywhere_in_the_package():
    """No module that unpickles is imported, torch.load is never called, every np.load passes
    allow_pickle=False, and nothing reads .npz archives."""
    sources = sorted(Path(charrnn.__file__).parent.rglob("*.py"))
    assert len(sources) > 10
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & PICKLING_MODULES, where
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in PICKLING_MODULES, where
            elif isinstance(node, ast.Attribute):
                assert node.attr not in ("load_pickle", "read_pickle", "savez", "savez_compressed", "NpzFile"), where
                if isinstance(node.value, ast.Name):
                    assert (node.value.id, node.attr) != ("torch", "load"), where
            elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, \
                    f"{where}:{node.value.lineno}: allow_pickle must be False"
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = node.func.value
                if isinstance(owner, ast.Name) and owner.id in ("np", "numpy"):
                    keywords = {k.arg: k.value for k in node.keywords}
                    assert "allow_pickle" in keywords, f"{where}:{node.lineno}: np.load without allow_pickle=False"
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                # a file name such as "ids.npz", or a module name handed to __import__ / importlib
                assert not node.value.endswith(".npz") and node.value not in PICKLING_MODULES, where
        text = path.read_text(encoding="utf-8")
        assert "torch.load" not in text and "allow_pickle=True" not in text, where


# ---------------------------------------------------------------- hostile corpora


def _text(s):
    return s.encode("utf-8")


# One line of two million characters. (It was built as "".join(random.Random(0).choice(...) for _ in
# range(2_000_000)): a fresh generator per character, so always "g", and 20 s of every collection.
# These are the same bytes, made at once.)
HUGE_LINE = "g" * 2_000_000 + "\n"
# name -> (file bytes or a maker, extra args, expected: "train" or a fragment of the one-line error)
CORPORA = {
    "empty": (b"", [], "empty"),
    "BOM only": (b"\xef\xbb\xbf", [], "empty"),
    "one character": (b"a", [], "1 token long, but training needs at least 2"),
    "one character, lines mode": (b"a", ["--mode", "lines"], "train"),
    "only newlines": (b"\n" * 400, [], "train"),
    "only newlines, lines mode": (b"\n" * 400, ["--mode", "lines"], "non-empty"),
    "CRLF": (_text(stream_text(400).replace(" and ", "\r\n")), [], "train"),
    "CRLF, lines mode": (_text(stream_text(400).replace(" and ", "\r\n")), ["--mode", "lines"], "train"),
    "BOM": (b"\xef\xbb\xbf" + _text(stream_text(400)), [], "train"),
    "UTF-16": (stream_text(400).encode("utf-16"), [], "UTF-16"),
    "invalid UTF-8": (_text(stream_text(400)[:50]) + b"\xc3\x28" + _text(stream_text(400)), [], "byte offset 50"),
    "invalid UTF-8, replaced": (_text(stream_text(400)[:50]) + b"\xc3\x28" + _text(stream_text(400)), ["--errors", "replace"],
                                "train"),
    "NUL bytes": (_text(stream_text(400)[:100]) + b"\0" + _text(stream_text(400)), [], "binary"),
    "NUL after the first 8000 bytes": (_text(stream_text(2000)) + b"\0" + _text(stream_text(2000)), [], "train"),
    "huge line": (_text(HUGE_LINE), [], "train"),
    "huge line, lines mode": (_text(HUGE_LINE), ["--mode", "lines"], "--mode stream"),
    "huge line among short ones, lines mode": (_text("alpha\nbeta\ngamma\n" * 10 + HUGE_LINE), ["--mode", "lines"],
                                               "--mode stream"),
}


@pytest.fixture(scope="module")
def corpus_outcomes(tmp_path_factory):
    """Runs `charrnn train FILE --max-steps 2` on every corpus above, through cli.main in this process
    (a process each cost 0.8 s of start-up, numba's mostly; exit codes through a real process are
    test_cli_train's)."""
    root = tmp_path_factory.mktemp("corpora")
    results = {}
    for i, (name, (content, extra, _)) in enumerate(CORPORA.items()):
        path = root / f"corpus-{i}.txt"
        path.write_bytes(content)
        results[name] = (*invoke(["train", path, *TINY, *extra, "--max-steps", 2, "--out", root / f"run-{i}"]),
                         root / f"run-{i}")
    return results


@pytest.mark.parametrize("name", list(CORPORA))
def test_a_hostile_corpus_is_a_one_line_error_or_trains(corpus_outcomes, name):
    code, out, err, run = corpus_outcomes[name]
    expected = CORPORA[name][2]
    assert "Traceback" not in err and out == ""
    if expected != "train":
        assert_one_line_error(code, out, err, expected)
        assert not run.exists(), "a refused corpus left files behind"
        return
    assert code == 0, err
    _, config, meta = checkpoint.load_model(run / layout.MODEL_FILE)
    assert meta["training"]["step"] == 2
    tokens = meta["tokens"]
    assert "\r" not in tokens and "\ufeff" not in tokens  # newlines normalized, BOM dropped
    if "replaced" in name:
        assert "\ufffd" in tokens
    if "NUL" in name:
        assert "\0" in tokens


def test_a_missing_file_is_a_usage_error(tmp_path):
    target = tmp_path / "missing.txt"
    code, out, err = charrnn_run("train", target, *TINY, "--out", tmp_path / "run")
    assert code == 2 and out == "" and "Traceback" not in err
    assert str(target) in err
    assert not (tmp_path / "run").exists()


def test_an_empty_directory_is_a_one_line_error(tmp_path):
    # a folder is a corpus (tests/test_folder_corpus.py); one with no files has nothing to train on
    target = tmp_path / "empty"
    target.mkdir()
    code, out, err = charrnn_run("train", target, *TINY, "--out", tmp_path / "run")
    assert code == 1 and out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{target}: the folder holds no files" in err
    assert not (tmp_path / "run").exists()


def test_an_unreadable_file_is_a_one_line_error(tmp_path, corpus_file, monkeypatch):
    if os.geteuid() != 0:
        corpus_file.chmod(0)
        code, out, err = charrnn_run("train", corpus_file, *TINY, "--out", tmp_path / "run")
        assert code in (1, 2) and out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1
        corpus_file.chmod(0o644)
    # root reads anything: make the read itself fail the way a permission problem does
    real_open = open

    def refuse(path, *args, **kw):
        if os.fspath(path) == os.fspath(corpus_file):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, *args, **kw)
    monkeypatch.setattr(corpus, "open", refuse, raising=False)
    code, out, err = invoke(["train", corpus_file, *TINY, "--out", tmp_path / "run"])
    assert_one_line_error(code, out, err, "permission denied", str(corpus_file))
    assert not (tmp_path / "run").exists()

