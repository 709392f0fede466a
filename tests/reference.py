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
