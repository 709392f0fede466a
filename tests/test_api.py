"""The Python API (charrnn.load / Model / charrnn.train): the same text, scores and errors as the CLI."""

import json
import os

import numpy as np
import pytest

import charrnn
from charrnn.files import checkpoint, layout
from charrnn.errors import CheckpointError, ConfigError, CorpusError, VocabError
from tiny_runs import invoke, make_run

CHARS = "abcdefgh \n"
TEXT = ("bad cafe faced a bead\nhe fed a deaf dog\n" * 30)[:1000]


@pytest.fixture
def stream_run(tmp_path):
    make_run(tmp_path / "run", CHARS, val_text=TEXT)
    return tmp_path / "run"


@pytest.fixture
def lines_run(tmp_path):
    make_run(tmp_path / "lines", CHARS, mode="lines", cell="gru", val_text=TEXT)
    return tmp_path / "lines"


def test_load_picks_best_not_latest_like_the_cli(stream_run):
    # a best.safetensors with other weights beside model.safetensors: both the API and the CLI take best
    make_run(stream_run.parent / "other", CHARS, seed=7)
    os.replace(stream_run.parent / "other" / layout.MODEL_FILE, stream_run / layout.BEST_FILE)
    m = charrnn.load(str(stream_run))
    assert m.path == str(stream_run / layout.BEST_FILE)
    best, _, _ = checkpoint.load_model(stream_run / layout.BEST_FILE)
    np.testing.assert_array_equal(m.params["head.weight"], best["head.weight"])
    code, out, _ = invoke(["eval", "-c", stream_run, "--json"])
    assert code == 0
    assert json.loads(out)["loss"] == m.score().loss


@pytest.mark.parametrize("which", ["stream_run", "lines_run"])
def test_generate_is_the_text_sample_prints(which, request):
    run = request.getfixturevalue(which)
    m = charrnn.load(str(run))
    for prime, seed, temp in [("", 1, 1.0), ("bad", 3, 0.7), ("he", 5, 0)]:
        code, out, err = invoke(["sample", "-c", run, "--prime", prime, "--seed", seed, "--temp", temp,
                                 "--length", 80])
        assert code == 0, err
        text = m.generate(prime=prime, length=80, temperature=temp, seed=seed)
        assert out == text + "\n"
        assert "".join(m.stream(prime=prime, length=80, temperature=temp, seed=seed)) == text[len(prime):]
    assert m.generate(length=80, seed=1) != m.generate(length=80, seed=2)


def test_samples_are_the_batch_sample_n_prints(stream_run):
    m = charrnn.load(str(stream_run))
    code, out, _ = invoke(["sample", "-c", stream_run, "-n", 3, "--seed", 4, "--prime", "a", "--length", 30])
    texts = m.samples(3, prime="a", length=30, seed=4)
    assert code == 0 and len(texts) == 3
    assert out == "\n\n".join(texts) + "\n"


def test_score_is_what_eval_prints(stream_run, lines_run, tmp_path):
    (tmp_path / "t.txt").write_text(TEXT[:300])
    for run in (stream_run, lines_run):
        m = charrnn.load(str(run))
        for args, score in [([], m.score()), ([tmp_path / "t.txt"], m.score(TEXT[:300]))]:
            code, out, _ = invoke(["eval", *args, "-c", run, "--json"])
            assert code == 0
            assert json.loads(out) == score.as_dict()
        s = m.score("bad cafe zzz")
        # a stream's first token is context only; a line is scored from its start token through its end
        assert s.unknown == 3 and s.tokens == (13 if m.lines else 11)
        assert s.perplexity == pytest.approx(np.exp(s.loss)) and s.bits_per_token == pytest.approx(s.loss / np.log(2))


def test_errors_are_library_types_with_the_cli_message(stream_run, tmp_path):
    m = charrnn.load(str(stream_run))
    # exit 2 for a usage error (ConfigError: an option value), 1 for the rest (docs/commands.md, "Exit status")
    # the same message, each naming the setting in its own front end's language (errors.option)
    cases = [
        (lambda: m.generate(prime="xyz"), VocabError, ["sample", "-c", stream_run, "--prime", "xyz"], 1, None),
        (lambda: m.generate(temperature=-1.0), ConfigError, ["sample", "-c", stream_run, "--temp", "-1"], 2,
         ("temperature=", "--temp")),
    ]
    for call, kind, args, exit_code, spelled in cases:
        with pytest.raises(kind) as caught:
            call()
        code, out, err = invoke(args)
        assert code == exit_code and out == ""
        message = str(caught.value)
        if spelled:
            assert spelled[0] in message and spelled[1] not in message
            message = message.replace(*spelled)
        assert err == f"Error: {message}\n"
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        charrnn.load(str(tmp_path / "nowhere"))
    code, out, err = invoke(["eval", "-c", tmp_path / "nowhere"])  # on the command line: a usage error
    assert code == 2 and out == "" and "does not exist" in err
    with pytest.raises(CorpusError, match="nothing to score"):
        m.score("a")
    with pytest.raises(CorpusError, match="no such file"):
        charrnn.train(str(tmp_path / "missing.txt"), out=str(tmp_path / "r"))


def test_train_returns_the_run_directory_and_resumes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3)
    events = []
    run = charrnn.train(str(corpus), out=str(tmp_path / "r"), max_steps=4, hidden=8, embed=4, layers=1,
                        batch_size=2, seq_len=8, eval_every=2, on_event=lambda e, r: events.append(e["event"]))
    assert run == str(tmp_path / "r")
    assert events[0] == "message" and "start" in events and events[-1] == "end"
    m = charrnn.load(run)
    assert m.training["step"] <= 4 and m.config.hidden == 8
    again = charrnn.train(resume=run, max_steps=6)
    assert again == run
    assert checkpoint.load_model(os.path.join(run, layout.MODEL_FILE))[2]["training"]["step"] == 6
    with pytest.raises(ConfigError, match="hidden= cannot be given with resume="):
        charrnn.train(resume=run, hidden=16)
    with pytest.raises(ConfigError, match="unknown training option 'hiden'"):
        charrnn.train(str(corpus), out=str(tmp_path / "r2"), hiden=16)
    with pytest.raises(ConfigError, match="not a duration"):
        charrnn.train(str(corpus), out=str(tmp_path / "r2"), max_time="soon")
    assert not (tmp_path / "r2").exists()
