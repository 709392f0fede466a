"""The tagger's math and metrics: the per-step head on (bidirectional) layers with masks against finite
differences and against torch.nn.LSTM(bidirectional=True) plus a per-step nn.Linear; padding and batch
neighbours that change nothing; row blocks that add up; and the metrics against hand counts, entities
counted as seqeval counts them."""

import numpy as np
import pytest

from charrnn.core import model, tagger
from charrnn.core.model import ModelConfig
from test_model import numeric_grad, rel_error


def tag_config(cell="lstm", layers=2, bidirectional=True, **kw):
    return ModelConfig(**{"vocab_size": 6, "cell": cell, "layers": layers, "hidden": 3, "embed": 2,
                          "dtype": "float64", "classes": 4, "bidirectional": bidirectional, **kw})


def padded(rng, lengths, V=6, C=4):
    """(tokens, tags, lengths): random ids, padding filled with ids too (the mask must ignore them)."""
    B, T = len(lengths), max(lengths)
    return rng.integers(0, V, (B, T)), rng.integers(0, C, (B, T)), np.array(lengths)


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("cell,layers,bidirectional", [
    ("lstm", 2, True), ("gru", 1, True), ("peephole", 2, True), ("simple-gru", 1, False), ("rnn", 2, False)])
def test_tagger_gradients_match_finite_differences(cell, layers, bidirectional):
    config = tag_config(cell, layers, bidirectional)
    rng = np.random.default_rng(layers)
    params = model.init_params(config, rng)
    tokens, tags, lengths = padded(rng, [4, 1, 3])
    loss, grads = tagger.loss_and_grads(params, config, tokens, lengths, tags)
    for name, value in params.items():
        numeric = numeric_grad(lambda: tagger.forward(params, config, tokens, lengths, tags, keep=False)[0], value)
        assert rel_error(grads[name], numeric) < 1e-6, name


def test_tagger_matches_torch_bidirectional_lstm_and_a_per_step_linear():
    torch = pytest.importorskip("torch")
    config = tag_config("lstm", layers=2, hidden=4, embed=3, classes=5)
    rng = np.random.default_rng(7)
    params = model.init_params(config, rng)
    tokens, tags, lengths = padded(rng, [5, 3, 1, 4], C=5)
    loss, probs, cache = tagger.forward(params, config, tokens, lengths, tags)
    grads = tagger.backward(params, config, cache)

    emb = torch.nn.Embedding(6, 3).double()
    lstm = torch.nn.LSTM(3, 4, 2, bidirectional=True).double()
    head = torch.nn.Linear(8, 5).double()
    emb.weight.data = torch.from_numpy(params["embedding.weight"].copy())
    head.weight.data = torch.from_numpy(params["head.weight"].copy())
    head.bias.data = torch.from_numpy(params["head.bias"].copy())
    lstm.load_state_dict({k[len("rnn."):]: torch.from_numpy(v.copy()) for k, v in params.items()
                          if k.startswith("rnn.")}, strict=True)
    x = emb(torch.from_numpy(tokens.T.copy()))  # (T, B, E)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.from_numpy(lengths), enforce_sorted=False)
    out, _ = lstm(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out)  # (T, B, 2H)
    logits = head(out)  # (T, B, C)
    inside = torch.from_numpy(np.arange(5)[:, None] < lengths[None, :])
    target = torch.from_numpy(tags.T.copy())
    nll = torch.nn.functional.cross_entropy(logits[inside], target[inside], reduction="sum") / inside.sum()
    nll.backward()
    assert loss == pytest.approx(nll.item(), rel=1e-12)
    mask = inside.numpy()
    np.testing.assert_allclose(probs[mask], torch.softmax(logits, -1)[inside].detach().numpy(), rtol=0, atol=1e-12)
    named = {f"rnn.{n}": p for n, p in lstm.named_parameters()}
    named.update({"head.weight": head.weight, "head.bias": head.bias, "embedding.weight": emb.weight})
    assert set(named) == set(grads)
    for name, p in named.items():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=0, atol=1e-10, err_msg=name)


def test_padding_and_batch_neighbours_change_nothing():
    config = tag_config()
    rng = np.random.default_rng(3)
    params = model.init_params(config, rng)
    tokens, tags, lengths = padded(rng, [5, 2, 4])
    loss, probs, _ = tagger.forward(params, config, tokens, lengths, tags, keep=False)
    total = 0.0
    for b, n in enumerate(lengths):
        one, alone, _ = tagger.forward(params, config, tokens[b:b + 1, :n], lengths[b:b + 1], tags[b:b + 1, :n],
                                       keep=False)
        np.testing.assert_allclose(probs[:n, b], alone[:, 0], rtol=1e-12, atol=1e-14)
        total += one * n
    assert loss == pytest.approx(total / lengths.sum(), rel=1e-12)
    tokens[1, 2:], tags[1, 2:] = 5, 3  # other padding values
    again, probs2, _ = tagger.forward(params, config, tokens, lengths, tags, keep=False)
    assert again == loss
    np.testing.assert_array_equal(probs2[:2, 1], probs[:2, 1])


def test_row_blocks_of_a_batch_add_up_to_the_whole_batch():
    config = tag_config("gru", layers=2)
    rng = np.random.default_rng(5)
    params = model.init_params(config, rng)
    tokens, tags, lengths = padded(rng, [4, 2, 5, 1, 3])
    loss, whole = tagger.loss_and_grads(params, config, tokens, lengths, tags)
    n = int(lengths.sum())
    l1, g1 = tagger.loss_and_grads(params, config, tokens[:2, :4], lengths[:2], tags[:2, :4], count=n)
    l2, g2 = tagger.loss_and_grads(params, config, tokens[2:], lengths[2:], tags[2:], count=n)
    assert loss == pytest.approx((6 * l1 + 9 * l2) / n, rel=1e-13)
    for name, g in whole.items():
        np.testing.assert_allclose(g1[name] + g2[name], g, rtol=1e-12, atol=1e-15, err_msg=name)


def test_predict_in_length_order_equals_each_sequence_alone():
    config = tag_config()
    rng = np.random.default_rng(4)
    params = model.init_params(config, rng)
    lengths = [3, 1, 6, 2, 5]
    ids = rng.integers(0, 6, sum(lengths))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    probs = tagger.predict(params, config, ids, offsets, batch_size=2)
    assert probs.shape == (17, 4)
    for i, n in enumerate(lengths):
        a = offsets[i]
        _, alone, _ = tagger.forward(params, config, ids[None, a:a + n], [n], keep=False)
        np.testing.assert_allclose(probs[a:a + n], alone[:, 0], rtol=1e-12)


# ---------------------------------------------------------------- entities, as seqeval counts them

@pytest.mark.parametrize("tags,expected", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),        # an entity at the end
    (["O", "I-PER", "I-PER", "O"], [("PER", 1, 2)]),                           # an I- without a B- starts one
    (["I-ORG"], [("ORG", 0, 0)]),                                              # ... also at the very start
    (["B-PER", "B-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),              # adjacent, different types
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),              # an I- of another type
    (["B-PER", "B-PER"], [("PER", 0, 0), ("PER", 1, 1)]),                      # adjacent, same type
    (["I-PER", "B-PER", "I-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 3)]),
    (["O", "O"], []),
])
def test_entities_follow_seqeval(tags, expected):
    assert tagger.entities(tags) == expected


def test_metrics_against_a_hand_count():
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    ix = {n: i for i, n in enumerate(names)}
    true = [["B-PER", "I-PER", "O", "B-LOC"],          # PER 0-1, LOC 3-3 (at the end)
            ["O", "B-LOC", "B-PER", "I-PER"]]           # LOC 1-1, PER 2-3 (adjacent, different types)
    pred = [["B-PER", "I-PER", "O", "O"],              # PER right, LOC missed
            ["O", "I-LOC", "B-PER", "I-LOC"]]           # LOC right (an I- without a B-), PER 2-2 wrong, LOC 3-3 wrong
    flat = lambda seqs: np.array([ix[t] for s in seqs for t in s])
    m = tagger.metrics(flat(pred), flat(true), [0, 4, 8], names)
    # tokens: 8; right: B-PER I-PER O (3) + O B-PER (2) = 5
    assert (m["lines"], m["tokens"], m["accuracy"]) == (2, 8, 5 / 8)
    rows = {r["tag"]: r for r in m["tags"]}
    # B-LOC: true at 3 and 9-th position (2), predicted never -> p 0, r 0
    assert (rows["B-LOC"]["precision"], rows["B-LOC"]["recall"], rows["B-LOC"]["support"]) == (0.0, 0.0, 2)
    # I-LOC: true never, predicted twice
    assert (rows["I-LOC"]["precision"], rows["I-LOC"]["support"]) == (0.0, 0)
    # O: true 2 (both right), predicted 3 -> p 2/3, r 1, f1 0.8
    assert rows["O"]["precision"] == pytest.approx(2 / 3) and rows["O"]["recall"] == 1.0
    assert rows["O"]["f1"] == pytest.approx(0.8)
    # I-PER: true 2 (one right), predicted 1 -> p 1, r 1/2, f1 2/3
    assert (rows["I-PER"]["precision"], rows["I-PER"]["recall"]) == (1.0, 0.5)
    e = m["entities"]
    # true: 4 entities; predicted: PER 0-1, LOC 1-1, PER 2-2, LOC 3-3 = 4; correct: PER 0-1, LOC 1-1 = 2
    assert (e["true"], e["predicted"], e["correct"]) == (4, 4, 2)
    assert (e["precision"], e["recall"], e["f1"]) == (0.5, 0.5, 0.5)
    types = {t["type"]: t for t in e["types"]}
    assert (types["PER"]["precision"], types["PER"]["recall"], types["PER"]["support"]) == (0.5, 0.5, 2)
    assert (types["LOC"]["precision"], types["LOC"]["recall"], types["LOC"]["support"]) == (0.5, 0.5, 2)
    assert m["confusion"][ix["B-LOC"]] == [1, 0, 0, 0, 1]  # one B-LOC called O, one called I-LOC
    assert [ix["I-PER"], ix["I-LOC"], 1] in m["pairs"]


def test_metrics_without_bio_tags_count_no_entities_and_take_the_loss():
    names = ["name", "op", "ws"]
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    m = tagger.metrics(probs.argmax(1), [0, 1, 1], [0, 3], names, probs)
    assert m["entities"] is None and m["accuracy"] == pytest.approx(2 / 3)
    assert m["loss"] == pytest.approx(-(np.log(0.5) + np.log(0.8) + np.log(0.2)) / 3)
    assert not tagger.is_bio(["O"]) and not tagger.is_bio(["O", "B-"]) and tagger.is_bio(["O", "I-X"])
