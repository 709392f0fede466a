"""Independent references for the tests: a naive per-gate, per-step model in NumPy.

Written from the cell equations alone (one matrix per gate, an explicit loop over
time, no fused buffers), so that agreeing with it means the fused core is right.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def naive_forward(params, config, inputs, state=None, gru_reset_before_product=False):
    """Returns (logits (B, T, V), final state tuple of (L, B, H))."""
    B, T = inputs.shape
    H, L = config.hidden, config.layers
    h = [np.zeros((B, H)) if state is None else state[0][k].copy() for k in range(L)]
    has_c = config.cell in ("lstm", "peephole")
    c = [np.zeros((B, H)) if state is None or not has_c else state[1][k].copy() for k in range(L)]
    logits = np.zeros((B, T, config.vocab_size))
    for t in range(T):
        x = params["embedding.weight"][inputs[:, t]]
        for k in range(L):
            W_ih, W_hh = params[f"rnn.weight_ih_l{k}"], params[f"rnn.weight_hh_l{k}"]
            b_ih, b_hh = params[f"rnn.bias_ih_l{k}"], params[f"rnn.bias_hh_l{k}"]

            def part(j, W=W_ih, b=b_ih, v=x):  # gate j's input-side pre-activation
                return v @ W[j * H:(j + 1) * H].T + b[j * H:(j + 1) * H]

            def hpart(j, W=W_hh, b=b_hh, v=h[k]):
                return v @ W[j * H:(j + 1) * H].T + b[j * H:(j + 1) * H]

            if config.cell == "rnn":
                h[k] = np.tanh(part(0) + hpart(0))
            elif config.cell == "lstm":
                i = sigmoid(part(0) + hpart(0))
                f = sigmoid(part(1) + hpart(1))
                g = np.tanh(part(2) + hpart(2))
                o = sigmoid(part(3) + hpart(3))
                c[k] = f * c[k] + i * g
                h[k] = o * np.tanh(c[k])
            elif config.cell == "peephole":  # Gers & Schmidhuber: c_prev looks into i and f, the new c into o
                i = sigmoid(part(0) + hpart(0) + params[f"rnn.weight_ci_l{k}"] * c[k])
                f = sigmoid(part(1) + hpart(1) + params[f"rnn.weight_cf_l{k}"] * c[k])
                g = np.tanh(part(2) + hpart(2))
                c[k] = f * c[k] + i * g
                o = sigmoid(part(3) + hpart(3) + params[f"rnn.weight_co_l{k}"] * c[k])
                h[k] = o * np.tanh(c[k])
            elif config.cell == "simple-gru":  # the course notes: c~ = tanh(.), u = sigmoid(.)
                c_tilde = np.tanh(part(0) + hpart(0))
                u = sigmoid(part(1) + hpart(1))
                h[k] = u * c_tilde + (1 - u) * h[k]
            else:
                r = sigmoid(part(0) + hpart(0))
                z = sigmoid(part(1) + hpart(1))
                if gru_reset_before_product:  # the variant PyTorch does not compute
                    n = np.tanh(part(2) + hpart(2, v=r * h[k]))
                else:
                    n = np.tanh(part(2) + r * hpart(2))
                h[k] = (1 - z) * n + z * h[k]
            x = h[k]
        logits[:, t] = x @ params["head.weight"].T + params["head.bias"]
    final = (np.stack(h), np.stack(c)) if has_c else (np.stack(h),)
    return logits, final


def naive_step(params, config, tokens, state):
    """One step of naive_forward: (logits (B, V), state) for tokens (B,)."""
    logits, state = naive_forward(params, config, np.asarray(tokens)[:, None], state)
    return logits[:, 0], state


def naive_probs(logits, temperature=1.0, top_k=None, top_p=None, banned=()):
    """The distribution a sampler should draw from, for one row of logits (V,), from the definitions.

    Banned tokens get probability 0; the rest follow softmax(logits / temperature);
    top_k keeps the k most probable, top_p the fewest most probable whose total
    reaches top_p; what is kept is renormalized. Returns (V,) float64.
    """
    z = np.array(logits, dtype=np.float64)
    for token in banned:
        z[token] = -np.inf
    p = np.exp((z - z.max()) / temperature)
    p /= p.sum()
    order = sorted(range(len(p)), key=lambda i: -p[i])
    kept = order[:top_k] if top_k else order
    if top_p is not None:
        total, nucleus = 0.0, []
        for i in kept:
            nucleus.append(i)
            total += p[i]
            if total >= top_p:
                break
        kept = nucleus
    out = np.zeros_like(p)
    out[kept] = p[kept]
    return out / out.sum()


def naive_loss(logits, targets, mask=None):
    """Mean NLL per scored token, one position at a time."""
    total, count = 0.0, 0
    B, T, _ = logits.shape
    for b in range(B):
        for t in range(T):
            if mask is not None and not mask[b, t]:
                continue
            row = logits[b, t]
            total += np.log(np.exp(row - row.max()).sum()) + row.max() - row[targets[b, t]]
            count += 1
    return total / count


def naive_loss_and_grads(params, config, inputs, targets, mask=None, state=None, d_final=None):
    """The loss and its gradients, by backpropagation through time written out by hand.

    Written from the cell equations alone: the forward pass is naive_forward's (one
    matrix per gate, one step at a time) keeping every gate's value, and the
    backward pass walks the layers top down and each layer's steps from last to
    first, applying the chain rule to one equation at a time.

    - inputs, targets: token ids (B, T); mask: (B, T), nonzero where scored, or None
    - state: initial state, tuple of (L, B, H) arrays, or None for zeros
    - d_final: the gradient reaching the final state from outside the chunk (a tuple
      like state), or None: the objective is then loss + sum(d_final * final state)
    Returns (loss, grads, d_state0): the mean NLL per scored token; a dict with
    params' keys; the gradient of the initial state, a tuple of (L, B, H) arrays.
    """
    B, T = inputs.shape
    H, L, cell = config.hidden, config.layers, config.cell
    has_c = cell in ("lstm", "peephole")
    n_gates = {"rnn": 1, "lstm": 4, "gru": 3, "peephole": 4, "simple-gru": 2}[cell]
    emb, W_y, b_y = params["embedding.weight"], params["head.weight"], params["head.bias"]

    def gate(k, j):  # gate j's rows of W_ih, b_ih, W_hh, b_hh in layer k
        rows = slice(j * H, (j + 1) * H)
        return (params[f"rnn.weight_ih_l{k}"][rows], params[f"rnn.bias_ih_l{k}"][rows],
                params[f"rnn.weight_hh_l{k}"][rows], params[f"rnn.bias_hh_l{k}"][rows])

    # ---- forward, keeping each step's values: steps[k][t] is a dict
    h = [np.zeros((B, H)) if state is None else state[0][k].copy() for k in range(L)]
    c = [np.zeros((B, H)) if state is None or not has_c else state[1][k].copy() for k in range(L)]
    steps = [[None] * T for _ in range(L)]
    tops = []
    for t in range(T):
        x = emb[inputs[:, t]]
        for k in range(L):
            W = [gate(k, j) for j in range(n_gates)]
            s = {"x": x, "h_prev": h[k], "c_prev": c[k]}

            def pre(j, v=x, hp=h[k]):  # W_ih_j x + b_ih_j + W_hh_j h_prev + b_hh_j
                return v @ W[j][0].T + W[j][1] + hp @ W[j][2].T + W[j][3]

            if cell == "rnn":
                s["h"] = np.tanh(pre(0))
            elif cell == "lstm":
                s["i"], s["f"], s["g"], s["o"] = sigmoid(pre(0)), sigmoid(pre(1)), np.tanh(pre(2)), sigmoid(pre(3))
                s["c"] = s["f"] * c[k] + s["i"] * s["g"]
                s["h"] = s["o"] * np.tanh(s["c"])
            elif cell == "peephole":
                s["i"] = sigmoid(pre(0) + params[f"rnn.weight_ci_l{k}"] * c[k])
                s["f"] = sigmoid(pre(1) + params[f"rnn.weight_cf_l{k}"] * c[k])
                s["g"] = np.tanh(pre(2))
                s["c"] = s["f"] * c[k] + s["i"] * s["g"]
                s["o"] = sigmoid(pre(3) + params[f"rnn.weight_co_l{k}"] * s["c"])
                s["h"] = s["o"] * np.tanh(s["c"])
            elif cell == "simple-gru":
                s["c_tilde"], s["u"] = np.tanh(pre(0)), sigmoid(pre(1))
                s["h"] = s["u"] * s["c_tilde"] + (1 - s["u"]) * h[k]
            else:  # gru, PyTorch's: the reset gate multiplies W_hn h + b_hn
                s["r"], s["z"] = sigmoid(pre(0)), sigmoid(pre(1))
                s["hn"] = h[k] @ W[2][2].T + W[2][3]
                s["n"] = np.tanh(x @ W[2][0].T + W[2][1] + s["r"] * s["hn"])
                s["h"] = (1 - s["z"]) * s["n"] + s["z"] * h[k]
            h[k] = s["h"]
            if has_c:
                c[k] = s["c"]
            steps[k][t] = s
            x = h[k]
        tops.append(x)

    # ---- the loss, one position at a time, and d logits = (softmax - onehot) / count
    scored = np.ones((B, T), bool) if mask is None else np.asarray(mask) != 0
    count = int(scored.sum())
    loss = 0.0
    grads = {name: np.zeros_like(value, dtype=np.float64) for name, value in params.items()}
    d_tops = [np.zeros((B, H)) for _ in range(T)]  # gradient reaching the top layer's h at each step
    for t in range(T):
        for b in range(B):
            if not scored[b, t]:
                continue
            z = tops[t][b] @ W_y.T + b_y  # (V,)
            p = np.exp(z - z.max())
            p /= p.sum()
            loss += -np.log(p[targets[b, t]])
            d_z = p.copy()
            d_z[targets[b, t]] -= 1.0
            d_z /= count
            grads["head.weight"] += np.outer(d_z, tops[t][b])
            grads["head.bias"] += d_z
            d_tops[t][b] += d_z @ W_y
    loss = loss / count if count else 0.0

    # ---- backward: the top layer first, each layer's steps in reverse
    d_state0 = [[None] * L for _ in range(2 if has_c else 1)]
    d_from_above = d_tops
    for k in range(L - 1, -1, -1):
        W = [gate(k, j) for j in range(n_gates)]
        dh_next = np.zeros((B, H)) if d_final is None else d_final[0][k].copy()
        dc_next = np.zeros((B, H)) if d_final is None or not has_c else d_final[1][k].copy()
        d_below = [None] * T
        for t in range(T - 1, -1, -1):
            s = steps[k][t]
            x, hp, cp = s["x"], s["h_prev"], s["c_prev"]
            dh = d_from_above[t] + dh_next  # h feeds the layer above (or the head) and the next step
            d_pre = [None] * n_gates  # d of each gate's full pre-activation (both sides)
            dhp_direct = np.zeros((B, H))  # the parts of d h_prev that do not pass W_hh
            if cell == "rnn":
                d_pre[0] = dh * (1 - s["h"] ** 2)
            elif cell == "lstm":
                tanh_c = np.tanh(s["c"])
                dc = dc_next + dh * s["o"] * (1 - tanh_c ** 2)
                d_pre[0] = dc * s["g"] * s["i"] * (1 - s["i"])
                d_pre[1] = dc * cp * s["f"] * (1 - s["f"])
                d_pre[2] = dc * s["i"] * (1 - s["g"] ** 2)
                d_pre[3] = dh * tanh_c * s["o"] * (1 - s["o"])
                dc_next = dc * s["f"]
            elif cell == "peephole":
                tanh_c = np.tanh(s["c"])
                d_pre[3] = dh * tanh_c * s["o"] * (1 - s["o"])
                grads[f"rnn.weight_co_l{k}"] += (d_pre[3] * s["c"]).sum(axis=0)
                dc = dc_next + dh * s["o"] * (1 - tanh_c ** 2) + d_pre[3] * params[f"rnn.weight_co_l{k}"]
                d_pre[0] = dc * s["g"] * s["i"] * (1 - s["i"])
                d_pre[1] = dc * cp * s["f"] * (1 - s["f"])
                d_pre[2] = dc * s["i"] * (1 - s["g"] ** 2)
                grads[f"rnn.weight_ci_l{k}"] += (d_pre[0] * cp).sum(axis=0)
                grads[f"rnn.weight_cf_l{k}"] += (d_pre[1] * cp).sum(axis=0)
                dc_next = (dc * s["f"] + d_pre[0] * params[f"rnn.weight_ci_l{k}"]
                           + d_pre[1] * params[f"rnn.weight_cf_l{k}"])
            elif cell == "simple-gru":
                d_pre[0] = dh * s["u"] * (1 - s["c_tilde"] ** 2)
                d_pre[1] = dh * (s["c_tilde"] - hp) * s["u"] * (1 - s["u"])
                dhp_direct = dh * (1 - s["u"])
            else:
                dn = dh * (1 - s["z"])
                d_pre[1] = dh * (hp - s["n"]) * s["z"] * (1 - s["z"])
                dhp_direct = dh * s["z"]
                d_an = dn * (1 - s["n"] ** 2)  # n's pre-activation: W_in x + b_in + r * hn
                d_pre[0] = d_an * s["hn"] * s["r"] * (1 - s["r"])
                d_hn = d_an * s["r"]  # hn = W_hn h_prev + b_hn
            dx = np.zeros_like(x)
            dh_next = dhp_direct
            for j in range(n_gates):
                W_i, _, W_h, _ = W[j]
                rows = slice(j * H, (j + 1) * H)
                d_in = d_an if (cell == "gru" and j == 2) else d_pre[j]  # the input side's gradient
                d_hid = d_hn if (cell == "gru" and j == 2) else d_pre[j]  # the hidden side's gradient
                grads[f"rnn.weight_ih_l{k}"][rows] += d_in.T @ x
                grads[f"rnn.bias_ih_l{k}"][rows] += d_in.sum(axis=0)
                grads[f"rnn.weight_hh_l{k}"][rows] += d_hid.T @ hp
                grads[f"rnn.bias_hh_l{k}"][rows] += d_hid.sum(axis=0)
                dx = dx + d_in @ W_i
                dh_next = dh_next + d_hid @ W_h
            d_below[t] = dx
        d_state0[0][k] = dh_next
        if has_c:
            d_state0[1][k] = dc_next
        d_from_above = d_below
    for t in range(T):  # layer 0's input is the embedding row of each token
        for b in range(B):
            grads["embedding.weight"][inputs[b, t]] += d_from_above[t][b]
    return loss, grads, tuple(np.stack(d) for d in d_state0)
