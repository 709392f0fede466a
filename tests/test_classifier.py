"""The classifier's math: gradients of the (bidirectional) stack and the pooling against finite
differences, padding that changes nothing, and the stack against torch.nn.LSTM(bidirectional=True)."""

import numpy as np
import pytest

from charrnn.core import classifier, model
from charrnn.errors import ConfigError
from charrnn.core.model import ModelConfig
from test_model import numeric_grad, rel_error

pytestmark = pytest.mark.usefixtures("backend")


def clf(cell="lstm", layers=2, bidirectional=True, pool="mean", **kw):
    return ModelConfig(**{"vocab_size": 6, "cell": cell, "layers": layers, "hidden": 3, "embed": 2,
                          "dtype": "float64", "classes": 3, "bidirectional": bidirectional, "pool": pool, **kw})


def padded_batch(rng, lengths, V=6):
    tokens = np.zeros((len(lengths), max(lengths)), dtype=np.int64)
    for b, n in enumerate(lengths):
        tokens[b, :n] = rng.integers(0, V, n)
    return tokens, np.array(lengths)


@pytest.mark.parametrize("cell,layers,bidirectional,pool", [
    ("lstm", 2, True, "mean"), ("lstm", 2, True, "last"), ("gru", 1, True, "last"),
    ("peephole", 2, True, "mean"), ("simple-gru", 1, False, "last"), ("rnn", 2, False, "mean")])
def test_classifier_gradients_match_finite_differences(cell, layers, bidirectional, pool):
    config = clf(cell, layers, bidirectional, pool)
    rng = np.random.default_rng(layers)
    params = model.init_params(config, rng)
    tokens, lengths = padded_batch(rng, [4, 1, 3])
    labels = np.array([0, 2, 1])
    loss, grads = classifier.loss_and_grads(params, config, tokens, lengths, labels)
    for name, value in params.items():
        numeric = numeric_grad(lambda: classifier.forward(params, config, tokens, lengths, labels, keep=False)[0],
                               value)
        assert rel_error(grads[name], numeric) < 1e-6, name


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_pooling_gradient_matches_finite_differences(pool):
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((4, 3, 6))
    lengths = np.array([4, 2, 1])
    weights = rng.standard_normal((3, 6))
    pooled, cache = classifier.pool_forward(Y, lengths, pool, 2)
    d_Y = classifier.pool_backward(weights, cache)
    numeric = numeric_grad(lambda: float((classifier.pool_forward(Y, lengths, pool, 2)[0] * weights).sum()), Y)
    assert rel_error(d_Y, numeric) < 1e-8
    if pool == "last":  # the two directions' final states, PyTorch's h_n
        np.testing.assert_array_equal(pooled[1], np.concatenate([Y[1, 1, :3], Y[0, 1, 3:]]))
    else:
        np.testing.assert_allclose(pooled[1], Y[:2, 1].mean(axis=0), rtol=1e-14)


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_padding_and_batch_neighbours_change_nothing(pool):
    """A line scores the same alone and padded in a batch beside longer lines."""
    config = clf(pool=pool)
    rng = np.random.default_rng(3)
    params = model.init_params(config, rng)
    tokens, lengths = padded_batch(rng, [5, 2, 4])
    _, probs, _ = classifier.forward(params, config, tokens, lengths, keep=False)
    for b, n in enumerate(lengths):
        _, alone, _ = classifier.forward(params, config, tokens[b:b + 1, :n], lengths[b:b + 1], keep=False)
        np.testing.assert_allclose(probs[b], alone[0], rtol=1e-12, atol=1e-14)
    tokens[1, 2:] = 5  # other padding values
    np.testing.assert_allclose(classifier.forward(params, config, tokens, lengths, keep=False)[1], probs, rtol=1e-13)


def test_predict_in_length_order_equals_one_batch_and_metrics_count():
    config = clf()
    rng = np.random.default_rng(4)
    params = model.init_params(config, rng)
    lengths = [3, 1, 6, 2, 5]
    ids = rng.integers(0, 6, sum(lengths))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    probs = classifier.predict(params, config, ids, offsets, batch_size=2)
    tokens, lens = classifier.batch(ids, offsets, np.arange(5))
    _, whole, _ = classifier.forward(params, config, tokens, lens, keep=False)
    np.testing.assert_allclose(probs, whole, rtol=1e-12)
    labels = np.array([0, 1, 2, 2, 0])
    forced = np.eye(3)[[0, 1, 2, 0, 0]] * 0.9 + 0.1 / 3  # one line of label 2 predicted as 0
    m = classifier.metrics(forced, labels, 3)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["confusion"] == [[2, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert m["pairs"] == [[0, 0, 2], [1, 1, 1], [2, 0, 1], [2, 2, 1]]  # its non-zero cells
    # F1 per label: 2*2/(2+3)=0.8, 1.0, 2*1/(2+1)
    assert m["macro_f1"] == pytest.approx((0.8 + 1.0 + 2 / 3) / 3)


def test_bidirectional_needs_a_classifier():
    with pytest.raises(ConfigError, match="would see the character it must predict"):
        ModelConfig(vocab_size=5, bidirectional=True)


def test_bidirectional_stack_matches_torch_lstm():
    torch = pytest.importorskip("torch")
    config = clf("lstm", layers=2, bidirectional=True, pool="last", hidden=4, embed=3)
    rng = np.random.default_rng(7)
    params = model.init_params(config, rng)
    tokens, lengths = padded_batch(rng, [5, 3, 1, 4])
    Y, cache = classifier.stack_forward(params, config, tokens, lengths)
    d_Y = rng.standard_normal(Y.shape)
    inside = (np.arange(Y.shape[0])[:, None] < lengths[None, :])[:, :, None]
    d_Y *= inside  # padded positions carry no gradient
    grads = classifier.stack_backward(params, d_Y, cache)

    emb = torch.nn.Embedding(6, 3).double()
    lstm = torch.nn.LSTM(3, 4, 2, bidirectional=True).double()
    emb.weight.data = torch.from_numpy(params["embedding.weight"].copy())
    lstm.load_state_dict({k[len("rnn."):]: torch.from_numpy(v.copy()) for k, v in params.items()
                          if k.startswith("rnn.")}, strict=True)
    x = emb(torch.from_numpy(tokens.T.copy()))  # (T, B, E)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.from_numpy(lengths), enforce_sorted=False)
    out, (h_n, _) = lstm(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out)  # (T, B, 2H), zeros where padded
    np.testing.assert_allclose(Y * inside, out.detach().numpy(), rtol=0, atol=1e-12)
    pooled, _ = classifier.pool_forward(Y, lengths, "last", 2)
    np.testing.assert_allclose(pooled, torch.cat([h_n[-2], h_n[-1]], dim=1).detach().numpy(), rtol=0, atol=1e-12)
    (out * torch.from_numpy(d_Y)).sum().backward()
    for name, p in lstm.named_parameters():
        np.testing.assert_allclose(grads[f"rnn.{name}"], p.grad.numpy(), rtol=0, atol=1e-10, err_msg=name)
    np.testing.assert_allclose(grads["embedding.weight"], emb.weight.grad.numpy(), rtol=0, atol=1e-10)


def test_row_blocks_of_a_batch_add_up_to_the_whole_batch():
    """The trainer cuts a batch into row blocks (parallel.py): with count, their gradients sum to the batch's."""
    config = clf("gru", layers=2)
    rng = np.random.default_rng(5)
    params = model.init_params(config, rng)
    tokens, lengths = padded_batch(rng, [4, 2, 5, 1, 3])
    labels = np.array([0, 1, 2, 1, 0])
    loss, whole = classifier.loss_and_grads(params, config, tokens, lengths, labels)
    l1, g1 = classifier.loss_and_grads(params, config, tokens[:2], lengths[:2], labels[:2], count=5)
    l2, g2 = classifier.loss_and_grads(params, config, tokens[2:], lengths[2:], labels[2:], count=5)
    assert loss == pytest.approx((2 * l1 + 3 * l2) / 5, rel=1e-13)
    for name, g in whole.items():
        np.testing.assert_allclose(g1[name] + g2[name], g, rtol=1e-12, atol=1e-15, err_msg=name)


def test_metrics_of_many_labels_keep_only_the_non_zero_cells():
    # 20,000 labels: a dense confusion matrix would be 20,000^2 int64 counts (3.2 GB) at every evaluation
    import tracemalloc

    C, N = 20_000, 500
    rng = np.random.default_rng(1)
    labels = rng.integers(0, C, N)
    predicted = np.where(rng.random(N) < 0.5, labels, rng.integers(0, C, N))
    probs = np.full((N, C), 0.1 / C, dtype=np.float32)
    probs[np.arange(N), predicted] = 0.9
    tracemalloc.start()
    try:
        m = classifier.metrics(probs, labels, C)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # a few (N,) and (C,) arrays; the dense table alone would be 3.2 GB
    assert m["confusion"] is None
    cells = {}  # the reference, line by line
    for t, p in zip(labels.tolist(), predicted.tolist()):
        cells[t, p] = cells.get((t, p), 0) + 1
    assert m["pairs"] == [[t, p, k] for (t, p), k in sorted(cells.items())]
    assert m["accuracy"] == pytest.approx(np.mean(labels == predicted))
    f1 = []
    for c in set(labels.tolist()) | set(predicted.tolist()):
        tp = np.sum((labels == c) & (predicted == c))
        f1.append(2 * tp / (np.sum(labels == c) + np.sum(predicted == c)))
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["loss"] == pytest.approx(-np.log(probs[np.arange(N), labels].astype(np.float64)).mean())
