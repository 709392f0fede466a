"""Optimizers, gradient clipping and learning-rate schedules.

Parameters, gradients and optimizer state are flat dicts `name -> ndarray`
sharing the same keys (PyTorch's parameter names). Every update is done in
place, in the parameters' own dtype (float32 or float64), through one scratch
buffer per parameter, so a training step allocates no parameter-sized arrays.

Update rules (g gradient, p parameter, t step count from 1):

    SGD     : v = momentum*v + g;                      p -= lr*v     (PyTorch)
    Adagrad : s += g*g;                                p -= lr*g/sqrt(s + eps)   (min-char-rnn)
    RMSprop : v = alpha*v + (1-alpha)*g*g;             p -= lr*g/(sqrt(v) + eps) (PyTorch)
    Adam    : m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
              p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)                 (PyTorch)
              with weight_decay > 0, first p *= 1 - lr*weight_decay             (AdamW)

State for checkpoints is exposed as arrays (`state_arrays`) keyed
"<slot>/<param name>" plus "t", a 0-d int64 step count.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError, option

OPTIMIZERS = ("adam", "adagrad", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine")


def _check_hyper(name: str, value, low: float, high: float | None = None, *, low_open=False, high_open=True):
    """Validate one hyperparameter: a finite real in [low, high) (bounds per flags); returns it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{option(name)} must be a number, got {value!r}")
    value = float(value)
    ok = math.isfinite(value) and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "(" if low_open else "["
        hi = (")" if high_open else "]") if high is not None else ")"
        raise ConfigError(f"{option(name)} must be in {lo}{low}, {high if high is not None else 'inf'}{hi}, got {value}")
    return value


class Optimizer:
    """Base class: owns per-parameter state slots and a scratch buffer per parameter.

    Subclasses set `name`, `slots` (names of their state arrays per parameter)
    and implement `_update(p, g, state, scratch, lr)`.
    """

    name = "optimizer"
    slots: tuple[str, ...] = ()

    def __init__(self, params: dict | None = None):
        """- params: optional dict name -> float ndarray; state is allocated now if given, else on the first step."""
        self.t = 0
        self._state: dict[str, dict[str, np.ndarray]] | None = None  # slot -> name -> array
        self._scratch: dict[str, np.ndarray] = {}
        self._shapes: dict[str, tuple] = {}
        if params is not None:
            self._allocate(params)

    # ------------------------------------------------------------ hyperparameters
    def hyperparams(self) -> dict:
        """Output: the hyperparameters as a JSON-friendly dict (for checkpoint metadata)."""
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------ state
    def _allocate(self, params: dict) -> None:
        for key, p in params.items():
            if not isinstance(p, np.ndarray) or p.dtype not in (np.float32, np.float64):
                raise ValueError(f"parameter {key!r} must be a float32 or float64 ndarray")
        self._state = {slot: {k: np.zeros_like(p) for k, p in params.items()} for slot in self.slots}
        self._scratch = {k: np.empty_like(p) for k, p in params.items()}
        self._shapes = {k: (p.shape, p.dtype) for k, p in params.items()}

    def _check_step_inputs(self, params: dict, grads: dict) -> None:
        if params.keys() != self._shapes.keys() or grads.keys() != self._shapes.keys():
            raise ValueError(
                "params and grads must have the optimizer's parameter names; "
                f"differences: {sorted(set(params) ^ set(self._shapes))} / {sorted(set(grads) ^ set(self._shapes))}"
            )
        for key, (shape, dtype) in self._shapes.items():
            p, g = params[key], grads[key]
            if p.shape != shape or p.dtype != dtype or g.shape != shape:
                raise ValueError(
                    f"{key}: parameter {p.shape} {p.dtype} / gradient {g.shape} do not match "
                    f"the optimizer state {shape} {dtype}"
                )

    def step(self, params: dict, grads: dict, lr: float) -> None:
        """Apply one update in place.

        - params: dict name -> ndarray, modified in place
        - grads: dict name -> ndarray of the same shapes (read only)
        - lr: learning rate for this step
        """
        if self._state is None:
            self._allocate(params)
        self._check_step_inputs(params, grads)
        # Python floats are "weak" scalars in NumPy: float32 arrays stay float32.
        lr = float(lr)
        self.t += 1
        self._begin_step(lr)
        for key, p in params.items():
            state = {slot: self._state[slot][key] for slot in self.slots}
            self._update(p, grads[key], state, self._scratch[key], lr)

    def _begin_step(self, lr: float) -> None:
        """Hook for per-step scalars (bias corrections); called after t is incremented."""

    def _update(self, p, g, state, s, lr) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Output: dict "<slot>/<name>" -> copy of the state array, plus "t" -> 0-d int64 step count.

        Copies, so that the caller can save them while training goes on.
        """
        arrays = {"t": np.array(self.t, dtype=np.int64)}
        if self._state is not None:
            for slot in self.slots:
                for key, arr in self._state[slot].items():
                    arrays[f"{slot}/{key}"] = arr.copy()
        return arrays

    def load_state_arrays(self, arrays: dict) -> None:
        """Restore the state written by `state_arrays`; nothing changes unless all of it is valid.

        - arrays: dict as returned by `state_arrays`
        Raises ValueError, its message written for the user, on missing/extra keys, wrong
        shapes or dtypes, a bad "t", or negative values in a slot that must be non-negative
        (squared-gradient averages). Where the arrays come from (a checkpoint) is the caller's.
        """
        if not isinstance(arrays, dict):
            raise ValueError("optimizer state must be a dict of arrays")
        t = arrays.get("t")
        if (
            not isinstance(t, np.ndarray)
            or t.shape != ()
            or t.dtype.kind not in "iu"
            or int(t) < 0
        ):
            raise ValueError(f"{self.name} state: 't' must be a non-negative 0-d integer array")
        # Expected (shape, dtype) per parameter: from our own state when we have it,
        # else from the arrays themselves (they must agree across slots).
        if self._state is not None:
            expected = dict(self._shapes)
        else:
            expected = {}
            for key, arr in arrays.items():
                if key != "t" and isinstance(arr, np.ndarray) and "/" in key:
                    expected.setdefault(key.split("/", 1)[1], (arr.shape, arr.dtype))
        wanted = {"t"} | {f"{slot}/{k}" for slot in self.slots for k in expected}
        missing, extra = sorted(wanted - set(arrays)), sorted(set(arrays) - wanted)
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
            if extra:
                parts.append("unexpected " + ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""))
            raise ValueError(f"{self.name} optimizer state does not match the model: {'; '.join(parts)}")
        for slot in self.slots:
            for key, (shape, dtype) in expected.items():
                arr = arrays[f"{slot}/{key}"]
                if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != dtype:
                    got = f"{arr.shape} {arr.dtype}" if isinstance(arr, np.ndarray) else type(arr).__name__
                    raise ValueError(
                        f"{self.name} state {slot}/{key}: expected {shape} {np.dtype(dtype)}, got {got}"
                    )
                if dtype not in (np.float32, np.float64):
                    raise ValueError(f"{self.name} state {slot}/{key}: dtype {dtype} is not float32/float64")
                if slot in self._nonnegative_slots and arr.size and not (arr >= 0).all():
                    raise ValueError(f"{self.name} state {slot}/{key} has negative (or NaN) entries")
        if self._state is None:
            self._state = {slot: {k: np.empty(s, d) for k, (s, d) in expected.items()} for slot in self.slots}
            self._scratch = {k: np.empty(s, d) for k, (s, d) in expected.items()}
            self._shapes = expected
        for slot in self.slots:
            for key in expected:
                np.copyto(self._state[slot][key], arrays[f"{slot}/{key}"])
        self.t = int(t)

    _nonnegative_slots: tuple[str, ...] = ()


class SGD(Optimizer):
    """Stochastic gradient descent with optional (heavy-ball) momentum, PyTorch semantics."""

    name = "sgd"

    def __init__(self, params: dict | None = None, *, momentum: float = 0.0):
        """- params: optional dict name -> ndarray (allocates state now)
        - momentum: in [0, 1); 0 keeps no state
        """
        self.momentum = _check_hyper("momentum", momentum, 0.0, 1.0)
        self.slots = ("v",) if self.momentum > 0 else ()
        super().__init__(params)

    def hyperparams(self):
        return {"momentum": self.momentum}

    def _update(self, p, g, state, s, lr):
        if self.momentum > 0:
            v = state["v"]
            v *= self.momentum
            v += g
            g = v
        np.multiply(g, lr, out=s)
        p -= s


class Adagrad(Optimizer):
    """Adagrad as in Karpathy's min-char-rnn: s += g*g; p -= lr * g / sqrt(s + eps)."""

    name = "adagrad"
    slots = ("sum",)
    _nonnegative_slots = ("sum",)

    def __init__(self, params: dict | None = None, *, eps: float = 1e-8):
        """- params: optional dict name -> ndarray (allocates state now)
        - eps: added inside the square root, > 0
        """
        self.eps = _check_hyper("eps", eps, 0.0, low_open=True)
        super().__init__(params)

    def hyperparams(self):
        return {"eps": self.eps}

    def _update(self, p, g, state, s, lr):
        acc = state["sum"]
        np.multiply(g, g, out=s)
        acc += s
        np.add(acc, self.eps, out=s)
        np.sqrt(s, out=s)
        np.divide(g, s, out=s)
        s *= lr
        p -= s


class RMSprop(Optimizer):
    """RMSprop, PyTorch semantics (eps outside the square root, no momentum, not centered)."""

    name = "rmsprop"
    slots = ("v",)
    _nonnegative_slots = ("v",)

    def __init__(self, params: dict | None = None, *, alpha: float = 0.99, eps: float = 1e-8):
        """- params: optional dict name -> ndarray (allocates state now)
        - alpha: decay of the squared-gradient average, in [0, 1)
        - eps: added to the root, > 0
        """
        self.alpha = _check_hyper("alpha", alpha, 0.0, 1.0)
        self.eps = _check_hyper("eps", eps, 0.0, low_open=True)
        super().__init__(params)

    def hyperparams(self):
        return {"alpha": self.alpha, "eps": self.eps}

    def _update(self, p, g, state, s, lr):
        v = state["v"]
        v *= self.alpha
        np.multiply(g, g, out=s)
        s *= 1.0 - self.alpha
        v += s
        np.sqrt(v, out=s)
        s += self.eps
        np.divide(g, s, out=s)
        s *= lr
        p -= s


class Adam(Optimizer):
    """Adam with bias correction, PyTorch semantics; weight_decay > 0 is AdamW's decoupled decay."""

    name = "adam"
    slots = ("m", "v")
    _nonnegative_slots = ("v",)

    def __init__(
        self,
        params: dict | None = None,
        *,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        """- params: optional dict name -> ndarray (allocates state now)
        - beta1, beta2: decay of the first and second moment averages, in [0, 1)
        - eps: added to the bias-corrected root, > 0
        - weight_decay: decoupled decay rate (AdamW), >= 0
        """
        self.beta1 = _check_hyper("beta1", beta1, 0.0, 1.0)
        self.beta2 = _check_hyper("beta2", beta2, 0.0, 1.0)
        self.eps = _check_hyper("eps", eps, 0.0, low_open=True)
        self.weight_decay = _check_hyper("weight_decay", weight_decay, 0.0)
        super().__init__(params)

    def hyperparams(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "weight_decay": self.weight_decay}

    def _begin_step(self, lr):
        self._step_size = lr / (1.0 - self.beta1**self.t)
        self._root_bc2 = math.sqrt(1.0 - self.beta2**self.t)
        self._decay = 1.0 - lr * self.weight_decay

    def _update(self, p, g, state, s, lr):
        m, v = state["m"], state["v"]
        if self.weight_decay > 0:
            p *= self._decay
        # first moment
        m *= self.beta1
        np.multiply(g, 1.0 - self.beta1, out=s)
        m += s
        # second moment
        v *= self.beta2
        np.multiply(g, g, out=s)
        s *= 1.0 - self.beta2
        v += s
        # denominator: sqrt(v_hat) + eps, with v_hat = v / (1 - b2^t)
        np.sqrt(v, out=s)
        s /= self._root_bc2
        s += self.eps
        np.divide(m, s, out=s)
        s *= self._step_size
        p -= s


_CLASSES = {"adam": Adam, "adagrad": Adagrad, "rmsprop": RMSprop, "sgd": SGD}
_HYPER = {
    "adam": ("beta1", "beta2", "eps", "weight_decay"),
    "adagrad": ("eps",),
    "rmsprop": ("alpha", "eps"),
    "sgd": ("momentum",),
}


def make_optimizer(name: str, params: dict | None = None, **hyper) -> Optimizer:
    """Build an optimizer by name.

    - name: one of OPTIMIZERS
    - params: dict name -> ndarray, used to allocate the state (None: on the first step)
    - hyper: that optimizer's hyperparameters (see each class); others are a ConfigError
    Output: the Optimizer. Raises ConfigError for an unknown name or hyperparameter.
    """
    if name not in _CLASSES:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    unknown = sorted(set(hyper) - set(_HYPER[name]))
    if unknown:
        allowed = ", ".join(_HYPER[name])
        raise ConfigError(f"optimizer {name} has no option {', '.join(unknown)} (it takes {allowed})")
    return _CLASSES[name](params, **hyper)


# ---------------------------------------------------------------- clipping


def _global_norm(grads: dict) -> float:
    """L2 norm over all arrays, accumulated in float64.

    float32 squares cannot overflow float64; a float64 gradient past 1e154 gives
    inf, which the caller treats as a non-finite step. Each array's squares are
    summed by NumPy's own (pairwise) sum on this thread, not BLAS's dot: that
    split its sum over OpenBLAS's threads, whose count could change the bits,
    and waking them cost a sixth of a small model's step on a busy machine
    (py-spy, issue 24).
    """
    total = 0.0
    with np.errstate(over="ignore"):
        for g in grads.values():
            total += float(np.square(np.ravel(g), dtype=np.float64).sum())
    return math.sqrt(total)


def clip_grad_norm(grads: dict, max_norm: float | None) -> float:
    """Scale all gradients together so their global L2 norm is at most max_norm.

    - grads: dict name -> ndarray, scaled in place when the norm exceeds max_norm
    - max_norm: the limit; None or 0 disables clipping (the norm is still returned)
    Output: the global norm before clipping (float); a non-finite norm is returned
    without scaling anything, for the caller to act on.
    """
    if max_norm is not None:
        max_norm = _check_hyper("max_norm", max_norm, 0.0) if max_norm != math.inf else math.inf
    norm = _global_norm(grads)
    if max_norm and math.isfinite(norm) and norm > max_norm:
        scale = max_norm / norm
        for g in grads.values():
            g *= scale
    return norm


def clip_grad_value(grads: dict, limit: float | None) -> None:
    """Clip every gradient element to [-limit, limit] in place.

    - grads: dict name -> ndarray, modified in place
    - limit: the bound; None or 0 disables
    """
    if limit is None:
        return
    limit = _check_hyper("limit", limit, 0.0) if limit != math.inf else math.inf
    if limit == 0 or limit == math.inf:
        return
    for g in grads.values():
        np.clip(g, -limit, limit, out=g)


# ---------------------------------------------------------------- schedules


def learning_rate(
    step: int,
    base_lr: float,
    schedule: str = "constant",
    warmup: int = 0,
    total_steps: int | None = None,
    min_ratio: float = 0.1,
    since: tuple | None = None,
    start: int = 0,
) -> float:
    """Learning rate for one step (counted from 0).

    - step: index of the update about to be made, >= 0
    - base_lr: the peak learning rate
    - schedule: "constant" or "cosine"
    - warmup: steps of linear ramp; step k < warmup gets base_lr*(k+1)/warmup,
      so the ramp starts near 0 and reaches base_lr at step warmup-1
    - total_steps: cosine only: the step at which the decay reaches the floor
    - min_ratio: cosine only: floor = base_lr*min_ratio, in [0, 1]
    - since: cosine only: where a resumed run re-aimed the schedule (see cosine_progress)
    - start: the step this schedule starts at (a run continued with a new schedule: `--resume` with
      `--lr`, `--schedule` or `--warmup`); step, total_steps and since count from step 0 of the run, and
      the warm-up and the decay from start. 0 for a run's first schedule
    Output: the learning rate (float). After warmup, cosine decays from base_lr
    (at step == start + warmup) to the floor (at step == total_steps) and stays there.
    """
    if start:
        step -= start
        total_steps = None if total_steps is None else max(1, total_steps - start)
        since = None if since is None else (since[0] - start, since[1])
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    base_lr = _check_hyper("learning rate", base_lr, 0.0)
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
        raise ConfigError(f"{option('warmup')} must be a non-negative integer, got {warmup!r}")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ConfigError(f"step must be a non-negative integer, got {step!r}")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    if since is not None and step >= since[0] and total_steps is None:
        pass  # a re-aimed schedule whose new end is not known yet holds its rate
    elif total_steps is None or isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)) or total_steps < 1:
        raise ConfigError(f"the cosine schedule needs total_steps, a positive integer; got {total_steps!r}")
    min_ratio = _check_hyper("min_ratio", min_ratio, 0.0, 1.0, high_open=False)
    return cosine_lr(cosine_progress(step, warmup, total_steps, since), base_lr, min_ratio)


def cosine_progress(step: int, warmup: int, total_steps: int | None, since: tuple | None = None,
                    start: int = 0) -> float:
    """How far along its decay the cosine schedule is at step, in [0, 1].

    - start: the step the schedule starts at (see learning_rate)
    - since: None, or (step s0, progress p0) where a resumed run's schedule was re-aimed at a new
      total_steps: from s0 on, the progress goes on from p0 to 1 at total_steps, so the learning rate
      continues from where it stood instead of jumping back (total_steps None: it holds at p0)
    """
    if start:
        step -= start
        total_steps = None if total_steps is None else max(1, total_steps - start)
        since = None if since is None else (since[0] - start, since[1])
    if since is not None and step >= since[0]:
        s0, p0 = since
        if total_steps is None:
            return p0
        return min(1.0, p0 + (1.0 - p0) * (step - s0) / max(1, total_steps - s0))
    span = total_steps - warmup
    # A decay span of zero (warmup >= total_steps) goes straight to the floor.
    return 1.0 if span <= 0 else min(1.0, max(0, step - warmup) / span)


def cosine_lr(progress: float, base_lr: float, min_ratio: float) -> float:
    """The cosine schedule's rate at a progress in [0, 1]: base_lr at 0, base_lr * min_ratio at 1."""
    floor = base_lr * min_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
