"""A training request: one call of `charrnn.train` (or `charrnn train`), its options checked once.

`TrainingRequest.check` takes the options as the API gives them (by their Python names, only those the
user set) and refuses every value and combination no run could use, before the corpus is read or
anything is written: unknown options, what a resumed run cannot change, what a classifier, a built-in
corpus, a folder or a fine-tuned run does not take, and each setting's own limits (TrainConfig.check,
ModelConfig). What it does not hold is filled from config.DEFAULTS, the one table of defaults: the
settings of a fresh run (`tconfig`, `model`) and the overrides of a resumed one (`overrides`) come from
it; a fine-tuned run's model is checked against it once loaded (`fine_tune`). Nothing here reads a
corpus or writes a file (it asks whether the corpus is a folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..core.model import ModelConfig
from ..files import corpora
from ..files.config import (DEFAULT_MAX_TIME, DEFAULTS, MODEL_KEYS, RESUMABLE, SCHEDULE_KEYS, TRAIN_KEYS,
                            WORD_MAX_VOCAB, WORD_MIN_COUNT, TrainConfig, parse_duration)
from ..errors import ConfigError, option
from ..tasks import registry as tasks
from ..tasks.base import Task
from .finetune import ARCHITECTURE, InitFrom, init_model_options

BUDGETS = ("max_steps", "max_epochs", "max_time")


@dataclass
class TrainingRequest:
    """What to train and how: the arguments of `charrnn.train`, checked (see TrainingRequest.check)."""
    corpus_file: str | None = None     # a file or a folder (None: a built-in corpus)
    out: str | None = None             # the run directory (None: checkpoints/<corpus name>, made fresh)
    resume: str | None = None          # continue this run
    val: str | None = None             # a separate validation file
    errors: str | None = None          # invalid bytes: "strict" or "replace" (None: not given)
    builtin: str | None = None         # a built-in corpus by name
    glob: str | None = None            # with a folder: only the files whose names match
    init_from: str | None = None       # fine-tune the model of this run or model file
    extend_vocab: bool = False         # with init_from: add the new text's tokens to its vocabulary
    options: dict = field(default_factory=dict)  # the training options given, by their Python names
    # a fresh run's settings, checked: filled by check (by fine_tune for a fine-tuned run)
    task: Task | None = None            # what it trains (tasks/)
    tconfig: TrainConfig | None = None  # the automatic settings (config.AUTO_TRAIN_KEYS) still None
    model: dict | None = None           # ModelConfig's options; the automatic ones still None

    @classmethod
    def check(cls, **arguments) -> "TrainingRequest":
        """The request, once every option and combination is proven usable; ConfigError names the first
        that is not. max_time may be a duration ("2m"); a clip of 0 means none."""
        request = cls(**arguments)
        options = request.options
        unknown = sorted(set(options) - set(MODEL_KEYS) - set(TRAIN_KEYS))
        if unknown:
            raise ConfigError(f"unknown training option {unknown[0]!r}; see `charrnn train --help`")
        if "max_time" in options:
            options["max_time"] = parse_duration(options["max_time"])
        if options.get("clip") == 0:
            options["clip"] = None
        if request.resume is not None:
            request._check_resume()
        else:
            request._check_fresh()
        return request

    def _check_resume(self) -> None:
        options = self.options
        fixed = sorted(set(options) - set(RESUMABLE) - set(SCHEDULE_KEYS))
        for name in ("extend_vocab", "init_from", "glob", "builtin"):
            if getattr(self, name):
                fixed.insert(0, name)
        for name in ("out", "errors", "val"):
            if getattr(self, name) is not None:
                fixed.insert(0, name)
        if self.corpus_file or fixed:
            what = "a corpus file" if self.corpus_file else option(fixed[0])
            raise ConfigError(f"{what} cannot be given with {option('resume')}: the run keeps its data and "
                              f"settings (only budgets and cadence can change, and {option('lr')}, "
                              f"{option('schedule')} and {option('warmup')} start a new learning-rate schedule)")

    def _check_fresh(self) -> None:
        options = self.options
        self.task = tasks.get(options.get("task", DEFAULTS["task"]))
        self.task.check_request(builtin=self.corpus_file is None, init_from=self.init_from is not None,
                                folder=self.corpus_file is not None and os.path.isdir(self.corpus_file),
                                options=options)  # it sets its own defaults in options
        if self.corpus_file is not None and self.builtin is not None:
            raise ConfigError(f"give a {option('corpus_file')} or {option('builtin')} (a built-in corpus), not both")
        if self.glob is not None and (self.corpus_file is None or not os.path.isdir(self.corpus_file)):
            raise ConfigError(f"{option('glob')} chooses files in a folder: give a folder as {option('corpus_file')}")
        if self.extend_vocab and self.init_from is None:
            raise ConfigError(f"{option('extend_vocab')} extends the vocabulary of the model given by "
                              f"{option('init_from')}")
        if self.init_from is not None and "max_vocab" in options:
            raise ConfigError(f"{option('max_vocab')} cannot be given with {option('init_from')}: the vocabulary is "
                              f"the model's ({option('extend_vocab')} adds the new characters)")
        if self.init_from is None:  # a fine-tuned run's model options are checked against its model (fine_tune)
            self._settings({k: options.get(k, DEFAULTS[k]) for k in MODEL_KEYS})

    # ---------------------------------------------------------------- what the request asks for

    def overrides(self) -> dict:
        """A resumed run's new settings: the options given, and every budget when any is given (budgets
        given now replace the run's own, such as the implicit 5 minutes of a first run)."""
        overrides = dict(self.options)
        if any(k in self.options for k in BUDGETS):
            overrides.update({k: self.options.get(k) for k in BUDGETS})
        return overrides

    @property
    def given_budget(self) -> bool:
        return any(self.options.get(k) is not None for k in BUDGETS)

    def _settings(self, model_options: dict) -> None:
        """Fill and check a fresh run's settings: tconfig (the options given, else the defaults, a budget
        of DEFAULT_MAX_TIME when none is given) and model (model_options)."""
        options = self.options
        mode = options.get("mode")
        if self.builtin is not None and mode is None:
            mode = corpora.lookup(self.builtin).mode
        level = options.get("level", DEFAULTS["level"])
        tconfig = TrainConfig(**{**{k: DEFAULTS[k] for k in TRAIN_KEYS},
                                 **{k: v for k, v in options.items() if k in TRAIN_KEYS},
                                 **({"mode": mode} if mode is not None else {}),
                                 "min_count": options.get("min_count", DEFAULTS["min_count"])})
        if tconfig.min_count is None:
            tconfig.min_count = WORD_MIN_COUNT if level == "word" else 1
        if tconfig.max_vocab is None and level == "word":
            tconfig.max_vocab = WORD_MAX_VOCAB
        if not self.given_budget:
            tconfig.max_time = DEFAULT_MAX_TIME
        tconfig.check(partial=True)
        self.task.check(tconfig)
        ModelConfig(vocab_size=4, **self.task.model_fields(),
                    **{"layers": 1, "hidden": 1, "embed": 1, "dropout": 0.0,
                       **{k: v for k, v in model_options.items() if v is not None}})
        self.tconfig, self.model = tconfig, model_options

    def fine_tune(self, params, base: ModelConfig, vocab, meta, model_file) -> InitFrom:
        """What a fine-tuned run starts from, once the model of init_from (loaded: models.load_checkpoint's
        parts) is proven to fit the options given; fills the settings (the model's architecture and level).
        ConfigError names what does not fit."""
        base_task = tasks.of_model(base, meta, model_file)
        if not base_task.fine_tunes:
            raise ConfigError(f"{model_file} is {base_task.noun}; {option('init_from')} fine-tunes a language model")
        given = {k: v for k, v in self.options.items() if k in MODEL_KEYS}
        for key in ARCHITECTURE:
            if given.get(key) is not None and given[key] != getattr(base, key):
                raise ConfigError(f"{option(key, given[key])} conflicts with the model of {option('init_from')}, "
                                  f"which has {key} {getattr(base, key)}; a fine-tuned run keeps the model's "
                                  f"architecture")
        if "level" in self.options and self.options["level"] != vocab.level:
            raise ConfigError(f"{option('level', self.options['level'])} conflicts with the model of "
                              f"{option('init_from')}, which has a {vocab.level}-level vocabulary")
        self.options["level"] = vocab.level
        self._settings(init_model_options(base, given))
        return InitFrom(params, base, vocab, meta, model_file, extend=self.extend_vocab)

