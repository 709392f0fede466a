"""The packed step product (charrnn/core/gemm.py), each variant this CPU executes, against two references.

- A float64 product, with a rounding bound. Each element of c is one chain of
  float32 fused multiply-adds over k, so its error next to the exact product is
  at most gamma_K * (|a| @ |w|), with gamma_K = K u / (1 - K u) and u = 2^-24
  (Higham, Accuracy and Stability of Numerical Algorithms, 3.1). A wrong index,
  a lost chunk or a stray padding column exceed it by orders of magnitude.
- That chain itself, computed exactly in rationals and rounded to float32 after
  each step: every variant (AVX-512 and AVX2, whatever its vector width, MR or
  the k-chunks) gives its bits, so the variants agree with each other bit for
  bit, for every shape, and a run's bits do not depend on which one the CPU has.

On an AVX-512 CPU the AVX2 variant is built as an AVX2-only CPU builds it (no
EVEX code, no mask registers), so both variants run here.
"""

import re
import warnings
from fractions import Fraction

import numpy as np
import pytest

from tiny_runs import TINY, compiled, invoke, without_kernels

gemm = compiled("gemm")

if not gemm.available():
    without_kernels(f"gemm.py's microkernel is not available here: {gemm.unavailable_reason()}")

VARIANTS = gemm.host_variants()
U = 2.0**-24


def product(a, w, isa=None):
    c = np.full((a.shape[0], w.shape[1]), np.nan, np.float32)  # every element must be written
    variant = gemm.build(isa) if isa else None
    gemm.matmul(a, gemm.pack(w, variant and variant.nr), c, variant)
    return c


def to_float32(x: Fraction) -> np.float32:
    """x rounded to the nearest float32, ties to even (normal range): the rounding of one fused multiply-add."""
    if x == 0:
        return np.float32(0)
    e = abs(x.numerator).bit_length() - abs(x.denominator).bit_length()  # 2^(e-1) < |x| < 2^(e+1)
    if abs(x) < Fraction(2) ** e:
        e -= 1  # now 2^e <= |x| < 2^(e+1)
    scaled = x / Fraction(2) ** (e - 23)  # 24 significant bits before the point
    return np.float32(round(scaled) * Fraction(2) ** (e - 23))  # round(Fraction): ties to even; exact


def fma_chain(a, w):
    """c[i, j] = fl(a[i, K-1] w[K-1, j] + fl(... fl(a[i, 0] w[0, j] + 0))), each step rounded once."""
    c = np.empty((a.shape[0], w.shape[1]), np.float32)
    for i in range(a.shape[0]):
        for j in range(w.shape[1]):
            s = Fraction(0)
            for k in range(a.shape[1]):
                s = Fraction(float(to_float32(Fraction(float(a[i, k])) * Fraction(float(w[k, j])) + s)))
            c[i, j] = np.float32(s)
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
@pytest.mark.parametrize("isa", VARIANTS)
def test_matches_the_exact_product_within_rounding(M, K, N, isa):
    rng = np.random.default_rng(M * 1000 + K + N)
    a = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((K, N)).astype(np.float32)
    assert_within_rounding(product(a, w, isa), a, w)


# rows around both tile heights (6 and 8), k past one chunk (256), columns around both panel widths (16, 32)
@pytest.mark.parametrize("M,K,N", [(1, 3, 1), (7, 20, 17), (9, 19, 33), (2, 300, 5)])
@pytest.mark.parametrize("isa", VARIANTS)
def test_each_variant_is_the_in_order_fma_chain_bit_for_bit(M, K, N, isa):
    rng = np.random.default_rng(M * 1000 + K + N)
    a = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((K, N)).astype(np.float32)
    np.testing.assert_array_equal(product(a, w, isa), fma_chain(a, w))


def test_the_fma_chain_reference_rounds_once_per_step():
    # 1 + 2^-24 is a tie between 1 and 1 + 2^-23: even gives 1; a product and its sum round once, not twice
    assert to_float32(1 + Fraction(1, 2**24)) == 1 and to_float32(1 + Fraction(3, 2**24)) == 1 + 2.0**-22
    assert to_float32(Fraction(-5, 3)) == np.float32(-5 / 3)
    a = np.array([[1 + 2.0**-12]], np.float32)
    # (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24: one rounding (fma) ties to even, 1 + 2^-11
    assert fma_chain(a, a)[0, 0] == np.float32(1 + 2.0**-11)


def test_the_host_runs_its_widest_variant_and_both_run_where_avx512_does():
    assert VARIANTS and gemm.microkernels() == gemm.build(VARIANTS[0])
    if "avx512" in VARIANTS:
        assert VARIANTS == ("avx512", "avx2")
    for isa in VARIANTS:
        variant = gemm.build(isa)
        width, mr, _ = gemm.VARIANTS[isa]
        assert (variant.nr, variant.mr, len(variant.tiles)) == (2 * width, mr, mr)


@pytest.mark.parametrize("isa", VARIANTS)
def test_each_variant_is_the_code_its_cpus_run(isa):
    code = gemm.assembly(isa)
    fmas = len(re.findall(r"\bvfmadd\w*ps\b", code))
    assert fmas == sum(2 * rows for rows in range(1, gemm.VARIANTS[isa][1] + 1))  # 2 per row of each tile
    if isa == "avx2":  # nothing an AVX2-only CPU lacks: no 512-bit or upper-16 registers, no mask registers
        assert not re.search(r"%zmm|%[xy]mm(1[6-9]|2\d|3[01])\b|%k[0-7]\b", code)
        assert "vmaskmovps" in code
    else:
        assert "%zmm" in code and re.search(r"\{%k[1-7]\}", code)  # 512-bit vectors, masked stores


@pytest.mark.parametrize("isa", VARIANTS)
def test_a_rows_result_does_not_depend_on_the_other_rows(isa):
    # the bits of row i are the same whether it is computed alone, in a full tile or in a tail:
    # what makes the product's rounding independent of how a batch is cut into blocks
    rng = np.random.default_rng(1)
    a = rng.standard_normal((21, 300)).astype(np.float32)
    w = rng.standard_normal((300, 70)).astype(np.float32)
    together = product(a, w, isa)
    for i in range(21):
        np.testing.assert_array_equal(product(a[i : i + 1], w, isa), together[i : i + 1])


@pytest.mark.parametrize("nr", [None, 16, 32])
def test_packed_panels_hold_the_columns_and_zero_padding(nr):
    w = np.arange(5 * 37, dtype=np.float32).reshape(5, 37)
    panels = gemm.pack(w, nr)
    P, K, NR = panels.shape
    assert K == 5 and P == -(-37 // NR) and NR == (nr or gemm.microkernels().nr)
    unpacked = panels.transpose(1, 0, 2).reshape(5, P * NR)
    np.testing.assert_array_equal(unpacked[:, :37], w)
    assert not unpacked[:, 37:].any()


@pytest.mark.parametrize("isa", VARIANTS)
def test_non_finite_values_stay_in_their_row(isa):
    a = np.ones((10, 4), np.float32)
    a[3, 2] = np.nan
    c = product(a, np.ones((4, 5), np.float32), isa)
    assert np.isnan(c[3]).all()
    assert np.isfinite(np.delete(c, 3, axis=0)).all()


def test_rejects_arrays_it_cannot_read_as_rows():
    w = gemm.pack(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        gemm.matmul(np.ones((4, 3), np.float32).T, w, np.empty((3, 5), np.float32))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        gemm.matmul(np.ones((3, 4)), w, np.empty((3, 5), np.float32))

    with pytest.raises(ValueError, match="do not fit"):  # the tiles write through raw pointers: no stray shape
        gemm.matmul(np.ones((3, 4), np.float32), w, np.empty((3, 40), np.float32))
    with pytest.raises(ValueError, match="do not fit"):
        gemm.matmul(np.ones((3, 5), np.float32), w, np.empty((3, 5), np.float32))
    if "avx2" in VARIANTS and "avx512" in VARIANTS:  # panels packed for one width, read by the other
        with pytest.raises(ValueError, match="do not fit"):
            gemm.matmul(np.ones((3, 4), np.float32), w, np.empty((3, 5), np.float32), gemm.build("avx2"))


# ---------------------------------------------------------------- a machine without the microkernel


@pytest.fixture
def fresh(monkeypatch):
    """gemm as if loaded on another machine: what it built is forgotten before and after the test."""
    def forget():
        gemm.build.cache_clear()
        gemm._build_host.cache_clear()
    forget()
    yield monkeypatch
    monkeypatch.undo()
    forget()


def test_llvm_rejecting_the_code_warns_once_names_why_and_numpy_serves(fresh):
    fresh.setattr(gemm, "_module_ir", lambda *args: "define void @tile1( this is not IR")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert gemm.microkernels() is None and not gemm.available()
        assert gemm.microkernels() is None  # asked again: no second build, no second warning
    assert len(caught) == 1 and caught[0].category is RuntimeWarning
    reason = gemm.unavailable_reason()
    assert reason.startswith(f"LLVM could not compile the {VARIANTS[0]} microkernel (RuntimeError: ")
    assert "\n" not in reason and "error: expected type" in reason  # LLVM's own words, on one line
    assert str(caught[0].message) == (f"the packed step product is unavailable: {reason}; float32 steps use "
                                      f"NumPy's matmul, which is slower")
    with pytest.raises(gemm.MicrokernelError, match="LLVM could not compile"):
        gemm.build("avx2")


def test_a_cpu_without_avx512_runs_the_avx2_tiles_and_one_without_avx2_none_quietly(fresh):
    cpu, features = gemm._host()
    narrower = {name: on and not name.startswith("avx512") for name, on in features.items()}
    fresh.setattr(gemm, "_host", lambda: (cpu, narrower))
    if "avx2" in VARIANTS:
        assert gemm.host_variants() == ("avx2",) and gemm.microkernels().nr == 16
        with pytest.raises(gemm.MicrokernelError, match=f"this CPU [(]{cpu}[)] cannot execute the avx512"):
            gemm.build("avx512")
    gemm._build_host.cache_clear()
    fresh.setattr(gemm, "_host", lambda: ("old", {**narrower, "avx2": False}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a CPU that has no variant is expected: no warning
        assert gemm.host_variants() == () and gemm.microkernels() is None
    assert gemm.unavailable_reason() == "this CPU (old) has neither AVX-512 nor AVX2 with FMA"


def test_training_where_llvm_rejects_the_code_says_why_once_and_trains_on_numpys_product(fresh, corpus_file, tmp_path):
    fresh.setattr(gemm, "_module_ir", lambda *args: "not IR")
    # two row blocks on two threads (batch 2): both ask for the microkernel, which is built and reported once
    code, out, err = invoke(["train", *TINY, corpus_file, "--max-steps", 3, "--threads", 2, "--dtype", "float32",
                             "--out", tmp_path / "run"])
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("Warning: ")]
    assert warned == [f"Warning: the packed step product is unavailable: {gemm.unavailable_reason()}; float32 "
                      f"steps use NumPy's matmul, which is slower"], err
    assert "LLVM could not compile the" in warned[0] and "Traceback" not in err
