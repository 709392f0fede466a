"""Hostile inputs that once gave a traceback or a misleading message (issue 29, "Tracebacks" and "Messages
that mislead"): a loss beyond the float range, damaged logs, model metadata that lies, weights near the
float range, huge budgets and seeds, two quick Ctrl-Cs, wrong argument types in the Python API, a data
file cut under a trainer, control characters in names and tokens.

Each case runs through the command line (`invoke`, in-process) or the API, and checks the outcome
against what it must be: one line `Error: ...` and its exit status, or a result computed independently.
A child process runs only where the process is what is tested (signals, SIGBUS).
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

import charrnn
from charrnn import cli, progress
from charrnn.files import config, corpus, layout
from charrnn.work import evaluate, loop, sampling
from charrnn.runs import runlog
from charrnn.errors import CharRNNError, CheckpointError, ConfigError
from charrnn.work.evaluate import Score
from tiny_runs import NAMES, PINNED, REFERENCE, TINY, invoke, make_run, stream_text

CHARS = "abcdefgh \n"
VAL = "abc def gh\n" * 20


def one_line_error(result, exit_code=1) -> str:
    """The single `Error: ...` line of a failed command (and nothing on stdout, no traceback)."""
    assert result.exit_code == exit_code, result
    assert result.stdout == "" and "Traceback" not in result.stderr, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as every JSON reader but Python's does."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------- 1. a loss beyond the float range


def test_perplexity_beyond_the_float_range_is_inf_not_an_overflow():
    assert Score(700.0, 1, 0).perplexity == math.exp(700.0)
    assert Score(709.0 * 4, 4, 0).perplexity == math.exp(709.0)
    for loss in (710.0, 1e4, 1e308, math.inf):
        assert Score(loss * 2, 2, 0).perplexity == math.inf
        assert Score(loss * 2, 2, 0).as_dict()["perplexity"] == math.inf
    assert math.isnan(Score(0.0, 0, 0).perplexity)
    assert math.isnan(Score(math.nan, 3, 0).perplexity)


@pytest.fixture
def overconfident(tmp_path):
    """A model sure of 'a' by 2000 nats: every other character costs about 2000 nats (perplexity e**~1800)."""
    def edit(params, vocab):
        params["head.bias"][vocab.encode("a")[0]] = 2000.0
    make_run(tmp_path / "run", CHARS, edit=edit, val_text=VAL)
    return tmp_path / "run"


def test_eval_annotate_and_score_of_a_loss_above_709_nats(overconfident, tmp_path):
    model = charrnn.load(overconfident)
    score = model.score(VAL)
    assert score.loss > 709 and score.perplexity == math.inf
    result = invoke(["eval", "-c", overconfident, "-q"])
    assert result.exit_code == 0, result
    assert "perplexity  inf" in result.stdout
    result = invoke(["eval", "-c", overconfident, "-q", "--json"])
    figures = strict_json(result.stdout)
    assert figures["perplexity"] is None and figures["loss"] > 709
    (tmp_path / "t.txt").write_text(VAL)
    result = invoke(["annotate", tmp_path / "t.txt", "-c", overconfident, "--out", tmp_path / "p.html", "-q"])
    assert result.exit_code == 0 and "Traceback" not in result.stderr, result


# ---------------------------------------------------------------- 2. damaged logs


def write_log(directory, lines: list[bytes]) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, layout.LOG_FILE)
    with open(path, "wb") as f:
        f.write(b"".join(lines))
    return path


GOOD = [b'{"step": 1, "loss": 3.0}\n', b'{"step": 2, "loss": 2.5, "val_loss": 2.6}\n']
DAMAGED_LINES = {
    "invalid UTF-8": b'{"step": 3, "loss": 2.\xff}\n',
    "100,000-deep JSON": b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "deep JSON inside a record": b'{"step": 3, "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n",
    "not JSON": b"step 3 loss 2\n",
    "a 5,000-digit number": b'{"step": 3, "loss": ' + b"9" * 5000 + b"}\n",
    "a step that is no step": b'{"step": "three", "loss": 2.0}\n',
    "a line over the limit": b'{"step": 3, "pad": "' + b"x" * (runlog.MAX_LOG_LINE + 10) + b'"}\n',
}


@pytest.mark.parametrize("what", DAMAGED_LINES)
def test_a_damaged_log_line_is_one_error_naming_it_and_a_torn_last_one_is_skipped(tmp_path, what):
    bad = DAMAGED_LINES[what]
    path = write_log(tmp_path / "mid", [GOOD[0], bad, GOOD[1]])
    with pytest.raises(CheckpointError, match=r"line 2: "):
        runlog.read_log(path)
    line = one_line_error(invoke(["plot", tmp_path / "mid", "--out", tmp_path / "mid.png"]))
    assert "line 2" in line and not (tmp_path / "mid.png").exists()
    # the same line last: what a crash in the middle of a write leaves, passed over
    path = write_log(tmp_path / "last", [*GOOD, bad.rstrip(b"\n")])
    assert [r["step"] for r in runlog.read_log(path)] == [1, 2]


def test_plot_still_draws_a_healthy_log(tmp_path):
    pytest.importorskip("matplotlib")  # the plot extra (.ci/run installs it)
    write_log(tmp_path / "run", GOOD + [b'{"step": 3, "loss": Infinity}\n', b'{"step": 4, "loss": [1, 2]}\n',
                                        b'{"step": 5, "loss": ' + b"9" * 400 + b', "val_loss": {"a": 1}}\n'])
    result = invoke(["plot", tmp_path / "run", "--out", tmp_path / "loss.png"])
    assert result.exit_code == 0, result
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- 3. model metadata that lies, and 10. names


ORIGIN = {"model_file": "/elsewhere/model.safetensors", "step": 3, "vocab": "extended", "base_tokens": 12,
          "added": ["x"], "unk_tokens": 0, "unseen": [], "n_unseen": 0}


def model_with(directory, chars=CHARS, **meta):
    """A run directory whose model file's metadata holds meta on top of what make_run writes."""
    from charrnn.files import checkpoint
    _, _, _, model_file = make_run(directory, chars, val_text=VAL if set(VAL) <= set(chars) else None)
    params, cfg, old = checkpoint.load_model(model_file)
    keep = {k: v for k, v in old.items() if k not in ("format_version", "charrnn_version", "kind", "model")}
    checkpoint.save_model(model_file, params, cfg, {**keep, **meta})
    return directory


LYING_META = {
    "origin.added an int": {"origin": {**ORIGIN, "added": 5}},
    "origin.unk_tokens a string": {"origin": {**ORIGIN, "vocab": "kept", "unk_tokens": "many"}},
    "origin a list": {"origin": [1, 2]},
    "origin.step a float": {"origin": {**ORIGIN, "step": 2.5}},
    "a lone surrogate in the vocabulary": {"tokens": ["<eos>", "<unk>", "<bos>", "a", "\ud800"]},
}


@pytest.mark.parametrize("what", LYING_META)
@pytest.mark.parametrize("command", ["info", "sample", "eval"])
def test_model_metadata_that_lies_is_refused_at_load_by_every_command(tmp_path, what, command):
    meta = LYING_META[what]
    run = model_with(tmp_path / "run", "a\ud800" if "tokens" in meta else CHARS, **meta)
    args = ["info", run] if command == "info" else [command, "-c", run] + (["--seed", 0] if command == "sample" else [])
    line = one_line_error(invoke(args))
    assert str(run) in line
    with pytest.raises(CheckpointError):
        charrnn.load(run)


def test_a_well_formed_origin_is_shown(tmp_path):
    run = model_with(tmp_path / "run", origin=ORIGIN)
    result = invoke(["info", run])
    assert result.exit_code == 0 and "vocabulary extended by 1 tokens" in result.stdout, result


HOSTILE = "\x1b[31m\x07\u202e\x00"
ESCAPED = "\\x1b[31m\\x07\\u202e\\x00"


def test_shown_escapes_what_a_terminal_would_act_on():
    assert cli.shown("plain, é, 日本, \\ and spaces") == "plain, é, 日本, \\ and spaces"
    assert cli.shown("a\nb\tc\r" + HOSTILE + "\ud800\x85\u2028") == \
        "a\\nb\\tc\\r" + ESCAPED + "\\ud800\\x85\\u2028"
    for text in ("a\nb", HOSTILE, "\ud800"):
        cli.shown(text).encode("ascii")  # nothing unprintable is left


def test_control_characters_in_a_vocabulary_are_escaped_by_info(tmp_path):
    run = model_with(tmp_path / "run", chars="ab" + HOSTILE[:-1])
    result = invoke(["info", run])
    assert result.exit_code == 0, result
    assert not any(c in result.stdout for c in "\x1b\x07\u202e")
    assert "\\x1b" in result.stdout and "\\u202e" in result.stdout


def test_a_newline_in_a_file_name_stays_on_the_error_line(tmp_path):
    missing = tmp_path / "no\nsuch.txt"
    result = invoke(["eval", missing])
    assert result.exit_code == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "no\\nsuch.txt" in error[0], result.stderr
    assert not any(line.startswith("such.txt") for line in result.stderr.splitlines())
    binary = tmp_path / ("bad\n" + HOSTILE[:-1] + ".txt")  # exists, but is no text: the library's error
    binary.write_bytes(b"\x00\x01\x02" * 100)
    make_run(tmp_path / "run", CHARS)
    line = one_line_error(invoke(["eval", "-c", tmp_path / "run", binary]))
    assert "bad\\n\\x1b[31m\\x07\\u202e.txt" in line


def test_labels_with_control_characters_are_escaped_by_classify_eval_and_info(tmp_path):
    labels = ["ok", "red\x1b[31m", "rtl\u202e"]
    lines = [f"{labels[i % 3]}\t{NAMES[i % len(NAMES)]}" for i in range(30)]
    (tmp_path / "kinds.tsv").write_text("\n".join(lines) + "\n")
    result = invoke(["train", tmp_path / "kinds.tsv", "--task", "classify", *TINY, "--max-steps", 1,
                     "--out", tmp_path / "run", "-q"])
    assert result.exit_code == 0, result
    (tmp_path / "in.txt").write_text("anna\nbob\n")
    outputs = [invoke(["classify", tmp_path / "in.txt", "-c", tmp_path / "run", "--top-k", 3]),
               invoke(["eval", "-c", tmp_path / "run"]), invoke(["info", tmp_path / "run"])]
    for result in outputs:
        assert result.exit_code == 0, result
        assert "\x1b" not in result.stdout + result.stderr and "\u202e" not in result.stdout + result.stderr
    assert "red\\x1b[31m" in outputs[0].stdout and "rtl\\u202e" in outputs[1].stdout


# ---------------------------------------------------------------- 4. head weights near the float range


@pytest.mark.parametrize("dtype, big", [("float64", 1e308), ("float32", 3e38)])
@pytest.mark.parametrize("where", ["head.weight", "head.bias"])
def test_annotate_of_weights_near_the_float_range_writes_finite_json(tmp_path, dtype, big, where):
    rng = np.random.default_rng(1)

    def edit(params, vocab):
        params[where][:] = big * rng.choice([-1.0, 1.0], params[where].shape)

    make_run(tmp_path / "run", CHARS, dtype=dtype, edit=edit, val_text=VAL)
    page = tmp_path / "page.html"
    result = invoke(["annotate", "-c", tmp_path / "run", "--out", page, "-q"])
    assert result.exit_code == 0 and "Traceback" not in result.stderr, result
    html = page.read_text()
    data = html.split('<script id="data" type="application/json">')[1].split("</script>")[0]
    strict_json(data)  # parses, with no NaN or Infinity
    result = invoke(["annotate", "-c", tmp_path / "run", "--json", "--states", "-q"])
    assert result.exit_code == 0, result
    rows = [strict_json(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(VAL) - 1


def test_json_safe_makes_every_non_finite_number_null():
    value = {"a": [1.0, math.inf, (math.nan, -math.inf)], "b": {"c": np.float64("inf")}, "d": 3, "e": "x"}
    assert evaluate.json_safe(value) == {"a": [1.0, None, [None, None]], "b": {"c": None}, "d": 3, "e": "x"}


# ---------------------------------------------------------------- 5. huge budgets


def test_a_duration_beyond_100_years_is_one_usage_error():
    result = invoke(["train", "--max-time", "1" + "0" * 308, "--out", "never-made"])
    assert result.exit_code == 2 and "100 years" in result.stderr and "Traceback" not in result.stderr
    assert config.parse_duration("36524d") == 36524 * 86400
    for text in ("36526d", "1" + "0" * 308, 1e308):
        with pytest.raises(ConfigError, match="100 years"):
            config.parse_duration(text)
    with pytest.raises(ConfigError, match="100 years"):
        charrnn.train("x", max_time=1e300)


def test_the_schedule_length_of_a_huge_budget_is_bounded_not_an_overflow():
    def run(**budget):
        tc = types.SimpleNamespace(**{"max_steps": None, "max_epochs": None, "max_time": None, **budget})
        return types.SimpleNamespace(tconfig=tc, steps_per_epoch=7, step=5, elapsed=1.0)

    assert loop._schedule_steps(run(max_epochs=1e308), None) == loop.MAX_SCHEDULE_STEPS
    assert loop._schedule_steps(run(max_time=1e308), 1e300) == 5 + loop.MAX_SCHEDULE_STEPS
    assert loop._schedule_steps(run(max_time=3.0e9), 1e6) == 5 + math.floor((3.0e9 - 1.0) * 1e6)
    assert loop._schedule_steps(run(max_epochs=2.5), None) == math.ceil(2.5 * 7)
    assert loop._schedule_steps(run(max_epochs=1e308, max_steps=10), None) == 10


def test_an_eval_cadence_beyond_2_63_says_so(corpus_file, tmp_path):
    result = invoke(["train", corpus_file, *TINY, "--eval-every", 10**21, "--out", tmp_path / "run"])
    assert result.exit_code == 2 and "below 2**63" in result.stderr and "must be an integer" not in result.stderr


# ---------------------------------------------------------------- 6. seeds


@pytest.mark.parametrize("seed", [-1, 2**63, -(2**70)])
def test_a_seed_out_of_range_is_a_usage_error_in_every_command_and_the_api(tmp_path, corpus_file, seed):
    make_run(tmp_path / "run", CHARS)
    line = one_line_error(invoke(["sample", "-c", tmp_path / "run", "--seed", seed]), exit_code=2)
    assert "--seed" in line
    line = one_line_error(invoke(["train", corpus_file, *TINY, "--seed", seed, "--out", tmp_path / "new"]),
                          exit_code=2)
    assert "--seed" in line and not (tmp_path / "new").exists()
    model = charrnn.load(tmp_path / "run")
    for call in (lambda: model.generate(seed=seed), lambda: model.samples(2, seed=seed),
                 lambda: model.stream(seed=seed)):
        with pytest.raises(ConfigError, match="^seed= must"):  # the API names its keyword, not the flag
            call()


def test_the_largest_seed_samples():
    assert config.check_seed(2**63 - 1) == 2**63 - 1
    assert config.check_seed(np.int64(5)) == 5 and config.check_seed(None, optional=True) is None
    for bad in (True, 1.0, "1", None):
        with pytest.raises(ConfigError):
            config.check_seed(bad)


# ---------------------------------------------------------------- 7. two quick Ctrl-Cs


def test_two_sigints_a_millisecond_apart_end_sample_quietly_with_130(tmp_path):
    def endless(params, vocab):
        params["head.bias"][vocab.eos] = -1e4  # a sample that never ends by itself

    make_run(tmp_path / "run", CHARS, layers=1, hidden=8, edit=endless)
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-m", "charrnn", "sample", "-c", tmp_path / "run", "-q",
                                 "--length", "100000000", "--seed", str(attempt)],
                                env={**PINNED, **REFERENCE}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout.read(64)  # sampling has started (the first sample streams)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.001)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        err = err.decode()
        assert proc.returncode == 130, (attempt, proc.returncode, err)
        assert err.strip() in ("Aborted.", "Interrupted."), (attempt, err)  # click says Aborted. on Ctrl-C


# The race above, made certain: the first Ctrl-C comes while the command works, the second while Python
# shuts down (threading._shutdown waits for a thread that is still running), where a KeyboardInterrupt
# printed "Exception ignored in ... threading" or ended the process by the signal.
SECOND_CTRL_C_AT_SHUTDOWN = r"""
import os, signal, threading, time
from charrnn import cli
leaving = threading.Event()

def second_ctrl_c():
    leaving.wait()
    os.kill(os.getpid(), signal.SIGINT)  # the main thread is on its way out, or waiting for this thread
    time.sleep(0.3)

def first_ctrl_c(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(10)  # interrupted

threading.Thread(target=second_ctrl_c).start()
cli.api.load = first_ctrl_c
try:
    cli.main(["sample"])
finally:
    leaving.set()
"""


def test_a_second_sigint_during_shutdown_is_ignored():
    proc = subprocess.run([sys.executable, "-c", SECOND_CTRL_C_AT_SHUTDOWN], env={**PINNED, **REFERENCE},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert proc.stderr.strip() in ("Aborted.", "Interrupted."), proc.stderr


def test_an_in_process_command_gives_its_caller_the_sigint_handler_back(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    make_run(tmp_path / "run", CHARS)
    assert invoke(["sample", "-c", tmp_path / "run", "--length", 5, "--seed", 0]).exit_code == 0
    assert signal.getsignal(signal.SIGINT) is before


# ---------------------------------------------------------------- 8. the Python API's argument types


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_run(root / "lm", CHARS, val_text=VAL)
    lines = [f"{'xy'[i % 2]}\t{NAMES[i % len(NAMES)]}" for i in range(30)]
    (root / "kinds.tsv").write_text("\n".join(lines) + "\n")
    (root / "corpus.txt").write_text(stream_text(200))
    result = invoke(["train", root / "kinds.tsv", "--task", "classify", *TINY, "--max-steps", 1,
                     "--out", root / "clf", "-q"])
    assert result.exit_code == 0, result
    return root, charrnn.load(root / "lm"), charrnn.load(root / "clf")


WRONG = [b"x", ["x"], object(), {"a": 1}, math.nan, True]
TRAIN_OPTIONS = dict(zip([k.lstrip("-").replace("-", "_") for k in TINY[::2]],
                         [int(v) if v.isdigit() else v for v in TINY[1::2]]))


def train_call(key):
    def call(root, lm, clf, value):
        kwargs = {"out": str(root / "never"), "max_steps": 1, **TRAIN_OPTIONS, key: value}
        args = () if key == "corpus_file" else (str(root / "corpus.txt"),)
        return charrnn.train(*args, **kwargs)
    return call


API_CALLS = {
    "load": lambda root, lm, clf, v: charrnn.load(v),
    "generate prime": lambda root, lm, clf, v: lm.generate(prime=v, length=3, seed=1),
    "generate length": lambda root, lm, clf, v: lm.generate(length=v, seed=1),
    "generate temperature": lambda root, lm, clf, v: lm.generate(length=3, temperature=v, seed=1),
    "generate top_k": lambda root, lm, clf, v: lm.generate(length=3, top_k=v, seed=1),
    "generate top_p": lambda root, lm, clf, v: lm.generate(length=3, top_p=v, seed=1),
    "generate seed": lambda root, lm, clf, v: lm.generate(length=3, seed=v),
    "stream seed": lambda root, lm, clf, v: lm.stream(length=3, seed=v),
    "samples n": lambda root, lm, clf, v: lm.samples(v, length=3, seed=1),
    "sample_stream n": lambda root, lm, clf, v: lm.sample_stream(v, length=3, seed=1),
    "score text": lambda root, lm, clf, v: lm.score(v),
    "score name": lambda root, lm, clf, v: lm.score("abc abc", name=v),
    "annotate text": lambda root, lm, clf, v: lm.annotate(v),
    "annotate top_k": lambda root, lm, clf, v: lm.annotate("abc abc", top_k=v),
    "annotate max_chars": lambda root, lm, clf, v: lm.annotate("abc abc", max_chars=v),
    "classify texts": lambda root, lm, clf, v: clf.classify([v]),
    "classify top_k": lambda root, lm, clf, v: clf.classify(["abc"], top_k=v),
    "evaluate text": lambda root, lm, clf, v: clf.evaluate(v),
    "evaluate name": lambda root, lm, clf, v: clf.evaluate("x\tabc\n", name=v),
    **{f"train {key}": train_call(key) for key in (
        "corpus_file", "out", "val", "resume", "init_from", "errors", "lock", "extend_vocab", "on_event",
        "should_stop", "builtin", "glob", "hidden", "layers", "cell", "dropout", "dtype", "lr", "seed",
        "max_time", "max_steps", "max_epochs", "seq_len", "batch_size", "mode", "level", "optim", "clip",
        "val_frac", "eval_every", "log_every", "threads", "patience", "min_count", "max_vocab", "warmup",
        "schedule", "task", "on_nonfinite")},
}


@pytest.mark.parametrize("call", API_CALLS)
def test_a_wrong_argument_type_is_the_librarys_own_error(models, call):
    root, lm, clf = models
    for value in WRONG:
        if value is True and call.startswith("train") and call.split()[1] in ("lock", "extend_vocab"):
            continue  # a flag: True is its type
        with pytest.raises(CharRNNError):
            API_CALLS[call](root, lm, clf, value)
    assert not (root / "never").exists()


def test_load_refuses_bytes_and_lists_and_takes_a_path_object(models):
    root, _, _ = models
    for bad in (os.fsencode(root / "lm"), [str(root / "lm")], "lm\0"):
        with pytest.raises(ConfigError, match="path"):
            charrnn.load(bad)
    assert charrnn.load(root / "lm").config.hidden == 16


@pytest.mark.parametrize("top_k", [0, -1, -5, 1.5])
def test_classify_refuses_a_top_k_below_one(models, top_k):
    _, _, clf = models
    with pytest.raises(ConfigError, match="top_k"):
        clf.classify(["abc", "anna"], top_k=top_k)
    ranked = clf.classify(["abc", "anna"], top_k=1)
    assert [len(pairs) for pairs in ranked] == [1, 1]
    assert [len(pairs) for pairs in clf.classify(["abc"], top_k=10)] == [2]


# ---------------------------------------------------------------- 9. a data file cut under the trainer


CUT_WHILE_TRAINING = r"""
import os, sys, charrnn
from charrnn.errors import CharRNNError
corpus_file, out = sys.argv[1:]
polls = [0]
def cut_after_the_first_save():
    polls[0] += 1
    if polls[0] == 7:
        os.truncate(os.path.join(out, "data", "train.npy"), 200)
    return False
try:
    charrnn.train(corpus_file, out, max_steps=20, eval_every=5, layers=1, hidden=8, embed=8, batch_size=2,
                  seq_len=8, dropout=0.0, schedule="constant", warmup=0, should_stop=cut_after_the_first_save)
except CharRNNError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


def test_a_data_file_cut_while_training_is_an_error_not_a_sigbus(tmp_path):
    (tmp_path / "corpus.txt").write_text(stream_text(3000))
    proc = subprocess.run([sys.executable, "-c", CUT_WHILE_TRAINING, tmp_path / "corpus.txt", tmp_path / "run"],
                          env={**PINNED, **REFERENCE}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)  # SIGBUS was -7
    assert "train.npy was cut to 200 bytes while in use" in proc.stderr
    # and a resume says the data is damaged, in one line
    line = one_line_error(invoke(["train", "--resume", tmp_path / "run"]))
    assert "train.npy" in line


def test_check_mapped_passes_arrays_in_memory_and_intact_files(tmp_path):
    corpus.save_ids(tmp_path / "ids.npy", np.arange(1000, dtype=np.uint16))
    ids = corpus.load_ids(tmp_path / "ids.npy")
    corpus.check_mapped(ids, None, np.arange(3))
    os.truncate(tmp_path / "ids.npy", 1000)
    with pytest.raises(CharRNNError, match="cut to 1,000 bytes"):
        corpus.check_mapped(ids)


# ---------------------------------------------------------------- messages that mislead


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("top_p", [None, 0.99])
def test_a_huge_temperature_samples_uniformly_instead_of_blaming_the_weights(tmp_path, dtype, top_p):
    def edit(params, vocab):
        params["head.bias"][vocab.encode("a")[0]] = 30.0  # at temperature 1, nearly always "a"

    make_run(tmp_path / "run", CHARS, dtype=dtype, edit=edit)
    model = charrnn.load(tmp_path / "run")
    result = invoke(["sample", "-c", tmp_path / "run", "--temp", "1e308", "--seed", 0, "-q"]
                    + (["--top-p", top_p] if top_p else []))
    assert result.exit_code == 0 and "broken" not in result.stderr, result
    # the reference: at this temperature every token but UNK and the start token is equally likely
    probs = sampling.next_token_probs(np.array([[0.0] * 3 + [30.0] + [0.0] * 9]), 1e308, None, top_p, [1, 2])
    assert np.allclose(probs[0, [0] + list(range(3, 13))], 1 / 11)
    tokens = np.concatenate([t for t, _ in sampling.generate(
        model.params, model.config, model.vocab, rng=np.random.default_rng(0), num_samples=200, length=10,
        temperature=1e308, top_p=top_p)])
    share = np.bincount(tokens, minlength=model.vocab.size) / tokens.size
    assert share[1] == share[2] == 0
    assert np.abs(share[[0] + list(range(3, 13))] - 1 / 11).max() < 0.05, share


def test_the_out_of_memory_message_names_the_commands_own_options(tmp_path, monkeypatch):
    make_run(tmp_path / "run", CHARS)

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(sampling, "generate", no_memory)
    line = one_line_error(invoke(["sample", "-c", tmp_path / "run", "-n", 5]))
    assert "out of memory" in line and "-n" in line and "--batch-size" not in line


def test_a_run_stopped_before_its_first_evaluation_has_no_validation_loss_yet(tmp_path, corpus_file, capsys):
    view = progress.TrainingView(quiet=False)
    charrnn.train(str(corpus_file), str(tmp_path / "run"), max_steps=5, on_event=view, should_stop=lambda: True,
                  **TRAIN_OPTIONS)
    err = capsys.readouterr().err
    assert "Done (interrupted): 0 steps" in err and "no validation loss yet" in err
    assert "no validation data" not in err


def test_a_classifier_line_too_long_is_not_told_to_use_stream_mode(tmp_path):
    (tmp_path / "kinds.tsv").write_text("\n".join([f"x\t{'a' * 10_001}", "y\tb", "x\tc", "y\td"]) + "\n")
    line = one_line_error(invoke(["train", tmp_path / "kinds.tsv", "--task", "classify", *TINY, "--max-steps", 1,
                                  "--out", tmp_path / "run"]))
    assert "10,001 characters" in line and "--mode stream" not in line and "a classifier" in line
    (tmp_path / "names.txt").write_text("a" * 10_001 + "\nbob\n")
    line = one_line_error(invoke(["train", tmp_path / "names.txt", "--mode", "lines", *TINY, "--max-steps", 1,
                                  "--out", tmp_path / "lm"]))
    assert "--mode stream" in line


def test_a_damaged_held_out_split_exits_1_and_a_missing_one_is_a_usage_error(tmp_path):
    make_run(tmp_path / "run", CHARS, val_text=VAL)
    (tmp_path / "run" / "data" / "val.npy").write_bytes(b"\x93NUMPY garbage")
    line = one_line_error(invoke(["eval", "-c", tmp_path / "run"]), exit_code=1)
    assert "damaged" in line
    one_line_error(invoke(["annotate", "-c", tmp_path / "run"]), exit_code=1)
    os.remove(tmp_path / "run" / "data" / "val.npy")
    line = one_line_error(invoke(["eval", "-c", tmp_path / "run"]), exit_code=2)
    assert "pass a TEXT_FILE" in line
