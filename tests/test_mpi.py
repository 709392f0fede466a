"""Data-parallel training over MPI: 2 ranks on this machine, each with one BLAS and one kernel thread.

Needs the `mpi` extra (mpi4py and the mpich wheel, whose mpiexec sits beside
the Python running the tests); .ci/run installs it. Every launch is a whole
`charrnn train` job with a tiny model, so the tests stay few.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from charrnn import checkpoint, distributed
from tiny_runs import invoke

pytest.importorskip("mpi4py")
MPIEXEC = Path(sys.executable).with_name("mpiexec")
pytestmark = pytest.mark.skipif(not MPIEXEC.exists(), reason="the mpich wheel's mpiexec is not installed")

ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
for name in distributed._SIZE_VARIABLES:  # the tests may themselves run under an MPI launcher
    ENV.pop(name, None)
TINY = ["--hidden", "16", "--embed", "8", "--layers", "2", "--batch-size", "4", "--seq-len", "16",
        "--threads", "1", "--dropout", "0", "--lr", "0.1", "--eval-every", "5", "--eval-tokens", "300",
        "--schedule", "constant", "--warmup", "0"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = np.array("the cat sat on a mat and dog ran far away".split())
    path = tmp_path_factory.mktemp("corpus") / "c.txt"
    path.write_text(" ".join(rng.choice(words, 3000)) + "\n", encoding="utf-8")
    return path


def charrnn(args, n=1, **kw):
    """Run `charrnn ARGS` as one process (n=1) or as `mpiexec -n N`; returns the CompletedProcess."""
    cmd = [sys.executable, "-m", "charrnn", *map(str, args)]
    if n > 1:
        cmd = [str(MPIEXEC), "-n", str(n), *cmd]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, **kw)


def state(run_dir):
    arrays, meta = checkpoint.load_state(os.path.join(run_dir, "state.safetensors"))
    return arrays, meta["progress"]["step"]


def test_two_ranks_agree_with_one_process_and_resume_bit_exactly_with_any_rank_count(corpus_file, tmp_path):
    one, two, halves, mixed = (tmp_path / n for n in ("one", "two", "halves", "mixed"))
    # one process cutting each batch into 2 row blocks adds the same blocks in the same order as 2 ranks
    r = charrnn(["train", corpus_file, "--out", one, "--max-steps", 20, *TINY, "--threads", 2, "-q"])
    assert r.returncode == 0, r.stderr
    r = charrnn(["train", corpus_file, "--out", two, "--max-steps", 20, *TINY], n=2)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr.count("Run directory") == 1  # rank 0 alone prints
    r = charrnn(["train", corpus_file, "--out", halves, "--max-steps", 10, *TINY, "-q"], n=2)
    assert r.returncode == 0, r.stderr
    shutil.copytree(halves, mixed)
    r = charrnn(["train", "--resume", halves, "--max-steps", 20, "-q"], n=2)
    assert r.returncode == 0, r.stderr
    r = charrnn(["train", "--resume", mixed, "--max-steps", 20, "-q"])  # 2 ranks' carried state, one process
    assert r.returncode == 0, r.stderr

    ref, step = state(one)
    assert step == 20
    for run in (two, halves):  # the same N (and the same blocks): the same bits, resumed or not
        arrays, step = state(run)
        assert step == 20 and arrays.keys() == ref.keys()
        for name in arrays:
            assert np.array_equal(arrays[name], ref[name]), f"{run.name} {name}"
    # resumed with 1 rank of 1 thread: the rows' gradients are added in another order from step 11,
    # so the weights differ by float32 rounding (amplified a little by Adagrad's per-weight scaling)
    arrays, step = state(mixed)
    assert step == 20
    for name, value in arrays.items():
        np.testing.assert_allclose(value, ref[name], rtol=1e-3, atol=1e-4, err_msg=name)
    assert any(not np.array_equal(value, ref[name]) for name, value in arrays.items())  # the bound is used
    logs = [[json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] for run in (two, halves)]
    assert [rec["step"] for rec in logs[1]] == [5, 10, 15, 20]  # each logging step once, in order
    assert [(r["loss"], r["val_loss"]) for r in logs[0]] == [(r["loss"], r["val_loss"]) for r in logs[1]]


def test_batch_not_divisible_by_the_ranks_is_one_line_and_writes_nothing(corpus_file, tmp_path):
    args = [a if a != "4" else "5" for a in TINY]
    r = charrnn(["train", corpus_file, "--out", tmp_path / "r", "--max-steps", 2, *args], n=2)
    assert r.returncode == 1
    assert "Error: --batch-size 5 must be a multiple of the 2 MPI ranks" in r.stderr
    assert not (tmp_path / "r").exists()


def test_a_corpus_missing_on_one_rank_is_its_error_and_the_job_fails(corpus_file, tmp_path):
    common = ["--out", tmp_path / "r", "--max-steps", 2, *TINY]
    cmd = [str(MPIEXEC), "-n", "1", sys.executable, "-m", "charrnn", "train", corpus_file, *map(str, common), ":",
           "-n", "1", sys.executable, "-m", "charrnn", "train", tmp_path / "gone.txt", *map(str, common)]
    r = subprocess.run(list(map(str, cmd)), env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "gone.txt" in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def _rank_pid(marker: str, rank: int) -> int | None:
    """The pid of the charrnn process of the given rank whose command line holds marker."""
    for entry in Path("/proc").iterdir():
        try:
            if marker in (entry / "cmdline").read_bytes().decode(errors="replace") and \
                    f"PMI_RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
        except (OSError, ValueError):
            continue
    return None


def _start_long_run(corpus_file, out):
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "charrnn", "train", str(corpus_file), "--out", str(out),
           "--max-steps", "1000000", *TINY]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "state.safetensors").exists() or not (out / "log.jsonl").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    return proc


def test_kill_9_of_a_rank_ends_the_job_and_ctrl_c_saves_once_with_130(corpus_file, tmp_path):
    proc = _start_long_run(corpus_file, tmp_path / "killed")
    pid = _rank_pid(str(tmp_path / "killed"), 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)  # never a hang: mpiexec ends rank 0 as well
    assert proc.returncode != 0
    r = charrnn(["info", tmp_path / "killed"])  # the last checkpoint stays loadable
    assert r.returncode == 0, r.stderr

    proc = _start_long_run(corpus_file, tmp_path / "stopped")
    proc.send_signal(signal.SIGINT)  # to mpiexec, which passes it to every rank
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.count("Stopping after this step and saving") == 1
    logs = [json.loads(line) for line in (tmp_path / "stopped" / "log.jsonl").read_text().splitlines()]
    assert state(tmp_path / "stopped")[1] == logs[-1]["step"]  # saved at the step it stopped


def test_under_mpiexec_without_mpi4py_is_one_line_naming_the_extra(monkeypatch, corpus_file, tmp_path):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    monkeypatch.setattr(distributed, "_world", None)
    code, out, err = invoke(["train", corpus_file, "--out", tmp_path / "r", "--max-steps", 1])
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("Error: ") and 'pip install -e ".[mpi]"' in err
    assert not (tmp_path / "r").exists()
