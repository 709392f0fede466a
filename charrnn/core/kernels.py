"""The recurrent cells fused and compiled with numba: the fast path beside cells.py.

Each time step is one product (`h @ W_hh.T`: in float32 gemm.py's, with
W_hh packed once per chunk, else NumPy's BLAS) and one compiled loop that
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

import numba
import numpy as np
from numba import types
from numba.extending import overload

from . import gemm

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

# Chunks of at least this many steps pack their step product's weight (gemm.py);
# shorter ones (sampling's single steps) would spend more on packing than it saves.
_PACK_MIN_STEPS = 4


def _packed(w, steps):
    """(panels, NR, MR, microkernels) to multiply by w with gemm.py, or None for NumPy's matmul:
    float64, short chunks and machines without the microkernel."""
    if w.dtype == np.float32 and steps >= _PACK_MIN_STEPS and gemm.available():
        return (gemm.pack(w), *gemm.microkernels())
    return None


def _step_product(w, steps):
    """product(x, out): out = x @ w for each of a chunk's `steps` steps (gemm.py's when _packed allows)."""
    packed = _packed(w, steps)
    if packed is not None:
        panels, nr, mr, tiles = packed
        return lambda x, out: gemm.compiled_matmul(x, panels, out, nr, mr, tiles)
    return lambda x, out: np.matmul(x, w, out=out)


# With the packed product the whole time loop of the common cells is compiled: one call
# per chunk instead of two per step (their Python overhead was a tenth of a layer's time).
# They do what the Python loops in sequence_forward/backward do, step for step.


@numba.njit(**_JIT)
def _rnn_forward_loop(xp, b, panels, nr, mr, tiles, hs, hh):
    for t in range(xp.shape[0]):
        gemm.compiled_matmul(hs[t], panels, hh, nr, mr, tiles)
        rnn_forward_step(hh, xp[t], b, hs[t + 1])


@numba.njit(**_JIT)
def _lstm_forward_loop(xp, b, panels, nr, mr, tiles, hs, cs, act, tanh_cs, hh, keep):
    for t in range(xp.shape[0]):
        a, c_prev, c = (t, t, t + 1) if keep else (0, t % 2, 1 - t % 2)
        gemm.compiled_matmul(hs[t], panels, hh, nr, mr, tiles)
        lstm_forward_step(hh, xp[t], b, cs[c_prev], act[a], cs[c], tanh_cs[a], hs[t + 1])


@numba.njit(**_JIT)
def _gru_forward_loop(xp, b, panels, nr, mr, tiles, hs, act, hns, hh, keep):
    for t in range(xp.shape[0]):
        a = t if keep else 0
        gemm.compiled_matmul(hs[t], panels, hh, nr, mr, tiles)
        gru_forward_step(hh, xp[t], b, hs[t], act[a], hns[a], hs[t + 1])


@numba.njit(**_JIT)
def _rnn_backward_loop(d_hs, hs, panels, nr, mr, tiles, dh_rec, d_xp):
    for t in range(d_hs.shape[0] - 1, -1, -1):
        rnn_backward_step(dh_rec, d_hs[t], hs[t + 1], d_xp[t])
        gemm.compiled_matmul(d_xp[t], panels, dh_rec, nr, mr, tiles)


@numba.njit(**_JIT)
def _lstm_backward_loop(d_hs, act, cs, tanh_cs, panels, nr, mr, tiles, dh_rec, dc, d_xp):
    for t in range(d_hs.shape[0] - 1, -1, -1):
        lstm_backward_step(dh_rec, d_hs[t], dc, act[t], cs[t], tanh_cs[t], d_xp[t])
        gemm.compiled_matmul(d_xp[t], panels, dh_rec, nr, mr, tiles)


@numba.njit(**_JIT)
def _gru_backward_loop(d_hs, hs, act, hns, panels, nr, mr, tiles, dh_rec, dh_direct, d_xp, d_hp):
    for t in range(d_hs.shape[0] - 1, -1, -1):
        gru_backward_step(dh_rec, dh_direct, d_hs[t], hs[t], act[t], hns[t], d_xp[t], d_hp[t])
        gemm.compiled_matmul(d_hp[t], panels, dh_rec, nr, mr, tiles)


def sequence_forward(cell, xp, state0, W_hh, b_hh, *, keep=True, W_hh_t=None, extra=()):
    """Run one layer's recurrence over a chunk; the same contract as cells.sequence_forward.

    - keep: False when no backward pass follows (sampling, scoring): step
      buffers are then reused instead of kept for every step
    - W_hh_t: W_hh transposed and contiguous (H, G*H), when the caller has it
      (BLAS multiplies it about a fifth faster than the transposed view)
    - extra: the cell's EXTRA parameters (cells.EXTRA), a tuple of (H,) arrays
    Returns (hs (T, B, H), state, cache); cache is None when keep is False.
    """
    if cell in _ADDED_CELLS:
        return _ADDED_CELLS[cell][0](xp, state0, W_hh, b_hh, keep, W_hh_t, extra)
    T, B, GH = xp.shape
    H = W_hh.shape[1]
    dtype = xp.dtype
    if W_hh_t is None:
        W_hh_t = np.ascontiguousarray(W_hh.T)
    hs = np.empty((T + 1, B, H), dtype)  # hs[0] is h0, so step t reads hs[t]
    hs[0] = state0[0]
    hh = np.empty((B, GH), dtype)
    packed = _packed(W_hh_t, T)
    n_act = T if keep else 1
    cache = {"cell": cell, "hs": hs, "W_hh": W_hh}
    if cell == "rnn":
        if packed is not None:
            _rnn_forward_loop(xp, b_hh, *packed, hs, hh)
        else:
            for t in range(T):
                np.matmul(hs[t], W_hh_t, out=hh)
                rnn_forward_step(hh, xp[t], b_hh, hs[t + 1])
        state = (hs[T].copy(),)
    elif cell == "lstm":
        act = np.empty((n_act, B, GH), dtype)
        cs = np.empty((T + 1 if keep else 2, B, H), dtype)
        tanh_cs = np.empty((n_act, B, H), dtype)
        cs[0] = state0[1]
        if packed is not None:
            _lstm_forward_loop(xp, b_hh, *packed, hs, cs, act, tanh_cs, hh, keep)
        else:
            for t in range(T):
                a, c_prev, c = (t, t, t + 1) if keep else (0, t % 2, 1 - t % 2)
                np.matmul(hs[t], W_hh_t, out=hh)
                lstm_forward_step(hh, xp[t], b_hh, cs[c_prev], act[a], cs[c], tanh_cs[a], hs[t + 1])
        state = (hs[T].copy(), cs[T if keep else T % 2].copy())
        cache.update(act=act, cs=cs, tanh_cs=tanh_cs)
    elif cell == "gru":
        act = np.empty((n_act, B, GH), dtype)
        hns = np.empty((n_act, B, H), dtype)
        if packed is not None:
            _gru_forward_loop(xp, b_hh, *packed, hs, act, hns, hh, keep)
        else:
            for t in range(T):
                a = t if keep else 0
                np.matmul(hs[t], W_hh_t, out=hh)
                gru_forward_step(hh, xp[t], b_hh, hs[t], act[a], hns[a], hs[t + 1])
        state = (hs[T].copy(),)
        cache.update(act=act, hns=hns)
    else:
        raise ValueError(f"unknown cell {cell!r}")
    return hs[1:], state, (cache if keep else None)


def sequence_backward(d_hs, d_state, cache):
    """Backpropagate through one layer's recurrence; the same contract as cells.sequence_backward."""
    if cache["cell"] in _ADDED_CELLS:
        return _ADDED_CELLS[cache["cell"]][1](d_hs, d_state, cache)
    cell, hs, W_hh = cache["cell"], cache["hs"], cache["W_hh"]
    T, B, H = d_hs.shape
    GH = W_hh.shape[0]
    dtype = d_hs.dtype
    d_hs = np.ascontiguousarray(d_hs, dtype=dtype)
    zeros = np.zeros((B, H), dtype)
    # dh_rec: the gradient of h_t that came back through W_hh (or from the final state)
    dh_rec = zeros.copy() if d_state is None else np.array(d_state[0], dtype=dtype)
    d_xp = np.empty((T, B, GH), dtype)
    packed = _packed(W_hh, T)
    if cell == "rnn":
        if packed is not None:
            _rnn_backward_loop(d_hs, hs, *packed, dh_rec, d_xp)
        else:
            for t in range(T - 1, -1, -1):
                rnn_backward_step(dh_rec, d_hs[t], hs[t + 1], d_xp[t])
                np.matmul(d_xp[t], W_hh, out=dh_rec)
        d_hp, d_state0 = d_xp, (dh_rec,)
    elif cell == "lstm":
        act, cs, tanh_cs = cache["act"], cache["cs"], cache["tanh_cs"]
        dc = zeros.copy() if d_state is None else np.array(d_state[1], dtype=dtype)
        if packed is not None:
            _lstm_backward_loop(d_hs, act, cs, tanh_cs, *packed, dh_rec, dc, d_xp)
        else:
            for t in range(T - 1, -1, -1):
                lstm_backward_step(dh_rec, d_hs[t], dc, act[t], cs[t], tanh_cs[t], d_xp[t])
                np.matmul(d_xp[t], W_hh, out=dh_rec)
        d_hp, d_state0 = d_xp, (dh_rec, dc)
    else:
        act, hns = cache["act"], cache["hns"]
        d_hp = np.empty((T, B, GH), dtype)
        dh_direct = zeros
        if packed is not None:
            _gru_backward_loop(d_hs, hs, act, hns, *packed, dh_rec, dh_direct, d_xp, d_hp)
        else:
            for t in range(T - 1, -1, -1):
                gru_backward_step(dh_rec, dh_direct, d_hs[t], hs[t], act[t], hns[t], d_xp[t], d_hp[t])
                np.matmul(d_hp[t], W_hh, out=dh_rec)
        dh_rec += dh_direct
        d_state0 = (dh_rec,)
    d_hp_flat = d_hp.reshape(T * B, GH)
    grads = {"W_hh": d_hp_flat.T @ hs[:-1].reshape(T * B, H), "b_hh": d_hp_flat.sum(axis=0)}
    return d_xp, d_state0, grads


# ---------------------------------------------------------------- the cells torch.nn lacks: peephole, simple-gru
# The same contract as sequence_forward/backward, one function per cell and direction.


def _start(xp, state0, W_hh, W_hh_t, keep, cell):
    """What every sequence starts with: (T, B, H, hs (T+1, B, H) with hs[0] = h0, hh (B, G*H), product, cache)."""
    T, B, GH = xp.shape
    H = W_hh.shape[1]
    hs = np.empty((T + 1, B, H), xp.dtype)
    hs[0] = state0[0]
    W_hh_t = np.ascontiguousarray(W_hh.T) if W_hh_t is None else W_hh_t
    return T, B, H, hs, np.empty((B, GH), xp.dtype), _step_product(W_hh_t, T), {"cell": cell, "hs": hs, "W_hh": W_hh}


def _peephole_forward(xp, state0, W_hh, b_hh, keep, W_hh_t, extra):
    T, B, H, hs, hh, product, cache = _start(xp, state0, W_hh, W_hh_t, keep, "peephole")
    w_ci, w_cf, w_co = extra
    n_act = T if keep else 1
    act = np.empty((n_act, B, 4 * H), xp.dtype)
    cs = np.empty((T + 1 if keep else 2, B, H), xp.dtype)
    tanh_cs = np.empty((n_act, B, H), xp.dtype)
    cs[0] = state0[1]
    for t in range(T):
        a, c_prev, c = (t, t, t + 1) if keep else (0, t % 2, 1 - t % 2)
        product(hs[t], hh)
        peephole_forward_step(hh, xp[t], b_hh, cs[c_prev], w_ci, w_cf, w_co, act[a], cs[c], tanh_cs[a], hs[t + 1])
    state = (hs[T].copy(), cs[T if keep else T % 2].copy())
    cache.update(act=act, cs=cs, tanh_cs=tanh_cs, extra=extra)
    return hs[1:], state, (cache if keep else None)


def _peephole_backward(d_hs, d_state, cache):
    hs, W_hh, act, cs, tanh_cs = cache["hs"], cache["W_hh"], cache["act"], cache["cs"], cache["tanh_cs"]
    w_ci, w_cf, w_co = cache["extra"]
    T, B, H = d_hs.shape
    dtype = d_hs.dtype
    d_hs = np.ascontiguousarray(d_hs, dtype=dtype)
    dh_rec = np.zeros((B, H), dtype) if d_state is None else np.array(d_state[0], dtype=dtype)
    dc = np.zeros((B, H), dtype) if d_state is None else np.array(d_state[1], dtype=dtype)
    d_xp = np.empty((T, B, 4 * H), dtype)
    product = _step_product(W_hh, T)
    for t in range(T - 1, -1, -1):
        peephole_backward_step(dh_rec, d_hs[t], dc, act[t], cs[t], tanh_cs[t], w_ci, w_cf, w_co, d_xp[t])
        product(d_xp[t], dh_rec)
    grads = _recurrent_grads(d_xp, hs)
    # each peephole's gradient: its gate's d pre-activation times the c it saw, summed over T and B
    grads["ci"] = np.einsum("tbh,tbh->h", d_xp[:, :, :H], cs[:-1])
    grads["cf"] = np.einsum("tbh,tbh->h", d_xp[:, :, H : 2 * H], cs[:-1])
    grads["co"] = np.einsum("tbh,tbh->h", d_xp[:, :, 3 * H :], cs[1:])
    return d_xp, (dh_rec, dc), grads


def _simple_gru_forward(xp, state0, W_hh, b_hh, keep, W_hh_t, extra):
    T, B, H, hs, hh, product, cache = _start(xp, state0, W_hh, W_hh_t, keep, "simple-gru")
    act = np.empty((T if keep else 1, B, 2 * H), xp.dtype)
    for t in range(T):
        product(hs[t], hh)
        simple_gru_forward_step(hh, xp[t], b_hh, hs[t], act[t if keep else 0], hs[t + 1])
    cache.update(act=act)
    return hs[1:], (hs[T].copy(),), (cache if keep else None)


def _simple_gru_backward(d_hs, d_state, cache):
    hs, W_hh, act = cache["hs"], cache["W_hh"], cache["act"]
    T, B, H = d_hs.shape
    dtype = d_hs.dtype
    d_hs = np.ascontiguousarray(d_hs, dtype=dtype)
    dh_rec = np.zeros((B, H), dtype) if d_state is None else np.array(d_state[0], dtype=dtype)
    dh_direct = np.zeros((B, H), dtype)
    d_xp = np.empty((T, B, 2 * H), dtype)
    product = _step_product(W_hh, T)
    for t in range(T - 1, -1, -1):
        simple_gru_backward_step(dh_rec, dh_direct, d_hs[t], hs[t], act[t], d_xp[t])
        product(d_xp[t], dh_rec)
    dh_rec += dh_direct
    return d_xp, (dh_rec,), _recurrent_grads(d_xp, hs)


def _recurrent_grads(d_hp, hs):
    """W_hh's and b_hh's gradients as one product over all steps: d_hp (T, B, G*H), hs (T+1, B, H)."""
    T, B, GH = d_hp.shape
    d_hp_flat = d_hp.reshape(T * B, GH)
    return {"W_hh": d_hp_flat.T @ hs[:-1].reshape(T * B, -1), "b_hh": d_hp_flat.sum(axis=0)}


_ADDED_CELLS = {"peephole": (_peephole_forward, _peephole_backward),
                "simple-gru": (_simple_gru_forward, _simple_gru_backward)}
