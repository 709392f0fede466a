"""The recurrent core: gradients against finite differences, the model against a
naive loop, chunking and stepping against the sequence function. Every test
runs on both the compiled kernels and the NumPy reference (the `backend` fixture)."""

import numpy as np
import pytest

from charrnn.step import inference
from charrnn.core import model
from charrnn.core.model import ModelConfig
from reference import naive_forward, naive_loss, naive_loss_and_grads

CELLS = ["rnn", "lstm", "gru", "peephole", "simple-gru"]
pytestmark = pytest.mark.usefixtures("backend")


def small(cell, layers=1, dtype="float64", **kw):
    cfg = dict(vocab_size=6, cell=cell, layers=layers, hidden=4, embed=3, dtype=dtype)
    cfg.update(kw)
    return ModelConfig(**cfg)


def batch(config, B=3, T=5, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, config.vocab_size, (B, T))
    y = rng.integers(0, config.vocab_size, (B, T))
    return x, y


def random_state(config, B, rng):
    return tuple(rng.standard_normal(s.shape) * 0.5 for s in model.zero_state(config, B))


def objective(params, config, x, y, mask, state, proj, dropout_seed=None):
    """Loss plus a random projection of the final state, so the state's gradient path is checked too."""
    rng = None if dropout_seed is None else np.random.default_rng(dropout_seed)
    loss, final, cache = model.forward(params, config, x, y, mask, state, dropout_rng=rng)
    return loss + sum(float((p * s).sum()) for p, s in zip(proj, final)), cache


def numeric_grad(f, array):
    """Central differences of f() w.r.t. every entry of `array` (perturbed in place)."""
    eps = 1e-6
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def rel_error(analytic, numeric):
    scale = max(np.abs(analytic).max(), np.abs(numeric).max(), 1e-12)
    return np.abs(analytic - numeric).max() / scale


def assert_gradients_match_finite_differences(params, config, x, y, mask, state, proj):
    """Every parameter's and the initial state's gradient against central differences; returns the grads."""
    _, cache = objective(params, config, x, y, mask, state, proj)
    grads, d_state0 = model.backward(params, config, cache, d_state=proj)
    for name, value in params.items():
        numeric = numeric_grad(lambda: objective(params, config, x, y, mask, state, proj)[0], value)
        assert rel_error(grads[name], numeric) < 1e-6, name
    for j, s in enumerate(state):
        numeric = numeric_grad(lambda: objective(params, config, x, y, mask, state, proj)[0], s)
        assert rel_error(d_state0[j], numeric) < 1e-6, f"state {j}"
    return grads


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_gradients_match_finite_differences(cell, layers, masked):
    config = small(cell, layers)
    rng = np.random.default_rng(layers)
    params = model.init_params(config, rng)
    x, y = batch(config)
    mask = (rng.random(x.shape) > 0.4) if masked else None
    state = random_state(config, x.shape[0], rng)
    proj = random_state(config, x.shape[0], rng)

    assert_gradients_match_finite_differences(params, config, x, y, mask, state, proj)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers, masked", [(1, False), (2, True)])
def test_gradients_match_finite_differences_at_word_level(cell, layers, masked):
    """V > B*T: layer 0 skips the (V, G*H) table, and the embedding's gradient is summed by np.add.at."""
    config = small(cell, layers, vocab_size=20)
    rng = np.random.default_rng(10 + layers)
    params = model.init_params(config, rng)
    x, y = batch(config, B=2, T=4, seed=layers)
    x[1, 2] = x[0, 0]  # one token twice: its embedding row gathers two gradients
    assert not model.uses_table(config, x.size)
    mask = (rng.random(x.shape) > 0.4) if masked else None
    state = random_state(config, x.shape[0], rng)
    proj = random_state(config, x.shape[0], rng)

    grads = assert_gradients_match_finite_differences(params, config, x, y, mask, state, proj)
    assert np.count_nonzero(np.abs(grads["embedding.weight"]).sum(axis=1)) == len(np.unique(x))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("vocab_size", [6, 20])  # with and without layer 0's table (V > B*T)
def test_gradients_equal_the_naive_backward(cell, layers, masked, vocab_size):
    """Every gradient equals tests/reference.py's BPTT by hand, per gate and per step, to 1e-10."""
    config = small(cell, layers, vocab_size=vocab_size)
    rng = np.random.default_rng(20 + layers)
    params = model.init_params(config, rng)
    x, y = batch(config, B=3, T=5, seed=layers)
    assert model.uses_table(config, x.size) == (vocab_size <= x.size)
    mask = (rng.random(x.shape) > 0.4) if masked else None
    state = random_state(config, x.shape[0], rng)
    proj = random_state(config, x.shape[0], rng)

    loss, _, cache = model.forward(params, config, x, y, mask, state)
    grads, d_state0 = model.backward(params, config, cache, d_state=proj)
    ref_loss, ref_grads, ref_d_state0 = naive_loss_and_grads(params, config, x, y, mask, state, proj)

    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert sorted(grads) == sorted(ref_grads)
    for name in params:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=0, atol=1e-10, err_msg=name)
    for j, (a, b) in enumerate(zip(d_state0, ref_d_state0)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10, err_msg=f"state {j}")


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_with_dropout(cell):
    config = small(cell, layers=2, dropout=0.3)
    rng = np.random.default_rng(5)
    params = model.init_params(config, rng)
    x, y = batch(config)
    state = model.zero_state(config, x.shape[0])
    proj = tuple(np.zeros_like(s) for s in state)
    _, cache = objective(params, config, x, y, None, state, proj, dropout_seed=9)
    grads, _ = model.backward(params, config, cache)
    for name in ("rnn.weight_hh_l0", "rnn.weight_ih_l1", "head.weight", "embedding.weight"):
        numeric = numeric_grad(lambda: objective(params, config, x, y, None, state, proj, 9)[0], params[name])
        assert rel_error(grads[name], numeric) < 1e-6, name
    # dropout is really applied, and only when a generator is given
    plain, _, _ = model.forward(params, config, x, y)
    dropped, _, _ = model.forward(params, config, x, y, dropout_rng=np.random.default_rng(9))
    assert plain != dropped


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 3])
def test_fused_equals_naive_per_gate_loop(cell, layers):
    config = small(cell, layers, hidden=7)
    rng = np.random.default_rng(2)
    params = model.init_params(config, rng)
    x, y = batch(config, B=4, T=6)
    state = random_state(config, 4, rng)
    loss, final, cache = model.forward(params, config, x, y, state=state, want_logits=True)
    ref_logits, ref_final = naive_forward(params, config, x, state)
    np.testing.assert_allclose(cache["logits"], ref_logits, rtol=1e-12, atol=1e-12)
    for a, b in zip(final, ref_final):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert loss == pytest.approx(naive_loss(ref_logits, y), rel=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_two_chunks_equal_one(cell):
    config = small(cell, layers=2)
    params = model.init_params(config, np.random.default_rng(3))
    x, y = batch(config, B=2, T=8)
    loss, final, cache = model.forward(params, config, x, y, want_logits=True)
    l1, s1, c1 = model.forward(params, config, x[:, :4], y[:, :4], want_logits=True)
    l2, s2, c2 = model.forward(params, config, x[:, 4:], y[:, 4:], state=s1, want_logits=True)
    np.testing.assert_allclose(np.concatenate([c1["logits"], c2["logits"]], axis=1), cache["logits"], rtol=1e-12)
    assert loss == pytest.approx((l1 + l2) / 2, rel=1e-12)
    for a, b in zip(final, s2):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("vocab_size", [6, 40])  # with and without layer 0's table (V > B*T)
def test_steps_equal_the_naive_loop(cell, vocab_size):
    config = small(cell, layers=2, vocab_size=vocab_size)
    params = model.init_params(config, np.random.default_rng(4))
    x, _ = batch(config, B=3, T=6)
    ref_logits, ref_final = naive_forward(params, config, x)
    weights = model.prepare(params, config, table=vocab_size < 10)
    assert (weights.table is None) == (vocab_size >= 10)
    state = model.zero_state(config, 3)
    for t in range(x.shape[1]):
        logits, state = inference.step(weights, x[:, t], state)
        np.testing.assert_allclose(logits, ref_logits[:, t], rtol=1e-12, atol=1e-12)
    for a, b in zip(state, ref_final):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_zero_head_scores_log_v(cell):
    config = small(cell, layers=2, vocab_size=11)
    params = model.init_params(config, np.random.default_rng(0))
    params["head.weight"][:] = 0.0
    params["head.bias"][:] = 0.0
    x, y = batch(config)
    loss, _, _ = model.forward(params, config, x, y)
    assert loss == pytest.approx(np.log(11), abs=1e-15)


@pytest.mark.parametrize("cell", CELLS)
def test_masked_positions_contribute_nothing(cell):
    config = small(cell, layers=2)
    params = model.init_params(config, np.random.default_rng(6))
    x, y = batch(config, B=3, T=6)
    mask = np.ones_like(x, dtype=bool)
    mask[0, 3:] = False
    mask[2, 1:] = False
    y2 = y.copy()
    y2[~mask] = (y2[~mask] + 1) % config.vocab_size  # change only unscored targets
    l1, _, c1 = model.forward(params, config, x, y, mask)
    l2, _, c2 = model.forward(params, config, x, y2, mask)
    g1, _ = model.backward(params, config, c1)
    g2, _ = model.backward(params, config, c2)
    assert l1 == l2
    for name in params:
        np.testing.assert_array_equal(g1[name], g2[name])
    # nothing scored: zero loss and exactly zero gradients
    l0, _, c0 = model.forward(params, config, x, y, np.zeros_like(mask))
    g0, _ = model.backward(params, config, c0)
    assert l0 == 0.0
    assert all(not g.any() for g in g0.values())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_dtypes_end_to_end(cell, dtype):
    config = small(cell, layers=2, dtype=dtype)
    params = model.init_params(config, np.random.default_rng(0))
    assert all(p.dtype == np.dtype(dtype) for p in params.values())
    x, y = batch(config)
    loss, state, cache = model.forward(params, config, x, y)
    grads, d_state = model.backward(params, config, cache)
    assert all(g.dtype == np.dtype(dtype) for g in grads.values())
    assert all(s.dtype == np.dtype(dtype) for s in state + d_state)
    logits, s = inference.step(model.prepare(params, config), x[:, 0], state)
    assert logits.dtype == np.dtype(dtype)
    assert all(a.dtype == np.dtype(dtype) for a in s)


def test_forget_bias_option():
    config = small("lstm", layers=2, forget_bias=1.0)
    params = model.init_params(config, np.random.default_rng(0))
    H = config.hidden
    for k in range(2):
        assert (params[f"rnn.bias_ih_l{k}"][H:2 * H] == 1.0).all()
        assert (params[f"rnn.bias_hh_l{k}"][H:2 * H] == 0.0).all()


def test_init_is_uniform_in_pytorch_bound_and_seeded():
    config = ModelConfig(vocab_size=20, hidden=64, embed=8, layers=2)
    a = model.init_params(config, np.random.default_rng(7))
    b = model.init_params(config, np.random.default_rng(7))
    bound = 1 / np.sqrt(64)
    for name, value in a.items():
        np.testing.assert_array_equal(value, b[name])
        if name != "embedding.weight":
            assert np.abs(value).max() <= bound
            assert np.abs(value).max() > 0.9 * bound


def test_adagrad_overfits_a_short_string():
    text = "hello world, hello charrnn"
    chars = sorted(set(text))
    ids = np.array([chars.index(ch) for ch in text])
    config = ModelConfig(vocab_size=len(chars), cell="lstm", layers=1, hidden=32, embed=8, dtype="float64")
    params = model.init_params(config, np.random.default_rng(0))
    memory = {k: np.zeros_like(v) for k, v in params.items()}
    x, y = ids[None, :-1], ids[None, 1:]
    for _ in range(300):
        loss, _, cache = model.forward(params, config, x, y)
        grads, _ = model.backward(params, config, cache)
        for k in params:  # plain Adagrad, as in min-char-rnn
            np.clip(grads[k], -5, 5, out=grads[k])
            memory[k] += grads[k] ** 2
            params[k] -= 0.1 * grads[k] / np.sqrt(memory[k] + 1e-8)
    assert loss < 0.05


def test_bad_token_ids_are_refused():
    from charrnn.errors import ConfigError
    config = small("rnn")
    params = model.init_params(config, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        model.forward(params, config, np.array([[0, 6]]), np.array([[0, 1]]))


@pytest.mark.parametrize("vocab_size", [9, 15, 25, 40])  # the table in both blocks, one, none (built), none
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_weights_prepared_once_per_step_give_each_blocks_own_bits(vocab_size, cell):
    """parallel.loss_and_grads prepares the weights once for its blocks (and the loop once for a step's chunks);
    each block's loss, gradients and state are bit for bit those of the block run alone, preparing its own."""
    from charrnn.step import parallel

    config = ModelConfig(vocab_size=vocab_size, cell=cell, layers=2, hidden=6, embed=4, dtype="float32")
    params = model.init_params(config, np.random.default_rng(3))
    rng = np.random.default_rng(4)
    B, T, parts = 5, 6, 2  # blocks of 2 and 3 rows: 12 and 18 tokens, around the table's threshold
    x, y = rng.integers(0, vocab_size, (B, T)), rng.integers(0, vocab_size, (B, T))
    mask = rng.random((B, T)) > 0.2
    count = int(mask.sum())
    alone = []
    for rows in parallel.row_blocks(B, parts):
        _, final, cache = model.forward(params, config, x[rows], y[rows], mask[rows])
        alone.append((cache["nll_sum"], model.backward(params, config, cache, count=count)[0], final))
    nll, grads = alone[0][0] + alone[1][0], {k: alone[0][1][k] + alone[1][1][k] for k in params}
    final = tuple(np.concatenate([alone[0][2][j], alone[1][2][j]], axis=1) for j in range(2 if cell == "lstm" else 1))
    whole = parallel.prepare(params, config, (B, T + 4), parts)  # as the loop lays them out for a longer batch
    for weights in (None, whole):
        got_nll, got_grads, got_final = parallel.loss_and_grads(params, config, x, y, mask, None, count=count,
                                                                parts=parts, weights=weights)
        assert got_nll == nll
        for name in params:
            np.testing.assert_array_equal(got_grads[name], grads[name], err_msg=name)
        for a, b in zip(got_final, final):
            np.testing.assert_array_equal(a, b)
