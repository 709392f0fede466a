"""What the benchmark scripts share: the corpus, the PyTorch twin of charrnn's model, one way to time.

- CORPUS: ../shared/corpora/tinyshakespeare.txt beside the repository, or the
  file named by the environment variable CHARRNN_BENCH_CORPUS;
- torch_lm / to_params: charrnn's model as a torch.nn.Module with the same
  parameter names and layouts, so a parameter dict goes in and comes out
  unchanged;
- measure: the one timing method. It waits (up to 20 s, or the seconds in
  CHARRNN_BENCH_QUIET_WAIT: 0 for a smoke run) until other processes leave the
  CPUs alone, then times the work with perf_counter and reports the share of
  the machine other processes used meanwhile: the machine is shared and noisy,
  so quote medians and ratios measured side by side;
- blas_kernel: which OpenBLAS kernels NumPy runs.

The scripts run as `python bench/NAME.py`, which puts this directory on sys.path.
"""

from __future__ import annotations

import os
import resource
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.environ.get("CHARRNN_BENCH_CORPUS") or os.path.join(REPO, "..", "shared", "corpora", "tinyshakespeare.txt")
QUIET_WAIT = float(os.environ.get("CHARRNN_BENCH_QUIET_WAIT", "20"))  # the most seconds measure waits


# ---------------------------------------------------------------- the model in PyTorch


def torch_lm(config, params: dict | None = None):
    """charrnn's model (a ModelConfig) as a torch.nn.Module; forward(x (B, T), state) -> (logits (B, T, V), state).

    - params: a charrnn parameter dict to load (strictly), or None for PyTorch's own init
    Dropout as charrnn's: after every layer, the top one included (nn.LSTM's own covers all but the top).
    """
    import torch

    cells = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
    if config.cell not in cells:
        raise ValueError(f"torch.nn has no {config.cell!r} cell; the benchmarks compare {', '.join(cells)}")

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(config.vocab_size, config.embed)
            cell = cells[config.cell]
            between = config.dropout if config.layers > 1 else 0.0
            self.rnn = cell(config.embed, config.hidden, config.layers, batch_first=True, dropout=between)
            self.drop = torch.nn.Dropout(config.dropout)
            self.head = torch.nn.Linear(config.hidden, config.vocab_size)

        def forward(self, x, state=None):
            out, state = self.rnn(self.embedding(x), state)
            return self.head(self.drop(out)), state

    net = LM().to(getattr(torch, config.dtype))
    if params is not None:
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()}, strict=True)
    return net


def to_params(net) -> dict:
    """The module's weights as a charrnn parameter dict (copies; the names are PyTorch's already)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}


# ---------------------------------------------------------------- timing


def _machine_cpu_seconds() -> float:
    """CPU seconds all processes have run (from /proc/stat; 0.0 where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _foreign_cpu_seconds(machine: float, own: float) -> float:
    return (_machine_cpu_seconds() - machine) - (_own_cpu_seconds() - own)


def wait_for_quiet(limit: float = QUIET_WAIT, window: float = 0.3, share: float = 0.1) -> None:
    """Wait (up to `limit` seconds) until other processes use less than `share` of the machine."""
    deadline = time.monotonic() + limit
    cpus = os.cpu_count() or 1
    while time.monotonic() < deadline:
        machine, own = _machine_cpu_seconds(), _own_cpu_seconds()
        time.sleep(window)
        if _foreign_cpu_seconds(machine, own) < share * cpus * window:
            return


def measure(fn, quiet: bool = True):
    """(seconds, foreign share, fn's result): wall time of fn() and the share of the machine others used meanwhile.

    - quiet: first wait for a quiet machine (wait_for_quiet)
    """
    if quiet:
        wait_for_quiet()
    machine, own, start = _machine_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    foreign = _foreign_cpu_seconds(machine, own)
    return wall, max(0.0, foreign / ((os.cpu_count() or 1) * wall)), result


def blas_kernel() -> str:
    """Which OpenBLAS kernels NumPy runs, as far as can be told, and whether the environment chose them.

    OPENBLAS_CORETYPE overrides OpenBLAS's own choice; some machines set it
    (with OPENBLAS_L2_SIZE) for older builds, and it can halve a current
    NumPy's GEMM speed. Unset both in the benchmark's command to measure what
    users get: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/...`.
    """
    try:
        from threadpoolctl import threadpool_info
        found = [i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"]
    except ImportError:
        found = []
    forced = os.environ.get("OPENBLAS_CORETYPE")
    name = found[0] if found else "unknown kernels (pip install threadpoolctl to see them)"
    return f"BLAS: {name}" + (f" (forced by OPENBLAS_CORETYPE={forced})" if forced else "")
