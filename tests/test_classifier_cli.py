"""`charrnn train --task classify`, `charrnn classify` and `charrnn eval` on a classifier, end to end;
its one-line errors; and kill -9 while it trains."""

import json
import os
import random
import signal
import time

import numpy as np
import pytest

from charrnn.files import checkpoint, layout
from test_reliability import SLOW_SAVES, charrnn_run, popen, read_log, temp_files, untimed, wait_for
from tiny_runs import REFERENCE, invoke

CODE = ["def f(x): return x", "for i in range(3): print(i)", "x = [a for a in b]", "import os, sys",
        "return {k: v}", "if x == 1: y = 2", "class A(object): pass", "while n > 0: n -= 1"]
PROSE = ["The cat sat on the mat.", "A dog ran in the fog today.", "She said that it was late.",
         "We went home after the rain.", "Birds sing in the early morning.", "He reads a book every week.",
         "The river is wide and slow.", "They met at the old station."]
TINY = ["--task", "classify", "--layers", "1", "--hidden", "12", "--embed", "6", "--batch-size", "4",
        "--dropout", "0", "--schedule", "constant", "--optim", "adam", "--lr", "0.02"]


def labelled(lines_a, lines_b, a="code", b="prose"):
    return "".join(f"{a}\t{x}\n{b}\t{y}\n" for x, y in zip(lines_a, lines_b))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    (root / "train.tsv").write_text(labelled(CODE, PROSE) * 3)
    (root / "val.tsv").write_text(labelled(CODE[:3], PROSE[:3]))
    code, out, err = invoke(["train", root / "train.tsv", "--val", root / "val.tsv", *TINY, "--bidirectional",
                             "--max-steps", 80, "--eval-every", 20, "--out", root / "run", "-q"])
    assert code == 0, err
    return root


def test_train_eval_and_classify(trained, tmp_path):
    run = trained / "run"
    assert (run / layout.BEST_FILE).exists() and (run / "data" / "val_labels.npy").exists()
    code, out, err = invoke(["eval", "-c", run, "--json"])
    assert code == 0, err
    held = json.loads(out)
    assert held["lines"] == 6 and held["labels"] == ["code", "prose"]
    assert held["accuracy"] == 1.0 and held["macro_f1"] == 1.0 and held["confusion"] == [[3, 0], [0, 3]]
    best = [r["val_loss"] for r in read_log(run) if "val_loss" in r]
    assert held["loss"] == pytest.approx(min(best), rel=1e-5)  # the best checkpoint is the one scored

    (tmp_path / "mixed.tsv").write_text("prose\tdef f(x): return x\ncode\tThe cat sat on the mat.\ncode\timport os, sys\n")
    code, out, err = invoke(["eval", tmp_path / "mixed.tsv", "-c", run])
    assert code == 0, err
    assert "accuracy  0.3333" in out and "macro-F1" in out and "nats/line" in out
    assert out.splitlines()[-2:] == [" code      1      1", "prose      1      0"]

    (tmp_path / "plain.txt").write_text("def g(y): return y\n\nThe sun is warm.\n")
    code, out, err = invoke(["classify", tmp_path / "plain.txt", "-c", run, "--top-k", 2])
    assert code == 0, err
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[0] for r in rows] == ["code", "prose"] and [r[-1] for r in rows] == ["def g(y): return y",
                                                                                  "The sun is warm."]
    for r in rows:  # label, probability, label, probability, text; most likely first, summing to 1
        assert len(r) == 5 and {r[0], r[2]} == {"code", "prose"}
        assert float(r[1]) >= float(r[3]) and float(r[1]) + float(r[3]) == pytest.approx(1, abs=2e-4)


def test_classify_reads_stdin(trained):
    import subprocess, sys
    proc = subprocess.run([sys.executable, "-m", "charrnn", "classify", "-c", str(trained / "run")],
                          input="while x: x -= 1\nBirds fly south.\n", capture_output=True, text=True, timeout=60,
                          env={**os.environ, **REFERENCE})  # a process's real stdin is tested, not the arithmetic
    assert proc.returncode == 0, proc.stderr
    assert [line.split("\t")[0] for line in proc.stdout.splitlines()] == ["code", "prose"]
    assert proc.stdout.splitlines()[1].split("\t")[2] == "Birds fly south."


@pytest.mark.parametrize("args,fragment", [
    (["--bidirectional"], "would see the character it must predict"),
    (["--pool", "last"], "--pool needs --task classify"),
    (["--task", "classify", "--mode", "stream"], "neither --mode stream"),
    (["--task", "classify", "--max-steps", 1], "--task classify needs a CORPUS of"),
])
def test_options_that_need_a_classifier_are_one_line_errors(tmp_path, args, fragment):
    (tmp_path / "c.txt").write_text("some text to train on\n" * 20)
    corpus = [] if "--max-steps" in args else [tmp_path / "c.txt", "--max-steps", 1]
    code, out, err = charrnn_run("train", *corpus, *args, "--out", tmp_path / "r")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and fragment in err, err  # a usage error
    assert not (tmp_path / "r").exists()


def test_a_folder_without_label_subfolders_or_init_from_with_task_classify_is_a_one_line_error(trained, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.tsv").write_text(labelled(CODE, PROSE))
    code, out, err = invoke(["train", tmp_path / "docs", *TINY, "--max-steps", 1, "--out", tmp_path / "r"])
    assert code != 0 and err.strip().splitlines()[-1] == (
        f"Error: {tmp_path / 'docs'}: 'a.tsv' is not in a subfolder; --task classify takes a folder with one "
        "subfolder per label, the files of each its examples")
    code, out, err = invoke(["train", trained / "train.tsv", *TINY, "--max-steps", 1, "--init-from",
                             trained / "run", "--out", tmp_path / "r"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "starts a fresh classifier" in err, err
    (tmp_path / "lm.txt").write_text("hello world\n" * 30)
    code, out, err = invoke(["train", tmp_path / "lm.txt", "--max-steps", 1, "--init-from", trained / "run",
                             "--out", tmp_path / "r"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is a classifier" in err, err
    assert not (tmp_path / "r").exists()


def test_a_folder_of_label_subfolders_trains_as_its_labelled_lines_would(tmp_path):
    """code/*.txt and prose/*.txt: each line an example of its subfolder's label, the same run to the bit as
    the label<TAB>line file of those lines in the folder's sorted order."""
    root = tmp_path / "kinds"
    for label, lines in (("code", CODE), ("prose", PROSE)):
        (root / label).mkdir(parents=True)
        (root / label / "a.txt").write_text("\n".join(lines[:5]) + "\n\n")
        (root / label / "b.txt").write_text("\n".join(lines[5:]))
    (tmp_path / "kinds.tsv").write_text("".join(f"{label}\t{line}\n" for label, lines in (("code", CODE), ("prose", PROSE))
                                                for line in lines))
    for corpus, out in ((root, "folder"), (tmp_path / "kinds.tsv", "file")):
        code, _, err = invoke(["train", corpus, *TINY, "--max-steps", 6, "--eval-every", 3, "--out", tmp_path / out, "-q"])
        assert code == 0, err
    a, _ = checkpoint.load_state(tmp_path / "folder" / "state.safetensors")
    b, _ = checkpoint.load_state(tmp_path / "file" / "state.safetensors")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "folder" / "data" / "labels.json").read_text()) == ["code", "prose"]


def test_malformed_lines_name_the_first_line_and_count_them(tmp_path):
    (tmp_path / "bad.tsv").write_text("code\tx = 1\n\nno tab here\nprose\tHi there.\n\tno label\nprose\t\n")
    code, out, err = charrnn_run("train", tmp_path / "bad.tsv", *TINY, "--max-steps", 1, "--out", tmp_path / "r")
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (f"Error: {tmp_path / 'bad.tsv'}: 3 malformed lines (each must be label<TAB>text, both "
                           f"non-empty); the first is line 3: 'no tab here'")
    assert not (tmp_path / "r").exists()
    (tmp_path / "one.tsv").write_text("code\tx = 1\ncode\ty = 2\n")
    code, _, err = charrnn_run("train", tmp_path / "one.tsv", *TINY, "--max-steps", 1, "--out", tmp_path / "r")
    assert code == 1 and "at least 2 labels" in err


def test_wrong_model_for_the_command_is_a_one_line_error(trained, tmp_path):
    code, _, err = invoke(["sample", "-c", trained / "run"])
    assert code == 2 and "use `charrnn classify`" in err
    (tmp_path / "lm.txt").write_text("hello world\n" * 30)
    code, _, err = invoke(["train", tmp_path / "lm.txt", "--layers", 1, "--hidden", 8, "--embed", 4,
                           "--batch-size", 2, "--seq-len", 8, "--max-steps", 1, "--out", tmp_path / "lm", "-q"])
    assert code == 0, err
    code, _, err = invoke(["classify", trained / "train.tsv", "-c", tmp_path / "lm"])
    assert code == 2 and "not a classifier" in err
    (tmp_path / "unknown.tsv").write_text("poetry\tRoses are red.\n")
    code, _, err = invoke(["eval", tmp_path / "unknown.tsv", "-c", trained / "run"])
    assert code == 1 and "'poetry'" in err and len(err.strip().splitlines()) == 1


def test_kill_9_while_a_classifier_trains_then_resume_equals_an_unkilled_run(tmp_path):
    """Fewer kills than the language model's test (which covers the shared saving code): each leaves
    loadable checkpoints, and the resumed run ends bit for bit where an unkilled one ends."""
    (tmp_path / "c.tsv").write_text(labelled(CODE, PROSE) * 2)
    base = ["--cell", "gru", "--pool", "last", *TINY, "--eval-every", 1, "--quiet"]
    run = tmp_path / "run"
    code, _, err = charrnn_run("train", tmp_path / "c.tsv", *base, "--max-steps", 2, "--out", run)
    assert code == 0, err
    rng = random.Random(18)
    for trial in range(6):
        log_size = os.path.getsize(run / layout.LOG_FILE)
        proc = popen(["train", "--resume", run, "--max-steps", 10**6, "--eval-every", 1, "--quiet"], SLOW_SAVES)
        try:
            wait_for(lambda: os.path.getsize(run / layout.LOG_FILE) > log_size, proc)
            time.sleep(rng.uniform(0.0, 0.03))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.communicate()
        _, meta = checkpoint.load_state(run)
        assert checkpoint.load_model(run / layout.BEST_FILE)[0]
        assert [r["step"] for r in read_log(run)][: meta["progress"]["step"]] == \
            list(range(1, meta["progress"]["step"] + 1))
    final = checkpoint.load_state(run)[1]["progress"]["step"] + 2
    code, _, err = charrnn_run("train", "--resume", run, "--max-steps", final, "--quiet")
    assert code == 0, err
    assert temp_files(run) == []
    code, _, err = charrnn_run("train", tmp_path / "c.tsv", *base, "--max-steps", final, "--out", tmp_path / "ref")
    assert code == 0, err
    a, _ = checkpoint.load_state(run)
    b, _ = checkpoint.load_state(tmp_path / "ref")
    assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert untimed(read_log(run)) == untimed(read_log(tmp_path / "ref"))
    labels = json.loads((run / "data" / layout.LABELS_FILE).read_text())
    assert labels == ["code", "prose"]


def test_python_api_classify_and_evaluate(trained):
    import charrnn

    model = charrnn.load(trained / "run")
    assert model.labels == ["code", "prose"]
    ranked = model.classify(["def g(y): return y", "The sun is warm."])
    assert [r[0][0] for r in ranked] == ["code", "prose"]
    assert all(len(r) == 2 and r[0][1] >= r[1][1] and r[0][1] + r[1][1] == pytest.approx(1, abs=1e-5) for r in ranked)
    assert model.classify("import os, sys", top_k=1)[0][0][0] == "code"
    code, out, _ = invoke(["eval", "-c", trained / "run", "--json"])
    assert model.evaluate() == json.loads(out)
    with pytest.raises(charrnn.ConfigError, match="not a language model"):
        model.generate(length=5)
    with pytest.raises(charrnn.ConfigError, match="not a language model"):
        model.score("text")


def test_preparing_many_labels_maps_each_line_in_linear_time(tmp_path):
    # 60,000 lines of 60,000 labels: looking each label up in the sorted list (list.index) was quadratic,
    # minutes here; a dict maps them at once. The ids are the labels' places in sorted order.
    from charrnn.files import corpus
    from charrnn.runs import prepare
    from charrnn.files.config import TrainConfig

    rng = np.random.default_rng(0)
    names = [f"L{i}" for i in rng.permutation(60_000)]
    text = "".join(f"{name}\tx\n" for name in names)
    tc = TrainConfig(task="classify", mode="lines", val_frac=0.0, batch_size=2, seq_len=8)
    prepare.prepare_data(tmp_path, text, None, tc)
    labels = sorted(names)
    ids = corpus.load_ids(tmp_path / "data" / "train_labels.npy", mmap=False)
    assert [labels[i] for i in ids] == names


def test_eval_of_many_labels_prints_the_most_frequent_mistakes_not_a_table(tmp_path):
    n = 80  # above classifier.DENSE_CONFUSION_LABELS: a table would have n x n cells
    (tmp_path / "train.tsv").write_text("".join(f"L{i:02d}\tline {i} {'ab' * (i % 7)}\n" for i in range(n)) * 2)
    code, out, err = invoke(["train", tmp_path / "train.tsv", *TINY, "--val-frac", "0.1", "--max-steps", 1,
                             "--out", tmp_path / "run", "-q"])
    assert code == 0, err
    code, out, err = invoke(["eval", tmp_path / "train.tsv", "-c", tmp_path / "run"])
    assert code == 0, err
    lines = out.splitlines()
    assert f"confusion: {n} labels are too many for a table" in out and len(lines) <= 5 + 20
    code, js, err = invoke(["eval", tmp_path / "train.tsv", "-c", tmp_path / "run", "--json"])
    result = json.loads(js)
    assert result["confusion"] is None and sum(k for _, _, k in result["pairs"]) == 2 * n
    mistakes = sorted((k, t, p) for t, p, k in result["pairs"] if t != p)
    shown = [line.split() for line in lines[5:]]
    assert len(shown) == min(20, len(mistakes))
    labels = result["labels"]  # each shown line: count, true -> predicted, most frequent first
    assert all(int(s[0]) >= int(t[0]) for s, t in zip(shown, shown[1:]))
    assert {(labels[t], labels[p], k) for k, t, p in mistakes} >= {(s[1], s[3], int(s[0])) for s in shown}
