"""The cells compute exactly what torch.nn.RNN / LSTM / GRU compute (float64).

The parameter dict loads into torch modules with load_state_dict(strict=True);
logits, loss and every parameter gradient must agree to 1e-10, on the compiled
kernels and on the NumPy reference, with layer 0's (V, G*H) table (V <= B*T) and
without it (a word-level vocabulary, V > B*T).
"""

import numpy as np
import pytest

from charrnn.core import model
from charrnn.core.model import ModelConfig
from reference import naive_forward

torch = pytest.importorskip("torch")

TORCH_CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


class TorchLM(torch.nn.Module):
    """The same architecture as charrnn's model, from torch.nn parts."""

    def __init__(self, config):
        super().__init__()
        self.embedding = torch.nn.Embedding(config.vocab_size, config.embed)
        rnn = getattr(torch.nn, TORCH_CELLS[config.cell])
        self.rnn = rnn(config.embed, config.hidden, config.layers, batch_first=True)
        self.head = torch.nn.Linear(config.hidden, config.vocab_size)

    def forward(self, x, state=None):
        out, state = self.rnn(self.embedding(x), state)
        return self.head(out), state


def torch_model(params, config):
    net = TorchLM(config).double()
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()}, strict=True)
    return net


def masked_mean_ce(logits, targets, mask):
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    weight = mask.reshape(-1).double()
    return (nll * weight).sum() / weight.sum()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("vocab_size", [9, 50])  # B*T = 21: with layer 0's table, and without
def test_matches_torch(cell, layers, vocab_size, backend):
    config = ModelConfig(vocab_size=vocab_size, cell=cell, layers=layers, hidden=8, embed=5, dtype="float64")
    rng = np.random.default_rng(layers)
    params = model.init_params(config, rng)
    x = rng.integers(0, vocab_size, (3, 7))
    y = rng.integers(0, vocab_size, (3, 7))
    x[2, 5] = x[0, 1]  # one token twice: its embedding row gathers two gradients
    assert model.uses_table(config, x.size) == (vocab_size <= x.size)
    mask = rng.random((3, 7)) > 0.3
    state = tuple(rng.standard_normal(s.shape) for s in model.zero_state(config, 3))

    loss, final, cache = model.forward(params, config, x, y, mask, state, want_logits=True)
    grads, _ = model.backward(params, config, cache)

    net = torch_model(params, config)
    t_state = tuple(torch.from_numpy(s) for s in state)
    logits, t_final = net(torch.from_numpy(x), t_state if cell == "lstm" else t_state[0])
    t_loss = masked_mean_ce(logits, torch.from_numpy(y), torch.from_numpy(mask))
    t_loss.backward()

    np.testing.assert_allclose(cache["logits"], logits.detach().numpy(), rtol=0, atol=1e-10)
    assert abs(loss - t_loss.item()) < 1e-10
    t_final = t_final if cell == "lstm" else (t_final,)
    for a, b in zip(final, t_final):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=0, atol=1e-10)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=0, atol=1e-10, err_msg=name)


def test_gru_with_reset_before_product_differs_from_torch():
    """Negative control: the other common GRU form must fail the same comparison."""
    config = ModelConfig(vocab_size=9, cell="gru", layers=2, hidden=8, embed=5, dtype="float64")
    rng = np.random.default_rng(0)
    params = model.init_params(config, rng)
    x = rng.integers(0, 9, (3, 7))
    logits, _ = torch_model(params, config)(torch.from_numpy(x))
    ours, _ = naive_forward(params, config, x)
    variant, _ = naive_forward(params, config, x, gru_reset_before_product=True)
    np.testing.assert_allclose(ours, logits.detach().numpy(), rtol=0, atol=1e-10)
    assert np.abs(variant - logits.detach().numpy()).max() > 1e-6
