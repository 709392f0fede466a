"""Data parallelism over MPI ranks: who this process is, and the few collectives training needs.

`mpiexec -n N charrnn train ...` starts N processes (ranks). Rank r owns a
fixed contiguous share of the batch's B rows (parallel.row_blocks(B, N)[r]):
for stream mode those are B/N of the streams and their carried hidden state.
Each rank computes its rows' gradients, scaled by the whole batch's token
count, so that the ranks' gradients simply add. They are added in a fixed
order: gathered to rank 0 and summed in rank order, then broadcast. Nothing
depends on which rank finishes first, so a run with the same N is
bit-reproducible and resumes bit-exactly.

Only buffer-based collectives (Gather, Bcast, Gatherv) are used: MPI moves
the arrays' bytes, nothing is pickled.

`world()` returns `Solo()` for a plain process (and for `mpiexec -n 1`),
where every collective is the identity, so the loop has one code path.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import CharRNNError
from .parallel import row_blocks

# environment variables the MPI launchers set in every rank they start: the world's size
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE")
INSTALL_HINT = 'pip install -e ".[mpi]"'


def launched_size() -> int:
    """How many ranks an MPI launcher says it started, or 1 outside one."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


class Solo:
    """One process: rank 0 of 1; every collective returns its input."""
    rank, size = 0, 1

    def rows(self, batch: int) -> slice:
        return slice(0, batch)

    def sum_in_rank_order(self, flat: np.ndarray) -> np.ndarray:
        return flat

    def agree(self, stop: bool, elapsed: float) -> tuple[bool, float]:
        return stop, elapsed

    def root_says(self, flag: bool) -> bool:
        return flag

    def gather_rows(self, arrays, batch: int):
        return arrays

    def barrier(self) -> None:
        pass

    def broadcast_text(self, text: str | None) -> str:
        return text


class MPIGroup(Solo):
    """The ranks of MPI.COMM_WORLD."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def rows(self, batch: int) -> slice:
        """This rank's contiguous rows of a batch of `batch` rows (empty when batch < size and none are left)."""
        return self.rows_of(self.rank, batch)

    def sum_in_rank_order(self, flat: np.ndarray) -> np.ndarray:
        """The sum over ranks of flat (n,), added on rank 0 in rank order and broadcast: the same bits everywhere."""
        flat = np.ascontiguousarray(flat)
        gathered = np.empty((self.size, flat.size), flat.dtype) if self.rank == 0 else None  # (N, n)
        self.comm.Gather(flat, gathered, root=0)
        total = np.empty_like(flat)
        if self.rank == 0:
            total[:] = gathered[0]
            for r in range(1, self.size):
                total += gathered[r]
        self.comm.Bcast(total, root=0)
        return total

    def agree(self, stop: bool, elapsed: float) -> tuple[bool, float]:
        """(whether any rank was asked to stop, rank 0's elapsed time): one decision for all ranks."""
        mine = np.array([float(stop), elapsed])
        gathered = np.empty((self.size, 2)) if self.rank == 0 else None
        self.comm.Gather(mine, gathered, root=0)
        out = np.empty(2)
        if self.rank == 0:
            out[:] = gathered[:, 0].max(), gathered[0, 1]
        self.comm.Bcast(out, root=0)
        return bool(out[0]), float(out[1])

    def root_says(self, flag: bool) -> bool:
        """Rank 0's flag on every rank (a decision only rank 0 can make, such as an early stop)."""
        out = np.array([float(flag)])
        self.comm.Bcast(out, root=0)
        return bool(out[0])

    def gather_rows(self, arrays, batch: int):
        """Rank 0: each (L, B, H) array whole, from the ranks' (L, b_r, H) rows in rank order; others: None."""
        counts = [s.stop - s.start for s in (self.rows_of(r, batch) for r in range(self.size))]
        whole = []
        for a in arrays:
            a = np.ascontiguousarray(np.moveaxis(a, 1, 0))  # (b_r, L, H): a rank's rows are contiguous
            per_row = int(np.prod(a.shape[1:]))
            out = np.empty((batch,) + a.shape[1:], a.dtype) if self.rank == 0 else None
            self.comm.Gatherv(a, (out, [c * per_row for c in counts]) if self.rank == 0 else None, root=0)
            whole.append(None if out is None else np.ascontiguousarray(np.moveaxis(out, 0, 1)))
        return tuple(whole) if self.rank == 0 else None

    def rows_of(self, rank: int, batch: int) -> slice:
        """Rank `rank`'s rows of a batch (see rows)."""
        blocks = row_blocks(batch, self.size)
        return blocks[rank] if rank < len(blocks) else slice(batch, batch)

    def barrier(self) -> None:
        self.comm.Barrier()

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's text on every rank."""
        data = np.frombuffer((text or "").encode("utf-8"), np.uint8) if self.rank == 0 else None
        n = np.array([0 if data is None else data.size], np.int64)
        self.comm.Bcast(n, root=0)
        buf = data.copy() if self.rank == 0 else np.empty(int(n[0]), np.uint8)
        self.comm.Bcast(buf, root=0)
        return buf.tobytes().decode("utf-8")


_world = None


def active() -> bool:
    """Whether this process has joined an MPI world of more than one rank."""
    return isinstance(_world, MPIGroup)


def world():
    """This process's group: MPIGroup under an MPI launcher with more than one rank, else Solo().

    CharRNNError (saying how to install the extra; exit 1, since no option is wrong) when launched
    by MPI but mpi4py, or an MPI library for it, is missing.
    """
    global _world
    if _world is not None:
        return _world
    size = launched_size()
    if size == 1:
        _world = Solo()
        return _world
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CharRNNError(f"started by mpiexec with {size} ranks, but MPI is not usable here ({why}); "
                           f"install it with {INSTALL_HINT}") from None
    comm = MPI.COMM_WORLD
    _world = MPIGroup(comm) if comm.Get_size() > 1 else Solo()
    return _world
