"""Data parallelism over MPI ranks: who this process is, and the few collectives training needs.

`mpiexec -n N charrnn train ...` starts N processes (ranks), on one host or on
several (a host file: docs/commands.md, "Across machines"). Rank r owns a fixed contiguous share of the
batch's B rows (parallel.row_blocks(B, N)[r]): for stream mode those are B/N of
the streams and their carried hidden state. Each rank computes its rows'
gradients, scaled by the whole batch's token count, so that the ranks'
gradients simply add.

They are added in rank order, element by element: ((g_0 + g_1) + g_2) + ...,
which is the order in which one process with --threads N adds its N row blocks.
Nothing depends on which rank finishes first, nor on how the buffer travels, so
a run with the same N is bit-reproducible, resumes bit-exactly, and gives the
bits of one process cutting the same blocks. A step's gradients travel along a
ring (rank r sends to r + 1 only), pipelined in chunks (ring_chunk): each
chunk starts at rank 0 and picks up every rank's share in ring order until
rank N - 1 holds its sum, which then goes on round the ring to every rank. Each
link carries about twice the buffer whatever N is (a gather to one rank would
take N - 1 buffers into its link), and nothing waits for a whole buffer before
passing it on. A buffer of MIN_CHUNK or less (the loss) takes MPI's Gather and
Bcast, whose trees need log N hops where the ring needs 2 (N - 1); it is added
on rank 0 in the same rank order.

Only buffer-based calls (Send, Recv, Sendrecv, Gather, Bcast, Gatherv, and
error_once's Isend, Irecv, Iprobe) are used: MPI moves the arrays' bytes,
nothing is pickled.

`world()` returns `Solo()` for a plain process (and for `mpiexec -n 1`),
where every collective is the identity, so the loop has one code path.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from ..errors import CharRNNError
from .parallel import row_blocks

# environment variables the MPI launchers set in every rank they start: the world's size
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE")
INSTALL_HINT = 'pip install -e ".[mpi]"'
# The ring's chunks (ring_chunk): what a link moves in the time of one message's latency (about 50 us at
# 25 Gbit/s) sets their size; a buffer of MIN_CHUNK or less takes the trees instead.
LATENCY_BYTES = 160 * 1024
MIN_CHUNK = 4096
_RING_TAG = 28
_ERROR_TAG, _HEARD_TAG = 29, 30
_HEARD, _ALL_FAILED = 1, 2  # rank 0's answer to a failing rank: it has the text; and every rank failed
# How long a failing rank waits to hear whether rank 0 fails alike (and rank 0 for the others' errors): ranks
# that hit the same error reach it within the spread of their start-ups, which this easily covers
ERROR_WAIT = 3.0


def ring_chunk(nbytes: int, ranks: int) -> int:
    """The ring's chunk size in bytes for a buffer of nbytes on `ranks` ranks (the bits do not depend on it).

    The buffer passes round the ring twice, one hop a step, in C chunks: 2 (C + N - 2) steps of one
    chunk's transfer and one latency. More chunks fill the pipe sooner but pay more latencies; the
    time is least at C = sqrt((N - 2) nbytes / LATENCY_BYTES). Two ranks gain nothing from a pipe.
    """
    if ranks <= 2:
        return max(nbytes, 1)
    return int(min(max(nbytes, 1), max(MIN_CHUNK, math.sqrt(nbytes * LATENCY_BYTES / (ranks - 2)))))


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

    def error_once(self, text: str, say, wait: float = ERROR_WAIT) -> None:
        """Tell this failing process's error text through say(text): here, all of it at once."""
        say(text)


class MPIGroup(Solo):
    """The ranks of MPI.COMM_WORLD."""

    def __init__(self, comm, chunk_bytes: int | None = None):
        """comm: MPI.COMM_WORLD; chunk_bytes: the ring's chunk (None: ring_chunk's, and the trees up to
        MIN_CHUNK), fixed only by tests."""
        self.comm, self.chunk_bytes = comm, chunk_bytes
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def rows(self, batch: int) -> slice:
        """This rank's contiguous rows of a batch of `batch` rows (empty when batch < size and none are left)."""
        return self.rows_of(self.rank, batch)

    def sum_in_rank_order(self, flat: np.ndarray) -> np.ndarray:
        """The sum over ranks of flat (n,), added element by element in rank order: the same bits on every rank.

        Over MIN_CHUNK it travels the ring in chunks of ring_chunk's size (see the module docstring); a
        smaller buffer is gathered to rank 0, added there and broadcast. Both add ((g_0 + g_1) + g_2) + ..., so the bits do not
        depend on which way, nor on the chunk size.
        """
        flat = np.ascontiguousarray(flat)
        if flat.nbytes <= (self.chunk_bytes or MIN_CHUNK):
            return self._gathered_sum(flat)
        step = max(1, (self.chunk_bytes or ring_chunk(flat.nbytes, self.size)) // flat.itemsize)
        total = flat.copy()
        incoming = np.empty(step, flat.dtype)
        # reduce: ring position r is rank r; rank 0's chunk is its own share, rank r adds its share to the
        # partial sum of ranks 0..r-1 that arrives from r - 1; rank N - 1 ends with every chunk's sum
        self._pipeline(total, step, position=self.rank, own=flat, incoming=incoming)
        # broadcast: the sums go on round the ring from rank N - 1 (position 0) through 0, 1, ..., N - 2
        self._pipeline(total, step, position=(self.rank + 1) % self.size)
        return total

    def _pipeline(self, buf: np.ndarray, step: int, position: int, own=None, incoming=None) -> None:
        """Pass buf's chunks along the ring's positions 0 -> 1 -> ... -> N - 1 (position p is on a rank whose
        next rank is position p + 1's), one hop a step, so that all links work at once once the pipe is full.

        At step s position p sends chunk s - p and receives chunk s - p + 1. With `own`, a received chunk
        is added to this rank's share (partial + own) into buf; without, it is copied into buf as it is.
        """
        n, last = buf.size, self.size - 1
        chunks = -(-n // step)
        nxt, prev = (self.rank + 1) % self.size, (self.rank - 1) % self.size
        for s in range(chunks + last - 1):
            out, into = s - position, s - position + 1
            send = buf[out * step:(out + 1) * step] if position < last and 0 <= out < chunks else None
            if position > 0 and 0 <= into < chunks:
                sl = slice(into * step, min(n, (into + 1) * step))
                recv = buf[sl] if own is None else incoming[:sl.stop - sl.start]
            else:
                recv = None
            if send is not None and recv is not None:
                self.comm.Sendrecv(send, dest=nxt, sendtag=_RING_TAG, recvbuf=recv, source=prev, recvtag=_RING_TAG)
            elif send is not None:
                self.comm.Send(send, dest=nxt, tag=_RING_TAG)
            elif recv is not None:
                self.comm.Recv(recv, source=prev, tag=_RING_TAG)
            if recv is not None and own is not None:
                np.add(recv, own[sl], out=buf[sl])

    def _gathered_sum(self, flat: np.ndarray) -> np.ndarray:
        """sum_in_rank_order of a small buffer: gathered to rank 0, added there in rank order, broadcast."""
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


    def error_once(self, text: str, say, wait: float = ERROR_WAIT) -> None:
        """Tell this failing rank's error text through say(text), so that an error every rank hits is told once.

        A failing rank other than 0 sends its text to rank 0 and waits (up to twice `wait` seconds) to hear
        that rank 0 has it: then it says nothing; if not (rank 0 did not fail, and waits in a collective for
        this rank), it says its own. A failing rank 0 says its own text at once, then takes the others' for
        up to `wait` seconds (until every rank's has come) and says each different one; only then does it
        answer the ranks it heard from. When every rank failed, all of them then meet at a barrier, so that
        they leave together: a rank that left while another was still at work would have mpiexec kill that
        one, and the job's exit status would be the kill's (9), not the error's. Plain sends of the UTF-8
        bytes (nothing pickled) that nothing else uses, so any collective in flight is untouched.
        """
        from mpi4py import MPI

        if self.rank != 0:
            deadline = time.monotonic() + 2 * wait
            self.comm.Isend(np.frombuffer(text.encode("utf-8"), np.uint8), dest=0, tag=_ERROR_TAG)
            heard = np.zeros(1, np.uint8)
            request = self.comm.Irecv(heard, source=0, tag=_HEARD_TAG)
            while not request.Test():
                if time.monotonic() > deadline:
                    say(text)  # rank 0 did not fail alike: this rank's error is its own to tell
                    return
                time.sleep(0.01)
            if heard[0] == _ALL_FAILED:
                self.comm.Barrier()
            return
        deadline = time.monotonic() + wait
        say(text)
        texts, senders, status = [text], [], MPI.Status()
        while len(senders) < self.size - 1 and time.monotonic() <= deadline:
            if not self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_ERROR_TAG, status=status):
                time.sleep(0.01)
                continue
            data = np.empty(status.Get_count(MPI.BYTE), np.uint8)
            self.comm.Recv(data, source=status.Get_source(), tag=_ERROR_TAG)
            senders.append(status.Get_source())
            other = data.tobytes().decode("utf-8", errors="replace")
            if other not in texts:
                texts.append(other)
                say(other)
        answer = _ALL_FAILED if len(senders) == self.size - 1 else _HEARD
        for sender in senders:
            self.comm.Send(np.full(1, answer, np.uint8), dest=sender, tag=_HEARD_TAG)
        if answer == _ALL_FAILED:
            self.comm.Barrier()


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
