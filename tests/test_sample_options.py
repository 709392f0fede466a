"""What users of the peers reach for in `charrnn sample`: a prime from a file, stop strings (with the
reason each sample ended), several temperatures in one call."""

import pytest

import charrnn
from charrnn.data.vocab import EOS
from tiny_runs import invoke, make_run

CHARS = "abcdefg \n"


def _rare_eos(params, vocab):
    params["head.bias"][EOS] = -4.0  # random weights would end most samples within a few dozen tokens


@pytest.fixture
def run_dir(tmp_path):
    make_run(tmp_path / "run", CHARS, edit=_rare_eos)
    return tmp_path / "run"


@pytest.mark.parametrize("stop", [("a",), ("g ",), ("\n", "bc"), ("never there",)])
def test_a_stopped_sample_is_the_unstopped_one_cut_after_the_first_stop_string(run_dir, stop):
    model = charrnn.load(str(run_dir))
    full = [("".join(s), s) for s in model.sample_stream(7, prime="ab", length=150, seed=4)]
    cut = [("".join(s), s) for s in model.sample_stream(7, prime="ab", length=150, seed=4, stop=stop)]
    for (text, plain), (got, sample) in zip(full, cut):
        ends = [(text.find(s) + len(s), s) for s in stop if s in text]  # the reference: str.find on the whole
        if ends:
            end, which = min(ends)
            assert got == text[:end] and sample.ended == "stop" and sample.stop_string == which
        else:
            assert got == text and sample.ended == plain.ended
        assert plain.ended == ("length" if len(text) == 150 else "eos")
    assert model.generate(prime="ab", length=150, seed=4, stop=stop) == "ab" + "".join(
        model.stream(prime="ab", length=150, seed=4, stop=stop))


def test_stop_strings_are_checked():
    from charrnn.api import _stop_strings

    assert _stop_strings("x") == ("x",) and _stop_strings(["a", "b"]) == ("a", "b") and _stop_strings(None) == ()
    with pytest.raises(charrnn.ConfigError, match="stop string"):
        _stop_strings(["a", ""])


def test_stop_on_the_command_line_says_why_each_sample_ended(run_dir):
    model = charrnn.load(str(run_dir))
    texts = ["".join(s) for s in model.sample_stream(4, length=60, seed=2)]
    r = invoke(["sample", "-c", run_dir, "-n", 4, "--length", 60, "--seed", 2, "--stop", "\\n", "--stop", "fg"])
    assert r.exit_code == 0, r.stderr
    reasons = [line for line in r.stderr.splitlines() if line.startswith("sample ")]
    assert len(reasons) == 4
    expected = []
    for i, text in enumerate(texts, 1):
        ends = sorted((text.find(s) + len(s), s) for s in ("\n", "fg") if s in text)
        if ends:
            expected.append(f"sample {i}: ended at the stop string {ends[0][1]!r}")
            texts[i - 1] = text[: ends[0][0]]
        elif len(text) == 60:
            expected.append(f"sample {i}: reached the length limit (60 characters)")
        else:
            expected.append(f"sample {i}: ended at the end-of-sequence token")
    assert reasons == expected
    assert r.stdout == "\n\n".join(texts) + "\n"
    assert "sample 1:" not in invoke(["sample", "-c", run_dir, "--length", 20, "--seed", 2]).stderr  # only with --stop


def test_prime_file_is_the_prime(run_dir, tmp_path):
    prime = tmp_path / "prime.txt"
    prime.write_bytes(b"abc\r\ndef")  # read as a corpus is: "\r\n" becomes "\n"
    a = invoke(["sample", "-c", run_dir, "--prime-file", prime, "--length", 50, "--seed", 3])
    b = invoke(["sample", "-c", run_dir, "--prime", "abc\ndef", "--length", 50, "--seed", 3])
    assert a.exit_code == 0 and a.stdout == b.stdout and a.stdout.startswith("abc\ndef")
    both = invoke(["sample", "-c", run_dir, "--prime-file", prime, "--prime", "x"])
    assert both.exit_code == 2 and "--prime or --prime-file, not both" in both.stderr
    missing = invoke(["sample", "-c", run_dir, "--prime-file", tmp_path / "nope.txt"])
    assert missing.exit_code != 0 and missing.stderr.count("\n") == 1 and "nope.txt" in missing.stderr


def test_several_temperatures_are_each_labelled(run_dir):
    one = [invoke(["sample", "-c", run_dir, "-n", 2, "--length", 40, "--seed", 5, "--temp", t]) for t in ("0.5", "1")]
    both = invoke(["sample", "-c", run_dir, "-n", 2, "--length", 40, "--seed", 5, "--temp", "0.5,1"])
    assert both.exit_code == 0, both.stderr
    assert both.stdout == one[0].stdout + "\n" + one[1].stdout  # a blank line between the groups
    labels = [line for line in both.stderr.splitlines() if line.startswith("temperature")]
    assert labels == ["temperature 0.5: 2 samples", "temperature 1: 2 samples"]
    for bad in ("0.5,x", "0.5,,1"):
        r = invoke(["sample", "-c", run_dir, "--temp", bad])
        assert r.exit_code == 2 and "--temp" in r.stderr and r.stdout == ""
    r = invoke(["sample", "-c", run_dir, "--temp", "0.5,-1"])  # each is checked before anything is written
    assert r.exit_code == 2 and r.stdout == ""


def test_eval_reads_standard_input_as_it_reads_a_file(run_dir, tmp_path):
    import json

    from click.testing import CliRunner

    from charrnn import cli

    data = "abc def\r\ngab fed\n".encode() * 40
    (tmp_path / "t.txt").write_bytes(data)
    from_file = invoke(["eval", tmp_path / "t.txt", "-c", run_dir, "--json", "-q"])
    with CliRunner().isolation(input=data) as (out, err, _):
        try:
            cli.main(["eval", "-", "-c", str(run_dir), "--json", "-q"])
        except SystemExit as exc:
            assert exc.code in (0, None), err.getvalue()
    assert from_file.exit_code == 0 and json.loads(out.getvalue()) == json.loads(from_file.stdout)
    with CliRunner().isolation(input=data) as (out, err, _):
        cli.main(["eval", "-", "-c", str(run_dir)])
    assert out.getvalue().decode().startswith("standard input: 639 tokens scored")


def test_a_lines_models_prime_file_is_the_start_of_a_line(tmp_path):
    make_run(tmp_path / "names", "abcdefg", mode="lines", edit=_rare_eos)
    (tmp_path / "p.txt").write_text("ab\n")  # as an editor saves it
    a = invoke(["sample", "-c", tmp_path / "names", "--prime-file", tmp_path / "p.txt", "--seed", 1, "-n", 3])
    b = invoke(["sample", "-c", tmp_path / "names", "--prime", "ab", "--seed", 1, "-n", 3])
    assert a.exit_code == 0 and a.stdout == b.stdout, a.stderr


def test_a_printed_score_shows_the_loss_and_perplexity(run_dir):
    import math

    score = charrnn.load(str(run_dir)).score("abc defg abc\n" * 10)
    shown = repr(score)
    assert f"loss {score.loss:.4f} nats/token" in shown and f"perplexity {math.exp(score.loss):.4g}" in shown
    assert f"{score.tokens:,} tokens" in shown and "nll_sum" not in shown and str(score) == shown
