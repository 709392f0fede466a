"""Each default of a training option is defined once, in the library (config.DEFAULTS, constants.TRAIN_DEFAULTS),
and `charrnn train --help` shows that one; a fresh run takes it; a training request is checked once.

The references: the fields of TrainConfig and ModelConfig (what an old run's files fall back to), the
settings a fresh run saves in its state file, and the help text click prints.
"""

import dataclasses

import click
import pytest

import charrnn
from charrnn import cli
from charrnn.constants import TRAIN_DEFAULTS
from charrnn.core import bf16
from charrnn.core.model import ModelConfig
from charrnn.errors import ConfigError
from charrnn.files import checkpoint, layout
from charrnn.files.config import AUTO_KEYS, DEFAULTS, TrainConfig, auto_threads
from charrnn.runs.request import TrainingRequest
from tiny_runs import invoke, stream_text

# the arguments of `charrnn train` that are not training settings: what to read, where to write, how to talk
NOT_SETTINGS = {"corpus_file", "builtin", "pattern", "val_file", "out", "resume", "no_lock", "quiet", "init_from",
                "extend_vocab", "help"}


def train_options():
    return {p.name: p for p in cli.train.params if isinstance(p, click.Option) and p.name not in NOT_SETTINGS}


def test_every_train_option_shows_the_library_default():
    options = train_options()
    assert set(options) == set(TRAIN_DEFAULTS), "an option of charrnn train without a library default"
    for name, param in options.items():
        assert param.default == TRAIN_DEFAULTS[name], name
    ctx = click.Context(cli.train)
    for name, param in options.items():
        value = TRAIN_DEFAULTS[name]
        if value is None or isinstance(value, bool):
            continue  # automatic, or a flag: the help says so in words
        _, help_text = param.get_help_record(ctx)
        assert f"[default: {value}]" in help_text, (name, help_text)
    assert "--val-frac FLOAT" in invoke(["train", "--help"]).stdout


def test_the_defaults_are_the_settings_classes_own_except_where_chosen_at_the_start():
    model = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    train = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, value in DEFAULTS.items():
        if name in AUTO_KEYS or name in ("min_count", "errors"):
            assert value is None or name == "errors"
        else:
            assert value == (model[name] if name in model else train[name]), name
    assert DEFAULTS["errors"] == "strict"


def test_a_fresh_run_saves_the_defaults_it_was_not_given(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(stream_text(300))
    given = dict(max_steps=1, layers=1, hidden=8, embed=8, dropout=0.0, batch_size=2, seq_len=8, lr=0.1,
                 schedule="constant", warmup=0, eval_every=1)
    out = charrnn.train(str(corpus), str(tmp_path / "run"), **given)
    _, meta = checkpoint.load_state(f"{out}/{layout.STATE_FILE}")
    saved = {**meta["train"], **meta["model"]}
    for name, value in DEFAULTS.items():
        if name in given or name == "errors":
            continue
        # chosen at the start: a character-level run's min_count is 1, the row blocks follow the batch, the
        # products' precision follows the machine (bf16 where it runs the tiles)
        expected = {"min_count": 1, "threads": auto_threads(given["batch_size"]),
                    "precision": "bf16" if bf16.host_has() else "float32"}.get(name, value)
        assert saved[name] == expected, name


@pytest.mark.parametrize("options, message", [
    (dict(resume="r", hidden=8), "hidden= cannot be given with resume="),
    (dict(resume="r", corpus_file="c"), "a corpus file cannot be given with resume="),
    (dict(corpus_file="c", task="classify", init_from="m"), "init_from= fine-tunes a language model"),
    (dict(task="classify"), "task='classify' needs a corpus_file= of label<TAB>text lines"),
    (dict(pool="last"), "pool= needs task='classify'"),
    (dict(corpus_file="c", builtin="python-reference"), "give a corpus_file= or builtin="),
    (dict(glob="*.py"), "glob= chooses files in a folder"),
    (dict(extend_vocab=True), "extend_vocab= extends the vocabulary of the model given by init_from="),
    (dict(init_from="m", max_vocab=5), "max_vocab= cannot be given with init_from="),
    (dict(batch_size=0), "batch_size= must be at least 1"),
    (dict(hidden=-1), "hidden= must be a positive integer"),
    (dict(max_time="soon"), "'soon' is not a duration"),
    (dict(colour="red"), "unknown training option 'colour'"),
])
def test_a_request_is_refused_before_anything_is_read(options, message):
    arguments = {k: options.pop(k) for k in list(options) if k in
                 ("corpus_file", "resume", "init_from", "extend_vocab", "builtin", "glob")}
    with pytest.raises(ConfigError) as caught:
        TrainingRequest.check(**arguments, options=options)
    assert message in str(caught.value)


def test_a_request_fills_the_defaults_and_the_budget():
    request = TrainingRequest.check(options={"level": "word"})
    assert request.tconfig.min_count == 2 and request.tconfig.max_time == 300.0
    assert request.tconfig.max_vocab == 10_000  # a word vocabulary that does not grow with the text
    assert TrainingRequest.check(options={}).tconfig.max_vocab is None  # characters: no cap
    assert TrainingRequest.check(options={"level": "word", "max_vocab": 50_000}).tconfig.max_vocab == 50_000
    assert {k: getattr(request.tconfig, k) for k in ("batch_size", "lr", "eval_every")} == dict.fromkeys(
        ("batch_size", "lr", "eval_every"))
    assert request.model == {k: DEFAULTS[k] for k in request.model}
    request = TrainingRequest.check(options={"max_steps": 3, "min_count": 3, "clip": 0, "max_time": "1m"})
    assert (request.tconfig.min_count, request.tconfig.clip, request.tconfig.max_time) == (3, None, 60.0)
    assert TrainingRequest.check(resume="r", options={"max_steps": 9}).overrides() == \
        {"max_steps": 9, "max_epochs": None, "max_time": None}
