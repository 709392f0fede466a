"""The recurrent cells in plain NumPy: the readable reference, forward and backward.

This module is the specification. charrnn/core/kernels.py computes the same
numbers with fused compiled loops and is tested against these functions; when
the kernels cannot run (CHARRNN_KERNELS=numpy, or numba missing), this module
runs instead. The equations are PyTorch's (torch.nn.RNN / LSTM / GRU), gate
order included:

    RNN : h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
    LSTM: i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh)
          i, f, o = sigmoid(.), g = tanh(.);  c' = f*c + i*g;  h' = o*tanh(c')
    GRU : r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})
          n = tanh(W_in x + b_in + r*(W_hn h + b_hn));  h' = (1-z)*n + z*h

The GRU is the course notes' cell, c = u*c~ + (1-u)*c, with the update gate's
sense flipped: PyTorch's z is the notes' 1-u (z keeps the old state, u writes
the new one), and the notes' relevance gate is r.

Every matrix product that can be is done outside the time loop: the caller
projects a whole chunk's inputs at once, `xp = x @ W_ih.T + b_ih` of shape
(T, B, G*H), and these functions run only the recurrence. Backward returns the
gradient of xp (from which the caller gets W_ih's and the input's gradients
with one product each) and W_hh's gradient as one product over all steps.

Shapes: T steps, B batch, H hidden, G gates (1 rnn, 4 lstm and peephole,
3 gru, 2 simple-gru). A state is a tuple of (B, H) arrays: (h,), or (h, c) for
lstm and peephole.

A cell may have parameters beyond W_hh and b_hh: EXTRA names them (each of
shape (H,) per layer; the model stores them as `rnn.weight_{name}_l{k}`).
They are passed to the step and sequence functions as a tuple in that order,
and sequence_backward returns their gradients under the same names.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

CELLS = ("rnn", "lstm", "gru", "peephole", "simple-gru")
TORCH_CELLS = ("rnn", "lstm", "gru")  # the cells that load into torch.nn.RNN / LSTM / GRU
GATES = {"rnn": 1, "lstm": 4, "gru": 3, "peephole": 4, "simple-gru": 2}
STATES = {"rnn": 1, "lstm": 2, "gru": 1, "peephole": 2, "simple-gru": 1}  # arrays in a state
EXTRA = {"rnn": (), "lstm": (), "gru": (), "peephole": ("ci", "cf", "co"), "simple-gru": ()}


def sigmoid(x):
    """The logistic function, without overflow warnings for large negative x."""
    return 0.5 * np.tanh(0.5 * x) + 0.5


# ---------------------------------------------------------------- what a step keeps
# Each cell's step cache, a named tuple: what its backward step needs, read by name (annotate reads
# the gates from it). Every one starts with h_prev, the state's h that the step read. All (B, H).


class RnnStep(NamedTuple):
    h_prev: np.ndarray
    h: np.ndarray


class LstmStep(NamedTuple):
    h_prev: np.ndarray
    c_prev: np.ndarray
    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    tanh_c: np.ndarray


class GruStep(NamedTuple):
    h_prev: np.ndarray
    r: np.ndarray
    z: np.ndarray
    n: np.ndarray
    hn: np.ndarray                    # W_hn h + b_hn


class PeepholeStep(NamedTuple):
    h_prev: np.ndarray
    c_prev: np.ndarray
    c: np.ndarray
    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    tanh_c: np.ndarray
    w_ci: np.ndarray                  # the peepholes, (H,)
    w_cf: np.ndarray
    w_co: np.ndarray


class SimpleGruStep(NamedTuple):
    h_prev: np.ndarray
    c_tilde: np.ndarray
    u: np.ndarray


# ---------------------------------------------------------------- one step, per cell
# Each *_step_forward takes xp_t = W_ih x + b_ih (B, G*H), the previous state,
# W_hh (G*H, H), b_hh (G*H,) and the cell's EXTRA parameters; it returns the
# new state and a cache.
# Each *_step_backward takes the gradient of the new state and that cache; it
# returns (d_xp_t, d_hp_t, d_state_prev): the gradients w.r.t. xp_t, w.r.t. the
# hidden side's pre-activation hp_t = W_hh h + b_hh (both (B, G*H)), and w.r.t.
# the previous state, where d h_prev holds only the part that skips W_hh (None
# when all of h_prev's influence goes through W_hh h).
# A cell with EXTRA parameters has a *_param_grads(d_xp_t, cache): their
# gradients from this step, a tuple of (H,) arrays in EXTRA's order.


def rnn_step_forward(xp_t, h_prev, W_hh, b_hh):
    h = np.tanh(xp_t + h_prev @ W_hh.T + b_hh)  # (B, H)
    return (h,), RnnStep(h_prev, h)


def rnn_step_backward(d_state, cache):
    (dh,) = d_state
    da = dh * (1.0 - cache.h * cache.h)  # tanh'
    return da, da, (None,)  # d h_prev is da @ W_hh, taken by the caller (see step_backward)


def lstm_step_forward(xp_t, h_prev, c_prev, W_hh, b_hh):
    H = h_prev.shape[1]
    a = xp_t + h_prev @ W_hh.T + b_hh  # (B, 4H)
    i = sigmoid(a[:, :H])
    f = sigmoid(a[:, H : 2 * H])
    g = np.tanh(a[:, 2 * H : 3 * H])
    o = sigmoid(a[:, 3 * H :])
    c = f * c_prev + i * g
    tanh_c = np.tanh(c)
    h = o * tanh_c
    return (h, c), LstmStep(h_prev, c_prev, i, f, g, o, tanh_c)


def lstm_step_backward(d_state, cache):
    dh, dc = d_state
    h_prev, c_prev, i, f, g, o, tanh_c = cache
    # h = o * tanh(c)
    do = dh * tanh_c
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    # c = f * c_prev + i * g
    di = dc * g
    df = dc * c_prev
    dg = dc * i
    dc_prev = dc * f
    # through the nonlinearities: sigmoid' = s (1 - s), tanh' = 1 - t^2
    da = np.concatenate([di * i * (1.0 - i), df * f * (1.0 - f), dg * (1.0 - g * g), do * o * (1.0 - o)], axis=1)
    return da, da, (None, dc_prev)


def gru_step_forward(xp_t, h_prev, W_hh, b_hh):
    H = h_prev.shape[1]
    hp = h_prev @ W_hh.T + b_hh  # (B, 3H): W_hh h + b_hh
    r = sigmoid(xp_t[:, :H] + hp[:, :H])
    z = sigmoid(xp_t[:, H : 2 * H] + hp[:, H : 2 * H])
    hn = hp[:, 2 * H :]  # W_hn h + b_hn
    n = np.tanh(xp_t[:, 2 * H :] + r * hn)
    h = (1.0 - z) * n + z * h_prev
    return (h,), GruStep(h_prev, r, z, n, hn)


def gru_step_backward(d_state, cache):
    (dh,) = d_state
    h_prev, r, z, n, hn = cache
    # h = (1 - z) * n + z * h_prev
    dn = dh * (1.0 - z)
    dz = dh * (h_prev - n)
    dh_prev = dh * z
    # n = tanh(a_n), a_n = xp_n + r * hn
    da_n = dn * (1.0 - n * n)
    dr = da_n * hn
    d_hn = da_n * r
    da_r = dr * r * (1.0 - r)
    da_z = dz * z * (1.0 - z)
    d_xp = np.concatenate([da_r, da_z, da_n], axis=1)
    d_hp = np.concatenate([da_r, da_z, d_hn], axis=1)
    return d_xp, d_hp, (dh_prev,)


def peephole_step_forward(xp_t, h_prev, c_prev, W_hh, b_hh, w_ci, w_cf, w_co):
    """The LSTM with diagonal peepholes (Gers & Schmidhuber): the cell state looks into the gates.

    c_prev feeds the input and forget gates, the new c the output gate, each
    through its own (H,) weight vector (elementwise: a diagonal matrix):
        i = sigmoid(a_i + w_ci*c_prev), f = sigmoid(a_f + w_cf*c_prev), g = tanh(a_g)
        c = f*c_prev + i*g,  o = sigmoid(a_o + w_co*c),  h = o*tanh(c)
    where a = W_ih x + b_ih + W_hh h_prev + b_hh, split i, f, g, o as in PyTorch.
    """
    H = h_prev.shape[1]
    a = xp_t + h_prev @ W_hh.T + b_hh  # (B, 4H)
    i = sigmoid(a[:, :H] + w_ci * c_prev)
    f = sigmoid(a[:, H : 2 * H] + w_cf * c_prev)
    g = np.tanh(a[:, 2 * H : 3 * H])
    c = f * c_prev + i * g
    o = sigmoid(a[:, 3 * H :] + w_co * c)
    tanh_c = np.tanh(c)
    h = o * tanh_c
    return (h, c), PeepholeStep(h_prev, c_prev, c, i, f, g, o, tanh_c, w_ci, w_cf, w_co)


def peephole_step_backward(d_state, cache):
    dh, dc = d_state
    h_prev, c_prev, c, i, f, g, o, tanh_c, w_ci, w_cf, w_co = cache
    # h = o * tanh(c), o = sigmoid(a_o + w_co * c)
    da_o = dh * tanh_c * o * (1.0 - o)
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c) + da_o * w_co
    # c = f * c_prev + i * g
    da_i = dc * g * i * (1.0 - i)
    da_f = dc * c_prev * f * (1.0 - f)
    da_g = dc * i * (1.0 - g * g)
    # c_prev enters c directly and the i and f gates through the peepholes
    dc_prev = dc * f + da_i * w_ci + da_f * w_cf
    da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)
    return da, da, (None, dc_prev)


def peephole_param_grads(d_xp_t, cache):
    """This step's gradients of (w_ci, w_cf, w_co): each gate's d pre-activation times the c it saw."""
    c_prev, c = cache.c_prev, cache.c
    H = c.shape[1]
    return ((d_xp_t[:, :H] * c_prev).sum(axis=0), (d_xp_t[:, H : 2 * H] * c_prev).sum(axis=0),
            (d_xp_t[:, 3 * H :] * c).sum(axis=0))


def simple_gru_step_forward(xp_t, h_prev, W_hh, b_hh):
    """The course notes' simplified GRU, in their notation (c<t> = a<t> is the state h):

        c~<t> = tanh(W_c [c<t-1>, x<t>] + b_c)
        u<t>  = sigmoid(W_u [c<t-1>, x<t>] + b_u)
        c<t>  = u<t> * c~<t> + (1 - u<t>) * c<t-1>

    One update gate u and no relevance gate. W_c [c, x] + b_c is split as
    PyTorch splits its cells: the rows [0, H) of W_ih x + b_ih + W_hh c + b_hh
    are c~'s pre-activation, the rows [H, 2H) u's. u here writes the new
    value, as in the notes (PyTorch's GRU gate z is 1 - u).
    """
    H = h_prev.shape[1]
    a = xp_t + h_prev @ W_hh.T + b_hh  # (B, 2H)
    c_tilde = np.tanh(a[:, :H])
    u = sigmoid(a[:, H:])
    h = u * c_tilde + (1.0 - u) * h_prev
    return (h,), SimpleGruStep(h_prev, c_tilde, u)


def simple_gru_step_backward(d_state, cache):
    (dh,) = d_state
    h_prev, c_tilde, u = cache
    # c = u * c~ + (1 - u) * c_prev
    da_c = dh * u * (1.0 - c_tilde * c_tilde)
    da_u = dh * (c_tilde - h_prev) * u * (1.0 - u)
    da = np.concatenate([da_c, da_u], axis=1)
    return da, da, (dh * (1.0 - u),)


_STEP_FORWARD = {"rnn": rnn_step_forward, "lstm": lstm_step_forward, "gru": gru_step_forward,
                 "peephole": peephole_step_forward, "simple-gru": simple_gru_step_forward}
_STEP_BACKWARD = {"rnn": rnn_step_backward, "lstm": lstm_step_backward, "gru": gru_step_backward,
                  "peephole": peephole_step_backward, "simple-gru": simple_gru_step_backward}
_PARAM_GRADS = {"peephole": peephole_param_grads}


def step_forward(cell, xp_t, state, W_hh, b_hh, extra=()):
    """One time step of any cell.

    - xp_t: W_ih x + b_ih, of shape (B, G*H)
    - state: tuple of (B, H) arrays; W_hh (G*H, H); b_hh (G*H,)
    - extra: the cell's EXTRA parameters, a tuple of (H,) arrays
    Returns (state, cache): the new state, and what step_backward needs.
    """
    return _STEP_FORWARD[cell](xp_t, *state, W_hh, b_hh, *extra)


def step_backward(cell, d_state, cache, W_hh):
    """Backpropagate one step: the inverse of step_forward.

    - d_state: gradient w.r.t. the new state, tuple of (B, H) arrays
    Returns (d_xp_t, d_hp_t, d_state_prev): (B, G*H), (B, G*H), tuple of (B, H).
    """
    d_xp, d_hp, d_prev = _STEP_BACKWARD[cell](d_state, cache)
    # every cell's h_prev enters W_hh h: that path's gradient is d_hp @ W_hh, added to any direct path
    dh_prev = d_hp @ W_hh if d_prev[0] is None else d_prev[0] + d_hp @ W_hh
    return d_xp, d_hp, (dh_prev,) + tuple(d_prev[1:])


def param_grads(cell, d_xp_t, cache):
    """This step's gradients of the cell's EXTRA parameters: a tuple of (H,) arrays (empty for most cells)."""
    return _PARAM_GRADS[cell](d_xp_t, cache) if EXTRA[cell] else ()


# ---------------------------------------------------------------- a sequence


class Steps(NamedTuple):
    """What sequence_backward needs of a chunk that sequence_forward ran: each step's cache."""

    cell: str
    W_hh: np.ndarray                  # (G*H, H)
    steps: list                       # per step, its cell's step cache (RnnStep, LstmStep, ...)


def sequence_forward(cell, xp, state0, W_hh, b_hh, *, keep=True, W_hh_t=None, extra=()):
    """Run one layer's recurrence over a chunk.

    - cell: one of CELLS
    - xp: W_ih x + b_ih for every step, of shape (T, B, G*H)
    - state0: initial state, tuple of (B, H) arrays
    - W_hh: recurrent weights (G*H, H); b_hh: recurrent bias (G*H,)
    - keep: False when no backward pass follows (the cache is then None);
      W_hh_t: ignored here (kernels.sequence_forward takes the same arguments)
    - extra: the cell's EXTRA parameters, a tuple of (H,) arrays
    Returns (hs, state, cache): hidden states (T, B, H), the final state, and
    what sequence_backward needs (a Steps; None when keep is False).
    """
    state, caches, hs = tuple(state0), [], []
    for t in range(xp.shape[0]):
        state, step_cache = step_forward(cell, xp[t], state, W_hh, b_hh, extra)
        hs.append(state[0])
        caches.append(step_cache)
    return np.stack(hs), state, (Steps(cell, W_hh, caches) if keep else None)


def sequence_backward(d_hs, d_state, cache):
    """Backpropagate through one layer's recurrence.

    - d_hs: gradient w.r.t. the hidden states, of shape (T, B, H)
    - d_state: gradient w.r.t. the final state, tuple of (B, H) arrays, or None
    - cache: from sequence_forward
    Returns (d_xp, d_state0, grads): d_xp (T, B, G*H); the initial state's
    gradient, tuple of (B, H) arrays; {"W_hh": (G*H, H), "b_hh": (G*H,)} and
    each EXTRA parameter's (H,) gradient under its name.
    """
    cell, W_hh = cache.cell, cache.W_hh
    T, B, H = d_hs.shape
    d = tuple(np.zeros((B, H), d_hs.dtype) for _ in range(STATES[cell])) if d_state is None else tuple(d_state)
    d_xp, d_hp = [None] * T, [None] * T
    d_extra = [np.zeros(H, d_hs.dtype) for _ in EXTRA[cell]]
    for t in range(T - 1, -1, -1):
        d = (d[0] + d_hs[t],) + d[1:]  # h_t feeds both the layer above and step t+1
        d_xp[t], d_hp[t], d = step_backward(cell, d, cache.steps[t], W_hh)
        for acc, g in zip(d_extra, param_grads(cell, d_xp[t], cache.steps[t])):
            acc += g
    d_hp = np.stack(d_hp).reshape(T * B, -1)  # (T*B, G*H)
    h_prev = np.stack([step.h_prev for step in cache.steps]).reshape(T * B, H)  # (T*B, H)
    grads = {"W_hh": d_hp.T @ h_prev, "b_hh": d_hp.sum(axis=0), **dict(zip(EXTRA[cell], d_extra))}
    return np.stack(d_xp), d, grads
