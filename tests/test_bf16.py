"""bfloat16 products (charrnn/core/bf16.py): the rounding, the NumPy reference against a float64 product,
and the AVX512-BF16 tiles against the reference, bit for bit.

- round_bf16 against the rounding written out in plain Python (nearest of the two bfloat16 neighbours,
  ties to the even one; denormals to signed zero; NaN stays NaN; overflow to infinity).
- The reference against the exact (float64) product of the float32 inputs: each input's rounding to
  bfloat16 moves it by at most 2^-9 of itself, so a product by at most (1 + 2^-9)^2 - 1, and the chain of
  K float32 roundings adds at most gamma_K = K u / (1 - K u), u = 2^-24, all of |a| @ |w| (Higham 3.1).
  Against the float64 product of the ROUNDED inputs only gamma_K is left: that shows the inputs were
  rounded to bfloat16 and nothing else.
- The tiles (where this CPU has AVX512-BF16; skipped elsewhere) equal the reference bit for bit for
  every shape (rows, odd K, chunks of pairs, panels past N), row by row alone as in blocks; the order
  the reference fixes (the odd element of each pair first, as Intel's pseudo-code of VDPBF16PS) is the
  one that matters: the other order differs.
"""

import struct

import numpy as np
import pytest

from tiny_runs import compiled

bf16 = compiled("bf16")
U = 2.0**-24
HAS_TILES = bf16.microkernels() is not None
tiles_only = pytest.mark.skipif(not HAS_TILES, reason="this CPU has no AVX512-BF16 (the reference runs there)")


def bits32(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def as_float(b16: int) -> float:
    """The value of bfloat16 bits; the step past the largest finite one counts as 2^128 (overflow's midpoint)."""
    if b16 & 0x7F80 == 0x7F80:
        return -(2.0**128) if b16 & 0x8000 else 2.0**128
    return struct.unpack("<f", struct.pack("<I", b16 << 16))[0]


def plain_round(x: np.float32) -> int:
    """x's bfloat16 bits, written out from the rule, one value at a time."""
    u = bits32(float(x))
    if u & 0x7F800000 == 0:
        return (u & 0x80000000) >> 16  # denormal (or zero) -> zero of its sign
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return (u >> 16) | 0x40  # NaN, quieted
    if (u & 0x7FFFFFFF) == 0x7F800000:
        return u >> 16  # infinity
    down = u >> 16  # the neighbour toward zero, and the one away from it
    d_lo, d_hi = abs(float(x) - as_float(down)), abs(as_float(down + 1) - float(x))
    return down if d_lo < d_hi or (d_lo == d_hi and down % 2 == 0) else down + 1


def test_rounding_follows_the_rule_for_every_kind_of_value():
    rng = np.random.default_rng(1)
    normal = rng.standard_normal(2000).astype(np.float32) * np.float32(1e3)
    ties = (rng.integers(1, 2**15, 300, dtype=np.uint32) << 16 | 0x8000).view(np.float32)  # exactly halfway
    edges = np.array([0.0, -0.0, 1e-40, -1e-40, np.finfo(np.float32).tiny, np.inf, -np.inf, np.nan,
                      np.finfo(np.float32).max, -np.finfo(np.float32).max, 3.3895314e38, 1.0, -1.0], np.float32)
    x = np.concatenate([normal, ties, -ties, edges])
    got = bf16.round_bf16(x)
    want = np.array([plain_round(v) for v in x], np.uint16)
    assert np.array_equal(got, want)
    out = np.empty((1, x.size + 1), np.uint16)
    bf16.round_rows(x[None, :], out)  # the compiled rounding of the time loops: the same bits, a zero pad
    assert np.array_equal(out[0, :-1], want) and out[0, -1] == 0


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (7, 33, 45), (64, 256, 1024), (3, 700, 40)])
def test_the_reference_is_the_float64_product_within_the_bound_of_bfloat16_inputs(M, K, N):
    rng = np.random.default_rng(M * 1000 + K)
    a = rng.standard_normal((M, K)).astype(np.float32)
    w = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
    c = bf16.reference(a, w)
    exact = a.astype(np.float64) @ w.astype(np.float64)
    scale = np.abs(a.astype(np.float64)) @ np.abs(w.astype(np.float64))
    gamma = K * U / (1 - K * U)
    rel = (1 + 2.0**-9) ** 2 - 1
    assert np.all(np.abs(c - exact) <= (rel + gamma * (1 + rel)) * scale)
    a16 = bf16.widen(bf16.round_bf16(a)).astype(np.float64)
    w16 = bf16.widen(bf16.round_bf16(w)).astype(np.float64)
    assert np.all(np.abs(c - a16 @ w16) <= gamma * (np.abs(a16) @ np.abs(w16)))
    if K > 8:  # and the inputs really were rounded: float32 inputs would be far closer to exact
        assert np.abs(c - exact).max() > 100 * gamma * scale.max() / K


def test_the_reference_accumulates_onto_c_and_flushes_denormals():
    a = np.array([[1e-20, 1e-20]], np.float32)
    w = np.array([[1e-20], [1e-20]], np.float32)
    assert bf16.reference(a, w)[0, 0] == 0  # 2e-40 is denormal: flushed
    c0 = np.array([[1.5]], np.float32)
    one = np.ones((1, 2), np.float32)
    assert bf16.reference(one, np.ones((2, 1), np.float32), c0)[0, 0] == 3.5


@tiles_only
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (5, 7, 37), (8, 16, 32), (9, 255, 33), (64, 256, 1024),
                                   (17, 1100, 70), (3, 2, 200)])
def test_the_tiles_equal_the_reference_bit_for_bit(M, K, N):
    rng = np.random.default_rng(M + K + N)
    a = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((K, N)).astype(np.float32)
    want = bf16.reference(a, w)
    got = bf16.matmul(a, w, np.full((M, N), np.nan, np.float32))  # every element must be written
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    packed = bf16.pack(w)
    for i in range(M):  # row-independent: each row alone gives its bits in the block
        row = bf16.matmul(a[i : i + 1], w, packed=packed)
        assert np.array_equal(row.view(np.uint32), got[i : i + 1].view(np.uint32))


@tiles_only
def test_the_pair_order_is_the_one_the_hardware_uses():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((16, 64)).astype(np.float32)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    a16 = bf16.widen(bf16.round_bf16(a)).astype(np.float64)
    w16 = bf16.widen(bf16.round_bf16(w)).astype(np.float64)
    acc = np.zeros((16, 64), np.float32)
    for k in range(64):  # k in order, even element of each pair first: not what vdpbf16ps does
        acc = (acc.astype(np.float64) + a16[:, k, None] * w16[None, k, :]).astype(np.float32)
    got = bf16.matmul(a, w)
    assert not np.array_equal(acc, got)
    assert np.array_equal(got, bf16.reference(a, w))


@tiles_only
def test_every_tile_is_one_vdpbf16ps_per_row_and_vector():
    code = bf16.assembly()
    assert code.count("vdpbf16ps") == sum(2 * rows for rows in range(1, bf16.MR + 1))


def test_a_cpu_with_avx512_bf16_builds_the_tiles():
    """Where the CPU has AVX512-BF16 the tiles must compile (a skip there would hide a broken kernel)."""
    if not bf16.host_has():
        pytest.skip("this CPU has no AVX512-BF16")
    assert bf16.build().tiles and bf16.microkernels() == bf16.build()


def test_forcing_the_reference(monkeypatch):
    rng = np.random.default_rng(9)
    a = rng.standard_normal((4, 10)).astype(np.float32)
    w = rng.standard_normal((10, 40)).astype(np.float32)
    monkeypatch.setenv("CHARRNN_BF16_REFERENCE", "1")
    assert bf16.microkernels() is None
    forced = bf16.matmul(a, w)
    monkeypatch.delenv("CHARRNN_BF16_REFERENCE")
    assert np.array_equal(forced, bf16.matmul(a, w)) and np.array_equal(forced, bf16.reference(a, w))


def test_pack_lays_out_pairs_of_the_rounded_weight_whatever_its_strides():
    rng = np.random.default_rng(11)
    w = rng.standard_normal((9, 45)).astype(np.float32)
    w[0, 0], w[1, 1], w[2, 2] = 1e-40, np.nan, np.float32(3.3895314e38)
    rounded = bf16.round_bf16(w)
    for operand in (w, np.asfortranarray(w), np.ascontiguousarray(w.T).T):
        panels = bf16.pack(operand)
        assert panels.shape == (2, 5, bf16.NR, 2)
        for k in range(10):
            for n in range(2 * bf16.NR):
                want = rounded[k, n] if k < 9 and n < 45 else 0  # zeros past K and N
                assert panels[n // bf16.NR, k // 2, n % bf16.NR, k % 2] == want


@tiles_only
def test_transposed_operands_give_the_bits_of_contiguous_ones():
    rng = np.random.default_rng(12)
    a_t = rng.standard_normal((40, 13)).astype(np.float32)  # a = a_t.T, (13, 40), as a gradient's d.T
    w_t = rng.standard_normal((50, 40)).astype(np.float32)  # w = w_t.T, (40, 50), as W_ih.T
    got = bf16.matmul(a_t.T, w_t.T)
    want = bf16.reference(np.ascontiguousarray(a_t.T), np.ascontiguousarray(w_t.T))
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
