"""A user's second hour: what a run says after training, the automatic evaluation cadence, and
continuing a run with a new learning-rate schedule."""

import shlex

from charrnn import rundir
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
    from charrnn.config import auto_eval_every

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
