"""core/loss.py, the one softmax cross-entropy, against PyTorch's (float64) as an independent reference."""

import numpy as np
import pytest

from charrnn.core import loss

torch = pytest.importorskip("torch")


def _case(seed, n=7, v=5, scale=30.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, v)) * scale, rng.integers(0, v, n)


@pytest.mark.parametrize("seed", range(4))
def test_the_nll_and_softmax_are_pytorchs(seed):
    logits, targets = _case(seed)
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(targets), reduction="none")
    p, nll = loss.softmax_nll(logits.copy(), targets)
    np.testing.assert_allclose(nll, ref.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p, torch.softmax(torch.tensor(logits), 1).numpy(), rtol=1e-12, atol=1e-15)
    exp_z, nll2 = loss.softmax_nll(logits.copy(), targets, probs=False)  # the same NLL, the softmax left undivided
    np.testing.assert_array_equal(nll2, nll)
    assert np.allclose(exp_z.max(axis=1), 1.0)
    _, none = loss.softmax_nll(logits.copy())
    assert none is None
    np.testing.assert_allclose(loss.log_softmax(logits), torch.log_softmax(torch.tensor(logits), 1).numpy(),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(-loss.log_softmax(logits)[np.arange(len(targets)), targets], nll)  # to the bit


@pytest.mark.parametrize("seed", range(4))
def test_the_gradient_is_pytorchs_on_the_scored_rows(seed):
    logits, targets = _case(seed)
    weight = (np.arange(len(targets)) % 3 != 0).astype(np.float64)
    count = 10  # a denominator beyond this chunk's own scored rows, as a chunked batch has
    x = torch.tensor(logits, requires_grad=True)
    per_row = torch.nn.functional.cross_entropy(x, torch.tensor(targets), reduction="none")
    ((per_row * torch.tensor(weight)).sum() / count).backward()
    p, _ = loss.softmax_nll(logits.copy(), targets)
    got = loss.softmax_nll_backward(p, targets, count, weight)
    np.testing.assert_allclose(got, x.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert not loss.softmax_nll_backward(loss.softmax_nll(logits.copy(), targets)[0], targets, 0).any()


def test_the_mean_nll_of_probabilities_is_pytorchs_and_survives_a_zero():
    logits, targets = _case(5)
    probs = torch.softmax(torch.tensor(logits), 1)
    ref = torch.nn.functional.nll_loss(torch.log(probs), torch.tensor(targets)).item()
    assert loss.mean_nll(probs.numpy(), targets) == pytest.approx(ref, rel=1e-12)
    assert loss.mean_nll(np.array([[0.0, 1.0]]), [0]) == pytest.approx(-np.log(1e-300))  # finite, not inf
    assert np.isnan(loss.mean_nll(np.zeros((0, 2)), []))
