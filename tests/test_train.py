"""The training loop (charrnn.loop) end to end on tiny models: exact resume,
budgets, the JSONL log, checkpoints of the latest and best model, learning,
non-finite steps, and refusals that leave nothing behind."""

import math
import os

import numpy as np
import pytest
import safetensors.numpy

from charrnn.files import checkpoint, layout
from charrnn.work import loop as tr
from charrnn.core import optim
from charrnn.runs import rundir
from charrnn.tasks import registry as tasks
from charrnn.files.config import TrainConfig
from charrnn.errors import ConfigError, CorpusError, TrainingError
from tiny_runs import NAMES, read_log, stream_text


def lines_text():
    return "\n".join(NAMES + [n.upper() for n in NAMES[:14]]) + "\n"


def model_options(**kw):
    return {"cell": "lstm", "layers": 1, "hidden": 12, "embed": 8, **kw}


def tconfig(**kw):
    base = {"batch_size": 3, "seq_len": 8, "eval_every": 4, "log_every": 2, "max_steps": 12}
    return TrainConfig(**{**base, **kw})


def run_all(run, should_stop=lambda: False):
    return list(tr.train(run, should_stop))


def assert_same_state(dir_a, dir_b):
    a, meta_a = checkpoint.load_state(os.path.join(dir_a, layout.STATE_FILE))
    b, meta_b = checkpoint.load_state(os.path.join(dir_b, layout.STATE_FILE))
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name]), f"{name} differs"
    assert meta_a["progress"]["step"] == meta_b["progress"]["step"]
    # an interrupted run evaluates once more, where it stopped, so the two runs' best
    # validation losses can differ; every evaluation they share must agree exactly,
    # and each run's best must be the least of its own evaluations
    vals = [{r["step"]: r["val_loss"] for r in read_log(d) if "val_loss" in r} for d in (dir_a, dir_b)]
    for step in vals[0].keys() & vals[1].keys():
        assert vals[0][step] == vals[1][step], f"validation loss at step {step} differs"
    for meta, val in zip((meta_a, meta_b), vals):
        assert meta["progress"]["best_val"] == min(val.values())
    pa, _, _ = checkpoint.load_model(os.path.join(dir_a, layout.MODEL_FILE))
    pb, _, _ = checkpoint.load_model(os.path.join(dir_b, layout.MODEL_FILE))
    for name in pa:
        assert np.array_equal(pa[name], pb[name]), f"model {name} differs"


# The combinations exercise what resume must restore: carried hidden state and
# epoch resets (stream), the per-epoch line order (lines), optimizer slots and
# step counts, dropout masks, and the cosine schedule's span.
RESUME_CASES = [
    ("stream", dict(cell="lstm", layers=2, dropout=0.25), dict(optim="adam", schedule="cosine", warmup=3)),
    ("stream", dict(cell="gru"), dict(optim="sgd", momentum=0.9, lr=0.05, clip_value=0.5)),
    ("lines", dict(cell="lstm", layers=2, dropout=0.25), dict(optim="rmsprop", schedule="cosine", warmup=2)),
    ("lines", dict(cell="rnn", dtype="float64"), dict(optim="adagrad", lr=0.05)),
]


def resume_corpus(mode):
    # stream: 11 windows per epoch (B=3, T=8), lines: 9 batches per epoch, so 16 steps cross an epoch
    return stream_text(n_words=54) if mode == "stream" else lines_text()


@pytest.mark.parametrize("mode, model_kw, train_kw", RESUME_CASES)
def test_interrupted_run_resumes_bit_exactly(tmp_path, mode, model_kw, train_kw):
    text = resume_corpus(mode)
    whole = rundir.start_run(tmp_path / "whole", text, None, model_options(**model_kw),
                         tconfig(mode=mode, max_steps=16, **train_kw))
    assert whole.steps_per_epoch < 16
    run_all(whole)

    part = rundir.start_run(tmp_path / "part", text, None, model_options(**model_kw),
                        tconfig(mode=mode, max_steps=16, **train_kw))
    events = run_all(part, should_stop=lambda: part.step >= 5)
    assert events[-1]["event"] == "end" and events[-1]["reason"] == "interrupted"
    _, meta = checkpoint.load_state(tmp_path / "part" / layout.STATE_FILE)
    assert meta["progress"]["step"] == 5

    resumed = rundir.resume_run(tmp_path / "part")
    assert resumed.step == 5
    events = run_all(resumed)
    assert events[-1]["reason"] == "max_steps" and events[-1]["step"] == 16
    assert_same_state(tmp_path / "whole", tmp_path / "part")


@pytest.mark.parametrize("mode", ["stream", "lines"])
def test_resume_from_a_periodic_save_after_a_crash_is_exact(tmp_path, mode):
    """A process killed between saves resumes from the last --eval-every save, exactly."""
    text = resume_corpus(mode)
    kw = dict(mode=mode, max_steps=14, optim="adam", schedule="cosine", warmup=2)
    whole = rundir.start_run(tmp_path / "whole", text, None, model_options(), tconfig(**kw))
    run_all(whole)

    crashed = rundir.start_run(tmp_path / "crashed", text, None, model_options(), tconfig(**kw))
    events = tr.train(crashed)
    for event in events:  # abandon the generator after step 6: the last save is step 4's
        if event["event"] == "step" and event["step"] == 6:
            break
    events.close()
    resumed = rundir.resume_run(tmp_path / "crashed")
    assert resumed.step == 4
    run_all(resumed)
    assert_same_state(tmp_path / "whole", tmp_path / "crashed")


def test_log_lines_after_resume_match_an_uninterrupted_run(tmp_path):
    """Losses already written to the log are not averaged into the next line again after a resume."""
    text = stream_text(60)
    run_all(rundir.start_run(tmp_path / "a", text, None, model_options(), tconfig(max_steps=12)))
    run_all(rundir.start_run(tmp_path / "b", text, None, model_options(), tconfig(max_steps=4)))
    run_all(rundir.resume_run(tmp_path / "b", {"max_steps": 12}))

    def comparable(records):
        return [{k: v for k, v in r.items() if k not in ("elapsed", "chars_per_sec")} for r in records]
    log_a, log_b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["step"] for r in log_b] == [2, 4, 6, 8, 10, 12]
    assert comparable(log_a) == comparable(log_b)


def test_log_records_and_final_evaluation(tmp_path):
    run = rundir.start_run(tmp_path / "r", stream_text(60), None, model_options(),
                       tconfig(max_steps=11, eval_every=4, log_every=3))
    events = run_all(run)
    log = read_log(tmp_path / "r")
    # every log_every steps, every eval_every steps, and always the last step
    assert [r["step"] for r in log] == [3, 4, 6, 8, 9, 11]
    for r in log:
        for key in ("step", "epoch", "loss", "lr", "grad_norm", "chars_per_sec", "elapsed"):
            assert isinstance(r[key], float if key != "step" else int), key
            assert math.isfinite(r[key])
        assert r["epoch"] == pytest.approx(r["step"] / run.steps_per_epoch)
        assert ("val_loss" in r) == (r["step"] in (4, 8, 11))
    assert [r["elapsed"] for r in log] == sorted(r["elapsed"] for r in log)
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [4, 8, 11]
    assert [e["val_loss"] for e in evals] == [r["val_loss"] for r in log if "val_loss" in r]
    end = events[-1]
    assert end["val_loss"] == evals[-1]["val_loss"]
    assert end["best_val"] == min(e["val_loss"] for e in evals)
    # the mean loss of a line covers exactly the steps since the previous line
    steps = {e["step"]: e["loss"] for e in events if e["event"] == "step"}
    assert log[0]["loss"] == pytest.approx(np.mean([steps[1], steps[2], steps[3]]))
    assert log[1]["loss"] == pytest.approx(steps[4])
    assert log[-1]["loss"] == pytest.approx(np.mean([steps[10], steps[11]]))


def test_best_checkpoint_holds_the_lowest_validation_loss(tmp_path):
    run = rundir.start_run(tmp_path / "r", "abc" * 200, None, model_options(),
                       tconfig(max_steps=30, eval_every=5, lr=0.02))
    run_all(run)
    vals = [r["val_loss"] for r in read_log(tmp_path / "r") if "val_loss" in r]
    best_params, config, meta = checkpoint.load_model(tmp_path / "r" / layout.BEST_FILE)
    assert meta["training"]["best_val_loss"] == min(vals)
    run.params = best_params
    assert tr.validation_loss(run) == pytest.approx(min(vals), rel=1e-6)
    # the latest model is self-contained: plain safetensors, PyTorch names, vocabulary in the metadata
    tensors = safetensors.numpy.load_file(tmp_path / "r" / layout.MODEL_FILE)
    assert {"embedding.weight", "rnn.weight_ih_l0", "head.weight", "head.bias"} <= set(tensors)
    _, config, meta = checkpoint.load_model(tmp_path / "r" / layout.MODEL_FILE)
    assert meta["tokens"][3:] == ["a", "b", "c"]
    assert meta["data"]["mode"] == "stream" and meta["level"] == "char"
    assert config.vocab_size == len(meta["tokens"])


def test_validation_loss_falls_on_a_learnable_corpus(tmp_path):
    run = rundir.start_run(tmp_path / "r", "abc" * 300, None, model_options(),
                       tconfig(batch_size=4, seq_len=12, max_steps=100, eval_every=20, log_every=20, lr=0.1))
    initial = tr.validation_loss(run)
    assert initial == pytest.approx(math.log(run.vocab.size), abs=0.5)
    vals = [e["val_loss"] for e in run_all(run) if e["event"] == "eval"]
    assert len(vals) == 5
    assert vals[-1] < vals[0] < initial
    assert vals[-1] < 0.35  # the next character is all but certain


def test_budgets_count_the_whole_run(tmp_path):
    text = stream_text(60)
    run = rundir.start_run(tmp_path / "r", text, None, model_options(), tconfig(max_steps=5))
    assert run_all(run)[-1]["step"] == 5
    run = rundir.resume_run(tmp_path / "r", {"max_steps": 9})
    events = run_all(run)
    assert sum(e["event"] == "step" for e in events) == 4
    assert events[-1]["step"] == 9

    run = rundir.start_run(tmp_path / "e", text, None, model_options(), tconfig(max_steps=None, max_epochs=1.5))
    events = run_all(run)
    assert events[-1]["reason"] == "max_epochs"
    assert events[-1]["step"] == math.ceil(1.5 * run.steps_per_epoch)

    run = rundir.start_run(tmp_path / "t", text, None, model_options(), tconfig(max_steps=None, max_time=0.3))
    events = run_all(run)
    assert events[-1]["reason"] == "max_time"
    assert events[-1]["elapsed"] >= 0.3
    _, meta = checkpoint.load_state(tmp_path / "t" / layout.STATE_FILE)
    assert meta["progress"]["elapsed"] == events[-1]["elapsed"]


def test_resume_at_a_reached_budget_writes_nothing(tmp_path):
    run_all(rundir.start_run(tmp_path / "r", stream_text(60), None, model_options(), tconfig(max_steps=6)))
    before = {name: (tmp_path / "r" / name).read_bytes() for name in os.listdir(tmp_path / "r") if name != "data"}
    events = run_all(rundir.resume_run(tmp_path / "r", {"max_steps": 6}))
    assert [e["event"] for e in events] == ["start", "end"]
    assert events[-1]["step"] == 6
    after = {name: (tmp_path / "r" / name).read_bytes() for name in os.listdir(tmp_path / "r") if name != "data"}
    assert before == after


def test_cosine_schedule_spans_a_budget_extended_on_resume_without_a_jump(tmp_path):
    kw = dict(schedule="cosine", warmup=2, lr=0.01, log_every=1, eval_every=100)
    stops = iter([False] * 5 + [True] * 100)  # stop after 5 of the 8 steps (Ctrl-C)
    run_all(rundir.start_run(tmp_path / "r", stream_text(60), None, model_options(), tconfig(max_steps=8, **kw)),
            should_stop=lambda: next(stops))
    resumed = rundir.resume_run(tmp_path / "r", {"max_steps": 16})
    assert resumed.reaimed_lr == pytest.approx(optim.learning_rate(5, 0.01, "cosine", 2, 8))
    run_all(resumed)
    lrs = [r["lr"] for r in read_log(tmp_path / "r")]
    assert len(lrs) == 16
    # the first session decays over its own budget of 8 steps
    assert lrs[:5] == pytest.approx([optim.learning_rate(k, 0.01, "cosine", 2, 8) for k in range(5)])
    # from step 5 the decay goes on from where it stood (halfway: (5 - 2) / (8 - 2)) to the floor at 16
    p0 = (5 - 2) / (8 - 2)
    expected = [optim.cosine_lr(p0 + (1 - p0) * (k - 5) / (16 - 5), 0.01, 0.1) for k in range(5, 16)]
    assert lrs[5:] == pytest.approx(expected)
    assert lrs[5] == pytest.approx(optim.learning_rate(5, 0.01, "cosine", 2, 8))  # no jump at the resume
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # still falling, never back up
    # not what restarting the schedule over the new budget would give
    assert lrs[6] < optim.learning_rate(6, 0.01, "cosine", 2, 16) * 0.9
    # a second extension continues the same way, from the state file's saved re-aim point
    run_all(rundir.resume_run(tmp_path / "r", {"max_steps": 20}))
    more = [r["lr"] for r in read_log(tmp_path / "r")][16:]
    assert len(more) == 4 and all(x == pytest.approx(0.001) for x in more)  # the decay had reached its floor


def test_resume_refuses_options_that_define_the_run(tmp_path):
    run_all(rundir.start_run(tmp_path / "r", stream_text(60), None, model_options(), tconfig(max_steps=2)))
    for key, value in (("batch_size", 5), ("encoding", "latin-1"), ("mode", "lines"), ("seed", 3)):
        with pytest.raises(ConfigError, match=f"{key}="):  # the library names a setting as its keyword
            rundir.resume_run(tmp_path / "r", {key: value})
    with pytest.raises(ConfigError, match="max_steps="):
        rundir.resume_run(tmp_path / "r", {"max_steps": 0})


def poison_steps(monkeypatch, bad_steps):
    """Make the loss of the given (1-based) steps NaN."""
    task = tasks.get("lm")
    real = task.loss_and_grads

    def loss_and_grads(run, *args):
        loss, grads, final, n = real(run, *args)
        return (math.nan if run.step + 1 in bad_steps else loss), grads, final, n
    monkeypatch.setattr(task, "loss_and_grads", loss_and_grads)


def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    poison_steps(monkeypatch, {3})
    run = rundir.start_run(tmp_path / "r", stream_text(60), None, model_options(), tconfig(eval_every=2, log_every=1))
    events = tr.train(run)
    with pytest.raises(TrainingError, match="non-finite at step 3"):
        for _ in events:
            pass
    saved = {name: (tmp_path / "r" / name).read_bytes() for name in (layout.STATE_FILE, layout.MODEL_FILE)}
    _, meta = checkpoint.load_state(tmp_path / "r" / layout.STATE_FILE)
    assert meta["progress"]["step"] == 2
    assert [r["step"] for r in read_log(tmp_path / "r")] == [1, 2]
    monkeypatch.undo()
    run = rundir.resume_run(tmp_path / "r")
    assert run.step == 2 and saved == {name: (tmp_path / "r" / name).read_bytes() for name in saved}


def test_nonfinite_steps_can_be_skipped(tmp_path, monkeypatch):
    poison_steps(monkeypatch, {2, 3})
    run = rundir.start_run(tmp_path / "r", stream_text(60), None, model_options(),
                       tconfig(max_steps=6, log_every=2, on_nonfinite="skip"))
    events = run_all(run)
    assert events[-1]["step"] == 6 and events[-1]["skipped"] == 2
    assert [e["step"] for e in events if e["event"] == "skip"] == [2, 3]
    assert run.optimizer.t == 4  # updates only for the finite steps
    log = read_log(tmp_path / "r")
    assert [r["step"] for r in log] == [2, 3, 4, 6]
    assert [r.get("skipped_nonfinite") for r in log] == [1, 2, None, None]
    assert all(math.isfinite(r["loss"]) for r in log if "loss" in r)
    steps = {e["step"]: e["loss"] for e in events if e["event"] == "step"}
    assert log[2]["loss"] == pytest.approx(np.mean([steps[1], steps[4]]))  # skipped losses are left out


def test_a_corpus_too_short_for_one_window_leaves_no_files(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(CorpusError, match=r"19 tokens long .* needs at least 25"):
        rundir.start_run(out, "x" * 21, None, model_options(), tconfig(batch_size=3, seq_len=8))
    assert not out.exists()
    with pytest.raises(CorpusError, match="at least one non-empty"):
        rundir.start_run(out, "\n  \n\n", None, model_options(), tconfig(mode="lines"))
    assert not out.exists()


def test_invalid_options_are_refused_before_any_file_is_written(tmp_path):
    out = tmp_path / "r"
    bad_train = [dict(clip=-1.0), dict(clip_value=-2.0), dict(clip=math.nan), dict(lr=0.0), dict(val_frac=1.0),
                 dict(batch_size=0), dict(optim="lbfgs"), dict(schedule="step"), dict(warmup=-1),
                 dict(max_steps=0)]
    for kw in bad_train:
        with pytest.raises(ConfigError):
            rundir.start_run(out, stream_text(60), None, model_options(), tconfig(**kw))
    for kw in (dict(hidden=-4), dict(dropout=1.5), dict(cell="transformer"), dict(dtype="float16")):
        with pytest.raises(ConfigError):
            rundir.start_run(out, stream_text(60), None, model_options(**kw), tconfig())
    assert not out.exists()


def test_lines_mode_holds_out_whole_lines_and_scores_them(tmp_path):
    run = rundir.start_run(tmp_path / "r", lines_text(), None, model_options(), tconfig(mode="lines", val_frac=0.2))
    n_lines = len(NAMES) + 14
    n_val = int(n_lines * 0.2)
    assert len(run.train_offsets) - 1 == n_lines - n_val
    assert len(run.val_offsets) - 1 == n_val
    events = run_all(run)
    assert math.isfinite(events[-1]["val_loss"])
    _, _, meta = checkpoint.load_model(tmp_path / "r" / layout.MODEL_FILE)
    assert meta["data"]["mode"] == "lines"


def test_lines_vocabulary_holds_only_the_lines_tokens(tmp_path):
    text = "anna bob\ncarl\ndave emma\n" * 6
    for level, expected in (("char", set("anna bob carl dave emma")), ("word", {"anna", "bob", "carl", "dave", "emma", " "})):
        run = rundir.start_run(tmp_path / level, text, None, model_options(), tconfig(mode="lines", level=level))
        assert set(run.vocab.tokens[3:]) == expected  # no "\n", no words merged across lines
        assert run_all(run)[-1]["step"] == 12


def test_training_reads_compact_memory_mapped_ids(tmp_path):
    run = rundir.start_run(tmp_path / "r", stream_text(60), None, model_options(), tconfig(max_steps=2))
    assert isinstance(run.train_ids, np.memmap) and run.train_ids.dtype == np.uint8
    run_all(run)
    resumed = rundir.resume_run(tmp_path / "r")
    assert isinstance(resumed.train_ids, np.memmap) and resumed.train_ids.dtype == np.uint8
    assert np.array_equal(resumed.train_ids, run.vocab.encode(stream_text(60)[: len(run.train_ids)]))
