"""charrnn sample and the sampling library: distribution, options, stopping, the CLI contract."""

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import cli
from charrnn.step import inference
from charrnn.core import model
from charrnn.runs import models
from charrnn.work import sampling
from charrnn.errors import CheckpointError, ConfigError, VocabError
from charrnn.data.vocab import BOS, EOS, UNK
from reference import naive_probs, naive_step
from tiny_runs import REFERENCE, invoke, make_run

CHARS = "abcdefg "  # no newline: stream samples then hold no line breaks of their own
BANNED = np.array([UNK, BOS])

# chi-square critical values at p = 0.001 by degrees of freedom (a fixed seed makes each test deterministic;
# the small p keeps a correct sampler far from the line)
CHI2_999 = {3: 16.266, 7: 24.322, 9: 27.877}


def chi_square(counts, probs):
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token of zero probability was drawn"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def greedy_reference(params, config, start, length):
    """Greedy decoding with the naive reference: argmax over all tokens but UNK and BOS, stopping at EOS."""
    state = model.zero_state(config, 1)
    for token in start:
        logits, state = naive_step(params, config, np.array([token]), state)
    out = []
    for _ in range(length):
        z = logits[0].astype(np.float64)
        z[BANNED] = -np.inf
        token = int(z.argmax())
        out.append(token)
        if token == EOS:
            break
        logits, state = naive_step(params, config, np.array([token]), state)
    return out


def model_of(run_dir):
    params, config, vocab, _, _ = models.load_checkpoint(str(run_dir))
    return params, config, vocab


def sampling_text(run_dir, tokens):
    """The text of one sample's tokens: up to its first EOS."""
    vocab = model_of(run_dir)[2]
    ends = np.flatnonzero(tokens == EOS)
    return vocab.decode(tokens[: ends[0] if ends.size else len(tokens)])


def run_generate(params, config, vocab, **options):
    """All steps of generate as two arrays: tokens (steps, n) and alive (steps, n)."""
    steps = list(sampling.generate(params, config, vocab, **options))
    return np.stack([t for t, _ in steps]), np.stack([a for _, a in steps])


# weight edits for make_run


def no_eos(params, vocab):
    params["head.bias"][EOS] = -50.0


def rare_eos(params, vocab):
    params["head.bias"][EOS] = -4.0  # random weights would end most samples within a few dozen tokens


FIXED = np.array([-50.0, 3.0, 2.5, 0.2, 1.4, -0.3, 0.9, 2.1, 0.0, -1.2, 1.1], dtype=np.float32)  # EOS never


def fixed_distribution(params, vocab):
    """Logits equal to FIXED at every step, whatever the state: draws are independent."""
    params["head.weight"][:] = 0
    params["head.bias"][:] = FIXED


@pytest.fixture
def tiny(tmp_path):
    params, config, vocab, _ = make_run(tmp_path / "run", CHARS)
    return params, config, vocab


# ---------------------------------------------------------------- the fast step is the model's step


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("table", [True, False])
@pytest.mark.parametrize("B", [1, 4])
def test_inference_step_matches_the_naive_reference(cell, dtype, tol, table, B, backend):
    config = model.ModelConfig(vocab_size=13, cell=cell, layers=3, hidden=12, embed=5, dtype=dtype)
    params = model.init_params(config, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    weights = model.prepare(params, config, table=table)
    assert (weights.table is not None) == table
    state = tuple((0.5 * rng.standard_normal(s.shape)).astype(dtype) for s in model.zero_state(config, B))
    ref = tuple(s.astype(np.float64) for s in state)
    frozen = {k: v.copy() for k, v in params.items()}
    for tokens in [rng.integers(0, 13, B) for _ in range(4)] * 2:  # each batch of tokens twice
        ref_logits, ref = naive_step(frozen, config, tokens, ref)
        logits, state = inference.step(weights, tokens, state)
        assert logits.dtype == np.dtype(dtype)
        np.testing.assert_allclose(logits, ref_logits, rtol=tol, atol=tol)
        for a, b in zip(state, ref):
            assert a.dtype == np.dtype(dtype)
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    for name, value in params.items():  # the weights are only read
        np.testing.assert_array_equal(value, frozen[name])


# ---------------------------------------------------------------- the distribution


def test_temperature_zero_is_argmax(tiny):
    params, config, vocab = tiny
    tokens, alive = run_generate(params, config, vocab, rng=np.random.default_rng(0), num_samples=3,
                                 length=40, temperature=0.0, prime="ab")
    expected = greedy_reference(params, config, vocab.encode("ab"), 40)
    assert tokens[:, 0].tolist() == expected
    assert (tokens == tokens[:, :1]).all()  # greedy samples are identical


def test_top_k_one_and_tiny_top_p_are_greedy(tiny):
    params, config, vocab = tiny
    greedy = run_generate(params, config, vocab, rng=np.random.default_rng(0), length=30, temperature=0.0)[0]
    for options in ({"top_k": 1}, {"top_p": 1e-9}):
        tokens = run_generate(params, config, vocab, rng=np.random.default_rng(5), length=30, **options)[0]
        np.testing.assert_array_equal(tokens, greedy)


def test_first_tokens_follow_the_softmax_chi_square(tmp_path):
    def sharpen(params, vocab):
        params["head.weight"] *= 6.0  # a peaked distribution makes the test discriminating
    params, config, vocab, _ = make_run(tmp_path / "run", CHARS[:7], edit=sharpen)
    n = 20_000
    tokens, _ = run_generate(params, config, vocab, rng=np.random.default_rng(123), num_samples=n,
                             length=1, prime="ab")
    logits, state = naive_step(params, config, np.array([vocab.encode("a")[0]]), None)
    logits, _ = naive_step(params, config, np.array([vocab.encode("b")[0]]), state)
    z = logits[0].astype(np.float64)
    z[BANNED] = -np.inf
    probs = softmax(z)
    counts = np.bincount(tokens[0], minlength=vocab.size)
    assert counts[BANNED].sum() == 0
    assert chi_square(counts, probs) < CHI2_999[vocab.size - 3]  # 8 allowed tokens: 7 degrees of freedom


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_draw_next_one_row_matches_softmax(temperature):
    # n = 1 takes the binary-search path, one draw per call
    logits = np.array([0.3, 2.0, -1.0, 1.2, 0.0, 4.0, 0.7, -0.5, 1.5, 0.9, 0.1, 2.2], dtype=np.float32)
    rng = np.random.default_rng(7)
    counts = np.zeros(logits.size, dtype=np.int64)
    for _ in range(6000):
        counts[sampling.draw_next(logits[None].copy(), rng, temperature, banned=BANNED)[0]] += 1
    z = logits.astype(np.float64) / temperature
    z[BANNED] = -np.inf
    assert chi_square(counts, softmax(z)) < CHI2_999[9]


def test_draw_next_many_rows_matches_reference_probs():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(10).astype(np.float32) * 1.5
    rows = np.tile(logits, (30_000, 1))  # n > 1 takes the vectorized path
    ids = sampling.draw_next(rows, np.random.default_rng(4), 0.8, top_k=4, banned=BANNED)
    probs = naive_probs(logits, 0.8, top_k=4, banned=BANNED)
    assert np.count_nonzero(probs) == 4
    assert chi_square(np.bincount(ids, minlength=10), probs) < CHI2_999[3]


def test_top_k_never_emits_excluded_tokens():
    rng = np.random.default_rng(11)
    logits = rng.standard_normal((400, 40)).astype(np.float32) * 3
    allowed = np.argsort(-np.where(np.isin(np.arange(40), BANNED), -np.inf, logits), axis=1)[:, :5]  # (400, 5)
    for seed in range(15):
        for n in (400, 1):
            ids = sampling.draw_next(logits[:n].copy(), np.random.default_rng(seed), 1.3, top_k=5, banned=BANNED)
            assert (allowed[:n] == ids[:, None]).any(axis=1).all()


def test_top_p_never_emits_excluded_tokens():
    rng = np.random.default_rng(12)
    logits = rng.standard_normal((400, 40)).astype(np.float32) * 2
    top_p, temperature = 0.6, 0.9
    allowed = np.zeros(logits.shape, dtype=bool)
    for i, row in enumerate(logits):
        z = row.astype(np.float64) / temperature
        z[BANNED] = -np.inf
        p = softmax(z)
        order = np.argsort(-p)
        before = np.cumsum(p[order]) - p[order]
        allowed[i, order[before < top_p + 1e-6]] = True  # the nucleus: smallest prefix reaching top_p
    assert allowed.sum(axis=1).max() < 40  # the option does exclude tokens
    for seed in range(15):
        ids = sampling.draw_next(logits.copy(), np.random.default_rng(seed), temperature, top_p=top_p,
                                 banned=BANNED)
        assert allowed[np.arange(400), ids].all()


def test_next_token_probs_reference_options():
    logits = np.array([[1.0, 3.0, 2.0, 0.0, 2.5]])
    p = sampling.next_token_probs(logits, 1.0, 2, None, [UNK])
    assert np.flatnonzero(p[0]).tolist() == [2, 4]  # UNK (id 1) is the best but banned
    p = sampling.next_token_probs(logits, 0.0, None, None, [UNK])
    assert p[0].tolist() == [0, 0, 0, 0, 1]
    tiny = sampling.next_token_probs(logits, 1e-30, None, None, [])  # no inf - inf
    assert np.isfinite(tiny).all() and tiny[0, 1] == 1.0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_one_long_stream_follows_the_softmax_chi_square(tmp_path, temperature):
    # one stream takes the Gumbel path with noise drawn ahead in blocks: test a run over many blocks
    params, config, vocab, _ = make_run(tmp_path / "run", "abcdefgh", edit=fixed_distribution)
    tokens, _ = run_generate(params, config, vocab, rng=np.random.default_rng(9), length=12_000,
                             temperature=temperature)
    assert tokens.shape == (12_000, 1)
    z = FIXED.astype(np.float64) / temperature
    z[BANNED] = -np.inf
    probs = softmax(z)
    assert chi_square(np.bincount(tokens[:, 0], minlength=11), probs) < CHI2_999[7]


@pytest.mark.parametrize("options", [{"top_k": 3}, {"top_p": 0.5}])
def test_top_k_and_top_p_through_generate(tmp_path, options):
    params, config, vocab, _ = make_run(tmp_path / "run", "abcdefgh", edit=fixed_distribution)
    z = FIXED.astype(np.float64)
    z[BANNED] = -np.inf
    p = softmax(z)
    order = np.argsort(-p)
    if "top_k" in options:
        allowed = set(order[:3].tolist())
    else:
        before = np.cumsum(p[order]) - p[order]
        allowed = set(order[before < 0.5].tolist())
    assert 1 < len(allowed) < 8
    for n in (1, 30):
        tokens, _ = run_generate(params, config, vocab, rng=np.random.default_rng(1), num_samples=n, length=300,
                                 **options)
        assert set(np.unique(tokens).tolist()) == allowed  # all of them appear, and nothing else


def test_a_shorter_length_gives_a_prefix(tmp_path):
    make_run(tmp_path / "run", CHARS + "\n", edit=no_eos)
    long = invoke(["sample", "-c", tmp_path / "run", "--length", 300, "--seed", 5])[1]
    short = invoke(["sample", "-c", tmp_path / "run", "--length", 40, "--seed", 5])[1]
    assert len(short) == 41 and long.startswith(short[:-1])


def test_broken_weights_are_a_clear_error(tmp_path):
    params, config, vocab, _ = make_run(tmp_path / "run", CHARS)
    params["head.weight"][5, 0] = np.nan  # (checkpoints refuse to hold NaN: only memory can)
    for options in ({}, {"temperature": 0}, {"top_p": 0.9}, {"num_samples": 4}, {"num_samples": 4, "top_p": 0.9}):
        with pytest.raises(CheckpointError, match="not finite"):
            run_generate(params, config, vocab, rng=np.random.default_rng(0), length=5, **options)


def test_unk_and_start_token_never_emitted_even_when_most_likely(tmp_path):
    def favour_specials(params, vocab):
        params["head.bias"][UNK] = 30.0
        params["head.bias"][BOS] = 29.0
    params, config, vocab, _ = make_run(tmp_path / "run", CHARS, edit=favour_specials)
    for options in ({"temperature": 1.0}, {"temperature": 0.0}, {"top_k": 2}, {"top_p": 0.5},
                    {"temperature": 3.0, "top_k": 3}):
        tokens, _ = run_generate(params, config, vocab, rng=np.random.default_rng(0), num_samples=50,
                                 length=30, **options)
        assert not np.isin(tokens, BANNED).any(), options


def test_eos_stops_each_sample(tmp_path):
    def likely_eos(params, vocab):
        params["head.bias"][EOS] = 2.0
    params, config, vocab, _ = make_run(tmp_path / "run", CHARS, edit=likely_eos)
    tokens, alive = run_generate(params, config, vocab, rng=np.random.default_rng(2), num_samples=40, length=500)
    steps = tokens.shape[0]
    assert steps < 500  # every sample ended at an EOS long before the limit
    for i in range(40):
        ends = np.flatnonzero(tokens[:, i] == EOS)
        first = ends[0]  # every sample emitted one
        assert alive[: first + 1, i].all() and not alive[first + 1 :, i].any()
    # generation stops at the step where the last sample ends
    assert alive[-1].any() and not (alive[-1] & (tokens[-1] != EOS)).any()


def test_length_limit(tmp_path):
    params, config, vocab, run = make_run(tmp_path / "run", CHARS, edit=no_eos)
    tokens, alive = run_generate(params, config, vocab, rng=np.random.default_rng(0), num_samples=3, length=57)
    assert tokens.shape == (57, 3) and alive.all()
    code, out, err = invoke(["sample", "-c", tmp_path / "run", "--length", 37, "--seed", 0, "-q"])
    assert code == 0 and err == ""
    assert len(out) == 37 + 1 and out.endswith("\n")


def test_bad_options_and_prime_fail_before_any_output(tiny):
    params, config, vocab = tiny
    with pytest.raises(ConfigError):
        sampling.generate(params, config, vocab, rng=np.random.default_rng(), temperature=-1)
    with pytest.raises(ConfigError):
        sampling.generate(params, config, vocab, rng=np.random.default_rng(), temperature=float("inf"))
    with pytest.raises(VocabError, match="'Z'"):
        sampling.generate(params, config, vocab, rng=np.random.default_rng(), prime="abZ")


# ---------------------------------------------------------------- the command


@pytest.fixture
def run_dir(tmp_path):
    make_run(tmp_path / "run", CHARS + "\n", edit=rare_eos)
    return tmp_path / "run"


def test_same_seed_same_text_different_seed_different_text(run_dir):
    args = ["sample", "-c", run_dir, "--length", 200, "-n", 3]
    a = invoke(args + ["--seed", 1])
    b = invoke(args + ["--seed", 1])
    c = invoke(args + ["--seed", 2])
    assert a[0] == b[0] == c[0] == 0
    assert a[1] == b[1] and len(a[1]) > 100
    assert a[1] != c[1]


def test_prime_echo_and_no_prime_echo(run_dir):
    base = ["sample", "-c", run_dir, "--length", 50, "--seed", 4, "--prime", "bad ace"]
    code, echoed, _ = invoke(base)
    code2, bare, _ = invoke(base + ["--no-prime-echo"])
    assert code == code2 == 0
    assert echoed == "bad ace" + bare
    code, echoed, _ = invoke(base + ["-n", 2])
    assert echoed.count("bad ace") == 2


def test_unseen_prime_character_is_a_one_line_error(run_dir):
    code, out, err = invoke(["sample", "-c", run_dir, "--prime", "abZ", "--seed", 0])
    assert code == 1
    assert out == ""  # not even the prime's echo
    assert err.startswith("Error: ") and err.count("\n") == 1 and "'Z'" in err


def test_lines_mode_samples_are_one_line_each(tmp_path):
    make_run(tmp_path / "names", "abcdefgh", mode="lines")
    code, out, err = invoke(["sample", "-c", tmp_path / "names", "-n", 6, "--length", 30, "--seed", 3,
                             "--prime", "ab", "--quiet"])
    assert code == 0 and err == ""
    lines = out.split("\n")
    assert len(lines) == 7 and lines[-1] == ""  # six lines, each ended by a newline
    assert all(line.startswith("ab") and len(line) <= 32 for line in lines[:-1])


def test_stream_mode_samples_are_separated_by_a_blank_line(tmp_path):
    make_run(tmp_path / "run", CHARS, edit=rare_eos)  # no newline in the vocabulary
    code, out, _ = invoke(["sample", "-c", tmp_path / "run", "-n", 3, "--length", 20, "--seed", 0])
    assert code == 0
    parts = out.split("\n\n")
    assert len(parts) == 3 and all(parts[:2]) and parts[2].endswith("\n")


def test_stdout_holds_only_text_and_stderr_only_errors(run_dir):
    result = CliRunner().invoke(cli.cli, ["sample", "-c", str(run_dir), "--length", 40, "--seed", 0,
                                          "--prime", "abc"])
    assert result.exit_code == 0
    # stderr: only the line naming the checkpoint used (a model file saved alone has no training entry)
    assert result.stderr == f"using {run_dir / 'model.safetensors'}\n"
    tokens, _ = run_generate(*model_of(run_dir), rng=np.random.default_rng(0), length=40, prime="abc")
    text = sampling_text(run_dir, tokens[:, 0])
    assert result.stdout == "abc" + text + "\n"
    code, out, err = invoke(["sample", "-c", str(run_dir / "missing")])
    assert code == 2 and out == "" and "does not exist" in err and "Traceback" not in err  # a usage error


def test_broken_pipe_ends_quietly(tmp_path):
    # `charrnn sample --length 100000 | head -c 100`: the reader leaves while far more than a pipe's
    # buffer (64 KiB) is still to come (EOS is made impossible, so the sample runs to its length)
    make_run(tmp_path / "run", CHARS + "\n", edit=no_eos)
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "sample", "-c", str(tmp_path / "run"),
                             "--length", "100000", "--seed", "0", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **REFERENCE})  # the pipe is tested, not the arithmetic
    head = proc.stdout.read(100)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert len(head) == 100
    assert code == 0, err
    assert "Traceback" not in err and "Error" not in err and err == ""


# ---------------------------------------------------------------- many samples in bounded memory


def one_batch_texts(params, config, vocab, n, seed, **options):
    """The reference: n samples as one batch of generate, each column cut at its first EOS."""
    tokens, _ = run_generate(params, config, vocab, rng=np.random.default_rng(seed), num_samples=n, **options)
    texts = []
    for column in tokens.T:
        ends = np.flatnonzero(column == EOS)
        texts.append(vocab.decode(column[: ends[0] if ends.size else len(column)]))
    return texts


@pytest.mark.parametrize("block", [1, 7, 1 << 22])
def test_samples_kept_on_disk_in_blocks_are_the_one_batch_samples(tmp_path, monkeypatch, block):
    import charrnn

    params, config, vocab, _ = make_run(tmp_path / "run", CHARS)
    monkeypatch.setattr(sampling, "KEEP_BLOCK_TOKENS", block)  # a block of `block` tokens, then a file
    m = charrnn.load(str(tmp_path / "run"))
    got = [("".join(p)) for p in m.sample_stream(5, length=60, seed=3)]
    assert got == one_batch_texts(params, config, vocab, 5, 3, length=60)
    assert len(set(map(len, got))) > 1  # some ended at EOS, at different steps
    assert m.samples(5, prime="ab", length=60, seed=3) == \
        ["ab" + t for t in one_batch_texts(params, config, vocab, 5, 3, length=60, prime="ab")]


def test_very_many_samples_go_in_groups_one_after_the_other(tmp_path, monkeypatch):
    import charrnn

    params, config, vocab, _ = make_run(tmp_path / "run", CHARS, edit=rare_eos)
    monkeypatch.setattr(sampling, "STEP_NUMBERS", 2 * config.vocab_size)  # groups of 2 streams
    got = ["".join(p) for p in charrnn.load(str(tmp_path / "run")).sample_stream(5, length=40, seed=8)]
    rng = np.random.default_rng(8)
    expected = []
    for k in (2, 2, 1):  # the same Generator, group after group
        tokens, _ = run_generate(params, config, vocab, rng=rng, num_samples=k, length=40)
        for column in tokens.T:
            ends = np.flatnonzero(column == EOS)
            expected.append(vocab.decode(column[: ends[0] if ends.size else len(column)]))
    assert got == expected


def test_kept_samples_hold_one_block_in_memory_whatever_their_length():
    # -n 2 kept every token of the second sample until the first had ended (7.5 MB/s for --length 10**9);
    # now a block is held and full blocks go to a temporary file, read back whole and in order
    import tracemalloc

    k, steps, block = 3, 100_000, 4096
    rng = np.random.default_rng(0)
    columns = rng.integers(0, 60_000, (steps, k)).astype(np.uint16)  # made before tracing: 600 KB

    def generated():
        alive = np.ones(k, dtype=bool)
        for row in columns:
            yield row, alive

    kept = sampling.KeptTokens(k, np.uint16, steps, block_tokens=block)
    tracemalloc.start()
    try:
        for _ in kept.recording(generated()):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 10  # the block (8 KB); the 400 KB of tokens kept are on disk
    assert kept.block.size <= block and kept.spilled == (steps * (k - 1)) // block
    for i in range(1, k):
        assert np.array_equal(np.concatenate(list(kept.stream(i))), columns[:, i])
    kept.close()


def test_a_wide_model_samples_in_smaller_groups(tmp_path, monkeypatch):
    # Groups bounded by V alone put 63,550 streams of a 2 x 256 LSTM (V = 66) in one batch: -n 100000
    # --length 5 peaked at 2.2 GB. The gate width (gates x hidden) bounds a group too.
    import charrnn

    assert sampling.group_size(100_000, 66, 4 * 256) == sampling.GATE_NUMBERS // 1024 == 4096
    assert sampling.group_size(100_000, 66) == sampling.STEP_NUMBERS // 66  # no width given: as before
    params, config, vocab, _ = make_run(tmp_path / "run", CHARS, edit=rare_eos)
    monkeypatch.setattr(sampling, "GATE_NUMBERS", 2 * config.gates * config.hidden)  # groups of 2 streams
    got = ["".join(p) for p in charrnn.load(str(tmp_path / "run")).sample_stream(3, length=30, seed=5)]
    rng = np.random.default_rng(5)
    expected = []
    for k in (2, 1):  # the same Generator, group after group
        tokens, _ = run_generate(params, config, vocab, rng=rng, num_samples=k, length=30)
        for column in tokens.T:
            ends = np.flatnonzero(column == EOS)
            expected.append(vocab.decode(column[: ends[0] if ends.size else len(column)]))
    assert got == expected
