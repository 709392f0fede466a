"""The benchmarks' PyTorch twin is charrnn's model and optimizer rule, so their comparisons are like with like."""

import os
import sys

import numpy as np
import pytest

from charrnn.core import model, optim
from charrnn.core.model import ModelConfig

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import common  # noqa: E402
import quality  # noqa: E402


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_torch_lm_takes_and_gives_back_charrnn_params_and_computes_the_same_logits(cell):
    config = ModelConfig(vocab_size=11, cell=cell, layers=2, hidden=6, embed=4, dtype="float64")
    params = model.init_params(config, np.random.default_rng(0))
    net = common.torch_lm(config, params)
    back = common.to_params(net)
    assert back.keys() == params.keys()
    for name in params:
        assert back[name].dtype == params[name].dtype and np.array_equal(back[name], params[name]), name
    x = np.random.default_rng(1).integers(0, 11, (3, 5))
    with torch.no_grad():
        logits, _ = net(torch.from_numpy(x))
    ours = model.forward(params, config, x, want_logits=True)[2]["logits"]  # (B, T, V)
    np.testing.assert_allclose(logits.numpy(), ours, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", ["peephole", "simple-gru"])
def test_cells_torch_lacks_are_refused(cell):
    with pytest.raises(ValueError, match=f"torch.nn has no '{cell}' cell"):
        common.torch_lm(ModelConfig(vocab_size=5, cell=cell, hidden=3, embed=2))


def test_quality_runs_charrnns_adagrad_rule_in_torch():
    rng = np.random.default_rng(2)
    params = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(4)]
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    theirs = quality.charrnn_adagrad(list(tensors.values()), lr=0.1, eps=optim.Adagrad().eps)
    ours = optim.Adagrad(params)
    for g in grads:
        ours.step(params, g, 0.1)
        for k, t in tensors.items():
            t.grad = torch.tensor(g[k])
        theirs.step()
    for k in params:
        np.testing.assert_allclose(tensors[k].detach().numpy(), params[k], rtol=1e-12, atol=1e-14)
