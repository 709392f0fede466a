import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charrnn.data.batches import (
    line_batch,
    line_batches,
    line_batches_in_order,
    stream_batch,
    stream_eval_batches,
    stream_windows,
)
from charrnn.files.corpus import encode_lines, load_ids, save_ids
from charrnn.errors import ConfigError, CorpusError
from charrnn.data.vocab import build_vocab


def test_window_count():
    # N = 101, B = 4: S = 25 per stream; T = 6 gives 4 windows.
    assert stream_windows(101, 4, 6) == 4
    assert stream_windows(4 * 6 + 1, 4, 6) == 1


def test_too_short():
    with pytest.raises(CorpusError) as e:
        stream_windows(24, 4, 6)
    msg = str(e.value)
    assert "24" in msg and "25" in msg and "batch_size=" in msg and "seq_len=" in msg  # the API's keywords
    with pytest.raises(CorpusError):
        stream_windows(0, 1, 1)
    with pytest.raises(ConfigError):
        stream_windows(100, 0, 5)


def test_stream_layout():
    data = np.arange(101, dtype=np.uint16)
    x, y = stream_batch(data, 4, 6, 0)
    assert x.shape == y.shape == (4, 6) and x.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], [0, 25, 50, 75])  # stream b starts at b*S
    np.testing.assert_array_equal(y, x + 1)  # targets are inputs shifted by one
    x3, y3 = stream_batch(data, 4, 6, 3)
    np.testing.assert_array_equal(x3[:, 0], [18, 43, 68, 93])
    with pytest.raises(ConfigError):
        stream_batch(data, 4, 6, 4)


@given(st.integers(2, 400), st.integers(1, 8), st.integers(1, 12))
def test_streams_continue_across_windows(n, b, t):
    data = np.random.default_rng(n).integers(0, 200, size=n).astype(np.uint8)
    try:
        w = stream_windows(n, b, t)
    except CorpusError:
        assert n < b * t + 1
        return
    s = (n - 1) // b
    xs, ys = zip(*(stream_batch(data, b, t, k) for k in range(w)))
    x, y = np.concatenate(xs, axis=1), np.concatenate(ys, axis=1)  # (B, W*T)
    for i in range(b):
        np.testing.assert_array_equal(x[i], data[i * s : i * s + w * t])
        np.testing.assert_array_equal(y[i], data[i * s + 1 : i * s + w * t + 1])
    for k in range(w - 1):
        # x of window k+1 picks up right after x of window k, and y's last column is x's next first.
        np.testing.assert_array_equal(ys[k][:, -1], xs[k + 1][:, 0])


def test_memmap(tmp_path):
    data = (np.arange(1001) % 251).astype(np.uint8)
    save_ids(tmp_path / "d.npy", data)
    m = load_ids(tmp_path / "d.npy")
    for k in range(stream_windows(len(m), 8, 10)):
        xm, ym = stream_batch(m, 8, 10, k)
        xa, ya = stream_batch(data, 8, 10, k)
        assert type(xm) is np.ndarray
        np.testing.assert_array_equal(xm, xa)
        np.testing.assert_array_equal(ym, ya)


@given(st.integers(2, 300), st.integers(1, 8), st.integers(1, 12))
def test_eval_batches_cover_streams(n, b, t):
    data = np.arange(n, dtype=np.int64)
    batches = list(stream_eval_batches(data, b, t))
    bb = min(b, n - 1)
    s = (n - 1) // bb
    x = np.concatenate([xb for xb, _ in batches], axis=1)
    y = np.concatenate([yb for _, yb in batches], axis=1)
    assert x.shape == (bb, s)
    assert all(xb.shape[1] <= t for xb, _ in batches)
    np.testing.assert_array_equal(x, np.arange(bb)[:, None] * s + np.arange(s))
    np.testing.assert_array_equal(y, x + 1)


def test_eval_batches_too_short():
    with pytest.raises(CorpusError):
        list(stream_eval_batches(np.zeros(1, dtype=np.uint8), 4, 4))


def test_line_batches_deterministic_and_complete():
    a = line_batches(103, 10, seed=7, epoch=2)
    assert [len(i) for i in a] == [10] * 10 + [3]  # last partial batch kept
    np.testing.assert_array_equal(np.sort(np.concatenate(a)), np.arange(103))
    b = line_batches(103, 10, seed=7, epoch=2)
    assert all(np.array_equal(i, j) for i, j in zip(a, b))
    c = line_batches(103, 10, seed=7, epoch=3)
    d = line_batches(103, 10, seed=8, epoch=2)
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))
    assert not np.array_equal(np.concatenate(a), np.concatenate(d))
    assert line_batches(0, 4, 0, 0) == []
    with pytest.raises(ConfigError):
        line_batches(10, 4, -1, 0)


def test_line_batches_in_order():
    got = line_batches_in_order(7, 3)
    assert [list(i) for i in got] == [[0, 1, 2], [3, 4, 5], [6]]


def test_line_batch_padding_and_mask():
    lines = ["abc", "a", "bcab"]
    v = build_vocab("".join(lines))
    ids, offsets = encode_lines(v, lines)
    x, y, mask = line_batch(ids, offsets, np.array([1, 0]), v.bos, v.eos)
    a, b, c = (v.encode(ch)[0] for ch in "abc")
    eos, bos = v.eos, v.bos
    assert x.shape == y.shape == mask.shape == (2, 4) and x.dtype == np.int64 and mask.dtype == bool
    np.testing.assert_array_equal(x, [[bos, a, eos, eos], [bos, a, b, c]])
    np.testing.assert_array_equal(y, [[a, eos, eos, eos], [a, b, c, eos]])
    np.testing.assert_array_equal(mask, [[True, True, False, False], [True, True, True, True]])


@given(st.lists(st.text("xyz", max_size=9), min_size=1, max_size=12), st.data())
def test_line_batch_matches_lines(lines, data):
    v = build_vocab("xyz")
    ids, offsets = encode_lines(v, lines)
    rows = data.draw(st.lists(st.integers(0, len(lines) - 1), min_size=1, max_size=6))
    x, y, mask = line_batch(ids, offsets, rows, v.bos, v.eos)
    assert x.shape[1] == 1 + max(len(lines[r]) for r in rows)
    for i, r in enumerate(rows):
        n = len(lines[r])
        assert mask[i].sum() == n + 1 and mask[i, : n + 1].all()
        assert x[i, 0] == v.bos and v.decode(x[i, 1 : n + 1]) == lines[r]
        assert v.decode(y[i, :n]) == lines[r] and y[i, n] == v.eos
        assert (x[i, n + 1 :] == v.eos).all() and (y[i, n + 1 :] == v.eos).all()


def test_line_batch_on_memmap(tmp_path):
    lines = ["hello", "hi", "hey there"]
    v = build_vocab("".join(lines))
    ids, offsets = encode_lines(v, lines)
    save_ids(tmp_path / "ids.npy", ids)
    m = load_ids(tmp_path / "ids.npy")
    for got, want in zip(line_batch(m, offsets, [2, 0, 1], v.bos, v.eos), line_batch(ids, offsets, [2, 0, 1], v.bos, v.eos)):
        np.testing.assert_array_equal(got, want)


def test_line_batch_empty():
    with pytest.raises(ConfigError):
        line_batch(np.zeros(3, np.uint8), np.array([0, 3]), [], 2, 0)
