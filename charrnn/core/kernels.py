"""The recurrent cells fused and compiled with numba: the fast path beside cells.py.

Each time step is one product (`h @ W_hh.T`: in float32 gemm.py's, with
W_hh packed once per chunk, else NumPy's BLAS; under --precision bf16, bf16.py's
tiles or its reference) and one compiled loop that
does all of the step's elementwise work in a single pass over the gates:
where NumPy makes a dozen passes, each reading and writing (B, G*H) arrays,
this loop reads each gate once. The
functions here take and return what cells.sequence_forward/backward take and
return, and tests/test_kernels.py holds them to it.

Why it is shaped as it is:
- Transcendentals. numba's np.tanh and np.exp compile to scalar libm calls,
  slower than NumPy's vector loops. In float32 tanh is a rational function
  (clamp to +-7.905, an odd degree-13 numerator over a degree-6 denominator,
  the form Eigen and XLA use; largest error 3.4e-7 next to the float64 tanh)
  that LLVM vectorizes, and sigmoid(x) = 0.5 tanh(x / 2) + 0.5. float64 keeps
  the exact libm functions, so gradient checks and PyTorch parity hold to 1e-10.
- NaN stays NaN: the clamp is written with comparisons (false for NaN), and no
  fastmath flag that assumes finite numbers is set, so a diverging run is still
  caught by the trainer's finiteness check.
- Threads. The compiled loops run on the calling thread alone. Between the
  step's products OpenBLAS's idle threads keep spinning for a while, and a
  second pool of numba threads fought them for the two cores: measured on a
  whole LSTM layer (T 100, B 64, H 256), prange on 2 threads was 10x slower
  than one thread. Work is never split by timing, so the bits of a run do
  not depend on the machine's core count: each output element is computed by
  one fixed sequence of operations.
- cache=True keeps the compiled code on disk, so only the first run on a
  machine pays for compilation. This module imports numba, so the rest of
  the package imports it lazily (model.recurrence), and commands that need
  no model math (--help, info) never load it.

Shapes: T steps, B batch, H hidden, G gates; a state is a tuple of (B, H) arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import types
from numba.extending import overload

from . import bf16, gemm

_JIT = dict(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy", boundscheck=False)

# float32 tanh(x) ~ x P(x^2) / Q(x^2) on [-CLAMP, CLAMP], where tanh(CLAMP) rounds to 1.
_CLAMP = np.float32(7.90531110763549805)
_P = tuple(np.float32(v) for v in (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05,
                                   5.12229709037114e-08, -8.60467152213735e-11, 2.00018790482477e-13,
                                   -2.76076847742355e-16))
_Q = tuple(np.float32(v) for v in (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04,
                                   1.19825839466702e-06))


def tanh(x):
    """tanh in jitted code: the float32 rational, or libm's in float64 (see the module docstring)."""
    return np.tanh(x)


@overload(tanh, jit_options=_JIT)
def _tanh_overload(x):
    if x != types.float32:
        return lambda x: np.tanh(x)
    c, p0, p1, p2, p3, p4, p5, p6 = _CLAMP, *_P
    q0, q1, q2, q3 = _Q

    def rational_tanh(x):
        # comparisons, not min/max, so that NaN passes through
        x = c if x > c else x
        x = -c if x < -c else x
        x2 = x * x
        p = ((((((p6 * x2 + p5) * x2 + p4) * x2 + p3) * x2 + p2) * x2 + p1) * x2 + p0) * x
        q = ((q3 * x2 + q2) * x2 + q1) * x2 + q0
        return p / q

    return rational_tanh


def sigmoid(x):
    """The logistic function in jitted code, through tanh."""
    return 0.5 * np.tanh(0.5 * x) + 0.5


@overload(sigmoid, jit_options=_JIT)
def _sigmoid_overload(x):
    half = np.float32(0.5) if x == types.float32 else 0.5
    return lambda x: half * tanh(half * x) + half


# ---------------------------------------------------------------- per-step fused loops
# Arguments: hh = h_prev @ W_hh.T (B, G*H) from BLAS; xp_t = W_ih x + b_ih (B, G*H);
# b = b_hh (G*H,). Outputs are written into the arrays passed last.


@numba.njit(**_JIT)
def rnn_forward_step(hh, xp_t, b, h):
    B, H = h.shape
    for n in range(B):
        for j in range(H):
            h[n, j] = tanh(hh[n, j] + xp_t[n, j] + b[j])


@numba.njit(**_JIT)
def rnn_backward_step(dh_rec, dh_out, h, da):
    """da = (dh_rec + dh_out) * (1 - h^2); the caller then takes dh_rec = da @ W_hh."""
    one = h.dtype.type(1.0)
    B, H = h.shape
    for n in range(B):
        for j in range(H):
            y = h[n, j]
            da[n, j] = (dh_rec[n, j] + dh_out[n, j]) * (one - y * y)


@numba.njit(**_JIT)
def lstm_forward_step(hh, xp_t, b, c_prev, act, c, tanh_c, h):
    """act (B, 4H) receives i, f, g, o; c, tanh_c and h (B, H) the new cell, tanh(c) and h.

    Two loops per row, because LLVM vectorizes each of them and not their
    fusion (one loop reading four gate columns and writing seven arrays ran
    4x slower): the first activates the contiguous (4H,) row, the g gate
    chosen by a select, the second updates the cell.
    """
    one, half = h.dtype.type(1.0), h.dtype.type(0.5)
    B, H = h.shape
    for n in range(B):
        for j in range(4 * H):
            is_g = (j >= 2 * H) & (j < 3 * H)
            t = tanh((hh[n, j] + xp_t[n, j] + b[j]) * (one if is_g else half))
            act[n, j] = t if is_g else half * t + half  # sigmoid(x) = (tanh(x / 2) + 1) / 2
        for j in range(H):
            cn = act[n, H + j] * c_prev[n, j] + act[n, j] * act[n, 2 * H + j]  # f * c + i * g
            tc = tanh(cn)
            c[n, j] = cn
            tanh_c[n, j] = tc
            h[n, j] = act[n, 3 * H + j] * tc  # o * tanh(c)


@numba.njit(**_JIT)
def lstm_backward_step(dh_rec, dh_out, dc, act, c_prev, tanh_c, da):
    """da (B, 4H) receives d(pre-activations); dc (B, H) is updated in place to d c_prev."""
    one = dc.dtype.type(1.0)
    B, H = dc.shape
    for n in range(B):
        for j in range(H):
            i, f, g, o = act[n, j], act[n, H + j], act[n, 2 * H + j], act[n, 3 * H + j]
            dh = dh_rec[n, j] + dh_out[n, j]
            tc = tanh_c[n, j]
            dcn = dc[n, j] + dh * o * (one - tc * tc)
            da[n, j] = dcn * g * i * (one - i)
            da[n, H + j] = dcn * c_prev[n, j] * f * (one - f)
            da[n, 2 * H + j] = dcn * i * (one - g * g)
            da[n, 3 * H + j] = dh * tc * o * (one - o)
            dc[n, j] = dcn * f


@numba.njit(**_JIT)
def gru_forward_step(hh, xp_t, b, h_prev, act, hn, h):
    """act (B, 3H) receives r, z, n; hn (B, H) receives W_hn h + b_hn; h the new state."""
    B, H = h.shape
    for n in range(B):
        for j in range(H):
            r = sigmoid(hh[n, j] + xp_t[n, j] + b[j])
            z = sigmoid(hh[n, H + j] + xp_t[n, H + j] + b[H + j])
            hnj = hh[n, 2 * H + j] + b[2 * H + j]
            nn = tanh(xp_t[n, 2 * H + j] + r * hnj)
            act[n, j], act[n, H + j], act[n, 2 * H + j] = r, z, nn
            hn[n, j] = hnj
            h[n, j] = nn + z * (h_prev[n, j] - nn)


@numba.njit(**_JIT)
def gru_backward_step(dh_rec, dh_direct, dh_out, h_prev, act, hn, d_xp, d_hp):
    """d_xp, d_hp (B, 3H) receive the input and hidden sides' gradients; dh_direct (B, H)
    is read, then overwritten with this step's dh * z (the part of d h_prev that skips W_hh)."""
    one = h_prev.dtype.type(1.0)
    B, H = h_prev.shape
    for n in range(B):
        for j in range(H):
            r, z, nn = act[n, j], act[n, H + j], act[n, 2 * H + j]
            dh = dh_rec[n, j] + dh_direct[n, j] + dh_out[n, j]
            da_n = dh * (one - z) * (one - nn * nn)
            da_r = da_n * hn[n, j] * r * (one - r)
            da_z = dh * (h_prev[n, j] - nn) * z * (one - z)
            d_xp[n, j] = d_hp[n, j] = da_r
            d_xp[n, H + j] = d_hp[n, H + j] = da_z
            d_xp[n, 2 * H + j] = da_n
            d_hp[n, 2 * H + j] = da_n * r
            dh_direct[n, j] = dh * z


@numba.njit(**_JIT)
def peephole_forward_step(hh, xp_t, b, c_prev, w_ci, w_cf, w_co, act, c, tanh_c, h):
    """The LSTM step with peepholes (cells.peephole_step_forward): act (B, 4H) receives
    i, f, g, o; c, tanh_c and h (B, H) the new cell, tanh(c) and h. o reads the new c,
    so one loop per row does the whole step."""
    B, H = h.shape
    for n in range(B):
        for j in range(H):
            cp = c_prev[n, j]
            i = sigmoid(hh[n, j] + xp_t[n, j] + b[j] + w_ci[j] * cp)
            f = sigmoid(hh[n, H + j] + xp_t[n, H + j] + b[H + j] + w_cf[j] * cp)
            g = tanh(hh[n, 2 * H + j] + xp_t[n, 2 * H + j] + b[2 * H + j])
            cn = f * cp + i * g
            o = sigmoid(hh[n, 3 * H + j] + xp_t[n, 3 * H + j] + b[3 * H + j] + w_co[j] * cn)
            tc = tanh(cn)
            act[n, j], act[n, H + j], act[n, 2 * H + j], act[n, 3 * H + j] = i, f, g, o
            c[n, j] = cn
            tanh_c[n, j] = tc
            h[n, j] = o * tc


@numba.njit(**_JIT)
def peephole_backward_step(dh_rec, dh_out, dc, act, c_prev, tanh_c, w_ci, w_cf, w_co, da):
    """da (B, 4H) receives d(pre-activations); dc (B, H) is updated in place to d c_prev."""
    one = dc.dtype.type(1.0)
    B, H = dc.shape
    for n in range(B):
        for j in range(H):
            i, f, g, o = act[n, j], act[n, H + j], act[n, 2 * H + j], act[n, 3 * H + j]
            dh = dh_rec[n, j] + dh_out[n, j]
            tc = tanh_c[n, j]
            da_o = dh * tc * o * (one - o)
            dcn = dc[n, j] + dh * o * (one - tc * tc) + da_o * w_co[j]
            da_i = dcn * g * i * (one - i)
            da_f = dcn * c_prev[n, j] * f * (one - f)
            da[n, j] = da_i
            da[n, H + j] = da_f
            da[n, 2 * H + j] = dcn * i * (one - g * g)
            da[n, 3 * H + j] = da_o
            dc[n, j] = dcn * f + da_i * w_ci[j] + da_f * w_cf[j]


@numba.njit(**_JIT)
def simple_gru_forward_step(hh, xp_t, b, h_prev, act, h):
    """The notes' simplified GRU step (cells.simple_gru_step_forward): act (B, 2H) receives c~, u."""
    B, H = h.shape
    for n in range(B):
        for j in range(H):
            ct = tanh(hh[n, j] + xp_t[n, j] + b[j])
            u = sigmoid(hh[n, H + j] + xp_t[n, H + j] + b[H + j])
            act[n, j], act[n, H + j] = ct, u
            h[n, j] = h_prev[n, j] + u * (ct - h_prev[n, j])  # u c~ + (1 - u) c


@numba.njit(**_JIT)
def simple_gru_backward_step(dh_rec, dh_direct, dh_out, h_prev, act, da):
    """da (B, 2H) receives d(pre-activations); dh_direct (B, H) is read, then overwritten
    with this step's dh * (1 - u) (the part of d h_prev that skips W_hh)."""
    one = h_prev.dtype.type(1.0)
    B, H = h_prev.shape
    for n in range(B):
        for j in range(H):
            ct, u = act[n, j], act[n, H + j]
            dh = dh_rec[n, j] + dh_direct[n, j] + dh_out[n, j]
            da[n, j] = dh * u * (one - ct * ct)
            da[n, H + j] = dh * (ct - h_prev[n, j]) * u * (one - u)
            dh_direct[n, j] = dh * (one - u)


# ---------------------------------------------------------------- a sequence
# One time loop per cell and direction. Each step is `product(x, w, out)` (out = x @ w) and the
# cell's fused loop. The same loop text runs two ways:
# - compiled (numba), when w is gemm.py's packed operand: the whole loop is one call per chunk
#   instead of two per step (their Python overhead was a tenth of a layer's time);
# - as Python (the loop's py_func), when w is an array: NumPy's product (float64, short chunks,
#   machines without the microkernel), with each step's fused loop still compiled.

# Chunks of at least this many steps pack their step product's weight (gemm.py);
# shorter ones (sampling's single steps) would spend more on packing than it saves.
_PACK_MIN_STEPS = 4


class Bf16Reference(NamedTuple):
    """The step product's operand where bf16.py's tiles cannot run: bf16.reference by w, the same bits."""

    w: np.ndarray


def product(x, w, out):
    """out = x @ w: NumPy's product for a w that is an array, bf16's reference for a Bf16Reference
    (the loops run as Python)."""
    if isinstance(w, Bf16Reference):
        out[...] = bf16.reference(x, w.w)
    else:
        np.matmul(x, w, out=out)


@overload(product, jit_options=_JIT)
def _product_overload(x, w, out):
    if isinstance(w, types.BaseTuple) and len(w) == 2:  # bf16's packed operand (panels, tiles)
        def bf16_product(x, w, out):
            rows = np.empty((x.shape[0], 2 * w[0].shape[1]), np.uint16)
            bf16.round_rows(x, rows)
            bf16.compiled_matmul(rows, w[0], out, w[1])
        return bf16_product
    if isinstance(w, types.BaseTuple):  # gemm's packed operand (panels, nr, mr, tiles): the loops compiled
        return lambda x, w, out: gemm.compiled_matmul(x, w[0], out, w[1], w[2], w[3])
    return None


def _packed(w, steps, precision="float32", panels=None):
    """The packed operand to multiply by w in compiled loops, or None for the loops run as Python:
    - bf16: (panels, tiles) for bf16.py's tiles, at any length (None where the CPU has none);
    - float32: (panels, NR, MR, microkernels) for gemm.py's (None for float64, short chunks and
      machines without the microkernel, which use NumPy's matmul).
    panels: bf16.pack(w) when the caller has it."""
    if precision == "bf16":
        tiles = bf16.microkernels()
        return None if tiles is None else (bf16.pack(w) if panels is None else panels, tiles.tiles)
    if w.dtype == np.float32 and steps >= _PACK_MIN_STEPS and gemm.available():
        return (gemm.pack(w), *gemm.microkernels())
    return None


def _runner(loop, w, steps, precision="float32", panels=None):
    """loop(operand, *args): compiled with the packed w when _packed allows, else as Python with w itself
    (bf16: wrapped in Bf16Reference)."""
    packed = _packed(w, steps, precision, panels)
    if packed is not None:
        return lambda *args: loop(packed, *args)
    operand = Bf16Reference(w) if precision == "bf16" else w
    return lambda *args: loop.py_func(operand, *args)


# Forward loops: w multiplies h (W_hh transposed, (H, G*H)); hs (T+1, B, H) has h0 in hs[0] and
# receives h_t in hs[t + 1]; hh (B, G*H) is the product's buffer. Without keep (no backward
# follows) the step buffers act, tanh_cs and hns hold one step, and cs two that alternate.


@numba.njit(**_JIT)
def _rnn_forward(w, xp, b, hs, hh):
    for t in range(xp.shape[0]):
        product(hs[t], w, hh)
        rnn_forward_step(hh, xp[t], b, hs[t + 1])


@numba.njit(**_JIT)
def _lstm_forward(w, xp, b, hs, cs, act, tanh_cs, hh, keep):
    for t in range(xp.shape[0]):
        a, c_prev, c = (t, t, t + 1) if keep else (0, t % 2, 1 - t % 2)
        product(hs[t], w, hh)
        lstm_forward_step(hh, xp[t], b, cs[c_prev], act[a], cs[c], tanh_cs[a], hs[t + 1])


@numba.njit(**_JIT)
def _gru_forward(w, xp, b, hs, act, hns, hh, keep):
    for t in range(xp.shape[0]):
        a = t if keep else 0
        product(hs[t], w, hh)
        gru_forward_step(hh, xp[t], b, hs[t], act[a], hns[a], hs[t + 1])


@numba.njit(**_JIT)
def _peephole_forward(w, xp, b, w_ci, w_cf, w_co, hs, cs, act, tanh_cs, hh, keep):
    for t in range(xp.shape[0]):
        a, c_prev, c = (t, t, t + 1) if keep else (0, t % 2, 1 - t % 2)
        product(hs[t], w, hh)
        peephole_forward_step(hh, xp[t], b, cs[c_prev], w_ci, w_cf, w_co, act[a], cs[c], tanh_cs[a], hs[t + 1])


@numba.njit(**_JIT)
def _simple_gru_forward(w, xp, b, hs, act, hh, keep):
    for t in range(xp.shape[0]):
        product(hs[t], w, hh)
        simple_gru_forward_step(hh, xp[t], b, hs[t], act[t if keep else 0], hs[t + 1])


# Backward loops: w is W_hh (G*H, H); dh_rec (B, H) holds the gradient of h_t that came back through
# W_hh (or from the final state), and receives d h0's; dc and dh_direct likewise carry the parts that
# skip W_hh. d_xp (and gru's d_hp) (T, B, G*H) receive each step's gradients.


@numba.njit(**_JIT)
def _rnn_backward(w, d_hs, hs, dh_rec, d_xp):
    for t in range(d_hs.shape[0] - 1, -1, -1):
        rnn_backward_step(dh_rec, d_hs[t], hs[t + 1], d_xp[t])
        product(d_xp[t], w, dh_rec)


@numba.njit(**_JIT)
def _lstm_backward(w, d_hs, act, cs, tanh_cs, dh_rec, dc, d_xp):
    for t in range(d_hs.shape[0] - 1, -1, -1):
        lstm_backward_step(dh_rec, d_hs[t], dc, act[t], cs[t], tanh_cs[t], d_xp[t])
        product(d_xp[t], w, dh_rec)


@numba.njit(**_JIT)
def _gru_backward(w, d_hs, hs, act, hns, dh_rec, dh_direct, d_xp, d_hp):
    for t in range(d_hs.shape[0] - 1, -1, -1):
        gru_backward_step(dh_rec, dh_direct, d_hs[t], hs[t], act[t], hns[t], d_xp[t], d_hp[t])
        product(d_hp[t], w, dh_rec)


@numba.njit(**_JIT)
def _peephole_backward(w, d_hs, act, cs, tanh_cs, w_ci, w_cf, w_co, dh_rec, dc, d_xp):
    for t in range(d_hs.shape[0] - 1, -1, -1):
        peephole_backward_step(dh_rec, d_hs[t], dc, act[t], cs[t], tanh_cs[t], w_ci, w_cf, w_co, d_xp[t])
        product(d_xp[t], w, dh_rec)


@numba.njit(**_JIT)
def _simple_gru_backward(w, d_hs, hs, act, dh_rec, dh_direct, d_xp):
    for t in range(d_hs.shape[0] - 1, -1, -1):
        simple_gru_backward_step(dh_rec, dh_direct, d_hs[t], hs[t], act[t], d_xp[t])
        product(d_xp[t], w, dh_rec)


class Chunk(NamedTuple):
    """What sequence_backward needs of a chunk that sequence_forward ran, whole arrays over time."""

    cell: str
    W_hh: np.ndarray                  # (G*H, H)
    hs: np.ndarray                    # (T+1, B, H): hs[0] is h0, hs[t + 1] is h_t
    act: np.ndarray | None = None     # (T, B, G*H): each step's gates after their nonlinearities (not rnn)
    cs: np.ndarray | None = None      # (T+1, B, H): the cell states, cs[0] the initial one (lstm, peephole)
    tanh_cs: np.ndarray | None = None  # (T, B, H): tanh of each new cell state (lstm, peephole)
    hns: np.ndarray | None = None     # (T, B, H): W_hn h + b_hn (gru)
    extra: tuple = ()                 # the cell's EXTRA parameters
    precision: str = "float32"        # the products' precision (model.PRECISIONS)


def sequence_forward(cell, xp, state0, W_hh, b_hh, *, keep=True, W_hh_t=None, extra=(), precision="float32",
                     packed=None):
    """Run one layer's recurrence over a chunk; the same contract as cells.sequence_forward.

    - keep: False when no backward pass follows (sampling, scoring): step
      buffers are then reused instead of kept for every step
    - W_hh_t: W_hh transposed and contiguous (H, G*H), when the caller has it
      (BLAS multiplies it about a fifth faster than the transposed view)
    - extra: the cell's EXTRA parameters (cells.EXTRA), a tuple of (H,) arrays
    - precision: "bf16" takes the step products with bfloat16 inputs (bf16.py), the backward's too;
      packed: bf16.pack(W_hh_t), when the caller has it (model.Weights.bf16)
    Returns (hs (T, B, H), state, cache): cache is a Chunk, or None when keep is False.
    """
    if cell not in _FORWARD:
        raise ValueError(f"unknown cell {cell!r}")
    T, B, GH = xp.shape
    H = W_hh.shape[1]
    dtype = xp.dtype
    W_hh_t = np.ascontiguousarray(W_hh.T) if W_hh_t is None else W_hh_t
    run = _runner(_FORWARD[cell], W_hh_t, T, precision, packed)
    hs = np.empty((T + 1, B, H), dtype)
    hs[0] = state0[0]
    hh = np.empty((B, GH), dtype)
    steps = T if keep else 1
    act = None if cell == "rnn" else np.empty((steps, B, GH), dtype)
    cs = tanh_cs = hns = None
    if cell == "rnn":
        run(xp, b_hh, hs, hh)
    elif cell in ("lstm", "peephole"):
        cs = np.empty((T + 1 if keep else 2, B, H), dtype)
        cs[0] = state0[1]
        tanh_cs = np.empty((steps, B, H), dtype)
        run(xp, b_hh, *extra, hs, cs, act, tanh_cs, hh, keep)
    elif cell == "gru":
        hns = np.empty((steps, B, H), dtype)
        run(xp, b_hh, hs, act, hns, hh, keep)
    else:
        run(xp, b_hh, hs, act, hh, keep)
    state = (hs[T].copy(),) if cs is None else (hs[T].copy(), cs[T if keep else T % 2].copy())
    if not keep:
        return hs[1:], state, None
    return hs[1:], state, Chunk(cell, W_hh, hs, act, cs, tanh_cs, hns, tuple(extra), precision)


def sequence_backward(d_hs, d_state, cache: Chunk):
    """Backpropagate through one layer's recurrence; the same contract as cells.sequence_backward."""
    cell, hs, act = cache.cell, cache.hs, cache.act
    T, B, H = d_hs.shape
    GH = cache.W_hh.shape[0]
    dtype = d_hs.dtype
    d_hs = np.ascontiguousarray(d_hs, dtype=dtype)
    run = _runner(_BACKWARD[cell], cache.W_hh, T, cache.precision)

    def given(j):  # the final state's gradient, a fresh array that the loop overwrites
        return np.zeros((B, H), dtype) if d_state is None else np.array(d_state[j], dtype=dtype)

    dh_rec = given(0)
    d_xp = d_hp = np.empty((T, B, GH), dtype)  # d_hp is d_xp but for gru
    grads = {}
    if cell == "rnn":
        run(d_hs, hs, dh_rec, d_xp)
        d_state0 = (dh_rec,)
    elif cell in ("lstm", "peephole"):
        dc = given(1)
        run(d_hs, act, cache.cs, cache.tanh_cs, *cache.extra, dh_rec, dc, d_xp)
        d_state0 = (dh_rec, dc)
        if cell == "peephole":
            # each peephole's gradient: its gate's d pre-activation times the c it saw, summed over T and B
            cs = cache.cs
            grads["ci"] = np.einsum("tbh,tbh->h", d_xp[:, :, :H], cs[:-1])
            grads["cf"] = np.einsum("tbh,tbh->h", d_xp[:, :, H : 2 * H], cs[:-1])
            grads["co"] = np.einsum("tbh,tbh->h", d_xp[:, :, 3 * H :], cs[1:])
    else:
        dh_direct = np.zeros((B, H), dtype)
        if cell == "gru":
            d_hp = np.empty((T, B, GH), dtype)
            run(d_hs, hs, act, cache.hns, dh_rec, dh_direct, d_xp, d_hp)
        else:
            run(d_hs, hs, act, dh_rec, dh_direct, d_xp)
        dh_rec += dh_direct
        d_state0 = (dh_rec,)
    d_hp_flat = d_hp.reshape(T * B, GH)
    h_flat = hs[:-1].reshape(T * B, H)
    d_W_hh = bf16.matmul(d_hp_flat.T, h_flat) if cache.precision == "bf16" else d_hp_flat.T @ h_flat
    grads = {"W_hh": d_W_hh, "b_hh": d_hp_flat.sum(axis=0), **grads}
    return d_xp, d_state0, grads


_FORWARD = {"rnn": _rnn_forward, "lstm": _lstm_forward, "gru": _gru_forward,
            "peephole": _peephole_forward, "simple-gru": _simple_gru_forward}
_BACKWARD = {"rnn": _rnn_backward, "lstm": _lstm_backward, "gru": _gru_backward,
             "peephole": _peephole_backward, "simple-gru": _simple_gru_backward}
