"""Optimizers against hand-written formulas and torch.optim; state round trips;
gradient clipping; learning-rate schedules."""

import math

import numpy as np
import pytest

from charrnn.core import optim
from charrnn.errors import ConfigError

SHAPES = {"rnn.weight_hh_l0": (4, 3), "head.bias": (5,), "embedding.weight": (2, 3)}


def make_params(dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def make_grads(step, dtype="float64", seed=100):
    rng = np.random.default_rng(seed + step)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def run(opt, params, steps, lr=0.01, dtype="float64"):
    for t in range(steps):
        opt.step(params, make_grads(t, dtype), lr)
    return params


# ---------------------------------------------------------------- hand computations
# Each reference keeps its own state in plain dicts and writes the textbook
# formula out, one element-wise expression per line.


def ref_sgd(params, steps, lr, momentum):
    p = {k: v.copy() for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in p.items()}
    for t in range(steps):
        for k, g in make_grads(t).items():
            buf[k] = momentum * buf[k] + g
            p[k] = p[k] - lr * buf[k]
    return p


def ref_adagrad_min_char_rnn(params, steps, lr):
    # min-char-rnn: mem += dparam * dparam; param += -learning_rate * dparam / np.sqrt(mem + 1e-8)
    p = {k: v.copy() for k, v in params.items()}
    mem = {k: np.zeros_like(v) for k, v in p.items()}
    for t in range(steps):
        for k, dparam in make_grads(t).items():
            mem[k] += dparam * dparam
            p[k] += -lr * dparam / np.sqrt(mem[k] + 1e-8)
    return p


def ref_rmsprop(params, steps, lr, alpha, eps):
    p = {k: v.copy() for k, v in params.items()}
    sq = {k: np.zeros_like(v) for k, v in p.items()}
    for t in range(steps):
        for k, g in make_grads(t).items():
            sq[k] = alpha * sq[k] + (1 - alpha) * g**2
            p[k] = p[k] - lr * g / (np.sqrt(sq[k]) + eps)
    return p


def ref_adam(params, steps, lr, b1, b2, eps, wd):
    p = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t in range(1, steps + 1):
        for k, g in make_grads(t - 1).items():
            p[k] = p[k] * (1 - lr * wd)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g**2
            m_hat = m[k] / (1 - b1**t)
            v_hat = v[k] / (1 - b2**t)
            p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def assert_close(a, b, tol):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=tol, err_msg=k)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_hand_computation(momentum):
    p0 = make_params()
    got = run(optim.SGD(momentum=momentum), {k: v.copy() for k, v in p0.items()}, 3, lr=0.1)
    assert_close(got, ref_sgd(p0, 3, 0.1, momentum), 1e-14)


def test_adagrad_matches_min_char_rnn():
    p0 = make_params()
    got = run(optim.Adagrad(), {k: v.copy() for k, v in p0.items()}, 3, lr=0.1)
    assert_close(got, ref_adagrad_min_char_rnn(p0, 3, 0.1), 1e-14)


def test_rmsprop_matches_hand_computation():
    p0 = make_params()
    got = run(optim.RMSprop(alpha=0.9, eps=1e-6), {k: v.copy() for k, v in p0.items()}, 3, lr=0.01)
    assert_close(got, ref_rmsprop(p0, 3, 0.01, 0.9, 1e-6), 1e-14)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_matches_hand_computation(wd):
    p0 = make_params()
    opt = optim.Adam(beta1=0.8, beta2=0.95, eps=1e-7, weight_decay=wd)
    got = run(opt, {k: v.copy() for k, v in p0.items()}, 3, lr=0.01)
    assert_close(got, ref_adam(p0, 3, 0.01, 0.8, 0.95, 1e-7, wd), 1e-14)


# ---------------------------------------------------------------- torch.optim


TORCH_CASES = [
    ("sgd", dict(momentum=0.9), lambda torch, ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
    ("sgd", dict(), lambda torch, ps: torch.optim.SGD(ps, lr=0.05)),
    ("rmsprop", dict(alpha=0.9, eps=1e-8), lambda torch, ps: torch.optim.RMSprop(ps, lr=0.05, alpha=0.9, eps=1e-8)),
    ("adam", dict(beta1=0.9, beta2=0.999, eps=1e-8), lambda torch, ps: torch.optim.Adam(ps, lr=0.05, eps=1e-8)),
    (
        "adam",
        dict(weight_decay=0.01),
        lambda torch, ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.01, eps=1e-8),
    ),
]


@pytest.mark.parametrize("name,hyper,make_torch", TORCH_CASES)
def test_matches_torch_optim(name, hyper, make_torch):
    torch = pytest.importorskip("torch")
    p0 = make_params()
    ours = {k: v.copy() for k, v in p0.items()}
    theirs = {k: torch.tensor(v.copy(), dtype=torch.float64, requires_grad=True) for k, v in p0.items()}
    topt = make_torch(torch, list(theirs.values()))
    opt = optim.make_optimizer(name, ours, **hyper)
    for t in range(8):
        grads = make_grads(t)
        opt.step(ours, grads, 0.05)
        for k, tp in theirs.items():
            tp.grad = torch.tensor(grads[k])
        topt.step()
    for k in ours:
        np.testing.assert_allclose(ours[k], theirs[k].detach().numpy(), rtol=0, atol=1e-12, err_msg=k)


# ---------------------------------------------------------------- in place, dtype


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_updates_in_place_in_param_dtype(name, dtype):
    params = make_params(dtype)
    ids = {k: id(v) for k, v in params.items()}
    before = {k: v.copy() for k, v in params.items()}
    opt = optim.make_optimizer(name, params)
    run(opt, params, 2, dtype=dtype)
    for k, v in params.items():
        assert id(v) == ids[k] and v.dtype == np.dtype(dtype)
        assert not np.array_equal(v, before[k])
    for key, arr in opt.state_arrays().items():
        if key != "t":
            assert arr.dtype == np.dtype(dtype)


def test_float32_tracks_float64():
    p64, p32 = make_params("float64"), make_params("float32")
    run(optim.Adam(p64), p64, 5, lr=0.01)
    run(optim.Adam(p32), p32, 5, lr=0.01, dtype="float32")
    for k in p64:
        np.testing.assert_allclose(p32[k], p64[k], atol=1e-5)


# ---------------------------------------------------------------- state round trip


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
@pytest.mark.parametrize("lazy", [False, True])
def test_state_round_trip_continues_bit_identically(name, lazy):
    hyper = {"sgd": dict(momentum=0.9)}.get(name, {})
    params = make_params("float32")
    opt = optim.make_optimizer(name, params, **hyper)
    run(opt, params, 3, dtype="float32")
    state = opt.state_arrays()
    assert state["t"].shape == () and state["t"].dtype == np.int64 and int(state["t"]) == 3
    saved_params = {k: v.copy() for k, v in params.items()}

    # A fresh optimizer (allocated from params, or lazily from the arrays) resumes exactly.
    resumed = optim.make_optimizer(name, None if lazy else saved_params, **hyper)
    resumed.load_state_arrays(state)
    assert resumed.t == 3
    for t in range(3, 6):
        g = make_grads(t, "float32")
        opt.step(params, g, 0.01)
        resumed.step(saved_params, g, 0.01)
    for k in params:
        assert np.array_equal(params[k], saved_params[k]), k
    for k, arr in opt.state_arrays().items():
        assert np.array_equal(arr, resumed.state_arrays()[k]), k


def test_state_arrays_are_copies():
    params = make_params()
    opt = optim.Adam(params)
    run(opt, params, 1)
    state = opt.state_arrays()
    snapshot = {k: v.copy() for k, v in state.items()}
    run(opt, params, 1)
    for k in state:
        assert np.array_equal(state[k], snapshot[k])


def test_load_state_arrays_validates():
    params = make_params()
    opt = optim.Adam(params)
    run(opt, params, 2)
    good = opt.state_arrays()

    def broken(**changes):
        arrays = dict(good)
        for k, v in changes.items():
            k = k.replace("__", "/").replace("_dot_", ".")
            if v is None:
                del arrays[k]
            else:
                arrays[k] = v
        return arrays

    cases = [
        broken(**{"m__head_dot_bias": None}),                         # missing
        {**good, "m/extra.weight": np.zeros(3)},                      # extra
        broken(**{"v__head_dot_bias": np.zeros(6)}),                  # shape
        broken(**{"v__head_dot_bias": np.zeros(5, np.float32)}),      # dtype
        broken(**{"v__head_dot_bias": -np.ones(5)}),                  # negative second moment
        broken(t=np.array([2])),                                      # t not 0-d
        broken(t=np.array(2.0)),                                      # t not integer
        broken(t=None),
        "not a dict",
    ]
    fresh = optim.Adam(make_params())
    for arrays in cases:
        with pytest.raises(ValueError):
            fresh.load_state_arrays(arrays)
        assert fresh.t == 0  # nothing changed
    assert all(not v.any() for k, v in fresh.state_arrays().items() if k != "t")
    # A different optimizer's state does not fit.
    with pytest.raises(ValueError):
        optim.RMSprop(make_params()).load_state_arrays(good)


def test_make_optimizer_errors():
    with pytest.raises(ConfigError, match="unknown optimizer"):
        optim.make_optimizer("lbfgs", make_params())
    with pytest.raises(ConfigError, match="no option"):
        optim.make_optimizer("sgd", make_params(), beta1=0.9)
    with pytest.raises(ConfigError):
        optim.make_optimizer("adam", make_params(), beta2=1.0)
    with pytest.raises(ConfigError):
        optim.make_optimizer("rmsprop", make_params(), eps=0)
    assert optim.make_optimizer("adam", make_params()).name == "adam"


def test_step_rejects_mismatched_grads():
    params = make_params()
    opt = optim.SGD(params)
    grads = make_grads(0)
    del grads["head.bias"]
    with pytest.raises(ValueError):
        opt.step(params, grads, 0.1)


# ---------------------------------------------------------------- clipping


def norm_of(grads):
    return math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clip_grad_norm_scales_to_max_norm(dtype):
    grads = make_grads(0, dtype)
    expected = norm_of(grads)
    original = {k: v.copy() for k, v in grads.items()}
    returned = optim.clip_grad_norm(grads, 1.0)
    assert returned == pytest.approx(expected, rel=1e-12)
    assert norm_of(grads) == pytest.approx(1.0, rel=1e-6)
    for k in grads:  # direction kept: one common factor
        np.testing.assert_allclose(grads[k], original[k] / expected, rtol=1e-6)
        assert grads[k].dtype == np.dtype(dtype)


def test_clip_grad_norm_below_threshold_or_disabled_untouched():
    grads = make_grads(0)
    original = {k: v.copy() for k, v in grads.items()}
    n = norm_of(grads)
    for limit in (n * 2, None, 0):
        assert optim.clip_grad_norm(grads, limit) == pytest.approx(n, rel=1e-12)
        for k in grads:
            assert np.array_equal(grads[k], original[k])


def test_clip_grad_norm_non_finite_returned_unscaled():
    grads = make_grads(0)
    grads["head.bias"][1] = np.nan
    original = {k: v.copy() for k, v in grads.items()}
    assert math.isnan(optim.clip_grad_norm(grads, 1.0))
    for k in grads:
        np.testing.assert_array_equal(grads[k], original[k])
    grads["head.bias"][1] = np.inf
    assert optim.clip_grad_norm(grads, 1.0) == math.inf


def test_clip_grad_norm_float64_accumulation():
    # 1e6 float32 ones: float32 running sums would drift; the float64 result is exact.
    grads = {"w": np.ones(10**6, np.float32)}
    assert optim.clip_grad_norm(grads, None) == 1000.0


def test_clip_grad_value():
    grads = {"a": np.array([-3.0, -0.5, 0.5, 3.0]), "b": np.array([[10.0]])}
    optim.clip_grad_value(grads, 1.0)
    assert grads["a"].tolist() == [-1.0, -0.5, 0.5, 1.0] and grads["b"].tolist() == [[1.0]]
    optim.clip_grad_value(grads, None)
    assert grads["a"].tolist() == [-1.0, -0.5, 0.5, 1.0]
    with pytest.raises(ConfigError):
        optim.clip_grad_value(grads, -1.0)
    with pytest.raises(ConfigError):
        optim.clip_grad_norm(grads, -1.0)


# ---------------------------------------------------------------- schedules


def test_constant_schedule_with_warmup():
    lr = [optim.learning_rate(s, 1.0, warmup=4) for s in range(8)]
    assert lr == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert optim.learning_rate(0, 0.3) == 0.3


def test_cosine_schedule():
    base, total, warmup = 2e-3, 100, 10
    lr = [optim.learning_rate(s, base, "cosine", warmup, total, 0.1) for s in range(130)]
    assert lr[0] == pytest.approx(base / warmup)
    assert all(a < b for a, b in zip(lr[:warmup], lr[1:warmup]))  # warmup increases
    assert lr[warmup] == pytest.approx(base)
    assert lr[(warmup + total) // 2] == pytest.approx(base * 0.55)  # halfway: midpoint of base and floor
    assert lr[total] == pytest.approx(base * 0.1)
    decay = lr[warmup : total + 1]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # strictly decreasing
    assert all(x == pytest.approx(base * 0.1) for x in lr[total:])  # stays at the floor
    # No warmup: starts exactly at base.
    assert optim.learning_rate(0, base, "cosine", 0, total) == base
    # Warmup as long as the run: straight to the floor afterwards.
    assert optim.learning_rate(20, base, "cosine", 20, 10) == pytest.approx(base * 0.1)


def test_schedule_errors():
    with pytest.raises(ConfigError):
        optim.learning_rate(0, 1.0, "linear")
    with pytest.raises(ConfigError):
        optim.learning_rate(0, 1.0, "cosine")  # no total_steps
    with pytest.raises(ConfigError):
        optim.learning_rate(-1, 1.0)
    with pytest.raises(ConfigError):
        optim.learning_rate(0, 1.0, warmup=-2)
    with pytest.raises(ConfigError):
        optim.learning_rate(5, 1.0, "cosine", 0, 10, min_ratio=1.5)


def test_the_global_norm_is_the_exact_norm_rounded_within_a_few_ulps():
    """Against math.fsum of the exact float64 squares (float32 squares are exact in float64)."""
    rng = np.random.default_rng(7)
    grads = {f"g{i}": (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3)).astype(np.float32)
             for i, n in enumerate((1, 7, 1000, 100_003))}
    exact = math.sqrt(math.fsum(float(v) ** 2 for g in grads.values() for v in g.astype(np.float64)))
    assert optim.clip_grad_norm(grads, None) == pytest.approx(exact, rel=1e-14)
