"""Data-parallel training over MPI: 2 ranks on this machine, each with one BLAS and one kernel thread.

Needs the `mpi` extra (mpi4py and the mpich wheel, whose mpiexec sits beside
the Python running the tests); .ci/run installs it and sets CHARRNN_REQUIRE_MPI,
so there a missing extra fails instead of skipping. Every launch is a whole
`mpiexec -n 2 charrnn train` job of a tiny model (about 2 s, mostly start-up),
so the 2-rank runs are few and shared: the one-process references run in this
process (`invoke`), which takes well under a second each.

Why one process can give the very same bits: rank r owns parallel.row_blocks(B, 2)[r]
of the batch, and with --threads 1 per rank its gradient is that block's; the ranks'
gradients are added in rank order. One process with --threads 2 cuts the batch into
the same two blocks and adds them in the same order.
"""

import fcntl
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

from charrnn.files import checkpoint
from charrnn.step import distributed
from tiny_runs import invoke, read_log

if os.environ.get("CHARRNN_REQUIRE_MPI"):
    import mpi4py  # noqa: F401  (CI: the extra must be there, never a skip)
else:
    pytest.importorskip("mpi4py")
MPIEXEC = Path(sys.executable).with_name("mpiexec")
pytestmark = pytest.mark.skipif(not MPIEXEC.exists() and not os.environ.get("CHARRNN_REQUIRE_MPI"),
                                reason="the mpich wheel's mpiexec is not installed")

ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
for name in distributed._SIZE_VARIABLES:  # the tests may themselves run under an MPI launcher
    ENV.pop(name, None)
# --threads 1 per rank; the one-process references give --threads 2 after these, to cut the same blocks
TINY = ["--hidden", "16", "--embed", "8", "--layers", "2", "--batch-size", "4", "--seq-len", "16",
        "--threads", "1", "--dropout", "0", "--lr", "0.1", "--eval-every", "5", "--eval-tokens", "300",
        "--schedule", "constant", "--warmup", "0", "--precision", "float32"]  # float32: its rounding bound below
ONE_PROCESS_SAME_BLOCKS = ["--threads", "2", "-q"]
# the float32 rounding bound between a run's weights under another row cut (2 blocks against 1): the
# blocks' gradients add in another order, and Adagrad's per-weight scaling amplifies that a little
RTOL, ATOL = 1e-3, 1e-4


def charrnn(args, n=2, timeout=120):
    """`mpiexec -n N charrnn ARGS` with one thread per rank; the CompletedProcess (timeout: never a hang)."""
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, "-m", "charrnn", *map(str, args)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def weights(run_dir):
    """(every tensor of the run's state file: weights, optimizer state, carried state; its step)."""
    arrays, meta = checkpoint.load_state(os.path.join(run_dir, "state.safetensors"))
    return arrays, meta["progress"]["step"]


def assert_same_bits(run, reference, step):
    arrays, at = weights(run)
    ref, ref_at = weights(reference)
    assert at == ref_at == step
    assert arrays.keys() == ref.keys()
    for name in ref:
        assert np.array_equal(arrays[name], ref[name]), f"{run} {name}"


def assert_within_rounding(run, reference, step):
    arrays, at = weights(run)
    ref, ref_at = weights(reference)
    assert at == ref_at == step
    for name in ref:
        np.testing.assert_allclose(arrays[name], ref[name], rtol=RTOL, atol=ATOL, err_msg=name)
    assert any(not np.array_equal(arrays[name], ref[name]) for name in ref)  # another order: the bound is used


def one_process(args):
    code, out, err = invoke(["train", *map(str, args)])
    assert code == 0, err
    return out, err


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """Lines of 3-8 words, so that lines mode can use it too."""
    rng = np.random.default_rng(0)
    words = np.array("the cat sat on a mat and dog ran far away".split())
    lines = [" ".join(rng.choice(words, rng.integers(3, 9))) for _ in range(500)]
    path = tmp_path_factory.mktemp("corpus") / "c.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def shared(corpus_file, tmp_path_factory):
    """The 2-rank runs several tests read: a fresh 10-step run, kept at step 10, then resumed by 2 ranks
    to step 20; and the one-process references of 10 and 20 steps with the same row blocks."""
    tmp = tmp_path_factory.mktemp("shared")
    two, at10 = tmp / "two", tmp / "two_at_10"
    fresh = charrnn(["train", corpus_file, "--out", two, "--max-steps", 10, *TINY])
    assert fresh.returncode == 0, fresh.stderr
    shutil.copytree(two, at10)
    resumed = charrnn(["train", "--resume", two, "--max-steps", 20, "-q"])
    assert resumed.returncode == 0, resumed.stderr
    for steps in (10, 20):
        one_process([corpus_file, "--out", tmp / f"one_{steps}", "--max-steps", steps, *TINY,
                     *ONE_PROCESS_SAME_BLOCKS])
    return {"tmp": tmp, "two": two, "at10": at10, "fresh": fresh, "resumed": resumed}


def test_two_ranks_give_the_bits_of_one_process_and_resume_them_exactly(shared):
    # step 10: a fresh 2-rank run (rank 0 prepared it, rank 1 followed from its step-0 state)
    assert_same_bits(shared["at10"], shared["tmp"] / "one_10", 10)
    # step 20: resumed by 2 ranks (the saved 4 streams' state split between them again), against
    # one uninterrupted 20-step run
    assert_same_bits(shared["two"], shared["tmp"] / "one_20", 20)
    # the log holds each logged step once, with one process's numbers
    two, one = read_log(shared["two"]), read_log(shared["tmp"] / "one_20")
    assert [r["step"] for r in two] == [5, 10, 15, 20]
    assert [(r["loss"], r["val_loss"]) for r in two] == [(r["loss"], r["val_loss"]) for r in one]


def test_against_one_process_of_one_block_the_weights_agree_to_float32_rounding(corpus_file, shared, tmp_path):
    # one process, the whole batch as one block: the same global batch and batches, other rounding
    one_process([corpus_file, "--out", tmp_path / "one", "--max-steps", 20, *TINY, "-q"])
    assert_within_rounding(shared["two"], tmp_path / "one", 20)
    # a 2-rank checkpoint resumed by 1 process (which gathers no rows: the file holds all 4 streams)
    mixed = tmp_path / "mixed"
    shutil.copytree(shared["at10"], mixed)
    one_process(["--resume", mixed, "--max-steps", 20, "-q"])
    assert_within_rounding(mixed, shared["two"], 20)


# Each rank of `mpiexec -n N python -c RING_CHECK` sums buffers of many sizes, dtypes and chunk sizes (the
# ring's chunks of 8 bytes up to ring_chunk's; a buffer of one chunk, or of MIN_CHUNK, or less takes the trees) and compares the
# bits with an independent sum in NumPy: every rank's share, made again here from its seed, added in rank
# order. That order is not just one of many: for N > 2 another order of the same shares gives other bits.
RING_CHECK = """
import sys
import numpy as np
from mpi4py import MPI
from charrnn.step import distributed

comm = MPI.COMM_WORLD
N, me = comm.Get_size(), comm.Get_rank()

def share(rank, n, dtype):  # magnitudes over 12 decades, so that the order of the additions shows in the bits
    rng = np.random.default_rng([n, rank, np.dtype(dtype).itemsize])
    return (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 7, n)).astype(dtype)

checked = other_order_differs = 0
for chunk in (8, 24, 4096, None):  # None: the size ring_chunk chooses
    group = distributed.MPIGroup(comm, chunk_bytes=chunk)
    for dtype in (np.float32, np.float64):
        for n in (0, 1, 2, 7, 64, 1000, 40000):
            expect = share(0, n, dtype).copy()
            for r in range(1, N):
                expect = expect + share(r, n, dtype)
            got = group.sum_in_rank_order(share(me, n, dtype))
            assert got.dtype == dtype and got.shape == (n,), (got.dtype, got.shape)
            assert got.tobytes() == expect.tobytes(), (chunk, dtype, n)
            backwards = share(N - 1, n, dtype).copy()
            for r in reversed(range(N - 1)):
                backwards = backwards + share(r, n, dtype)
            other_order_differs += backwards.tobytes() != expect.tobytes()
            checked += 1
with open(f"{sys.argv[1]}/rank{me}", "w") as f:  # a file each: the ranks' printed lines may interleave
    f.write(f"{checked} sums bitwise equal, {other_order_differs} differ in another order")
"""


@pytest.mark.parametrize("n", [2, 3, 4])
def test_the_ring_sum_has_the_bits_of_a_sum_in_rank_order_on_every_rank(n, tmp_path):
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, "-c", RING_CHECK, str(tmp_path)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(tmp_path)) == [f"rank{k}" for k in range(n)]
    for k in range(n):
        checked, differ = (int(w) for w in (tmp_path / f"rank{k}").read_text().split() if w.isdigit())
        assert checked == 56
        assert (differ > 20) if n > 2 else (differ == 0)  # two shares add the same either way


def test_three_ranks_rerun_to_the_same_bits_which_are_one_process_cutting_three_blocks(corpus_file, tmp_path):
    # H 96: the gradients (about 0.5 MB) travel the ring as several chunks; a rerun gives the same bits, and
    # so does one process adding its three row blocks in the same order
    args = [corpus_file, "--max-steps", 6, *TINY, "--hidden", 96, "--batch-size", 6]  # the last of a flag counts
    for name in ("first", "again"):
        r = charrnn(["train", "--out", tmp_path / name, *args, "-q"], n=3)
        assert r.returncode == 0, r.stderr
    arrays, _ = weights(tmp_path / "first")
    nbytes = sum(a.nbytes for k, a in arrays.items() if k.startswith("param/"))
    assert distributed.ring_chunk(nbytes, 3) < nbytes / 1.5  # two chunks or more
    assert_same_bits(tmp_path / "again", tmp_path / "first", 6)
    one_process(["--out", tmp_path / "one", *args, "--threads", "3", "-q"])
    assert_same_bits(tmp_path / "first", tmp_path / "one", 6)


def test_an_automatic_batch_is_one_three_ranks_divide(corpus_file, tmp_path):
    # one process would take 32 streams here; 3 ranks take 30 (a given --batch-size is checked instead)
    auto = [a for a in TINY if a not in ("--batch-size", "4")]
    r = charrnn(["train", corpus_file, "--out", tmp_path / "r", "--max-steps", 2, *auto], n=3)
    assert r.returncode == 0, r.stderr
    assert "batch_size 30" in r.stderr and r.stderr.count("Settings for") == 1
    assert weights(tmp_path / "r")[0]["carry/0"].shape[1] == 30


def test_rank_0_alone_prints_and_writes(shared):
    fresh = shared["fresh"]
    assert fresh.stdout == ""
    for line in ("Run directory", "step 5: val loss", "step 10: val loss", "Done (step budget)"):
        assert fresh.stderr.count(line) == 1, fresh.stderr  # once, not once per rank
    assert shared["resumed"].stdout == shared["resumed"].stderr == ""  # -q: nothing from either rank
    assert sorted(os.listdir(shared["two"])) == sorted(os.listdir(shared["tmp"] / "one_20"))


def test_fine_tuning_in_lines_mode_stops_early_at_the_step_of_one_process(corpus_file, shared, tmp_path):
    # --init-from takes the fresh-run path; a high learning rate makes validation worse, so that with
    # --patience 1 rank 0 (which alone evaluates) ends the run, and rank 1 with it, at the same step
    tune = ["--init-from", shared["tmp"] / "one_10", "--mode", "lines", "--lr", "3", "--patience", "1",
            "--max-steps", 40, "--batch-size", "4", "--threads", "1", "--dropout", "0", "--eval-every", "3",
            "--eval-tokens", "300", "--schedule", "constant", "--warmup", "0"]
    r = charrnn(["train", corpus_file, "--out", tmp_path / "two", *tune])
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Fine-tuning") == 1
    one_process([corpus_file, "--out", tmp_path / "one", *tune, *ONE_PROCESS_SAME_BLOCKS])
    step = weights(tmp_path / "one")[1]
    assert step < 40 and "Done (stopped early" in r.stderr
    assert_same_bits(tmp_path / "two", tmp_path / "one", step)


def test_a_classifier_on_two_ranks_gives_the_bits_of_one_process(tmp_path):
    rng = np.random.default_rng(1)
    lines = []
    for _ in range(200):
        label = str(rng.choice(["pets", "sky"]))
        words = ("cat dog mat" if label == "pets" else "sun sky sea").split()
        lines.append(label + "\t" + " ".join(rng.choice(words, rng.integers(1, 6))))
    kinds = tmp_path / "kinds.tsv"
    kinds.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = [kinds, "--task", "classify", "--max-steps", 15, "--hidden", "16", "--embed", "8", "--layers", "1",
            "--batch-size", "4", "--threads", "1", "--dropout", "0", "--lr", "0.3", "--eval-every", "5",
            "--seq-len", "100", "--schedule", "constant", "--warmup", "0"]
    r = charrnn(["train", "--out", tmp_path / "two", *args, "-q"])
    assert r.returncode == 0, r.stderr
    one_process(["--out", tmp_path / "one", *args, *ONE_PROCESS_SAME_BLOCKS])
    assert_same_bits(tmp_path / "two", tmp_path / "one", 15)


def test_a_tagger_on_two_ranks_gives_the_bits_of_one_process(tmp_path):
    """Each rank tags its rows of a batch of sequences of different lengths; the ranks' sums are the
    one process's, to the bit (the loss is over the whole batch's real tokens)."""
    rng = np.random.default_rng(2)
    lines = []
    for _ in range(120):
        words = rng.choice(["Harry", "met", "London", "in", "Potter"], rng.integers(1, 7))
        tags = ["B-PER" if w == "Harry" else "I-PER" if w == "Potter" else "B-LOC" if w == "London" else "O"
                for w in words]
        lines.append(json.dumps({"tokens": words.tolist(), "tags": tags}))
    (tmp_path / "ner.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = [tmp_path / "ner.jsonl", "--task", "tag", "--level", "word", "--bidirectional", "--max-steps", 12,
            "--hidden", "8", "--embed", "6", "--layers", "1", "--batch-size", "4", "--threads", "1",
            "--dropout", "0", "--lr", "0.3", "--eval-every", "4", "--schedule", "constant", "--warmup", "0"]
    r = charrnn(["train", "--out", tmp_path / "two", *args, "-q"])
    assert r.returncode == 0, r.stderr
    one_process(["--out", tmp_path / "one", *args, *ONE_PROCESS_SAME_BLOCKS])
    assert_same_bits(tmp_path / "two", tmp_path / "one", 12)


def test_batch_not_divisible_by_the_ranks_is_one_line_and_writes_nothing(corpus_file, tmp_path):
    args = [a if a != "4" else "5" for a in TINY]
    r = charrnn(["train", corpus_file, "--out", tmp_path / "r", "--max-steps", 2, *args])
    assert r.returncode == 2  # a usage error, by the one exit-code rule
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: --batch-size 5 must be a multiple of the 2 MPI ranks (mpiexec -n); the batch is split "
        "between them by streams")
    assert not (tmp_path / "r").exists()


def test_a_corpus_missing_on_one_rank_is_its_error_and_the_job_fails(corpus_file, tmp_path):
    common = ["--out", tmp_path / "r", "--max-steps", 2, *TINY]
    rank = [sys.executable, "-m", "charrnn", "train"]
    cmd = [MPIEXEC, "-n", "1", *rank, corpus_file, *common, ":", "-n", "1", *rank, tmp_path / "gone.txt", *common]
    r = subprocess.run(list(map(str, cmd)), env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "gone.txt" in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_error_every_rank_hits_is_printed_once(corpus_file, shared, tmp_path):
    # click's usage error (every rank parses the same command line) and a library error raised on every
    # rank before rank 0 takes the run (a setting --resume cannot take)
    usage = charrnn(["train", corpus_file, "--out", tmp_path / "r", "--hidden", "abc"], n=3)
    fixed = charrnn(["train", "--resume", shared["two"], "--out", tmp_path / "r", "--max-steps", 30], n=3)
    for r in (usage, fixed):
        assert r.returncode == 2
        assert r.stderr.count("Error: ") == 1, r.stderr
    assert "Invalid value for '--hidden': 'abc'" in usage.stderr and usage.stderr.count("Usage:") == 1
    assert fixed.stderr.strip() == "Error: --out cannot be given with --resume: the run keeps its data and " \
        "settings (only budgets and cadence can change, and --lr, --schedule and --warmup start a new " \
        "learning-rate schedule)"
    assert not (tmp_path / "r").exists()


def test_different_errors_on_two_ranks_are_each_printed(corpus_file, tmp_path):
    rank = [sys.executable, "-m", "charrnn", "train", corpus_file, "--out", tmp_path / "r"]
    cmd = [MPIEXEC, "-n", "1", *rank, "--hidden", "abc", ":", "-n", "1", *rank, "--embed", "xyz"]
    r = subprocess.run(list(map(str, cmd)), env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("Error: ") == 2, r.stderr
    assert r.stderr.count("'--hidden': 'abc'") == r.stderr.count("'--embed': 'xyz'") == 1


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


def _released(run_dir, timeout: float = 60) -> bool:
    """Whether the run's lock is free within timeout seconds: every process of the job has let go of it.

    mpiexec can return while rank 0 is still ending (its main thread already a zombie, others exiting,
    the lock held until the last one is gone)."""
    deadline = time.monotonic() + timeout
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
    finally:
        os.close(fd)  # and the lock with it


def _start_long_run(corpus_file, out, launch=None):
    """A 2-rank run with no end in sight, once it has saved after its first evaluation; launch: the
    command of `mpiexec ... charrnn ARGS` (None: 2 ranks on this host)."""
    args = ["train", str(corpus_file), "--out", str(out), "--max-steps", "1000000", *TINY]
    cmd = launch(args) if launch else [str(MPIEXEC), "-n", "2", sys.executable, "-m", "charrnn", *args]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "state.safetensors").exists() or weights(out)[1] == 0:  # the step-0 save comes first
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc


def test_kill_9_of_a_rank_ends_the_job_and_the_last_checkpoint_resumes(corpus_file, tmp_path):
    out = tmp_path / "killed"
    proc = _start_long_run(corpus_file, out)
    pid = _rank_pid(str(out), 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)  # never a hang: mpiexec ends rank 0 as well
    assert proc.returncode != 0
    assert _released(out)
    step = weights(out)[1]
    one_process(["--resume", out, "--max-steps", step + 2, "-q"])  # loadable, and the lock is free
    assert weights(out)[1] == step + 2


def test_ctrl_c_to_mpiexec_saves_once_and_exits_130(corpus_file, tmp_path):
    out = tmp_path / "stopped"
    proc = _start_long_run(corpus_file, out)
    proc.send_signal(signal.SIGINT)  # to mpiexec, which passes it to every rank
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.count("Stopping after this step and saving") == 1  # rank 0's; rank 1 prints nothing
    assert err.count("Done (interrupted") == 1, err
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert weights(out)[1] == logs[-1]["step"]  # saved at the step both ranks stopped at
    assert len({r["step"] for r in logs}) == len(logs)


def test_under_mpiexec_without_mpi4py_is_one_line_naming_the_extra(monkeypatch, corpus_file, tmp_path):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    monkeypatch.setattr(distributed, "_world", None)
    code, out, err = invoke(["train", corpus_file, "--out", tmp_path / "r", "--max-steps", 1])
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("Error: ") and 'pip install -e ".[mpi]"' in err
    assert not (tmp_path / "r").exists()


# Two "hosts" on this machine: two network namespaces joined by a veth pair, each with its own address. mpiexec
# runs in the first with a host file naming both, so MPICH's ranks are on two nodes and talk over TCP through
# the veth link, not shared memory. Hydra starts the remote rank's proxy the way it would over ssh, but its
# launcher is a script that enters the other namespace (`ip netns exec`) instead of logging in to a machine.
LAUNCHER = """#!/bin/sh
# what hydra runs instead of ssh: [-x] HOST COMMAND
[ "$1" = "-x" ] && shift
case "$1" in
  {a_addr}) ns={a} ;;
  {b_addr}) ns={b} ;;
  *) echo "no such host: $1" >&2; exit 255 ;;
esac
shift
exec ip netns exec "$ns" sh -c "$*"
"""


# MPICH's UCX would still find shared memory between the namespaces (one kernel: the same boot id, IPC and
# process namespaces), which two real hosts do not share; TCP only, as between them
UCX_AS_BETWEEN_HOSTS = ["-genv", "UCX_TLS", "tcp,self"]


class TwoHosts:
    """Namespaces a and b (addresses 10.128.0.1 and .2 on the veth pair), the host file and the launcher."""

    def __init__(self, tmp: Path):
        tag = str(os.getpid())
        self.a, self.b = f"charrnn{tag}a", f"charrnn{tag}b"
        self.link = f"cr{tag}a"
        self.addrs = {self.a: "10.128.0.1", self.b: "10.128.0.2"}
        self.hostfile, self.launcher = tmp / "hosts", tmp / "launch-in-netns"
        self.hostfile.write_text("".join(f"{addr}:1\n" for addr in self.addrs.values()))
        self.launcher.write_text(LAUNCHER.format(a=self.a, b=self.b, a_addr=self.addrs[self.a],
                                                 b_addr=self.addrs[self.b]))
        self.launcher.chmod(0o755)

    def create(self) -> None:
        ends = {self.a: self.link, self.b: self.link[:-1] + "b"}
        self._ip("netns", "add", self.a)
        self._ip("netns", "add", self.b)
        self._ip("link", "add", ends[self.a], "type", "veth", "peer", "name", ends[self.b])
        for ns, end in ends.items():
            self._ip("link", "set", end, "netns", ns)
            self._ip("-n", ns, "addr", "add", self.addrs[ns] + "/24", "dev", end)
            self._ip("-n", ns, "link", "set", end, "up")
            self._ip("-n", ns, "link", "set", "lo", "up")

    def remove(self) -> None:
        for ns in (self.a, self.b):  # the veth pair goes with its namespaces
            try:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
            except OSError:  # no `ip`: nothing was made
                pass

    def mpiexec(self, args) -> list[str]:
        """`mpiexec -f HOSTS -n 2 charrnn ARGS`, run in namespace a: rank 0 there, rank 1 in b."""
        return ["ip", "netns", "exec", self.a, str(MPIEXEC), "-f", str(self.hostfile), "-n", "2",
                "-launcher", "ssh", "-launcher-exec", str(self.launcher), *UCX_AS_BETWEEN_HOSTS,
                sys.executable, "-m", "charrnn", *map(str, args)]

    def bytes_sent_from_a(self) -> int:
        """Bytes namespace a's end of the veth pair has sent: what crossed from host a to host b."""
        stats = json.loads(self._ip("-n", self.a, "-j", "-s", "link", "show", "dev", self.link))
        return int(stats[0]["stats64"]["tx"]["bytes"])

    @staticmethod
    def _ip(*args) -> str:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if r.returncode:
            raise OSError(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")
        return r.stdout


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    """TwoHosts, created for this module's tests; a skip that says why where namespaces cannot be made
    (not root, no `ip`), except under CHARRNN_REQUIRE_MPI (CI, as root), where that fails."""
    hosts = TwoHosts(tmp_path_factory.mktemp("hosts"))
    try:
        if os.geteuid() != 0:
            raise OSError("creating network namespaces needs root")
        if shutil.which("ip") is None:
            raise OSError("the `ip` command (iproute2) is not installed")
        hosts.create()
    except (OSError, subprocess.TimeoutExpired) as exc:
        hosts.remove()
        if os.environ.get("CHARRNN_REQUIRE_MPI"):
            pytest.fail(f"two hosts in network namespaces are required here (CHARRNN_REQUIRE_MPI): {exc}")
        pytest.skip(f"two hosts in network namespaces cannot be made here: {exc}")
    yield hosts
    hosts.remove()


def test_two_hosts_give_the_bits_of_two_ranks_on_one_host_over_tcp(corpus_file, shared, two_hosts, tmp_path):
    out = tmp_path / "two_hosts"
    before = two_hosts.bytes_sent_from_a()
    r = subprocess.run(two_hosts.mpiexec(["train", corpus_file, "--out", out, "--max-steps", 10, *TINY]),
                       env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert_same_bits(out, shared["at10"], 10)
    # the ranks talked over the veth link: each step's gradients (both ways) at least once
    arrays, _ = weights(out)
    step_bytes = sum(a.nbytes for k, a in arrays.items() if k.startswith("param/"))
    assert two_hosts.bytes_sent_from_a() - before > 10 * step_bytes


def test_kill_9_of_the_remote_rank_ends_the_job_and_the_last_checkpoint_resumes(corpus_file, two_hosts, tmp_path):
    out = tmp_path / "killed"
    proc = _start_long_run(corpus_file, out, launch=two_hosts.mpiexec)
    pid = _rank_pid(str(out), 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)  # never a hang: rank 0's host learns of it over the network and ends
    assert proc.returncode != 0
    assert _released(out)
    step = weights(out)[1]
    one_process(["--resume", out, "--max-steps", step + 2, "-q"])
    assert weights(out)[1] == step + 2
