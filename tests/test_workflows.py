"""A user's second hour: what a run says after training, the automatic evaluation cadence, and
continuing a run with a new learning-rate schedule."""

import shlex

from charrnn.runs import rundir
from tiny_runs import TINY, invoke, read_log, stream_text


def _corpus(tmp_path, words=400):
    path = tmp_path / "c.txt"
    path.write_text(stream_text(words))
    return path


def test_training_ends_with_what_to_run_next(tmp_path):
    out = tmp_path / "my run"
    r = invoke(["train", _corpus(tmp_path), *TINY, "--max-steps", 2, "--out", out])
    assert r.exit_code == 0, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    c = f"-c {shlex.quote(str(out))}"
    assert last.startswith("Next: ") and f"charrnn sample {c}" in last and f"charrnn eval {c}" in last
    # the commands it names work as written
    assert invoke(shlex.split(last[len("Next: "):].split(" (")[0])[1:]).exit_code == 0
    assert "Next:" not in invoke(["train", _corpus(tmp_path), *TINY, "--max-steps", 2,
                                  "--out", tmp_path / "q", "-q"]).stderr


# ---------------------------------------------------------------- the automatic evaluation cadence


def test_auto_eval_every_by_hand():
    from charrnn.files.config import auto_eval_every

    # a quarter of a pass: 627 steps a pass (tinyshakespeare at 16 x 100), 111k validation tokens scored
    # cost at most a tenth of the time: 111,540 / 3 / 0.1 / 1600 = 232.4 -> 233 steps
    assert auto_eval_every(627, 1600, 111_540) == 233
    assert auto_eval_every(627, 1600, 10_000) == 157             # 627 / 4 = 156.75
    assert auto_eval_every(627, 1600, 10_000, budget_steps=500) == 50   # ten evaluations in the budget
    assert auto_eval_every(627, 1600, 10_000, steps_per_sec=1.5) == 90  # one a minute
    assert auto_eval_every(100_000, 1600, 1000) == 1000           # at most every 1000 steps
    # a small text (31.6k characters: 17.8 steps a pass): 2.5 times a pass, not every 10 passes; its 3,160
    # validation tokens make a 7-step floor (3160 / 3 / 0.1 / 1600 = 6.6)
    assert auto_eval_every(17.8, 1600, 3160) == 7
    assert auto_eval_every(0.5, 16, 0) == 1


def _eval_steps(run):
    return [r["step"] for r in read_log(run) if "val_loss" in r]


def test_small_text_is_evaluated_within_its_first_pass_and_the_cadence_is_saved(tmp_path):
    """Without --eval-every the cadence fits the data; it is chosen once and saved, so a --max-steps run
    evaluates at the same steps every time, and a resumed run goes on at the same cadence."""
    text = tmp_path / "small.txt"
    text.write_text(stream_text(2000))  # about 10k characters: 36 steps a pass at 4 x 64
    options = [*TINY, "--batch-size", 4, "--seq-len", 64]
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        r = invoke(["train", text, *options, "--max-steps", 30, "--out", out])
        assert r.exit_code == 0, r.stderr
        assert "eval_every" in r.stderr  # the settings line says what was chosen
        runs.append(out)
    state = rundir.resume_run(str(runs[0]), writer=False)
    every = state.tconfig.eval_every
    steps_per_pass = state.steps_per_epoch
    assert every <= steps_per_pass / 2  # at least twice a pass
    assert _eval_steps(runs[0]) == _eval_steps(runs[1]) == [*range(every, 31, every), *([30] if 30 % every else [])]
    assert invoke(["train", "--resume", runs[0], "--max-steps", 45, "-q"]).exit_code == 0
    assert _eval_steps(runs[0]) == sorted(set(range(every, 46, every)) | {30, 45})


# ---------------------------------------------------------------- continuing a run with a new schedule


def _state(run):
    from charrnn.files import checkpoint, layout

    return checkpoint.load_state(str(run / layout.STATE_FILE))


def _same_run(a, b):
    """Two runs are the same bit for bit: state tensors, progress (but timings) and the untimed log."""
    from tiny_runs import untimed

    (sa, ma), (sb, mb) = _state(a), _state(b)
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert sa[key].tobytes() == sb[key].tobytes(), key
    pa, pb = (({k: v for k, v in m["progress"].items() if k not in ("elapsed", "log_bytes")}) for m in (ma, mb))
    assert pa == pb and ma["train"] == mb["train"] and ma.get("schedules") == mb.get("schedules")
    assert untimed(read_log(a)) == untimed(read_log(b))


def _first_part(tmp_path):
    import shutil

    out = tmp_path / "first"
    r = invoke(["train", _corpus(tmp_path, 1200), *TINY, "--schedule", "cosine", "--warmup", 2, "--lr", 0.2,
                "--max-steps", 12, "--eval-every", 4, "--log-every", 1, "--out", out, "-q"])
    assert r.exit_code == 0, r.stderr
    copies = []
    for name in ("a", "b"):
        shutil.copytree(out, tmp_path / name)
        copies.append(tmp_path / name)
    return copies


def test_resume_with_a_new_schedule_follows_it_from_the_current_step(tmp_path):
    import math

    a, _ = _first_part(tmp_path)
    r = invoke(["train", "--resume", a, "--lr", 0.05, "--warmup", 3, "--max-steps", 30])
    assert r.exit_code == 0, r.stderr
    assert "A new learning-rate schedule from step 12: 0.05 after 3 steps of warm-up, cosine decay" in r.stderr
    for record in read_log(a):
        k = record["step"] - 1 - 12  # the update a record's step ends, counted from the new schedule's start
        if k < 0:
            continue
        if k < 3:
            expected = 0.05 * (k + 1) / 3
        else:
            progress = (k - 3) / (30 - 12 - 3)
            expected = 0.005 + 0.045 * 0.5 * (1 + math.cos(math.pi * progress))
        assert math.isclose(record["lr"], expected, rel_tol=1e-12), record
    _, meta = _state(a)
    assert meta["schedules"] == [{"step": 0, "lr": 0.2, "schedule": "cosine", "warmup": 2}]
    assert meta["train"]["lr"] == 0.05 and meta["train"]["warmup"] == 3 and meta["progress"]["schedule_start"] == 12


def test_a_new_schedule_is_saved_so_a_plain_resume_continues_it_bit_for_bit(tmp_path):
    from charrnn import api

    a, b = _first_part(tmp_path)
    new = {"lr": 0.05, "schedule": "constant", "warmup": 0, "max_steps": 24}
    api.train(resume=str(a), **new)
    polls = iter(range(10**6))
    api.train(resume=str(b), should_stop=lambda: next(polls) >= 4, **new)  # stopped at step 16, an evaluation
    assert _state(b)[1]["progress"]["step"] == 16
    assert invoke(["train", "--resume", b, "-q"]).exit_code == 0  # plain: the run's own (new) schedule
    _same_run(a, b)


def test_a_state_saved_before_schedules_could_change_resumes_as_before(tmp_path):
    """A state file without schedule_start (an earlier version's) resumes exactly as one with it."""
    from charrnn.files import checkpoint, layout

    a, b = _first_part(tmp_path)
    arrays, meta = _state(b)
    del meta["progress"]["schedule_start"]
    for key in ("format_version", "charrnn_version", "kind"):
        meta.pop(key)
    checkpoint.save_state(str(b / layout.STATE_FILE), arrays, meta)
    for run in (a, b):
        assert invoke(["train", "--resume", run, "--max-steps", 20, "-q"]).exit_code == 0
    _same_run(a, b)
    assert "schedules" not in _state(a)[1]


# ---------------------------------------------------------------- snapshots: --keep N


def _best(run, n):
    records = [(round(r["val_loss"], 4), r["step"]) for r in read_log(run) if "val_loss" in r]
    return sorted(records)[:n]


def test_keep_holds_the_model_files_of_the_n_best_evaluations(tmp_path):
    import json
    import os

    from charrnn.files import layout

    out = tmp_path / "run"
    r = invoke(["train", _corpus(tmp_path, 600), *TINY, "--max-steps", 16, "--eval-every", 2, "--keep", 3,
                "--lr", 0.3, "--out", out, "-q"])
    assert r.exit_code == 0, r.stderr
    names = sorted(os.listdir(out / layout.SNAPSHOTS_DIR))
    assert names == sorted(layout.snapshot_name(step, loss) for loss, step in _best(out, 3))
    for name in names:  # each is the model as it was at that evaluation: eval finds the run's held-out split
        got = invoke(["eval", "-c", out / layout.SNAPSHOTS_DIR / name, "--json", "-q"])
        assert got.exit_code == 0, got.stderr
        assert f"{json.loads(got.stdout)['loss']:.4f}" == name.split("-val")[1][: -len(".safetensors")]
    # resumed with another N, the N best of the whole run
    assert invoke(["train", "--resume", out, "--max-steps", 24, "--keep", 2, "-q"]).exit_code == 0
    assert sorted(os.listdir(out / layout.SNAPSHOTS_DIR)) == \
        sorted(layout.snapshot_name(step, loss) for loss, step in _best(out, 2))
    r = invoke(["train", _corpus(tmp_path), *TINY, "--keep", -1, "--max-steps", 1, "--out", tmp_path / "bad"])
    assert r.exit_code == 2 and "keep" in r.stderr


# ---------------------------------------------------------------- smaller defects


def test_word_level_trains_unk_by_default_so_its_own_held_out_split_scores_without_a_warning(tmp_path):
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(1, 3001)]
    text = " ".join(rng.choices(words, weights=[1 / k for k in range(1, 3001)], k=4000)) + "\n"  # Zipf's law
    path = tmp_path / "w.txt"
    path.write_text(text)
    for extra, warned in (([], False), (["--min-count", 1], True)):
        out = tmp_path / f"run{len(extra)}"
        r = invoke(["train", path, *TINY, "--level", "word", *extra, "--max-steps", 2, "--out", out, "-q"])
        assert r.exit_code == 0, r.stderr
        from charrnn.files import checkpoint

        meta = checkpoint.load_model(out / "model.safetensors")[2]
        assert (meta["data"]["train_unknown"] > 0) == (not extra)
        e = invoke(["eval", "-c", out])
        assert e.exit_code == 0 and ("Warning" in e.stderr) == warned, e.stderr


def test_a_text_too_short_says_what_it_needs(tmp_path):
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    one.write_text("a")
    two.write_text("ab")
    r = invoke(["train", one, "--max-steps", 1, "--out", tmp_path / "r1"])
    assert r.exit_code == 1 and r.stderr == ("Error: the training text is 1 token long, but training needs at least 2 "
                                             "(one to read, the next to predict); give a longer text\n")
    assert invoke(["train", two, "--max-steps", 1, "--out", tmp_path / "r2", "-q"]).exit_code == 0  # auto: 1 x 1
    r = invoke(["train", two, "--max-steps", 1, "--batch-size", 1, "--seq-len", 4, "--out", tmp_path / "r3"])
    assert r.exit_code == 1 and "needs at least 5; use a smaller --seq-len\n" in r.stderr  # the batch is at 1


def test_checkpoint_naming_a_text_file_or_a_folder_of_runs_says_what_it_is(tmp_path):
    text = _corpus(tmp_path)
    runs = tmp_path / "runs"
    for name in ("b", "a"):
        assert invoke(["train", text, *TINY, "--max-steps", 1, "--out", runs / name, "-q"]).exit_code == 0
    r = invoke(["eval", "-c", text])
    assert r.exit_code == 1 and "is a text file, not a model" in r.stderr and r.stderr.count("\n") == 1
    r = invoke(["sample", "-c", runs])
    assert r.exit_code == 1 and "is a folder of runs, not a run" in r.stderr and "it holds a, b" in r.stderr
    (tmp_path / "empty").mkdir()
    r = invoke(["info", "-c", tmp_path / "empty"])
    assert r.exit_code == 1 and "neither a run directory nor a folder of runs" in r.stderr


def test_model_options_are_checked_before_anything_is_said(tmp_path):
    for option in (["--hidden", 0], ["--dropout", 1.5], ["--layers", -1]):
        r = invoke(["train", _corpus(tmp_path), *option, "--out", tmp_path / "r"])
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("Error: "), r.stderr
        assert not (tmp_path / "r").exists()


def test_the_bar_has_a_width_where_the_terminal_reports_none(monkeypatch):
    import os

    from charrnn import progress

    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((0, 0)))
    assert progress.bar_width() == {"ncols": progress.BAR_COLUMNS}
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((120, 40)))
    assert progress.bar_width() == {"dynamic_ncols": True}


def test_the_last_line_formats_its_numbers_alike_and_says_when_nothing_was_written(tmp_path):
    from click.testing import CliRunner

    from charrnn import progress

    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x")
    event = {"best_val": 1.5, "best_step": 2200, "reason": "max_steps", "skipped": 0, "step": 2641,
             "elapsed": 60.0, "model": str(model), "best": str(tmp_path / "best.safetensors")}
    with CliRunner().isolation() as (_, err, _):
        progress.summary(event, False, "char")
        progress.summary(event, False, "char", wrote=False)
    first, second = err.getvalue().decode().splitlines()
    assert "2,641 steps" in first and "at step 2,200" in first and f"saved {model}" in first
    assert "nothing new written" in second and "saved" not in second


def test_a_run_far_worse_than_a_uniform_guess_is_warned_about(tmp_path):
    from click.testing import CliRunner

    from charrnn import progress

    run = rundir.resume_run(str(_first_part(tmp_path)[0]), writer=False)
    with CliRunner().isolation() as (_, err, _):
        progress.diverged({"best_val": 5416935.5}, run, False)
        progress.diverged({"best_val": 2.0}, run, False)
        progress.diverged({"best_val": None}, run, False)
    lines = err.getvalue().decode().splitlines()
    assert len(lines) == 1 and "far above that of a uniform guess" in lines[0] and "--lr" in lines[0]


def test_resuming_a_finished_run_writes_nothing_and_says_so(tmp_path):
    a, _ = _first_part(tmp_path)
    r = invoke(["train", "--resume", a])
    assert r.exit_code == 0 and "nothing new written" in r.stderr and "; saved" not in r.stderr


def test_the_bar_shows_the_sessions_average_speed():
    from charrnn import progress

    view = progress.TrainingView(quiet=True)
    view.start_step, view.start_elapsed, view.tokens_per_step = 100, 40.0, 1600
    # 50 steps of 1,600 tokens in 20 s: 4,000 tokens/s, whatever the last step took
    assert view.speed({"step": 150, "elapsed": 60.0, "chars_per_sec": 9_999.0}) == 4_000.0
    view.tokens_per_step = None  # lines mode: a step's tokens vary, the last step's speed is shown
    assert view.speed({"step": 150, "elapsed": 60.0, "chars_per_sec": 9_999.0}) == 9_999.0
