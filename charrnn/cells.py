"""Recurrent cells over a whole sequence: forward and backward, pure functions.

The equations are PyTorch's (torch.nn.RNN / LSTM / GRU), gate order included:

    RNN : h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
    LSTM: gates = W_ih x + b_ih + W_hh h + b_hh, split i, f, g, o
          i, f, o = sigmoid(.), g = tanh(.);  c' = f*c + i*g;  h' = o*tanh(c')
    GRU : r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})
          n = tanh(W_in x + b_in + r*(W_hn h + b_hn));  h' = (1-z)*n + z*h

The GRU is the course notes' cell, c = u*c~ + (1-u)*c, with the update gate's
sense flipped: PyTorch's z is the notes' 1-u (z keeps the old state, u writes
the new one), and the notes' relevance gate is r.

Work is split so that every matrix product is as large as possible. The
caller projects a whole chunk's inputs with one product, `xp = x @ W_ih.T +
b_ih` of shape (T, B, G*H); these functions run only the recurrence, whose
step needs `h @ W_hh.T`, and return the gradient of `xp`, from which the
caller gets W_ih's gradient and the input's gradient with one product each.
W_hh's gradient is likewise one product over all steps after the loop.

Shapes (time-major inside a layer): T steps, B batch, H hidden, G gates.
State is a tuple of arrays of shape (B, H): (h,) for rnn and gru, (h, c) for lstm.
"""

from __future__ import annotations

import functools

import numpy as np

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _sigmoid(x, out):
    """Logistic sigmoid in place-friendly form: 1 / (1 + exp(-x)), stable for float32."""
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1.0
    np.reciprocal(out, out=out)
    return out


# ---------------------------------------------------------------- one step
# Each step function writes into the buffers it is handed and allocates
# nothing, so the sequence loop and single-step sampling share one copy of the
# equations. W_hh_t is W_hh transposed, (H, G*H): the sequence loop passes a
# contiguous copy, which BLAS multiplies about a fifth faster than the view. `xp_t` already holds W_ih x + input_bias(...) (see there).


def _rnn_step(xp_t, h_prev, W_hh_t, h_out):
    np.matmul(h_prev, W_hh_t, out=h_out)  # (B, H)
    h_out += xp_t
    np.tanh(h_out, out=h_out)


def _lstm_step(xp_t, h_prev, c_prev, W_hh_t, gates, c_out, tanh_c, h_out, pre, g=None):
    """gates (B, 4H) receives the activated i, f, g, o; tanh_c (B, H) receives tanh(c').

    All four gate nonlinearities are one tanh over the contiguous (B, 4H) block,
    using sigmoid(x) = 0.5 * tanh(x / 2) + 0.5: `pre` (lstm_constants' per-column
    vector) halves i, f, o going in; coming out, g is set aside and the whole block gets
    0.5 * t + 0.5 as two scalar passes. Strided gate slices and per-column
    vectors cost several times a contiguous scalar pass.
    - pre may be None: then xp_t and W_hh_t already carry that factor in their
      columns (see model.prepare). Scaling by a power of two is exact (short of
      underflow), so the gates come out bit for bit the same, one pass cheaper.
    - g: None to leave the tanh gate in `gates` (backward reads it there), or a
      (B, H) buffer to receive it instead, one pass cheaper; `gates`' g columns
      then hold 0.5 * g + 0.5.
    """
    H = h_prev.shape[1]
    np.matmul(h_prev, W_hh_t, out=gates)  # (B, 4H)
    gates += xp_t
    if pre is not None:
        gates *= pre
    np.tanh(gates, out=gates)
    g_cols = gates[:, 2 * H : 3 * H]
    keep = g is None
    if keep:
        g = tanh_c  # scratch until tanh(c') is computed
    np.copyto(g, g_cols)
    gates *= 0.5
    gates += 0.5  # sigmoid on i, f, o (and a placeholder on g)
    if keep:
        np.copyto(g_cols, g)
    np.multiply(gates[:, H : 2 * H], c_prev, out=c_out)  # f * c
    np.multiply(gates[:, :H], g, out=tanh_c)  # i * g, tanh_c as scratch
    c_out += tanh_c
    np.tanh(c_out, out=tanh_c)
    np.multiply(gates[:, 3 * H :], tanh_c, out=h_out)


@functools.lru_cache(maxsize=16)
def lstm_constants(H, dtype):
    """Per-column vectors (4H,) for the fused LSTM nonlinearity.

    Returns (pre, tanh_mask): a = tanh(x * pre) mapped by 0.5 * a + 0.5 on i, f, o
    is sigmoid there and tanh on g; the derivative is (1 - a) * (a + tanh_mask).
    """
    sig = np.ones(4 * H, dtype=bool)
    sig[2 * H : 3 * H] = False
    pre = np.where(sig, 0.5, 1.0).astype(dtype)
    tanh_mask = np.where(sig, 0.0, 1.0).astype(dtype)
    for v in (pre, tanh_mask):
        v.setflags(write=False)
    return pre, tanh_mask


def _gru_step(xp_t, h_prev, W_hh_t, b_hn, rzn, hn, h_out):
    """rzn (B, 3H) receives activated r, z, n; hn (B, H) receives W_hn h + b_hn."""
    H = h_prev.shape[1]
    hh = rzn  # first holds W_hh h, then is overwritten gate by gate
    np.matmul(h_prev, W_hh_t, out=hh)  # (B, 3H)
    np.add(hh[:, 2 * H :], b_hn, out=hn)
    rz = hh[:, : 2 * H]
    rz += xp_t[:, : 2 * H]
    _sigmoid(rz, rz)
    n = rzn[:, 2 * H :]
    np.multiply(rzn[:, :H], hn, out=n)  # r * (W_hn h + b_hn)
    n += xp_t[:, 2 * H :]
    np.tanh(n, out=n)
    # h' = n + z * (h - n)
    np.subtract(h_prev, n, out=h_out)
    h_out *= rzn[:, H : 2 * H]
    h_out += n


# ---------------------------------------------------------------- sequence


def input_bias(cell, b_ih, b_hh):
    """The bias that belongs with the input projection: (G*H,).

    For rnn and lstm, b_hh adds straight to the gates, so it joins b_ih and the
    sequence loop never adds it; for gru only b_hh's r and z slices do (its n
    slice sits inside r * (W_hn h + b_hn)).
    """
    if cell == "gru":
        H = b_hh.shape[0] // 3
        return np.concatenate([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :]])
    return b_ih + b_hh


def _b_hn(cell, b_hh):
    return b_hh[2 * b_hh.shape[0] // 3 :] if cell == "gru" else None


def forward(cell, xp, state0, W_hh, b_hh):
    """Run one layer's recurrence over a chunk.

    - cell: "rnn", "lstm" or "gru"
    - xp: input projection W_ih x + input_bias(cell, b_ih, b_hh), of shape (T, B, G*H); consumed
    - state0: initial state, tuple of (B, H) arrays
    - W_hh: recurrent weights, of shape (G*H, H); b_hh: recurrent bias, of shape (G*H,)
    Returns (hs, state, cache):
    - hs: hidden states, of shape (T, B, H)
    - state: final state, tuple of (B, H) arrays
    - cache: what backward needs
    """
    T, B, GH = xp.shape
    H = W_hh.shape[1]
    b_hn = _b_hn(cell, b_hh)
    hs = np.empty((T + 1, B, H), dtype=xp.dtype)  # hs[0] is h0, so step t reads hs[t]
    hs[0] = state0[0]
    cache = {"cell": cell, "hs": hs, "W_hh": W_hh}
    W_hh_t = np.ascontiguousarray(W_hh.T)  # (H, G*H)
    if cell == "rnn":
        for t in range(T):
            _rnn_step(xp[t], hs[t], W_hh_t, hs[t + 1])
        state = (hs[T].copy(),)
    elif cell == "lstm":
        gates = np.empty((T, B, GH), dtype=xp.dtype)
        cs = np.empty((T + 1, B, H), dtype=xp.dtype)
        tanh_cs = np.empty((T, B, H), dtype=xp.dtype)
        cs[0] = state0[1]
        pre = lstm_constants(H, xp.dtype)[0]
        for t in range(T):
            _lstm_step(xp[t], hs[t], cs[t], W_hh_t, gates[t], cs[t + 1], tanh_cs[t], hs[t + 1], pre)
        cache.update(gates=gates, cs=cs, tanh_cs=tanh_cs)
        state = (hs[T].copy(), cs[T].copy())
    else:
        rzn = np.empty((T, B, GH), dtype=xp.dtype)
        hns = np.empty((T, B, H), dtype=xp.dtype)
        for t in range(T):
            _gru_step(xp[t], hs[t], W_hh_t, b_hn, rzn[t], hns[t], hs[t + 1])
        cache.update(rzn=rzn, hns=hns)
        state = (hs[T].copy(),)
    return hs[1:], state, cache


def step(cell, xp_t, state, W_hh, b_hh):
    """Advance one time step (for sampling); the same equations as `forward`.

    - xp_t: input projection W_ih x + input_bias(cell, b_ih, b_hh), of shape (B, G*H); consumed
    - state: tuple of (B, H) arrays; W_hh (G*H, H); b_hh (G*H,)
    Returns the new state, a tuple of (B, H) arrays (h first).
    """
    B, GH = xp_t.shape
    H = W_hh.shape[1]
    b_hn = _b_hn(cell, b_hh)
    h = np.empty((B, H), dtype=xp_t.dtype)
    if cell == "rnn":
        _rnn_step(xp_t, state[0], W_hh.T, h)
        return (h,)
    if cell == "lstm":
        c = np.empty_like(h)
        _lstm_step(xp_t, state[0], state[1], W_hh.T, np.empty_like(xp_t), c, np.empty_like(h), h,
                   lstm_constants(H, xp_t.dtype)[0])
        return (h, c)
    _gru_step(xp_t, state[0], W_hh.T, b_hn, np.empty_like(xp_t), np.empty_like(h), h)
    return (h,)


def backward(d_hs, d_state, cache):
    """Backpropagate through one layer's recurrence.

    - d_hs: gradient of the loss w.r.t. hs, of shape (T, B, H)
    - d_state: gradient w.r.t. the final state, tuple of (B, H) arrays, or None
    - cache: from `forward`
    Returns (d_xp, d_state0, grads):
    - d_xp: gradient w.r.t. the input projection xp, of shape (T, B, G*H)
    - d_state0: gradient w.r.t. the initial state, tuple of (B, H) arrays
    - grads: {"W_hh": (G*H, H), "b_hh": (G*H,)}
    """
    cell, hs, W_hh = cache["cell"], cache["hs"], cache["W_hh"]
    T, B, H = d_hs.shape
    dtype = d_hs.dtype
    dh = np.zeros((B, H), dtype=dtype) if d_state is None else d_state[0].astype(dtype, copy=True)
    tmp = np.empty((B, H), dtype=dtype)
    h_prev_all = hs[:-1].reshape(T * B, H)

    if cell == "rnn":
        d_xp = np.empty((T, B, H), dtype=dtype)
        for t in range(T - 1, -1, -1):
            dh += d_hs[t]
            da = d_xp[t]
            # tanh' = 1 - h^2
            np.multiply(hs[t + 1], hs[t + 1], out=da)
            np.subtract(1.0, da, out=da)
            da *= dh
            np.matmul(da, W_hh, out=dh)  # (B, H)
        d_xp_flat = d_xp.reshape(T * B, H)
        grads = {"W_hh": d_xp_flat.T @ h_prev_all, "b_hh": d_xp_flat.sum(axis=0)}
        return d_xp, (dh,), grads

    if cell == "lstm":
        gates, cs, tanh_cs = cache["gates"], cache["cs"], cache["tanh_cs"]
        tanh_mask = lstm_constants(H, dtype)[1]
        dc = np.zeros((B, H), dtype=dtype) if d_state is None else d_state[1].astype(dtype, copy=True)
        d_xp = np.empty((T, B, 4 * H), dtype=dtype)
        deriv = np.empty((B, 4 * H), dtype=dtype)
        scratch = np.empty((B, 4 * H), dtype=dtype)
        for t in range(T - 1, -1, -1):
            dh += d_hs[t]
            a = gates[t]
            i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
            tc = tanh_cs[t]
            da = d_xp[t]
            di, df, dg, do = da[:, :H], da[:, H : 2 * H], da[:, 2 * H : 3 * H], da[:, 3 * H :]
            # h' = o * tanh(c'):  do = dh * tanh(c');  dc += dh * o * (1 - tanh(c')^2)
            np.multiply(dh, tc, out=do)
            np.multiply(tc, tc, out=tmp)
            np.subtract(1.0, tmp, out=tmp)
            tmp *= o
            tmp *= dh
            dc += tmp
            # c' = f*c + i*g
            np.multiply(dc, g, out=di)
            np.multiply(dc, cs[t], out=df)
            np.multiply(dc, i, out=dg)
            dc *= f  # now the gradient w.r.t. c, carried to step t-1
            # through the nonlinearities in one pass: s(1-s) on i, f, o and 1-g^2 on g
            np.subtract(1.0, a, out=deriv)
            np.add(a, tanh_mask, out=scratch)
            deriv *= scratch
            da *= deriv
            np.matmul(da, W_hh, out=dh)  # (B, H)
        d_xp_flat = d_xp.reshape(T * B, 4 * H)
        grads = {"W_hh": d_xp_flat.T @ h_prev_all, "b_hh": d_xp_flat.sum(axis=0)}
        return d_xp, (dh, dc), grads

    # gru
    rzn, hns = cache["rzn"], cache["hns"]
    d_xp = np.empty((T, B, 3 * H), dtype=dtype)
    # The hidden side's gradient differs from the input side's only in the n
    # slice: d(W_hn h + b_hn) = d a_n * r, against d a_n for the input side.
    d_hh = np.empty((T, B, 3 * H), dtype=dtype)
    scratch = np.empty((B, 2 * H), dtype=dtype)
    for t in range(T - 1, -1, -1):
        dh += d_hs[t]
        r, z, n = rzn[t, :, :H], rzn[t, :, H : 2 * H], rzn[t, :, 2 * H :]
        dx, dhh = d_xp[t], d_hh[t]
        dr, dz, dn = dhh[:, :H], dhh[:, H : 2 * H], dx[:, 2 * H :]
        # h' = n + z*(h - n):  dz = dh*(h - n);  dn = dh*(1 - z);  dh_prev gets dh*z
        np.subtract(hs[t], n, out=dz)
        dz *= dh
        np.subtract(1.0, z, out=dn)
        dn *= dh
        dh *= z
        # n = tanh(a_n):  d a_n = dn * (1 - n^2)
        np.multiply(n, n, out=tmp)
        np.subtract(1.0, tmp, out=tmp)
        dn *= tmp
        # a_n = x_n + r * hn
        np.multiply(dn, hns[t], out=dr)
        np.multiply(dn, r, out=dhh[:, 2 * H :])
        _sigmoid_grad_inplace(dhh[:, : 2 * H], rzn[t, :, : 2 * H], scratch)
        dx[:, : 2 * H] = dhh[:, : 2 * H]
        dh += np.matmul(dhh, W_hh, out=tmp)  # (B, H)
    d_hh_flat = d_hh.reshape(T * B, 3 * H)
    grads = {"W_hh": d_hh_flat.T @ h_prev_all, "b_hh": d_hh_flat.sum(axis=0)}
    return d_xp, (dh,), grads


def _sigmoid_grad_inplace(d, s, scratch):
    """d *= s * (1 - s) for s a sigmoid output; scratch has the shape of d."""
    np.subtract(1.0, s, out=scratch)
    scratch *= s
    d *= scratch
