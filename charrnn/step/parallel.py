"""A training step's batch cut into row blocks, one thread each: data parallelism that is deterministic.

The rows of a batch are independent until their gradients are summed, so the
batch is cut into `parts` contiguous blocks of rows (a saved setting,
TrainConfig.threads, never the machine's core count). Block p runs its whole
forward and backward pass on its own thread, with dropout drawn from its own
generator; the blocks' gradients are then summed in block order. Nothing is
divided by timing, so a run's numbers depend on `parts`, never on how many
cores there are or which thread finishes first.

Why blocks of rows rather than BLAS's own threads: each step of the
recurrence is a small product (B x H by H x G*H) followed by a compiled
elementwise loop. OpenBLAS splits each product over its threads and joins
them again, 200 times a layer per training step, with its threads spinning
in between, and the compiled loops run on one core. A block of rows needs no
join until the step's end, runs its loops on its own core, and degrades
gently when another program takes a core. Measured on a whole LSTM layer
(T 100, B 64, H 256, forward and backward) on a quiet 2-core machine: 104 ms
as two blocks of 32 rows against 117 ms with OpenBLAS's 2 threads; on a busy
one, 152 ms against 396 ms. While blocks run, OpenBLAS is held to one thread
(blas.limited); with parts = 1 it keeps its own threads.
"""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np

from . import blas
from ..core import model

_pool = None
_pool_lock = threading.Lock()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=15, thread_name_prefix="charrnn-block")
        return _pool


def run_blocks(fn, parts: int):
    """[fn(0), ..., fn(parts - 1)], block 0 on this thread and the rest on worker threads.

    With parts > 1 the BLAS is held to one thread meanwhile, and the workers run
    under the caller's np.errstate. The results come
    back in block order; the first exception raised by any block is raised here.
    """
    if parts == 1:
        return [fn(0)]
    errstate = np.geterr()  # NumPy's floating-point error handling is per thread: carry the caller's

    def in_block(p):
        with np.errstate(**errstate):
            return fn(p)

    with blas.limited(1):
        futures = [_executor().submit(in_block, p) for p in range(1, parts)]
        try:
            first = fn(0)
        finally:
            rest = [f.result() for f in futures]  # wait for every block before leaving the limit
    return [first] + rest


def row_blocks(batch: int, parts: int) -> list[slice]:
    """Contiguous row ranges cutting `batch` rows into min(parts, batch) blocks, as even as can be."""
    bounds = np.linspace(0, batch, min(parts, batch) + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def prepare(params, config, shape, parts: int):
    """The weights laid out once (model.prepare) for every block of a step's chunks of at most
    shape = (B, T) tokens, cut into `parts` row blocks: layer 0's table is built when the largest
    block uses it, and each block uses it as it would alone (model.forward), so the bits are those of
    a block that prepared its own.

    With parts > 1 the BLAS is held to one thread here too, as the blocks hold it: the table's product
    then has a block's bits, and OpenBLAS starts no threads of its own, which would go on spinning for a
    while after it and take the cores from the blocks (that cost a quarter of a step on two cores)."""
    B, T = shape
    rows = max((s.stop - s.start for s in row_blocks(B, parts)), default=0)
    if parts == 1:
        return model.prepare(params, config, table=model.uses_table(config, rows * T))
    with blas.limited(1):
        return model.prepare(params, config, table=model.uses_table(config, rows * T))


def loss_and_grads(params, config, inputs, targets, mask, state, *, count: int, rngs=None, parts: int = 1,
                   weights=None):
    """Forward and backward of one chunk, its rows in `parts` blocks (see the module docstring).

    - params, config: the model
    - inputs, targets: (B, T) token ids; mask: (B, T) or None; state: tuple of (L, B, H) arrays or None
    - count: the number of scored tokens the loss is a mean over (a whole batch's, when it is
      taken in chunks), so that gradients of chunks and blocks simply add
    - rngs: one dropout Generator per block, or None for no dropout; parts: the number of blocks
    - weights: from `prepare` for this chunk's shape or a larger one (a step's first chunk), shared
      by every block; None prepares them here, once for the blocks
    Returns (nll_sum, grads, final_state): the chunk's summed NLL in nats, the gradient
    of (summed NLL / count) w.r.t. every parameter, and the final state (L, B, H) arrays.
    """
    blocks = row_blocks(inputs.shape[0], parts)
    if weights is None:
        weights = prepare(params, config, inputs.shape, parts)

    def block(p):
        rows = blocks[p]
        st = None if state is None else tuple(s[:, rows] for s in state)
        _, final, cache = model.forward(params, config, inputs[rows], targets[rows],
                                        None if mask is None else mask[rows], st,
                                        dropout_rng=None if rngs is None else rngs[p], weights=weights)
        grads, _ = model.backward(params, config, cache, count=count)
        return cache["nll_sum"], grads, final

    results = run_blocks(block, len(blocks))
    nll_sum, grads, final = results[0]
    for other_nll, other_grads, _ in results[1:]:  # in block order: the sum's rounding is fixed
        nll_sum += other_nll
        for name, g in other_grads.items():
            grads[name] += g
    if len(results) > 1:
        final = tuple(np.concatenate([r[2][j] for r in results], axis=1) for j in range(len(final)))
    return nll_sum, grads, final
