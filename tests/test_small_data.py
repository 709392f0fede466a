"""Small corpora and early stopping, on real tiny runs: automatic settings that fit a text of a few
hundred characters, a pass estimate from a measured speed, a run that stops once it only overfits
(keeping the best), and the messages a newcomer reads (eval's unknown-token warning, word level)."""

import json
import math
import os
import re

import numpy as np
import pytest

from charrnn.data import batches
from charrnn.files import checkpoint, layout
from charrnn.work import loop as tr
from charrnn.runs import rundir
from charrnn.files.config import MIN_WINDOWS, TrainConfig, auto_settings
from tiny_runs import invoke, make_run

TINY_MODEL = {"cell": "lstm", "layers": 1, "hidden": 8, "embed": 4, "dropout": 0.0}
# the training text says "a" is followed by "a" or "b" and "b" by "a"; the validation text says "b" is
# followed by "b": the more the model learns the training text, the worse it predicts the validation text
TRAIN, VAL = "aab" * 200, "abb" * 60


def overfitting_run(directory, **kw):
    tconfig = TrainConfig(**{"batch_size": 2, "seq_len": 8, "eval_every": 2, "log_every": 2, "max_steps": 40,
                             "patience": 3, "schedule": "constant", "warmup": 0, "lr": 0.1, **kw})
    return rundir.start_run(directory, TRAIN, VAL, dict(TINY_MODEL), tconfig)


def read_log(directory):
    with open(os.path.join(directory, layout.LOG_FILE), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def english(n_chars, seed=0):
    rng = np.random.default_rng(seed)
    words = "the cat sat on a mat and a dog ran far from home".split()
    return (" ".join(words[i] for i in rng.integers(0, len(words), n_chars)))[: n_chars - 1] + "\n"


# ---------------------------------------------------------------- early stopping


def test_early_stopping_ends_an_overfitting_run_and_keeps_the_best(tmp_path):
    events = list(tr.train(overfitting_run(tmp_path / "r")))
    end = events[-1]
    vals = [(e["step"], e["val_loss"]) for e in events if e["event"] == "eval"]
    best_step, best = min(vals, key=lambda sv: sv[1])
    assert end["reason"] == "early_stop" and end["best_step"] == best_step and end["best_val"] == best
    # it stopped at the third evaluation in a row without a new best, long before its 40 steps
    assert end["step"] == best_step + 3 * 2 < 40
    assert all(v > best for s, v in vals if s > best_step)
    # best.safetensors holds the weights of the best step; model.safetensors the last
    _, _, meta = checkpoint.load_model(tmp_path / "r" / layout.BEST_FILE)
    assert meta["training"]["step"] == best_step and meta["training"]["best_val_loss"] == best
    _, _, meta = checkpoint.load_model(tmp_path / "r" / layout.MODEL_FILE)
    assert meta["training"]["step"] == end["step"]

    # --patience 0: the same run goes on to its step budget
    events = list(tr.train(overfitting_run(tmp_path / "off", patience=0)))
    assert events[-1]["reason"] == "max_steps" and events[-1]["step"] == 40
    vals_off = [(e["step"], e["val_loss"]) for e in events if e["event"] == "eval"]
    assert vals_off[: len(vals)] == vals  # the same run up to where early stopping ended it
    assert min(v for _, v in vals_off) == best  # and it never did better afterwards


def test_early_stopping_waits_for_half_the_learning_rate_decay(tmp_path, monkeypatch):
    """With a cosine schedule a run stops early only once the rate has come half way down to its floor:
    before then, a plateau may be the noise of a high rate that the decay still takes away. (This tiny run
    overfits fast, past the 3% rise that stops a run at once: that clause is off here, so that the wait
    shows; test_the_early_stopping_rule has both.)"""
    monkeypatch.setattr(tr, "OVERFIT", math.inf)
    events = list(tr.train(overfitting_run(tmp_path / "r", schedule="cosine")))
    end = events[-1]
    steps = {e["step"]: e for e in events if e["event"] == "step"}
    vals = [(e["step"], e["val_loss"]) for e in events if e["event"] == "eval"]
    best_step, best = min(vals, key=lambda sv: sv[1])
    assert end["reason"] == "early_stop" and end["best_val"] == best and end["step"] < 40
    half = 0.01 + 0.5 * (0.1 - 0.01)  # the peak 0.1, the cosine floor 0.1 * min_lr_ratio
    next_lr = {s: steps[s + 1]["lr"] if s + 1 in steps else tr.optim.learning_rate(s, 0.1, "cosine", 0, 40, 0.1)
               for s, _ in vals}
    # the rule, replayed: the first evaluation that is the third in a row without a new best, with the next
    # step's rate half way down or lower, or the loss 3% above the best; patience alone would have stopped
    # at the first such evaluation
    since, best_so_far, impatient, stop = 0, math.inf, None, None
    for s, v in vals:
        since, best_so_far = (0, v) if v < best_so_far else (since + 1, best_so_far)
        if since >= 3:
            impatient = impatient or s
            if next_lr[s] <= half or v > tr.OVERFIT * best_so_far:
                stop = stop or s
    assert end["step"] == stop and impatient < stop


def test_the_early_stopping_rule():
    """Patience, then either the rate half way down its schedule or the loss 3% above the best."""
    from types import SimpleNamespace
    from charrnn.files.config import TrainConfig

    def stops(step=10, since=3, last=1.0, **settings):
        tconfig = TrainConfig(**{"patience": 3, "schedule": "cosine", "warmup": 0, "lr": 0.1, **settings})
        run = SimpleNamespace(tconfig=tconfig, evals_since_best=since, step=step, schedule_start=0,
                              schedule_since=None, schedule_steps=100, best_val=1.0, last_val=last)
        return tr._stopped_early(run)

    assert not stops()  # a plateau at a high rate: the decay may still find a new best
    assert not stops(last=1.029) and stops(last=1.031)  # a rise past 3%: only overfitting
    assert not stops(step=49) and stops(step=51)  # the cosine's rate passes half way at step 50
    assert not stops(step=51, since=2) and stops(since=4, step=51)  # patience first
    assert stops(schedule="constant")  # nothing to wait for
    assert not stops(step=10, warmup=20, last=2.0) and stops(step=20, warmup=20, last=2.0)  # not while warming up
    assert not stops(last=None)  # a run resumed from a state saved before the last loss was kept


def test_early_stop_in_the_summary_and_on_resume(tmp_path):
    (tmp_path / "train.txt").write_text(TRAIN)
    (tmp_path / "val.txt").write_text(VAL)
    out = tmp_path / "run"
    options = ["--cell", "lstm", "--layers", 1, "--hidden", 8, "--embed", 4, "--dropout", 0, "--batch-size", 2,
               "--seq-len", 8, "--eval-every", 2, "--max-steps", 40, "--schedule", "constant", "--warmup", 0]
    code, _, err = invoke(["train", tmp_path / "train.txt", "--val", tmp_path / "val.txt", *options,
                           "--patience", 3, "--out", out])
    assert code == 0, err
    done = err.strip().splitlines()[-2]  # the last says what to run next
    step = read_log(out)[-1]["step"]
    assert re.match(rf"Done \(stopped early: no new best val loss in 3 evaluations\): {step} steps in ", done), done
    best_step = step - 6
    assert f"at step {best_step}" in done and "best.safetensors (best: sample and eval use it)" in done
    # resuming as it was: nothing to do, and it says how to go on
    before = (out / layout.STATE_FILE).read_bytes()
    code, _, err = invoke(["train", "--resume", out])
    assert code == 0 and "already stopped early" in err and "--patience" in err
    assert (out / layout.STATE_FILE).read_bytes() == before
    # with early stopping off it trains on to the budget; sample and eval still use the best
    code, _, err = invoke(["train", "--resume", out, "--patience", 0, "-q"])
    assert code == 0 and read_log(out)[-1]["step"] == 40
    code, _, err = invoke(["eval", "-c", out, "--json"])
    assert code == 0 and err.startswith(f"using {out / layout.BEST_FILE} (step {best_step}, val ")


def test_patience_must_be_a_count(tmp_path):
    (tmp_path / "c.txt").write_text(english(400))
    code, _, err = invoke(["train", tmp_path / "c.txt", "--patience", -1, "--max-steps", 2, "--out", tmp_path / "r"])
    assert code == 2 and "patience" in err and not (tmp_path / "r").exists()


# ---------------------------------------------------------------- settings that fit small data


@pytest.mark.parametrize("n", [9, 40, 300, 1_350, 6_401, 50_000, 300_000, 6_000_000])
def test_auto_batch_and_sequence_length_fit_any_stream_length(n):
    auto = auto_settings(n, TrainConfig(batch_size=None, seq_len=None, max_steps=100))
    B, T = auto["batch_size"], auto["seq_len"]
    windows = batches.stream_windows(n, B, T)  # raises when the text is too short for one batch
    assert windows >= MIN_WINDOWS or (B == 1 and T == 8)
    if n >= 100 * 32 * MIN_WINDOWS + 1:
        assert (B, T) == (32, 100)  # large texts keep the tuned defaults
    # a user's batch or length is kept, and the other adapts to it
    assert auto_settings(n, TrainConfig(batch_size=4, seq_len=None, max_steps=1))["batch_size"] == 4
    assert auto_settings(n, TrainConfig(batch_size=None, seq_len=50, max_steps=1))["seq_len"] == 50


@pytest.mark.parametrize("mode", ["stream", "lines"])
@pytest.mark.parametrize("n", [9, 1_350, 50_000, 6_000_000])
def test_an_automatic_batch_is_a_multiple_of_the_mpi_ranks(n, mode):
    def batch(ranks, **options):
        tc = TrainConfig(batch_size=None, seq_len=None, max_steps=100, mode=mode, **options)
        return auto_settings(n, tc, n_lines=max(1, n // 40) if mode == "lines" else None, ranks=ranks)["batch_size"]
    alone = batch(1)
    for ranks in (2, 3, 5, 7, 64):
        # the largest multiple of the ranks not above what one process would take, or one row per rank
        expect = max(ranks, alone // ranks * ranks)
        assert batch(ranks) == expect and expect % ranks == 0, (ranks, alone)
    tc = TrainConfig(batch_size=4, seq_len=None, max_steps=100, mode=mode)  # a given batch is the user's
    assert auto_settings(n, tc, n_lines=max(1, n // 40), ranks=3)["batch_size"] == 4


def test_auto_model_size_grows_with_the_corpus():
    sizes = [auto_settings(n, TrainConfig(batch_size=None, seq_len=None, max_steps=1))
             for n in (300, 19_999, 20_000, 199_999, 200_000, 5_000_000)]
    assert [(a["layers"], a["hidden"]) for a in sizes] == [(1, 64), (1, 64), (2, 128), (2, 128), (2, 256), (2, 512)]


def test_the_pass_estimate_uses_the_speed_it_is_given():
    tc = TrainConfig(batch_size=None, seq_len=None, max_time=60.0)
    nominal = auto_settings(30_000, tc)
    measured = auto_settings(30_000, tc, chars_per_sec=1_000)
    assert not nominal["speed_measured"] and measured["speed_measured"]
    assert measured["passes"] == pytest.approx(1_000 * 60 / 30_000) and measured["dropout"] == 0.0
    assert nominal["passes"] > 16 and nominal["dropout"] == 0.3
    # lines mode: a step budget buys batch lines per step, not batch x seq_len tokens
    lines = auto_settings(8_000, TrainConfig(mode="lines", batch_size=None, seq_len=None, max_steps=100),
                          n_lines=1_000)
    assert lines["passes"] == pytest.approx(100 * 32 / 1_000)


def test_measured_speed_is_a_positive_rate():
    from charrnn.core.model import ModelConfig
    speed = tr.measure_speed(ModelConfig(vocab_size=12, **TINY_MODEL), TrainConfig(batch_size=2, seq_len=8),
                             seconds=0.05)
    assert speed > 0 and math.isfinite(speed)


@pytest.mark.parametrize("n_chars", [300, 1_500])
def test_a_few_hundred_characters_train_with_every_default(tmp_path, n_chars):
    (tmp_path / "small.txt").write_text(english(n_chars))
    out = tmp_path / "run"
    code, _, err = invoke(["train", tmp_path / "small.txt", "--max-time", "1s", "--out", out])
    assert code == 0, err
    settings = err.splitlines()[0]
    n_train = int(n_chars * 0.9)
    assert settings.startswith(f"Settings for {n_train:,} characters and about ")
    assert re.search(r"passes over them \(at [\d,]+ tokens/s, measured\)", settings), settings
    _, meta = checkpoint.load_state(out / layout.STATE_FILE)
    B, T = meta["train"]["batch_size"], meta["train"]["seq_len"]
    assert batches.stream_windows(n_train, B, T) >= MIN_WINDOWS
    assert meta["model"]["hidden"] == 64 and meta["model"]["layers"] == 1
    assert math.isfinite(meta["progress"]["best_val"])


def test_a_step_budget_needs_no_speed(tmp_path):
    (tmp_path / "small.txt").write_text(english(2_000))
    code, _, err = invoke(["train", tmp_path / "small.txt", "--max-steps", 3, "--out", tmp_path / "run"])
    assert code == 0, err
    assert "passes over them (from the budget)" in err.splitlines()[0]


# ---------------------------------------------------------------- messages


def test_eval_warns_when_many_tokens_are_unknown(tmp_path):
    make_run(tmp_path / "run", "abc \n")
    (tmp_path / "known.txt").write_text("abc cab bca " * 20)
    (tmp_path / "odd.txt").write_text("abc xyz qrs " * 20)
    code, out, err = invoke(["eval", tmp_path / "known.txt", "-c", tmp_path / "run", "-q"])
    assert code == 0 and err == ""
    code, out, err = invoke(["eval", tmp_path / "odd.txt", "-c", tmp_path / "run", "-q"])
    scored = 12 * 20 - 1
    assert code == 0 and "perplexity" in out
    assert err.startswith(f"Warning: 120 of the {scored:,} tokens scored ({120 / scored:.1%}) are not in the "
                          f"model's vocabulary. Each is scored as the model's probability of its unknown token"), err


def test_word_level_says_tokens_and_info_shows_whitespace_escaped(tmp_path):
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat and a dog ran far from home".split()
    text = "\n".join(" ".join(words[i] for i in rng.integers(0, len(words), 8)) for _ in range(80)) + "\n"
    (tmp_path / "c.txt").write_text(text)
    out = tmp_path / "run"
    code, _, err = invoke(["train", tmp_path / "c.txt", "--level", "word", "--max-steps", 2, "--out", out])
    assert code == 0, err
    assert err.startswith("Settings for ") and " word-level tokens and about " in err.splitlines()[0]
    assert "characters" not in err.splitlines()[0]
    code, out_text, _ = invoke(["info", out])
    row = next(line for line in out_text.splitlines() if line.startswith("tokens"))
    assert row.split(None, 1)[1].startswith("a and cat dog far from home mat on ran sat the;")
    assert "whitespace tokens: '\\n' ' '" in row
