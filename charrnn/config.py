"""A training run's settings: TrainConfig, its checks, and the automatic settings that fit the data.

Nothing here touches files. `TrainConfig.check` raises ConfigError for values
no run could use; `auto_settings` picks the model size, batch, learning rate,
dropout and schedule a user left open, from the corpus size and the budget.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields

import numpy as np

from . import optim
from .errors import ConfigError

MODES = ("stream", "lines")
TASKS = ("lm", "classify")  # a language model, or a classifier of label<TAB>text lines
NONFINITE = ("stop", "skip")


@dataclass
class TrainConfig:
    # data
    task: str = "lm"                   # "lm": a language model; "classify": label<TAB>text lines (mode "lines")
    mode: str = "stream"               # "stream": one long text; "lines": each non-empty line is an example
    level: str = "char"                # "char" or "word" tokens
    min_count: int = 1                 # rarer tokens become UNK
    max_vocab: int | None = None       # keep at most this many regular tokens (the rest UNK)
    val_frac: float = 0.1              # held-out share when no separate validation file is given
    batch_size: int = 64               # B: parallel streams (stream) or lines per batch (lines)
    seq_len: int = 100                 # T: truncated-BPTT window
    # optimization
    optim: str = "adagrad"             # adagrad, adam, rmsprop or sgd
    lr: float = 0.1                    # peak learning rate (the default optimizer's, as AUTO_LR)
    momentum: float = 0.9              # sgd only
    weight_decay: float = 0.0          # adam only (decoupled)
    clip: float | None = 5.0           # global gradient-norm limit (None: off)
    clip_value: float | None = None    # elementwise gradient limit (None: off)
    schedule: str = "constant"         # "constant" or "cosine" (decay to lr * min_lr_ratio)
    warmup: int = 0                    # steps of linear warm-up
    min_lr_ratio: float = 0.1          # cosine floor as a fraction of lr
    # budgets: training stops at the first one reached (they count the whole run, resumes included)
    max_steps: int | None = None
    max_epochs: float | None = None
    max_time: float | None = None      # seconds of wall time
    # cadence and reproducibility
    eval_every: int = 200              # evaluate and save the latest checkpoint every N steps
    eval_tokens: int | None = 200_000  # validation tokens scored per evaluation (None: all)
    log_every: int = 10                # one log.jsonl line per N steps
    seed: int = 0
    on_nonfinite: str = "stop"         # "stop" or "skip" a step whose loss or gradient is not finite
    threads: int = 2                   # each batch's rows in this many blocks, one thread each (parallel.py);
                                       # a setting, so that a run's numbers never depend on the machine

    def check(self, partial: bool = False) -> None:
        """Raise ConfigError for values no run could use.

        - partial: allow the AUTO_TRAIN_KEYS to be None (still to be chosen by auto_settings)
        """
        if any(getattr(self, k) is None for k in AUTO_TRAIN_KEYS):
            if not partial:
                raise ConfigError(f"{', '.join(AUTO_TRAIN_KEYS)} must be set")
            # check the rest as if the open ones held their plain defaults
            filled = {k: getattr(TrainConfig, k) for k in AUTO_TRAIN_KEYS if getattr(self, k) is None}
            return TrainConfig(**{**asdict(self), **filled}).check()
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose stream or lines")
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose lm or classify")
        if self.task == "classify" and (self.mode != "lines" or self.level != "char"):
            raise ConfigError("--task classify reads one example per line at character level: it takes "
                              "neither --mode stream nor --level word")
        if self.on_nonfinite not in NONFINITE:
            raise ConfigError(f"--on-nonfinite must be stop or skip, got {self.on_nonfinite!r}")
        # types and magnitudes first (a resumed run reads these from a file), so the checks below
        # cannot fail otherwise; every value must also be storable as JSON in the state file
        for name in ("batch_size", "seq_len", "eval_every", "log_every", "min_count", "seed", "warmup",
                     "max_steps", "eval_tokens", "max_vocab", "threads"):
            value = getattr(self, name)
            if value is not None and not (is_number(value, integer=True) and abs(value) < 2**63):
                raise ConfigError(f"{name.replace('_', '-')} must be an integer, got {value!r:.40}")
        for name in ("val_frac", "lr", "momentum", "weight_decay", "clip", "clip_value", "min_lr_ratio",
                     "max_epochs", "max_time"):
            value = getattr(self, name)
            if value is not None and not is_number(value):
                label = "learning rate" if name == "lr" else name.replace("_", "-")
                raise ConfigError(f"{label} must be a finite number, got {value!r:.40}")
        if self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed}")
        if not 1 <= self.threads <= 64:
            raise ConfigError(f"threads must be between 1 and 64, got {self.threads}")
        for name in ("batch_size", "seq_len", "eval_every", "log_every", "min_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
        for name in ("max_steps", "max_epochs", "max_time", "eval_tokens", "max_vocab"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive, got {value}")
        if not 0.0 <= self.val_frac < 1.0:
            raise ConfigError(f"val-frac must be in [0, 1), got {self.val_frac}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        for name in ("clip", "clip_value"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and not math.isnan(value)):
                raise ConfigError(f"{name.replace('_', '-')} must be positive (or 0 for off), got {value}")
        optim.make_optimizer(self.optim, None, **self.optimizer_options())
        optim.learning_rate(0, self.lr, self.schedule or "constant", self.warmup or 0, 1, self.min_lr_ratio)

    def optimizer_options(self) -> dict:
        if self.optim == "sgd":
            return {"momentum": self.momentum}
        if self.optim == "adam":
            return {"weight_decay": self.weight_decay}
        return {}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def parse_duration(value) -> float | None:
    """A duration: '90s', '10m', '1.5h', '2d', plain seconds as text, or a number of seconds -> seconds.

    None stays None; ConfigError for anything else (or a duration that is not positive).
    """
    if value is None:
        return None
    if is_number(value):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", value) if isinstance(value, str) else None
        seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)] \
            if match else 0.0
    if not seconds > 0:
        raise ConfigError(f"{value!r} is not a duration such as 90s, 10m or 1h")
    return seconds


def is_number(value, integer: bool = False) -> bool:
    """A finite int (or float, unless integer), not a bool; True for ints too large for a float only when integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer) if integer else (int, float, np.number)):
        return False
    try:
        return integer or math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


# Options that may change when a run is resumed; the rest define the run.
RESUMABLE = ("max_steps", "max_epochs", "max_time", "eval_every", "eval_tokens", "log_every", "on_nonfinite")


# ---------------------------------------------------------------- defaults that fit the data

# Training speed of a 2-layer LSTM (B 16, T 100) by hidden size, in characters
# per second on the 2-core reference machine. Only used to estimate how many
# passes over the data a time budget buys.
NOMINAL_CHARS_PER_SEC = {128: 40_000, 256: 13_000, 512: 4_000}
# A starting learning rate per optimizer, for batches of 16 to 32 streams.
AUTO_LR = {"adagrad": 0.1, "adam": 5e-3, "rmsprop": 2e-3, "sgd": 0.5}
AUTO_MODEL_KEYS = ("layers", "hidden", "embed", "dropout")
AUTO_TRAIN_KEYS = ("batch_size", "lr", "schedule", "warmup")
AUTO_KEYS = AUTO_MODEL_KEYS + AUTO_TRAIN_KEYS


def auto_settings(n_tokens: int, tconfig: TrainConfig, level: str = "char") -> dict:
    """Model size, batch, learning rate, dropout and schedule for n_tokens and the run's budget.

    Tuned on tinyshakespeare for validation loss per minute of a 2-core CPU
    (bench/quality.py): small batches take more steps per second of data.
    - hidden: 128 below 200 thousand tokens, 256 below 5 million, else 512 (2 layers)
    - batch: 16 streams below 5 million tokens, else 32; lr by optimizer (AUTO_LR)
    - dropout: by the passes over the data the budget buys: none under 3,
      0.1 under 8, else 0.2 (small data seen many times needs it most)
    - schedule: cosine decay over the budget after a 50-step linear warm-up
    Returns a dict with the keys of AUTO_KEYS and "passes" (the estimate used).
    """
    hidden = 128 if n_tokens < 200_000 else 256 if n_tokens < 5_000_000 else 512
    batch = tconfig.batch_size or (16 if n_tokens < 5_000_000 else 32)
    budgets = []
    if tconfig.max_time is not None:
        budgets.append(NOMINAL_CHARS_PER_SEC[hidden] * tconfig.max_time / max(n_tokens, 1))
    if tconfig.max_epochs is not None:
        budgets.append(tconfig.max_epochs)
    if tconfig.max_steps is not None:
        budgets.append(tconfig.max_steps * batch * tconfig.seq_len / max(n_tokens, 1))
    passes = min(budgets) if budgets else 1.0
    dropout = 0.0 if passes < 3 else 0.1 if passes < 8 else 0.2
    warmup = 50 if tconfig.max_steps is None else min(50, tconfig.max_steps // 10)
    return {"layers": 2, "hidden": hidden, "embed": 64 if level == "char" else 128, "dropout": dropout,
            "batch_size": batch, "lr": AUTO_LR.get(tconfig.optim, 2e-3), "schedule": "cosine",
            "warmup": warmup, "passes": passes}



def fill_auto_settings(text: str, val_text: str | None, tconfig: TrainConfig, model_options: dict) -> dict | None:
    """Choose the AUTO_KEYS the user left open (None) in tconfig and model_options, in place.

    - text, val_text: the corpus and the separate validation text (None: val_frac is held out)
    Returns None when nothing was open, else {"keys": the keys chosen, "n_tokens": the training
    tokens they were chosen for, "passes": the passes over them the budget buys}.
    """
    open_keys = [k for k in AUTO_KEYS
                 if (model_options.get(k) if k in model_options else getattr(tconfig, k)) is None]
    if not open_keys:
        return None
    n_tokens = len(text) if val_text is not None else int(len(text) * (1 - tconfig.val_frac))
    auto = auto_settings(n_tokens, tconfig, tconfig.level)
    for key in open_keys:
        if key in model_options:
            model_options[key] = auto[key]
        else:
            setattr(tconfig, key, auto[key])
    return {"keys": open_keys, "n_tokens": n_tokens, "passes": auto["passes"]}
