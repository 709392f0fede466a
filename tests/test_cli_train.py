"""`charrnn train` through the command line: cli.main in-process (`invoke`) for behaviour and
output streams, `python -m charrnn` for exit codes and one-line errors."""

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from charrnn.files import checkpoint
from charrnn.core import model, optim
from charrnn.runs import rundir
from charrnn.api import format_duration
from charrnn.cli import parse_duration
from tiny_runs import REFERENCE, TINY, invoke, read_log, stream_text


def train_ok(*args, tiny=True):
    result = invoke(["train", *(TINY if tiny else []), *args])
    assert result.exit_code == 0, result.stderr
    return result


def resume_ok(*args):
    return train_ok("--resume", *args, tiny=False)


def charrnn(*args, timeout=60):
    """Run `python -m charrnn ARGS` (through main(), which renders library errors)."""
    return subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def snapshot(directory):
    """sha256 of every file under directory, by relative path."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


def assert_one_line_error(proc, *fragments, exit_code=1):
    """One line `Error: ...` on stderr, nothing on stdout, and exit_code (2: a usage error, 1: any other)."""
    assert proc.returncode == exit_code, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# ---------------------------------------------------------------- help and output streams


def test_help_lists_grouped_options_with_defaults():
    result = invoke(["train", "--help"])
    assert result.exit_code == 0
    text = result.stdout
    headings = ["Data:", "Model:", "Optimization:", "Budget and output:", "Other options:"]
    positions = [text.index("\n" + h + "\n") for h in headings]
    assert positions == sorted(positions)  # in this order, --help last
    model_section = text[positions[1]:positions[2]]
    for option in ("--cell", "--layers", "--hidden", "--embed", "--dropout", "--dtype"):
        assert option in model_section
    assert "--lr" in text[positions[2]:positions[3]] and "--max-steps" in text[positions[3]:positions[4]]
    flat = " ".join(text.split())
    for fragment in ("[default: auto, from the corpus size and budget]", "[default: lstm]",
                     "[default: 5.0]", "[default: auto, a quarter of a pass", "--max-time DURATION", "90s, 10m, 1m30s, 1h30m, 1.5h",
                     "--patience INTEGER", "[default: 5]"):
        assert fragment in flat
    assert "[CORPUS_FILE]\n" not in text[positions[0]:]  # the argument is not listed as an option


def test_train_writes_the_run_and_reports_on_stderr_only(tmp_path, corpus_file):
    out = tmp_path / "run"
    result = train_ok(corpus_file, "--max-steps", 7, "--eval-every", 4, "--log-every", 2, "--out", out)
    assert result.stdout == ""
    for name in ("model.safetensors", "best.safetensors", "state.safetensors", "log.jsonl"):
        assert (out / name).is_file()
    log = read_log(out)
    assert [r["step"] for r in log] == [2, 4, 6, 7]
    for r in log:
        assert {"step", "epoch", "loss", "lr", "grad_norm", "chars_per_sec", "elapsed"} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("epoch", "loss", "lr", "grad_norm", "chars_per_sec", "elapsed"))
    assert ["val_loss" in r for r in log] == [False, True, False, True]
    lines = result.stderr.strip().splitlines()[:-1]  # the last says what to run next
    assert lines[-1].startswith("Done (step budget): 7 steps")
    assert "bits/char" in lines[-1] and str(out / "model.safetensors") in lines[-1]
    best = min(r["val_loss"] for r in log if "val_loss" in r)
    assert f"best val loss {best:.4f}" in lines[-1]
    # stderr is not a terminal here: plain lines, no progress bar redraws
    assert "\r" not in result.stderr and "it/s" not in result.stderr and "%|" not in result.stderr


def on_a_terminal(args):
    """Run `python -m charrnn ARGS` with stderr on a 120-column pseudo-terminal: (exit code, stdout, stderr)."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=slave, text=True, env={**os.environ, **REFERENCE})
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        os.close(master)
    return proc.returncode, proc.stdout.read(), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_progress_bar_on_a_terminal(tmp_path, corpus_file):
    """With stderr on a terminal, a tqdm bar shows steps, loss, validation loss and chars/s."""
    code, out, shown = on_a_terminal(["train", *TINY, corpus_file, "--max-steps", "6", "--eval-every", "3",
                                      "--out", tmp_path / "run"])
    assert code == 0 and out == ""
    assert "\r  0%|" in shown and "| 3/6 [" in shown and "| 6/6 [" in shown
    assert "loss=" in shown and "chars/s=" in shown
    val = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])["val_loss"]
    assert f"val={val:.3f}" in shown  # the final evaluation reaches the bar
    assert "Done (step budget): 6 steps" in shown


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_time_budget_bar_shows_durations_and_the_step_count(tmp_path, corpus_file):
    code, out, shown = on_a_terminal(["train", *TINY, corpus_file, "--max-time", "1s", "--patience", "0",
                                      "--out", tmp_path / "run"])
    assert code == 0 and out == "", shown
    # the training time so far and the budget as durations, never raw float seconds
    shown_times = re.findall(r"\| (\d+s)/1s, step ([\d,]+) \[(\d+s) left", shown)
    assert shown_times, shown
    assert not re.search(r"\d\.\d{4,}/1", shown)
    steps = [int(n.replace(",", "")) for _, n, _ in shown_times]
    assert steps == sorted(steps) and steps[-1] == read_log(tmp_path / "run")[-1]["step"]
    assert "Done (time budget)" in shown


def test_quiet_prints_nothing(tmp_path, corpus_file):
    result = train_ok(corpus_file, "--max-steps", 3, "--out", tmp_path / "run", "-q")
    assert result.stdout == "" and result.stderr == ""
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_default_run_directory_is_never_reused(tmp_path, corpus_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        train_ok(corpus_file, "--max-steps", 2, "-q")
    assert sorted(os.listdir("checkpoints")) == ["corpus", "corpus-2"]
    assert os.path.isfile("checkpoints/corpus-2/model.safetensors")


def test_without_a_file_it_trains_on_the_built_in_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = train_ok("--max-steps", 2, "--eval-tokens", 2000)
    assert "language reference" in result.stderr
    run = rundir.resume_run("checkpoints/python-reference")
    assert len(run.train_ids) + len(run.val_ids) > 100_000


def test_validation_file_and_vocabulary_options(tmp_path, corpus_file):
    val_file = tmp_path / "val.txt"
    val_file.write_text("the lazy dog sleeps, zzz\n", encoding="utf-8")
    out = tmp_path / "run"
    train_ok(corpus_file, "--val", val_file, "--max-vocab", 6, "--max-steps", 2, "--out", out, "-q")
    run = rundir.resume_run(out)
    assert len(run.val_ids) == len(val_file.read_text())  # the whole file, nothing held out of the corpus
    assert len(run.train_ids) == len(corpus_file.read_text())
    assert len(run.vocab.tokens) == 3 + 6
    assert " " in run.vocab.tokens and "e" in run.vocab.tokens  # the most frequent characters
    assert "z" not in run.vocab.tokens and np.count_nonzero(np.asarray(run.val_ids) == run.vocab.unk) > 3


# ---------------------------------------------------------------- budgets and resume


def test_parse_duration():
    assert parse_duration("90s") == 90
    assert parse_duration("10m") == 600
    assert parse_duration("1h") == 3600
    assert parse_duration("1.5h") == 5400
    assert parse_duration("45") == 45
    assert parse_duration(None) is None
    # every form the tool prints (format_duration) and the combinations people type
    assert parse_duration("1h30m") == parse_duration("1.5h") == parse_duration("90m") == 5400
    assert parse_duration("1m30s") == parse_duration("90s") == 90
    assert parse_duration("5m08s") == 308 and parse_duration("1h05m00s") == 3900 and parse_duration("1d2h") == 93600
    for seconds in (1, 59, 60, 308, 3599, 3600, 3905, 86399, 200000):
        assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("bad", ["5x", "0s", "-1m", "m", "ten minutes", "", "1m1h", "1h 30", "1..5h", "inf", "nan"])
def test_a_bad_duration_is_a_usage_error(tmp_path, corpus_file, bad):
    result = invoke(["train", *TINY, corpus_file, "--max-time", bad, "--out", tmp_path / "run"])
    assert result.exit_code == 2
    assert "--max-time" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_max_time_is_stored_in_seconds(tmp_path, corpus_file):
    train_ok(corpus_file, "--max-time", "10m", "--max-steps", 2, "--out", tmp_path / "run", "-q")
    _, meta = checkpoint.load_state(tmp_path / "run" / "state.safetensors")
    assert meta["train"]["max_time"] == 600 and meta["train"]["max_steps"] == 2


def test_max_epochs_stops_at_the_epoch_budget(tmp_path, corpus_file):
    result = train_ok(corpus_file, "--max-epochs", 0.5, "--out", tmp_path / "run")
    run = rundir.resume_run(tmp_path / "run")
    assert run.step == math.ceil(0.5 * run.steps_per_epoch)
    assert "Done (epoch budget)" in result.stderr


def test_resume_continues_to_the_whole_run_budget_and_appends_to_the_log(tmp_path, corpus_file):
    out = tmp_path / "run"
    train_ok(corpus_file, "--max-steps", 10, "--log-every", 3, "--eval-every", 5, "--out", out, "-q")
    first_log = (out / "log.jsonl").read_bytes()
    assert [r["step"] for r in read_log(out)] == [3, 5, 6, 9, 10]

    result = resume_ok(out, "--max-steps", 20)
    assert result.stderr.startswith(f"Resuming {out} at step 10")
    assert "Done (step budget): 20 steps" in result.stderr
    assert (out / "log.jsonl").read_bytes().startswith(first_log)  # earlier lines never rewritten
    assert [r["step"] for r in read_log(out)] == [3, 5, 6, 9, 10, 12, 15, 18, 20]
    _, meta = checkpoint.load_state(out / "state.safetensors")
    assert meta["progress"]["step"] == 20


def test_resume_at_a_reached_budget_says_so_and_changes_nothing(tmp_path, corpus_file):
    out = tmp_path / "run"
    train_ok(corpus_file, "--max-steps", 4, "--out", out, "-q")
    before = snapshot(out)
    result = resume_ok(out)
    assert "already reached its budget" in result.stderr
    assert snapshot(out) == before


def test_budgets_given_on_resume_replace_the_runs_budgets(tmp_path, corpus_file):
    out = tmp_path / "run"
    train_ok(corpus_file, "--max-epochs", 0.2, "--out", out, "-q")
    step = rundir.resume_run(out).step
    resume_ok(out, "--max-steps", step + 3, "-q")  # the old epoch budget no longer applies
    _, meta = checkpoint.load_state(out / "state.safetensors")
    assert meta["progress"]["step"] == step + 3
    assert meta["train"]["max_epochs"] is None


@pytest.mark.parametrize("extra", [["--hidden", "8"], ["--mode", "lines"], ["--encoding", "latin-1"], ["--seed", "2"],
                                   ["--val-frac", "0.2"], ["--out", "elsewhere"], ["CORPUS"]])
def test_resume_refuses_model_and_data_options(tmp_path, corpus_file, extra):
    out = tmp_path / "run"
    train_ok(corpus_file, "--max-steps", 3, "--out", out, "-q")
    before = snapshot(out)
    extra = [str(corpus_file) if a == "CORPUS" else a for a in extra]
    result = invoke(["train", "--resume", out, "--max-steps", 6, *extra])
    assert result.exit_code == 2 and result.stdout == ""  # options that cannot go together: usage
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "cannot be given with --resume" in result.stderr
    assert snapshot(out) == before
    assert not (tmp_path / "elsewhere").exists()


def test_resume_errors_through_main_are_one_line(tmp_path, corpus_file):
    out = tmp_path / "run"
    train_ok(corpus_file, "--max-steps", 3, "--out", out, "-q")
    assert_one_line_error(charrnn("train", "--resume", out, "--hidden", "8"), "--hidden", "--resume", exit_code=2)
    os.unlink(out / "state.safetensors")
    assert_one_line_error(charrnn("train", "--resume", out), "cannot resume", "state.safetensors")
    proc = charrnn("train", "--resume", tmp_path / "nothing-here")  # a directory that is not there: usage
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_a_second_train_into_a_run_directory_is_refused(tmp_path, corpus_file):
    out = tmp_path / "run"
    train_ok(corpus_file, "--max-steps", 3, "--out", out, "-q")
    before = snapshot(out)
    assert {"model.safetensors", "best.safetensors", "state.safetensors", "log.jsonl", "data/train.npy"} <= set(before)
    proc = charrnn("train", *TINY, corpus_file, "--max-steps", 5, "--hidden", 16, "--out", out)
    assert_one_line_error(proc, "already holds a run", "--resume", exit_code=2)
    assert snapshot(out) == before


@pytest.mark.parametrize("mode", ["stream", "lines"])
def test_steps_in_one_go_equal_steps_then_resume(tmp_path, corpus_file, names_file, mode):
    source = corpus_file if mode == "stream" else names_file
    # a constant schedule: a cosine one spans the budget, and the split run's first budget differs
    common = [source, "--mode", mode, "--layers", "2", "--dropout", "0.2", "--schedule", "constant",
              "--eval-every", 4, "-q"]
    train_ok(*common, "--max-steps", 14, "--out", tmp_path / "whole")
    train_ok(*common, "--max-steps", 6, "--out", tmp_path / "split")
    resume_ok(tmp_path / "split", "--max-steps", 14, "-q")
    a, meta_a = checkpoint.load_state(tmp_path / "whole" / "state.safetensors")
    b, meta_b = checkpoint.load_state(tmp_path / "split" / "state.safetensors")
    assert meta_a["progress"]["step"] == meta_b["progress"]["step"] == 14
    assert sorted(a) == sorted(b)
    assert any(k.startswith("optim/") for k in a)
    assert any(k.startswith("carry/") for k in a) == (mode == "stream")
    for name in a:
        assert np.array_equal(a[name], b[name]), name


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
def test_interrupt_saves_and_resumes(tmp_path, corpus_file):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "train", *TINY, str(corpus_file), "--max-time", "1m",
                             "--log-every", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **REFERENCE})
    try:
        deadline = time.monotonic() + 30
        while not (out / "log.jsonl").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT
    assert stdout == "" and "Traceback" not in stderr
    assert "Done (interrupted)" in stderr
    _, meta = checkpoint.load_state(out / "state.safetensors")
    step = meta["progress"]["step"]
    log = read_log(out)
    assert step >= 1 and log[-1]["step"] == step and "val_loss" in log[-1]
    resume_ok(out, "--max-steps", step + 2, "-q")
    assert read_log(out)[-1]["step"] == step + 2


# ---------------------------------------------------------------- bad input


def test_invalid_utf8_names_the_byte_offset_and_replace_accepts_it(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello world" + b"\xff" + stream_text(120).encode())
    out = tmp_path / "run"
    assert_one_line_error(charrnn("train", *TINY, path, "--max-steps", 2, "--out", out),
                          "invalid UTF-8", "byte offset 11", "--errors replace")
    assert not out.exists()
    train_ok(path, "--errors", "replace", "--max-steps", 2, "--out", out, "-q")
    _, _, meta = checkpoint.load_model(out / "model.safetensors")
    assert "\ufffd" in meta["tokens"]


@pytest.mark.parametrize("content, fragment", [
    (b"text\0more text" * 10, "binary"),
    (b"", "empty"),
    (b"\xef\xbb\xbf", "empty"),
    ("short text".encode(), "9 tokens long"),
])
def test_unusable_corpus_files_are_refused_in_one_line(tmp_path, content, fragment):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    out = tmp_path / "run"
    proc = charrnn("train", *TINY, path, "--max-steps", 2, "--out", out)
    assert_one_line_error(proc, fragment)
    if fragment == "9 tokens long":
        assert "needs at least 17" in proc.stderr  # TINY: batch 2 x sequence 8, plus the last target
    assert not out.exists()


@pytest.mark.parametrize("args, fragment", [  # each error names the option with its dashes (errors.option)
    (["--hidden", "-3"], "--hidden"),
    (["--embed", "0"], "--embed"),
    (["--layers", "0"], "--layers"),
    (["--dropout", "1.5"], "--dropout"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--clip", "-1"], "--clip"),
    (["--clip-value", "-5"], "--clip-value"),
    (["--momentum", "1.5", "--optim", "sgd"], "--momentum"),
    (["--warmup", "-2"], "--warmup"),
    (["--val-frac", "1"], "--val-frac"),
    (["--max-steps", "0"], "--max-steps"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_invalid_option_values_are_refused_in_one_line(tmp_path, corpus_file, args, fragment):
    out = tmp_path / "run"
    assert_one_line_error(charrnn("train", *TINY, corpus_file, "--max-steps", 2, *args, "--out", out), fragment,
                          exit_code=2)
    assert not out.exists()


@pytest.mark.parametrize("args", [["--optim", "lbfgs"], ["--cell", "transformer"], ["--mode", "words"],
                                  ["--hidden", "many"], ["--no-such-option"]])
def test_unknown_option_values_are_usage_errors(tmp_path, corpus_file, args):
    result = invoke(["train", *TINY, corpus_file, *args, "--out", tmp_path / "run"])
    assert result.exit_code == 2
    assert "Usage:" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_file_or_directory_is_a_usage_error(tmp_path):
    # (an existing folder is a corpus: tests/test_folder_corpus.py)
    for target in (tmp_path / "missing.txt", tmp_path / "missing" / "folder"):
        proc = charrnn("train", *TINY, target, "--out", tmp_path / "run")
        assert proc.returncode == 2
        assert "Usage:" in proc.stderr and "Traceback" not in proc.stderr
        assert str(target) in proc.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- modes, levels, optimizers, options


def test_lines_mode_trains_and_samples_lines(tmp_path, names_file):
    out = tmp_path / "run"
    train_ok(names_file, "--mode", "lines", "--max-steps", 6, "--out", out, "-q")
    _, _, meta = checkpoint.load_model(out / "model.safetensors")
    assert meta["data"]["mode"] == "lines"
    regular = set(meta["tokens"][3:])  # after eos, unk, bos: characters of the training lines only
    assert {"a", "e", "o"} <= regular <= set(names_file.read_text())
    assert "\n" not in regular  # lines are examples, their ends are EOS
    result = invoke(["sample", "-c", out, "-n", 3, "--seed", 1, "--length", 12])
    assert result.exit_code == 0 and result.stdout.strip()
    result = invoke(["eval", "-c", out, "--json"])
    assert result.exit_code == 0 and math.isfinite(json.loads(result.stdout)["loss"])


def test_word_level_trains_samples_and_evaluates(tmp_path, corpus_file):
    out = tmp_path / "run"
    train_ok(corpus_file, "--level", "word", "--max-steps", 6, "--out", out, "-q")
    _, config, meta = checkpoint.load_model(out / "model.safetensors")
    assert meta["level"] == "word" and meta["data"]["level"] == "word"
    assert {"quick", "brown", " "} <= set(meta["tokens"]) and config.vocab_size == len(meta["tokens"])
    result = invoke(["sample", "-c", out, "--seed", 1, "--length", 10])
    assert result.exit_code == 0 and result.stdout.strip()
    result = invoke(["eval", corpus_file, "-c", out, "--json"])
    assert result.exit_code == 0
    score = json.loads(result.stdout)
    assert score["tokens"] > 0 and math.isfinite(score["loss"])


def test_word_level_keeps_the_most_frequent_words_and_says_so(tmp_path):
    """A word vocabulary is capped (10,000 by default: config.WORD_MAX_VOCAB): the most frequent words are
    kept, the rest are <unk>, and the start line says the cap dropped words."""
    # word k of 30 appears 31 - k times (and twice at least: min_count 2 keeps them all)
    words = [f"w{k:02d}" for k in range(30) for _ in range(32 - k)]
    rng = np.random.default_rng(0)
    (tmp_path / "c.txt").write_text(" ".join(rng.permutation(words)) + "\n")
    out = tmp_path / "run"
    result = train_ok(tmp_path / "c.txt", "--level", "word", "--max-vocab", 11, "--max-steps", 2, "--out", out)
    _, _, meta = checkpoint.load_model(out / "model.safetensors")
    assert list(meta["tokens"][3:]) == [" ", *(f"w{k:02d}" for k in range(10))]  # the space: the commonest
    assert "(the 11 most frequent words, the rest <unk>: --max-vocab)" in result.stderr
    # under the cap, nothing is said
    result = train_ok(tmp_path / "c.txt", "--level", "word", "--max-steps", 2, "--out", tmp_path / "all")
    _, _, meta = checkpoint.load_model(tmp_path / "all" / "model.safetensors")
    assert sum(t.startswith("w") for t in meta["tokens"]) == 30 and "most frequent" not in result.stderr
    _, state = checkpoint.load_state(tmp_path / "all")
    assert state["train"]["max_vocab"] == 10_000  # the default, saved with the run


@pytest.mark.parametrize("optimizer, extra", [
    ("adam", ["--dtype", "float64", "--weight-decay", "0.01"]),
    ("adagrad", ["--clip-value", "5", "--lr", "0.1", "--cell", "rnn"]),
    ("rmsprop", ["--dropout", "0.3", "--layers", "2", "--cell", "gru"]),
    ("sgd", ["--momentum", "0.9", "--lr", "0.1", "--clip", "0"]),
])
def test_each_optimizer_lowers_the_loss(tmp_path, corpus_file, optimizer, extra):
    out = tmp_path / "run"
    train_ok(corpus_file, "--optim", optimizer, *extra, "--max-steps", 30, "--log-every", 1, "--eval-every", 10,
             "--out", out, "-q")
    log = read_log(out)
    assert [r["step"] for r in log] == list(range(1, 31))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in log)
    losses = [r["loss"] for r in log]
    assert sum(losses[-5:]) < sum(losses[:5])  # the last five steps' training loss is below the first five's
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert len(vals) == 3 and vals[0] > vals[1] > vals[2]  # and the held-out loss falls at every evaluation
    params, config, _ = checkpoint.load_model(out / "model.safetensors")
    assert all(p.dtype == np.dtype(config.dtype) for p in params.values())
    _, meta = checkpoint.load_state(out / "state.safetensors")
    assert meta["train"]["optim"] == optimizer
    if "--dtype" in extra:
        assert config.dtype == "float64" and params["head.weight"].dtype == np.float64
    if "--dropout" in extra:
        assert config.dropout == 0.3 and config.layers == 2
    if "--clip-value" in extra:
        assert meta["train"]["clip_value"] == 5.0
    if "--clip" in extra:
        assert meta["train"]["clip"] is None  # 0 turns norm clipping off


def test_cosine_schedule_with_warmup_rises_then_decays(tmp_path, corpus_file):
    out = tmp_path / "run"
    train_ok(corpus_file, "--schedule", "cosine", "--warmup", 4, "--lr", 0.01, "--max-steps", 16,
             "--log-every", 1, "--out", out, "-q")
    lrs = [r["lr"] for r in read_log(out)]
    assert len(lrs) == 16
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5]))
    assert lrs[3] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs == pytest.approx([optim.learning_rate(k, 0.01, "cosine", 4, 16) for k in range(16)])


def test_clip_value_bounds_every_update(tmp_path, corpus_file):
    """With sgd and no momentum, a step moves no parameter by more than lr * clip-value."""
    out = tmp_path / "run"
    train_ok(corpus_file, "--optim", "sgd", "--momentum", 0, "--lr", 1, "--clip", 0, "--clip-value", 1e-3,
             "--dtype", "float64", "--max-steps", 1, "--out", out, "-q")
    run = rundir.resume_run(out)
    trained = run.params
    initial = model.init_params(run.config, np.random.default_rng(0))
    biggest = max(float(np.max(np.abs(trained[k] - initial[k]))) for k in trained)
    assert 0 < biggest <= 1e-3 * (1 + 1e-9)
