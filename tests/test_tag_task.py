"""`--task tag` end to end: training from JSON Lines and CoNLL at char and word level, the held-out split,
bitwise resume (after steps, and after SIGINT), row blocks on threads, `charrnn tag` (JSON Lines and CoNLL
out, reading its own output back), `charrnn eval` on a tagger, the Python API against the CLI, and the
one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import charrnn
from charrnn.core import tagger
from charrnn.files import checkpoint
from test_reliability import CHILD_ENV, charrnn_run
from tiny_runs import REFERENCE, invoke, read_log

TINY = ["--task", "tag", "--layers", "1", "--hidden", "10", "--embed", "6", "--batch-size", "4",
        "--dropout", "0", "--schedule", "constant", "--warmup", "0", "--optim", "adam", "--lr", "0.03", "-q"]
WORDS = "harry potter and hermione granger invented a new spell in london".split()


def case_jsonl(n: int, seed: int = 0) -> str:
    """Char level: each character tagged U (capital), L (small) or S (space)."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        words = [WORDS[i].capitalize() if rng.random() < 0.3 else WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(2, 6))]
        text = " ".join(words)
        lines.append(json.dumps({"tokens": text, "tags": ["U" if c.isupper() else "L" if c.islower() else "S" for c in text]}))
    return "\n".join(lines) + "\n"


def ner_conll(n: int, seed: int = 0) -> str:
    """Word level, CoNLL columns: Harry Potter is B-PER I-PER, London B-LOC, other words O."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        for _ in range(rng.integers(2, 6)):
            r = rng.random()
            if r < 0.3:
                out += ["Harry\tB-PER", "Potter\tI-PER"]
            elif r < 0.45:
                out.append("London\tB-LOC")
            else:
                out.append(f"{WORDS[rng.integers(2, 9)]}\tO")
        out.append("")
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tag")
    (root / "case.jsonl").write_text(case_jsonl(120))
    (root / "ner.conll").write_text(ner_conll(120))
    for name, corpus, extra in (("char", "case.jsonl", ["--bidirectional"]), ("word", "ner.conll", ["--level", "word"])):
        code, _, err = invoke(["train", root / corpus, *TINY, *extra, "--max-steps", 60, "--eval-every", 20,
                               "--out", root / name])
        assert code == 0, err
    return root


def test_training_learns_and_saves_the_tags(runs):
    model = charrnn.load(str(runs / "char"))
    assert model.labels == ["L", "S", "U"]
    evals = [r for r in read_log(runs / "char") if "val_loss" in r]
    assert evals[-1]["step"] == 60 and evals[-1]["val_loss"] < evals[0]["val_loss"] / 2
    [result] = model.tag(["Harry in London"])
    assert result.tokens == list("Harry in London") and len(result.tags) == len(result.probs) == 15
    assert sum(t == g for t, g in zip(result.tags, "ULLLLSLLSULLLLL")) >= 12
    code, out, err = invoke(["info", runs / "char"])
    assert code == 0 and "bidirectional tagger over 3 tags (L, S, U)" in out, err
    assert "loads into torch.nn.LSTM(bidirectional=True)" in out and "tagged sequences" in out


def test_eval_on_the_held_out_split_and_on_a_file_agree_with_the_api(runs, tmp_path):
    code, out, err = invoke(["eval", "-c", runs / "word", "--json"])
    assert code == 0, err
    held = json.loads(out)
    assert held["tokens"] > 0 and set(held) >= {"accuracy", "tags", "entities", "confusion", "loss"}
    (tmp_path / "test.conll").write_text(ner_conll(20, seed=5))
    code, out, err = invoke(["eval", tmp_path / "test.conll", "-c", runs / "word", "--json"])
    assert code == 0, err
    cli = json.loads(out)
    api = charrnn.load(str(runs / "word")).evaluate((tmp_path / "test.conll").read_text(), name="test.conll")
    assert cli == json.loads(json.dumps(api))
    assert cli["entities"]["types"][0]["type"] == "LOC" and cli["entities"]["f1"] > 0.5
    code, out, err = invoke(["eval", tmp_path / "test.conll", "-c", runs / "word"])
    assert code == 0, err
    assert "token accuracy" in out and "entities" in out and "B-PER" in out


def test_tag_writes_json_lines_and_conll_and_reads_its_own_output(runs, tmp_path):
    text = "Harry met Potter\nin London today\n"
    code, out, err = invoke(["tag", "-", "-c", runs / "word"], input=text)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["tokens"] for r in rows] == [["Harry", "met", "Potter"], ["in", "London", "today"]]
    assert all(len(r["tags"]) == len(r["probs"]) == 3 and all(0 < p <= 1 for p in r["probs"]) for r in rows)
    code, again, err = invoke(["tag", "-", "-c", runs / "word"], input=out)
    assert code == 0 and again == out, err
    api = charrnn.load(str(runs / "word")).tag([["Harry", "met", "Potter"], "in London today"])
    assert [r.as_json() for r in api] == out.splitlines()
    code, conll, err = invoke(["tag", "-", "-c", runs / "word", "--format", "conll"], input=text)
    assert code == 0, err
    blocks = conll.strip("\n").split("\n\n")
    assert [[line.split("\t")[:2] for line in b.split("\n")] for b in blocks] == \
        [[[t, g] for t, g in zip(r["tokens"], r["tags"])] for r in rows]


def test_steps_in_one_go_equal_steps_then_resume_on_threads(tmp_path):
    (tmp_path / "case.jsonl").write_text(case_jsonl(60))
    common = [tmp_path / "case.jsonl", *TINY, "--bidirectional", "--threads", 2, "--eval-every", 3]
    assert invoke(["train", *common, "--max-steps", 8, "--out", tmp_path / "whole"])[0] == 0
    assert invoke(["train", *common, "--max-steps", 4, "--out", tmp_path / "split"])[0] == 0
    code, _, err = invoke(["train", "--resume", tmp_path / "split", "--max-steps", 8, "-q"])
    assert code == 0, err
    a, _ = checkpoint.load_state(tmp_path / "whole" / "state.safetensors")
    b, _ = checkpoint.load_state(tmp_path / "split" / "state.safetensors")
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
def test_sigint_then_resume_equals_an_uninterrupted_run(tmp_path):
    (tmp_path / "case.jsonl").write_text(case_jsonl(60))
    common = [str(tmp_path / "case.jsonl"), *TINY, "--bidirectional", "--eval-every", "1"]
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "train", *common, "--max-steps", "100000",
                             "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**CHILD_ENV, **REFERENCE})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and \
                not (os.path.exists(run / "log.jsonl") and (run / "log.jsonl").read_bytes().count(b"\n") >= 3):
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in stderr
    step = checkpoint.load_state(run / "state.safetensors")[1]["progress"]["step"]
    code, _, err = charrnn_run("train", "--resume", run, "--max-steps", step + 2, "-q")
    assert code == 0, err
    code, _, err = charrnn_run("train", *common, "--max-steps", step + 2, "--out", tmp_path / "ref")
    assert code == 0, err
    a, _ = checkpoint.load_state(run / "state.safetensors")
    b, _ = checkpoint.load_state(tmp_path / "ref" / "state.safetensors")
    for name in a:
        assert np.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("text,fragment", [
    ('{"tokens": ["a", "b"], "tags": ["x"]}\n', "line 1: 2 tokens but 1 tags"),
    ('{"tokens": "ab", "tags": ["x", "y"]}\n{"tokens": "ab", "tags": ["x", "y"]\n', "line 2: bad JSON"),
    ("a\tx\nb\n", "line 2: no TAB: a missing tag"),
    ('{"tokens": [], "tags": []}\n', "line 1: an empty sequence"),
    ('{"tokens": "ab", "tags": ["x", "x"]}\n', "at least 2 tags"),
])
def test_malformed_files_are_one_line_errors(tmp_path, text, fragment):
    (tmp_path / "bad.jsonl").write_text(text)
    code, out, err = invoke(["train", tmp_path / "bad.jsonl", *TINY, "--max-steps", 2, "--out", tmp_path / "r"])
    assert code != 0 and fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_options_a_tagger_cannot_take_are_one_line_errors(runs, tmp_path):
    for args, fragment in ((["--mode", "stream"], "--mode stream"), ([], "built-in corpus"),
                           (["--pool", "last"], "--pool pools a classifier's outputs")):
        corpus = [] if not args else [runs / "case.jsonl"]
        code, _, err = invoke(["train", *corpus, *TINY, *args, "--max-steps", 2, "--out", tmp_path / "x"])
        assert code != 0 and fragment in err and "Traceback" not in err, err
    code, _, err = invoke(["sample", "-c", runs / "char"])
    assert code != 0 and "tagger" in err and "Traceback" not in err


def test_metrics_of_a_run_match_a_hand_count_through_the_api(runs):
    model = charrnn.load(str(runs / "char"))
    seqs = ["Hi you", "ok"]
    tags = [["U", "L", "S", "L", "L", "L"], ["L", "U"]]
    text = "".join(json.dumps({"tokens": s, "tags": t}) + "\n" for s, t in zip(seqs, tags))
    result = model.evaluate(text)
    predicted = [r.tags for r in model.tag(seqs)]
    right = sum(p == t for ps, ts in zip(predicted, tags) for p, t in zip(ps, ts))
    assert result["tokens"] == 8 and result["accuracy"] == pytest.approx(right / 8)
    assert result["entities"] is None and result["labels"] == ["L", "S", "U"]
    assert tagger.is_bio(["O", "B-PER"])


def test_annotate_writes_the_tag_page_and_json_records(runs, tmp_path):
    text = "Harry met Potter\nin London\n"
    (tmp_path / "in.txt").write_text(text)
    code, _, err = invoke(["annotate", tmp_path / "in.txt", "-c", runs / "word", "--out", tmp_path / "p.html"])
    assert code == 0 and "5 tokens in 2 sequences" in err, err
    html = (tmp_path / "p.html").read_text()
    data = json.loads(html[html.index('type="application/json">') + 24:html.index("</script>")])
    tagged = charrnn.load(str(runs / "word")).tag(text.splitlines())
    assert [s[0] for s in data["sequences"]] == [r.tokens for r in tagged]
    assert [[data["tags"][t] for t in s[1]] for s in data["sequences"]] == [r.tags for r in tagged]
    code, out, err = invoke(["annotate", "-", "-c", runs / "word", "--json"], input=text)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["tags"] for r in records] == [r.tags for r in tagged]
    assert all(abs(sum(p.values()) - 1) < 1e-5 for r in records for p in r["probs"])
    code, _, err = invoke(["annotate", "-c", runs / "word", "--out", tmp_path / "held.html"])  # the held-out split
    assert code == 0 and (tmp_path / "held.html").exists(), err
    code, _, err = invoke(["annotate", "-", "-c", runs / "word", "--json", "--states"], input=text)
    assert code != 0 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("Error: --states")


def test_tag_refuses_bad_input_and_other_models_in_one_line(runs, tmp_path):
    from tiny_runs import make_run

    (tmp_path / "bad.jsonl").write_text('Harry met\n{"tokens": ["a", "b"\n')
    make_run(tmp_path / "lm", "abc de\n")
    for args, fragment in ((["tag", tmp_path / "bad.jsonl", "-c", runs / "word"], "bad.jsonl: line 2: bad JSON"),
                           (["tag", "/dev/zero", "-c", runs / "word"], "Error: "),
                           (["tag", "-", "-c", tmp_path / "lm"], "not a tagger"),
                           (["classify", "-", "-c", runs / "word"], "this model is a tagger"),
                           (["tag", "-", "-c", runs / "word", "--format", "xml"], "--format")):
        code, out, err = invoke(args, input="Harry\n")
        assert code != 0 and out == "" and fragment in err and "Traceback" not in err, (args, err)
        assert len([line for line in err.splitlines() if line.startswith("Error")]) == 1
    code, out, err = invoke(["tag", "-", "-c", runs / "word"], input="\n  \n")  # nothing to tag: nothing out
    assert code == 0 and out == "", err


def test_control_characters_in_tokens_or_tags_never_reach_the_terminal_raw(runs, tmp_path):
    """A hostile model file's tags and a hostile input's tokens: `charrnn tag` escapes every character that is
    not printable, as JSON escapes (its lines still read back) or, in CoNLL columns, as the CLI escapes text."""
    import shutil

    from charrnn.files import layout
    from test_hostile import read_file, terminal_safe, write_raw

    run = tmp_path / "run"
    shutil.copytree(runs / "word", run)
    hostile_tags = ["\x1b]0;pwned\x07", "\u202eB-PER", "I-PER\x9b", "O"]
    for name in (layout.BEST_FILE, layout.MODEL_FILE):
        arrays, meta = read_file(run / name)
        meta["tags"] = hostile_tags
        write_raw(run / name, arrays, meta)
    line = json.dumps({"tokens": ["Harry\x1b[2J", "\u202emet", "\ud800x", "tab\there"[:3]]})
    code, out, err = invoke(["tag", "-", "-c", run], input=line + "\n")
    assert code == 0 and terminal_safe(out) and terminal_safe(err), err
    [row] = [json.loads(x) for x in out.splitlines()]
    assert row["tokens"] == ["Harry\x1b[2J", "\u202emet", "\ud800x", "tab"] and set(row["tags"]) <= set(hostile_tags)
    code, out, err = invoke(["tag", "-", "-c", run, "--format", "conll"], input=line + "\n")
    assert code == 0 and terminal_safe(out), err
    assert [len(x.split("\t")) for x in out.strip("\n").split("\n")] == [3, 3, 3, 3]
    code, out, err = invoke(["eval", "-c", run])
    assert code == 0 and terminal_safe(out) and terminal_safe(err), err


def test_a_validation_file_is_the_held_out_split_and_its_tags_must_be_known(tmp_path):
    (tmp_path / "train.conll").write_text(ner_conll(40))
    (tmp_path / "val.conll").write_text(ner_conll(8, seed=9))
    code, _, err = invoke(["train", tmp_path / "train.conll", "--val", tmp_path / "val.conll", *TINY, "--level", "word",
                           "--max-steps", 6, "--out", tmp_path / "run"])
    assert code == 0, err
    model = charrnn.load(str(tmp_path / "run"))
    held, of_file = model.evaluate(), model.evaluate((tmp_path / "val.conll").read_text())
    assert held == of_file and held["lines"] == 8
    (tmp_path / "odd.conll").write_text("Harry\tB-ORG\n")
    code, _, err = invoke(["train", tmp_path / "train.conll", "--val", tmp_path / "odd.conll", *TINY, "--level", "word",
                           "--max-steps", 2, "--out", tmp_path / "run2"])
    assert code != 0 and "the tag 'B-ORG' is not one of the training text's tags" in err and "Traceback" not in err


def test_tagging_in_blocks_equals_tagging_at_once(runs):
    model = charrnn.load(str(runs / "char"))
    texts = [case_jsonl(1, seed=s).split('"tokens": "')[1].split('"')[0] for s in range(7)]
    whole = model.tag(texts)
    sequences = [list(t) for t in texts]
    blocks = list(model.task.tag_blocks(model.params, model.config, model.vocab, model.labels, iter(sequences),
                                        block_tokens=20))
    assert [b.as_json() for b in blocks] == [w.as_json() for w in whole]
