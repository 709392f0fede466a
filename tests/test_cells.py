"""The two cells torch.nn lacks, peephole and simple-gru: what sets them apart.

Their gradients, naive-loop agreement, chunking and stepping are checked with
every other cell in test_model.py (its CELLS); here: the peepholes are the
LSTM plus exactly those weights, each peephole matters, the notes' simplified
GRU is its own equations, and `info` says which cells load into torch.nn.
"""

import numpy as np
import pytest

from charrnn.core import cells, model
from charrnn.core.model import ModelConfig
from tiny_runs import invoke, make_run

pytestmark = pytest.mark.usefixtures("backend")


def config_of(cell, **kw):
    return ModelConfig(**{"vocab_size": 7, "cell": cell, "layers": 2, "hidden": 5, "embed": 3, "dtype": "float64",
                          **kw})


def test_peephole_parameters_sit_beside_pytorchs_names():
    shapes = model.param_shapes(config_of("peephole"))
    lstm = model.param_shapes(config_of("lstm"))
    assert {k: v for k, v in shapes.items() if k in lstm} == lstm
    assert sorted(set(shapes) - set(lstm)) == sorted(f"rnn.weight_c{g}_l{k}" for g in "ifo" for k in (0, 1))
    assert all(shapes[f"rnn.weight_c{g}_l1"] == (5,) for g in "ifo")


def test_peephole_with_zero_peepholes_is_the_lstm_and_each_peephole_matters():
    rng = np.random.default_rng(0)
    lstm_params = model.init_params(config_of("lstm"), rng)
    params = dict(lstm_params, **{f"rnn.weight_c{g}_l{k}": np.zeros(5) for g in "ifo" for k in (0, 1)})
    x, y = rng.integers(0, 7, (3, 6)), rng.integers(0, 7, (3, 6))
    state = tuple(rng.standard_normal((2, 3, 5)) for _ in range(2))
    base, base_state, cache = model.forward(params, config_of("peephole"), x, y, state=state)
    loss, lstm_state, lstm_cache = model.forward(lstm_params, config_of("lstm"), x, y, state=state)
    assert base == pytest.approx(loss, rel=1e-13)
    for a, b in zip(base_state, lstm_state):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    grads, _ = model.backward(params, config_of("peephole"), cache)
    lstm_grads, _ = model.backward(lstm_params, config_of("lstm"), lstm_cache)
    for name, g in lstm_grads.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-11, atol=1e-13, err_msg=name)
    for g in "ifo":  # every peephole changes the loss, and gets a nonzero gradient
        assert np.abs(grads[f"rnn.weight_c{g}_l0"]).max() > 1e-6
        moved = dict(params, **{f"rnn.weight_c{g}_l0": np.full(5, 0.5)})
        assert abs(model.forward(moved, config_of("peephole"), x, y, state=state)[0] - base) > 1e-6


def test_simple_gru_is_the_notes_update_equation_step_by_step():
    """One step by hand, in the notes' notation, against the model's first step."""
    config = config_of("simple-gru", layers=1)
    rng = np.random.default_rng(1)
    params = model.init_params(config, rng)
    x = rng.integers(0, 7, (4, 1))
    c_prev = rng.standard_normal((1, 4, 5))
    _, (c,), _ = model.forward(params, config, x, state=(c_prev,))
    H = 5
    xe = params["embedding.weight"][x[:, 0]]
    W = np.concatenate([params["rnn.weight_hh_l0"], params["rnn.weight_ih_l0"]], axis=1)  # W [c, x]
    b = params["rnn.bias_ih_l0"] + params["rnn.bias_hh_l0"]
    cx = np.concatenate([c_prev[0], xe], axis=1)
    c_tilde = np.tanh(cx @ W[:H].T + b[:H])
    u = 1 / (1 + np.exp(-(cx @ W[H:].T + b[H:])))
    np.testing.assert_allclose(c[0], u * c_tilde + (1 - u) * c_prev[0], rtol=1e-13, atol=1e-13)


def test_reference_step_backward_matches_the_kernel_step_for_the_new_cells():
    """The public step functions keep one contract: (state, cache) and (d_xp, d_hp, d_state_prev)."""
    rng = np.random.default_rng(3)
    B, H = 3, 4
    for cell in ("peephole", "simple-gru"):
        G = cells.GATES[cell]
        xp = rng.standard_normal((1, B, G * H))
        W, b = rng.standard_normal((G * H, H)), rng.standard_normal(G * H)
        extra = tuple(rng.standard_normal(H) for _ in cells.EXTRA[cell])
        state = tuple(rng.standard_normal((B, H)) for _ in range(cells.STATES[cell]))
        new, cache = cells.step_forward(cell, xp[0], state, W, b, extra)
        d_new = tuple(rng.standard_normal((B, H)) for _ in new)
        d_xp, d_hp, d_prev = cells.step_backward(cell, d_new, cache, W)
        rec = model.recurrence()
        hs, final, seq_cache = rec.sequence_forward(cell, xp, state, W, b, extra=extra)
        for a, s in zip(final, new):
            np.testing.assert_allclose(a, s, rtol=1e-13, atol=1e-13)
        seq_d_xp, seq_d_prev, grads = rec.sequence_backward(np.zeros_like(hs), d_new, seq_cache)
        np.testing.assert_allclose(seq_d_xp[0], d_xp, rtol=1e-12, atol=1e-13)
        for a, s in zip(seq_d_prev, d_prev):
            np.testing.assert_allclose(a, s, rtol=1e-12, atol=1e-13)
        assert sorted(grads) == sorted(("W_hh", "b_hh") + cells.EXTRA[cell])


@pytest.mark.parametrize("cell", ["peephole", "simple-gru", "lstm"])
def test_info_says_whether_the_model_loads_into_torch_nn(tmp_path, cell):
    make_run(tmp_path / "r", "abc", cell=cell)
    code, out, err = invoke(["info", tmp_path / "r" / "model.safetensors"])
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("torch.nn"))
    if cell == "lstm":
        assert "loads into torch.nn.LSTM" in line
    else:
        assert "does not load" in line and cell in line


def test_each_step_cache_names_the_gates_that_annotate_reads():
    """A step's cache is a named tuple: annotate reads every gate by its field, and the field holds that gate
    (computed here from the pre-activations, independently of cells.py)."""
    from charrnn.work.annotate import GATES_IN_CACHE

    def sig(x):
        return 1.0 / (1.0 + np.exp(-x))

    rng = np.random.default_rng(4)
    H, B = 5, 3
    for cell in cells.CELLS:
        G = cells.GATES[cell]
        xp, W, b = rng.standard_normal((B, G * H)), rng.standard_normal((G * H, H)), rng.standard_normal(G * H)
        state = tuple(rng.standard_normal((B, H)) for _ in range(cells.STATES[cell]))
        extra = tuple(np.zeros(H) for _ in cells.EXTRA[cell])  # no peepholes: the gates are the LSTM's
        _, cache = cells.step_forward(cell, xp, state, W, b, extra)
        a = xp + state[0] @ W.T + b
        part = [a[:, j * H : (j + 1) * H] for j in range(G)] + [np.zeros((B, H))] * (4 - G)  # the unused are 0
        hp = state[0] @ W.T + b
        lstm = {"i": sig(part[0]), "f": sig(part[1]), "g": np.tanh(part[2]), "o": sig(part[3])}
        want = {"rnn": lambda: {}, "lstm": lambda: lstm, "peephole": lambda: lstm,
                "gru": lambda: {"r": sig(part[0]), "z": sig(part[1]),
                                "n": np.tanh(xp[:, 2 * H :] + sig(part[0]) * hp[:, 2 * H :])},
                "simple-gru": lambda: {"c~": np.tanh(part[0]), "u": sig(part[1])}}[cell]()
        assert type(cache)._fields[0] == "h_prev"
        np.testing.assert_array_equal(cache.h_prev, state[0])
        assert set(GATES_IN_CACHE[cell]) == set(want)
        for name, field in GATES_IN_CACHE[cell].items():
            np.testing.assert_allclose(getattr(cache, field), want[name], rtol=1e-12, atol=1e-12)
        if cells.STATES[cell] == 2:
            f, i, g = want["f"], want["i"], want["g"]
            np.testing.assert_allclose(cache.tanh_c, np.tanh(f * state[1] + i * g), rtol=1e-12, atol=1e-12)
