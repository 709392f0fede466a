"""The compiled kernels (charrnn/core/kernels.py) against the NumPy reference (charrnn/core/cells.py).

float64 kernels use the exact libm functions, so they must agree with the
reference to rounding (1e-12). float32 kernels compute tanh as a rational
function whose largest error is 3.4e-7 (next to the float64 tanh; float32
rounding alone is 6e-8 near 1), and sigmoid through it. One step's outputs
then differ from the reference by a few times that, and the difference
grows slowly through the recurrence and the sums of a backward pass. The
float32 tolerance is 50 times the approximation's error, relative to each
array's largest entry: 1.7e-5, which a wrong gate or a missing term
(differences of order one) exceeds by orders of magnitude.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from charrnn.core import cells, model
from charrnn.step import inference
from tiny_runs import compiled, make_run, without_kernels

kernels = compiled("kernels")

TANH_ERROR = 3.4e-7
TOLERANCE = {np.float64: 1e-12, np.float32: 50 * TANH_ERROR}


def assert_close(actual, expected, dtype, what):
    scale = max(float(np.abs(expected).max()), 1e-30)
    err = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max()) / scale
    assert err <= TOLERANCE[dtype], f"{what}: relative error {err:.2e}"


@pytest.fixture
def packs(monkeypatch):
    """The weights packed for gemm.py's product while the test runs: the proof that its path was taken."""
    packed = []
    pack = kernels.gemm.pack
    monkeypatch.setattr(kernels.gemm, "pack", lambda w, *args, **kw: packed.append(w.shape) or pack(w, *args, **kw))
    return packed


def layer_inputs(cell, B, T=7, H=16, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    G = cells.GATES[cell]
    xp = rng.standard_normal((T, B, G * H)).astype(dtype)
    state = tuple((0.5 * rng.standard_normal((B, H))).astype(dtype) for _ in range(cells.STATES[cell]))
    W_hh = (rng.standard_normal((G * H, H)) / np.sqrt(H)).astype(dtype)
    b_hh = (0.3 * rng.standard_normal(G * H)).astype(dtype)
    extra = tuple((0.5 * rng.standard_normal(H)).astype(dtype) for _ in cells.EXTRA[cell])
    d_hs = rng.standard_normal((T, B, H)).astype(dtype)
    d_state = tuple(rng.standard_normal((B, H)).astype(dtype) for _ in state)
    return xp, state, W_hh, b_hh, extra, d_hs, d_state


# float32 chunks multiply by the packed weight (gemm.py) in compiled time loops; "matmul"
# forces the Python loops with NumPy's product that float64, short chunks and machines
# without the microkernel run
@pytest.mark.parametrize("dtype,product", [(np.float64, "matmul"), (np.float32, "packed"), (np.float32, "matmul")])
@pytest.mark.parametrize("cell", cells.CELLS)
@pytest.mark.parametrize("B", [1, 3, 64])
def test_sequence_forward_and_backward_match_the_reference(cell, B, dtype, product, monkeypatch, packs):
    if product == "matmul":
        monkeypatch.setattr(kernels, "_PACK_MIN_STEPS", 10**9)
    elif not kernels.gemm.available():
        without_kernels(f"gemm.py's microkernel is not available here: {kernels.gemm.unavailable_reason()}")
    xp, state, W_hh, b_hh, extra, d_hs, d_state = layer_inputs(cell, B, dtype=dtype)
    ref_hs, ref_state, ref_cache = cells.sequence_forward(cell, xp.copy(), state, W_hh, b_hh, extra=extra)
    hs, final, cache = kernels.sequence_forward(cell, xp.copy(), state, W_hh, b_hh, extra=extra)
    assert hs.dtype == dtype and all(s.dtype == dtype for s in final)
    assert_close(hs, ref_hs, dtype, "hidden states")
    for j, (a, b) in enumerate(zip(final, ref_state)):
        assert_close(a, b, dtype, f"final state {j}")
    # the same step run forward-only (sampling, scoring) gives the same numbers as when kept
    hs_fwd, final_fwd, none = kernels.sequence_forward(cell, xp.copy(), state, W_hh, b_hh, keep=False, extra=extra)
    assert none is None
    np.testing.assert_array_equal(hs_fwd, hs)
    for a, b in zip(final_fwd, final):
        np.testing.assert_array_equal(a, b)

    for given in (None, d_state):
        ref = cells.sequence_backward(d_hs, given, ref_cache)
        got = kernels.sequence_backward(d_hs, given, cache)
        assert_close(got[0], ref[0], dtype, "d xp")
        for j, (a, b) in enumerate(zip(got[1], ref[1])):
            assert a.dtype == dtype
            assert_close(a, b, dtype, f"d state0 {j}")
        assert sorted(got[2]) == sorted(ref[2]) == sorted(("W_hh", "b_hh") + cells.EXTRA[cell])
        for name in ref[2]:
            assert got[2][name].dtype == dtype
            assert_close(got[2][name], ref[2][name], dtype, f"d {name}")
    # the product asked for is the one that ran: with "packed" W_hh.T (forward) and W_hh (backward) were
    # packed for gemm.py, with "matmul" nothing was
    G, H = cells.GATES[cell], W_hh.shape[1]
    assert set(packs) == (set() if product == "matmul" else {(H, G * H), (G * H, H)}), packs


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", cells.CELLS)
@pytest.mark.parametrize("masked", [False, True])
def test_the_model_on_kernels_matches_the_model_on_the_reference(cell, dtype, masked, monkeypatch, packs):
    config = model.ModelConfig(vocab_size=9, cell=cell, layers=2, hidden=12, embed=5, dtype=dtype)
    params = model.init_params(config, np.random.default_rng(1))
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 9, (3, 11)), rng.integers(0, 9, (3, 11))
    mask = rng.random((3, 11)) > 0.3 if masked else None
    results = {}
    for backend in ("numpy", "numba"):
        monkeypatch.setenv("CHARRNN_KERNELS", backend)
        model.recurrence.cache_clear()
        assert model.recurrence() is {"numpy": cells, "numba": kernels}[backend]  # not the reference twice
        del packs[:]
        loss, final, cache = model.forward(params, config, x, y, mask)
        grads, d_state0 = model.backward(params, config, cache, d_state=final)
        nll, count, _ = inference.score_chunk(model.prepare(params, config), x, y, mask)
        results[backend] = (loss, final, grads, d_state0, nll / count)
        # float32 steps on the kernels multiply by gemm.py's packed weight where the CPU has the microkernel
        assert bool(packs) == (backend == "numba" and dtype == "float32" and kernels.gemm.available()), packs
    model.recurrence.cache_clear()
    ref, got = results["numpy"], results["numba"]
    kind = np.dtype(dtype).type
    assert abs(got[0] - ref[0]) <= TOLERANCE[kind] * abs(ref[0])
    assert abs(got[4] - ref[4]) <= TOLERANCE[kind] * abs(ref[4])
    for a, b in zip(got[1] + got[3], ref[1] + ref[3]):
        assert_close(a, b, kind, "state")
    for name in params:
        assert_close(got[2][name], ref[2][name], kind, name)


@pytest.mark.parametrize("cell", cells.CELLS)
def test_every_microkernel_variant_gives_the_layer_the_same_bits(cell, monkeypatch, packs):
    # each variant the CPU executes (on AVX-512 also the AVX2 tiles: panels 16 wide, 6 rows a tile) runs
    # the compiled time loops; each product element is the same FMA chain (test_gemm.py), so a layer's
    # outputs and gradients are the same bits whichever variant the machine has
    gemm = kernels.gemm
    if not gemm.available():
        without_kernels(f"gemm.py's microkernel is not available here: {gemm.unavailable_reason()}")
    # H 20: G*H is no multiple of either panel width; B 64 is no multiple of 6
    xp, state, W_hh, b_hh, extra, d_hs, d_state = layer_inputs(cell, 64, H=20, dtype=np.float32)
    results = {}
    for isa in gemm.host_variants():
        monkeypatch.setattr(gemm, "microkernels", lambda isa=isa: gemm.build(isa))
        del packs[:]
        hs, final, cache = kernels.sequence_forward(cell, xp.copy(), state, W_hh, b_hh, extra=extra)
        d_xp, d_state0, grads = kernels.sequence_backward(d_hs, d_state, cache)
        assert packs and all(shape in ((20, cells.GATES[cell] * 20), (cells.GATES[cell] * 20, 20)) for shape in packs)
        results[isa] = [hs, *final, d_xp, *d_state0, *(grads[name] for name in sorted(grads))]
    for isa, arrays in results.items():
        for a, b in zip(arrays, results[gemm.host_variants()[0]], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=isa)


def test_float32_tanh_is_within_its_stated_error_and_keeps_nan():
    import numba

    @numba.njit
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = kernels.tanh(x[i])

    x = np.concatenate([np.linspace(-12, 12, 200_001), [0.0, 1e-30, -1e-30, np.inf, -np.inf]]).astype(np.float32)
    out = np.empty_like(x)
    apply(x, out)
    exact = np.tanh(x.astype(np.float64))
    assert np.abs(out - exact).max() <= TANH_ERROR
    assert np.all(np.abs(out) <= 1.0)
    nan = np.array([np.nan], np.float32)
    apply(nan, out[:1])
    assert np.isnan(out[0])  # a diverging run must stay visible as NaN


def run_python(code, **env):
    environment = {**os.environ, **env}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_without_numba_the_reference_runs_after_a_one_line_notice(tmp_path):
    make_run(tmp_path / "run", "abc ", dtype="float64")  # float64: both paths agree to rounding
    code = ("import sys; sys.modules['numba'] = None\n"  # as if numba could not be imported
            "from charrnn import cli\n"
            f"cli.main(['sample', '--checkpoint', {str(tmp_path / 'run')!r}, '--length', '20', '--seed', '1'])\n")
    status, out, err = run_python(code)
    assert status == 0, err
    notices = [line for line in err.splitlines() if "compiled kernels are unavailable" in line]
    assert len(notices) == 1 and notices[0].startswith("Warning: "), err
    assert "Traceback" not in err
    # the same text as with the kernels (float64: both paths agree to rounding); only the speed differs
    status, with_kernels, _ = run_python(code.split("\n", 1)[1])
    assert status == 0 and len(out) > 0
    assert out == with_kernels


def test_commands_without_model_math_never_import_numba(tmp_path):
    make_run(tmp_path / "run", "abc ")
    for args in (["--help"], ["train", "--help"], ["info", str(tmp_path / "run")]):
        code = ("import sys\nfrom charrnn import cli\n"
                f"try:\n    cli.main({args!r})\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
                "print('numba' in sys.modules)\n")
        status, out, err = run_python(code)
        assert status == 0, err
        assert out.strip().splitlines()[-1] == "False", (args, out)


def test_an_unknown_kernels_choice_is_a_one_line_error(tmp_path):
    make_run(tmp_path / "run", "abc ")
    # -q: only the error, without the line naming the checkpoint that sample prints before it starts
    code = f"from charrnn import cli\ncli.main(['sample', '-q', '--checkpoint', {str(tmp_path / 'run')!r}])\n"
    status, out, err = run_python(code, CHARRNN_KERNELS="fortran")
    assert status == 2 and out == ""  # a setting it cannot take: a usage error, as click treats a bad envvar value
    assert err.strip().splitlines() == ["Error: CHARRNN_KERNELS must be numba or numpy, got 'fortran'"]
