"""A user's second hour: what a run says after training, the automatic evaluation cadence, and
continuing a run with a new learning-rate schedule."""

import shlex

from tiny_runs import TINY, invoke, stream_text


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
