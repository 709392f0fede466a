"""charrnn eval and the scoring library: exact values, chunk independence, the CLI contract."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import cli
from charrnn.work import evaluate
from charrnn.tasks import lm
from charrnn.step import inference
from charrnn.core import model
from charrnn.runs import models
from charrnn.data.vocab import BOS, EOS, UNK
from reference import naive_forward
from tiny_runs import invoke, make_run

CHARS = "abcdefgho \n"
TEXT = ("bad cafe faced a bead\nhe fed a deaf dog\n" * 40)[:1500]


def zero_head(params, vocab):
    params["head.weight"][:] = 0
    params["head.bias"][:] = 0


def naive_nll(params, config, x, y, state=None):
    """Total NLL of targets y (B, T) given inputs x, from the naive reference model; and its final state."""
    logits, final = naive_forward(params, config, x, state)  # (B, T, V)
    z = logits - logits.max(axis=2, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=2, keepdims=True))
    return -np.take_along_axis(logp, y[..., None], axis=2)[..., 0], final  # (B, T)


def random_model(cell, dtype="float64", V=11, seed=0):
    config = model.ModelConfig(vocab_size=V, cell=cell, layers=2, hidden=10, embed=6, dtype=dtype)
    return model.init_params(config, np.random.default_rng(seed)), config


# ---------------------------------------------------------------- the library


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_score_chunk_matches_the_naive_reference(cell, backend):
    params, config = random_model(cell)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 11, (3, 17)), rng.integers(0, 11, (3, 17))
    mask = rng.random((3, 17)) < 0.6
    state = tuple(0.3 * rng.standard_normal(s.shape) for s in model.zero_state(config, 3))
    nll, final_ref = naive_nll(params, config, x, y, state)
    total, count, final = inference.score_chunk(model.prepare(params, config), x, y, mask, state)
    assert count == mask.sum()
    assert total == pytest.approx(nll[mask].sum(), rel=1e-12)
    for a, b in zip(final, final_ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_score_stream_does_not_depend_on_the_chunk_size(cell):
    params, config = random_model(cell)
    ids = np.random.default_rng(2).integers(0, 11, 1001)
    scores = [evaluate.score_stream(params, config, ids, streams=7, chunk=chunk, min_length=0, unk=UNK)
              for chunk in (1, 2, 7, 64, 143, 5000)]
    for s in scores[1:]:
        assert s.tokens == scores[0].tokens == 1000 and s.unknown == scores[0].unknown
        assert s.nll_sum == pytest.approx(scores[0].nll_sum, rel=1e-9)


def test_score_stream_float32_chunk_sizes_agree():
    params, config = random_model("lstm", "float32")
    ids = np.random.default_rng(3).integers(0, 11, 3000)
    losses = [evaluate.score_stream(params, config, ids, chunk=c).loss for c in (5, 64, 4000)]
    assert max(losses) - min(losses) < 1e-5 * losses[0]


def test_score_stream_equals_scoring_each_piece_from_a_zero_state():
    params, config = random_model("lstm")
    ids = np.random.default_rng(4).integers(0, 11, 42)  # 41 targets in 4 pieces of 11, 11, 11, 8
    score = evaluate.score_stream(params, config, ids, streams=4, chunk=5, min_length=0)
    expected = 0.0
    for start in range(0, 41, 11):
        end = min(start + 11, 41)
        expected += naive_nll(params, config, ids[None, start:end], ids[None, start + 1 : end + 1])[0].sum()
    assert score.tokens == 41
    assert score.nll_sum == pytest.approx(expected, rel=1e-12)
    # one stream: the whole text with all of its context
    whole = evaluate.score_stream(params, config, ids, streams=1, chunk=4)
    assert whole.nll_sum == pytest.approx(naive_nll(params, config, ids[None, :-1], ids[None, 1:])[0].sum(),
                                          rel=1e-12)


def test_stream_count_keeps_pieces_long():
    assert lm.stream_count(100_000, 128, 1000) == 96  # 100 rounded down to a multiple of 16
    assert lm.stream_count(10_000_000, 128, 1000) == 128
    assert lm.stream_count(15_500, 128, 1000) == 15  # 16 or fewer: not rounded
    assert lm.stream_count(33_000, 128, 1000) == 32
    assert lm.stream_count(500, 128, 1000) == 1
    assert lm.stream_count(100, 37, 0) == 37  # min_length 0: exactly min(streams, n_targets)
    params, config = random_model("gru")
    ids = np.random.default_rng(5).integers(0, 11, 2500)
    # 2499 targets at the default minimum length: two pieces, as if streams were 2
    assert evaluate.score_stream(params, config, ids).nll_sum == pytest.approx(
        evaluate.score_stream(params, config, ids, streams=2, min_length=0).nll_sum, rel=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_score_lines_does_not_depend_on_the_chunk_size_and_matches_the_reference(cell):
    params, config = random_model(cell)
    rng = np.random.default_rng(6)
    lines = [rng.integers(3, 11, rng.integers(1, 15)) for _ in range(9)]
    ids = np.concatenate(lines)
    offsets = np.concatenate([[0], np.cumsum([len(line) for line in lines])])
    scores = [evaluate.score_lines(params, config, ids, offsets, BOS, EOS, batch=4, chunk=c, unk=UNK)
              for c in (1, 3, 100)]
    expected = sum(naive_nll(params, config, np.concatenate([[BOS], line])[None],
                             np.concatenate([line, [EOS]])[None])[0].sum() for line in lines)
    for s in scores:
        assert s.tokens == len(ids) + len(lines)  # every token and every line's EOS
        assert s.nll_sum == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("dtype, rel", [("float64", 1e-12), ("float32", 1e-6)])
def test_zero_head_gives_perplexity_v(dtype, rel):
    params, config = random_model("lstm", dtype, V=37)
    zero_head(params, None)
    score = evaluate.score_stream(params, config, np.random.default_rng(7).integers(0, 37, 900))
    assert score.perplexity == pytest.approx(37, rel=rel)
    assert score.bits_per_token == pytest.approx(math.log2(37), rel=rel)
    assert score.loss == pytest.approx(math.log(37), rel=rel)


# ---------------------------------------------------------------- the command


@pytest.fixture
def run_dir(tmp_path):
    make_run(tmp_path / "run", CHARS, val_text=TEXT)
    return tmp_path / "run"


def eval_json(args):
    code, out, err = invoke(["eval", "--json"] + args)
    assert code == 0, err
    assert err.startswith("using ") and err.count("\n") == 1, err  # only the line naming the checkpoint
    assert out.count("\n") == 1 and out.endswith("\n")  # one line: exactly one JSON object
    return json.loads(out)


def test_json_has_the_keys_and_zero_head_is_exact(tmp_path):
    make_run(tmp_path / "run", CHARS, edit=zero_head, dtype="float64")
    (tmp_path / "text.txt").write_text(TEXT)
    result = eval_json([tmp_path / "text.txt", "-c", tmp_path / "run"])
    assert {"loss", "perplexity", "bits_per_token", "tokens", "unknown"} <= set(result)
    V = 3 + len(set(CHARS))
    assert result["perplexity"] == pytest.approx(V, rel=1e-12)
    assert result["bits_per_token"] == pytest.approx(math.log2(V), rel=1e-12)
    assert result["tokens"] == len(TEXT) - 1 and result["unknown"] == 0


def test_eval_counts_unknown_tokens(run_dir, tmp_path):
    text = "bad XcafeY\nfaZed\n" * 3  # X, Y, Z are not in the vocabulary
    (tmp_path / "odd.txt").write_text(text)
    code, out, err = invoke(["eval", "--json", "-q", tmp_path / "odd.txt", "-c", run_dir])
    result = json.loads(out)
    assert code == 0 and result["tokens"] == len(text) - 1
    assert result["unknown"] == 9
    assert err.startswith("Warning: 9 of the 50 tokens scored (18.0%) are not in the model's vocabulary.")  # > 1%


def test_eval_without_file_scores_the_stored_held_out_split(run_dir):
    result = eval_json(["-c", run_dir])
    params, config, vocab, _, _ = models.load_checkpoint(str(run_dir))
    expected = evaluate.score_stream(params, config, vocab.encode(TEXT), unk=UNK)
    assert result["tokens"] == len(TEXT) - 1
    assert result["loss"] == pytest.approx(expected.loss, rel=1e-12)
    code, out, err = invoke(["eval", "-c", run_dir, "--quiet"])
    assert code == 0 and err == ""
    assert "held-out split" in out and f"{expected.loss:.4f}" in out


def test_eval_lines_mode_held_out_and_file_agree(tmp_path):
    make_run(tmp_path / "names", "abcdefgh", mode="lines", val_text="abc\nbad\n\nfeed\ncab\n")
    (tmp_path / "names.txt").write_text("abc\nbad\nfeed\ncab")
    stored = eval_json(["-c", tmp_path / "names"])
    from_file = eval_json([tmp_path / "names.txt", "-c", tmp_path / "names"])
    assert stored == from_file
    assert stored["tokens"] == 13 + 4  # characters and one EOS per line


def test_stdout_stderr_split_and_one_line_errors(run_dir, tmp_path):
    result = CliRunner().invoke(cli.cli, ["eval", "-c", str(run_dir), "--json", "-q"])
    assert result.exit_code == 0 and result.stderr == ""
    assert json.loads(result.stdout)["tokens"] == len(TEXT) - 1
    # a model file away from its run has no held-out split: one line on stderr, nothing on stdout
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes())
    code, out, err = invoke(["eval", "-c", lone])
    assert code == 2 and out == ""  # a usage error: asks for a held-out split the model file has not got
    assert err.startswith("Error") and err.count("\n") == 1 and "pass a TEXT_FILE" in err, err
    # paths that do not exist are usage errors too (exit 2), whichever option names them
    for args, name in ((["eval", "-c", tmp_path / "nowhere"], "nowhere"),
                       (["eval", tmp_path / "nofile.txt", "-c", run_dir], "nofile.txt")):
        code, out, err = invoke(args)
        assert code == 2 and out == "" and "Traceback" not in err
        assert "does not exist" in err and name in err, err
    (tmp_path / "one.txt").write_text("a")
    code, out, err = invoke(["eval", tmp_path / "one.txt", "-c", run_dir])
    assert code == 1 and out == "" and "at least two tokens" in err


def test_sample_and_eval_a_run_made_by_train(tmp_path):
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("the cat sat on the mat. " * 150)
    code, _, err = invoke(["train", corpus_file, "--out", tmp_path / "run", "--hidden", 16, "--layers", 1,
                           "--embed", 8, "--batch-size", 4, "--seq-len", 16, "--max-steps", 3, "-q"])
    assert code == 0, err
    result = eval_json(["-c", tmp_path / "run"])
    assert result["tokens"] > 0 and math.isfinite(result["loss"])
    first = invoke(["sample", "-c", tmp_path / "run", "--seed", 3, "--length", 60, "--prime", "the "])
    again = invoke(["sample", "-c", tmp_path / "run", "--seed", 3, "--length", 60, "--prime", "the "])
    assert first[0] == 0 and first == again and first[1].startswith("the ")


# the kinds of boundary a chunk can fall on: multi-byte characters, CRLF and a lone CR, blank and
# whitespace-only lines, runs of spaces, unknown characters, a last line without its end
FILE_TEXT = ("bad cafe\r\nfaced  a bead\rhe fed\n\n   \n\ta deaf dög, é日本🎉 hog\n" * 7 + "go ahead  be\tdone").encode()


@pytest.mark.parametrize("mode", ["stream", "lines"])
@pytest.mark.parametrize("level", ["char", "word"])
@pytest.mark.parametrize("chunk", [1, 3, 16, 1 << 20])
def test_scoring_a_file_in_chunks_is_scoring_its_text(tmp_path, mode, level, chunk):
    from charrnn.files import corpus
    from charrnn.data.vocab import build_vocab

    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbf" + FILE_TEXT)
    vocab = build_vocab("bad cafe faced a bead he fed\n", level)
    config = model.ModelConfig(vocab_size=vocab.size, cell="gru", layers=1, hidden=6, embed=4, dtype="float64")
    params = model.init_params(config, np.random.default_rng(3))
    lines = mode == "lines"
    expected = evaluate.score_text(params, config, vocab, corpus.read_text(path), lines)
    got = evaluate.score_file(params, config, vocab, path, lines, chunk_bytes=chunk)
    assert (got.tokens, got.unknown) == (expected.tokens, expected.unknown) and expected.unknown > 0
    assert got.nll_sum == pytest.approx(expected.nll_sum, rel=1e-12)


def test_scoring_a_long_file_holds_neither_its_text_nor_its_ids(tmp_path):
    import tracemalloc

    params, config, vocab, _ = make_run(tmp_path / "run", CHARS, layers=1, hidden=4, embed=2)
    (tmp_path / "big.txt").write_text(TEXT * 1000)  # 1.5 MB: its bytes, text and ids in memory would be 4.5 MB
    tracemalloc.start()
    try:
        score = evaluate.score_file(params, config, vocab, tmp_path / "big.txt", False, chunk_bytes=1 << 16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert score.tokens == len(TEXT) * 1000 - 1
    assert peak < 3 << 20  # a chunk of text and its ids, and a forward step's (streams, steps, V) temporaries
