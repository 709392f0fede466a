"""Length-bucketed line batches: every line once, little padding, and the same batches from the same seed."""

import numpy as np
import pytest

from charrnn.data import batches
import unicodedata


def padding_share(lengths, groups) -> float:
    padded = sum(len(g) * lengths[g].max() for g in groups)
    return 1 - lengths.sum() / padded


def test_every_line_once_and_batches_of_b_but_one_per_pool():
    lengths = np.random.default_rng(0).integers(1, 200, 1000)
    groups = batches.bucketed_line_batches(lengths, 8, seed=3, epoch=2, pool=10)
    assert np.array_equal(np.sort(np.concatenate(groups)), np.arange(1000))
    assert sum(len(g) != 8 for g in groups) <= -(-1000 // 80)
    again = batches.bucketed_line_batches(lengths, 8, seed=3, epoch=2, pool=10)
    assert all(np.array_equal(a, b) for a, b in zip(groups, again))
    other = batches.bucketed_line_batches(lengths, 8, seed=3, epoch=3, pool=10)
    assert not all(np.array_equal(a, b) for a, b in zip(groups, other))


@pytest.mark.parametrize("source", ["names", "long tail"])
def test_padding_stays_under_15_percent(source):
    """A names list (Unicode's character names), and lines shaped like bench/classify.py's (a mean near 50,
    a tail to 200 characters): shuffled batches pad by a third and more, bucketed ones under 15%."""
    if source == "names":
        lengths = np.array([len(n) for n in map(lambda c: unicodedata.name(chr(c), ""), range(32, 0x3000)) if n])
    else:
        lengths = np.clip(np.random.default_rng(1).lognormal(3.7, 0.6, 20_000).astype(int), 8, 200)
    shuffled = batches.line_batches(lengths.size, 32, seed=0, epoch=0)
    bucketed = batches.bucketed_line_batches(lengths, 32, seed=0, epoch=0)
    assert padding_share(lengths, bucketed) < 0.15 < 0.3 < padding_share(lengths, shuffled)
