"""The packed step product (charrnn/core/gemm.py) against a float64 product, with a rounding bound.

Each element of c is one chain of float32 fused multiply-adds over k, so its
error next to the exact product is at most gamma_K * (|a| @ |w|), with
gamma_K = K u / (1 - K u) and u = 2^-24 (Higham, Accuracy and Stability of
Numerical Algorithms, 3.1). The tests assert that bound, which a wrong index,
a lost chunk or a stray padding column exceed by orders of magnitude.
"""

import numpy as np
import pytest

gemm = pytest.importorskip("charrnn.core.gemm")

if not gemm.available():
    pytest.skip("this machine has no AVX2/AVX-512 microkernel", allow_module_level=True)

U = 2.0**-24


def product(a, w):
    c = np.full((a.shape[0], w.shape[1]), np.nan, np.float32)  # every element must be written
    gemm.matmul(a, gemm.pack(w), c)
    return c


def assert_within_rounding(c, a, w):
    a64, w64 = a.astype(np.float64), w.astype(np.float64)
    K = a.shape[1]
    bound = K * U / (1 - K * U) * (np.abs(a64) @ np.abs(w64))
    err = np.abs(c - a64 @ w64)
    assert np.all(err <= bound + 1e-30), f"largest error {err.max():.2e}, bound there {bound.flat[err.argmax()]:.2e}"


# rows around the tile height (8 or 6) and the row block (256); k around the chunk (256);
# columns around the panel width (32 or 16)
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (3, 5, 7), (8, 256, 32), (9, 257, 33), (17, 513, 95),
                                   (32, 256, 1024), (32, 1024, 256), (300, 40, 65), (64, 600, 31)])
def test_matches_the_exact_product_within_rounding(M, K, N):
    rng = np.random.default_rng(M * 1000 + K + N)
    a = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((K, N)).astype(np.float32)
    assert_within_rounding(product(a, w), a, w)


def test_a_rows_result_does_not_depend_on_the_other_rows():
    # the bits of row i are the same whether it is computed alone, in a full tile or in a tail:
    # what makes the product's rounding independent of how a batch is cut into blocks
    rng = np.random.default_rng(1)
    a = rng.standard_normal((21, 300)).astype(np.float32)
    w = rng.standard_normal((300, 70)).astype(np.float32)
    together = product(a, w)
    for i in range(21):
        np.testing.assert_array_equal(product(a[i : i + 1], w), together[i : i + 1])


def test_packed_panels_hold_the_columns_and_zero_padding():
    w = np.arange(5 * 37, dtype=np.float32).reshape(5, 37)
    panels = gemm.pack(w)
    P, K, NR = panels.shape
    assert K == 5 and P == -(-37 // NR)
    unpacked = panels.transpose(1, 0, 2).reshape(5, P * NR)
    np.testing.assert_array_equal(unpacked[:, :37], w)
    assert not unpacked[:, 37:].any()


def test_non_finite_values_stay_in_their_row():
    a = np.ones((10, 4), np.float32)
    a[3, 2] = np.nan
    c = product(a, np.ones((4, 5), np.float32))
    assert np.isnan(c[3]).all()
    assert np.isfinite(np.delete(c, 3, axis=0)).all()


def test_rejects_arrays_it_cannot_read_as_rows():
    w = gemm.pack(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        gemm.matmul(np.ones((4, 3), np.float32).T, w, np.empty((3, 5), np.float32))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        gemm.matmul(np.ones((3, 4)), w, np.empty((3, 5), np.float32))
