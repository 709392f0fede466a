"""Is a sample new or copied? The indexes of charrnn/data/novelty.py against brute force, and `sample --novelty`."""

import numpy as np
import pytest

from charrnn.files import corpus
from charrnn.data import novelty
from charrnn.data.vocab import SPECIAL_TOKENS, Vocab
from tiny_runs import invoke, make_run


def brute_longest(ids, sample):
    """The longest stretch of sample found in ids, by trying every substring."""
    s, q = [int(x) for x in ids], [int(x) for x in sample]
    best = 0
    for i in range(len(q)):
        for j in range(i + best + 1, len(q) + 1):
            if any(s[p:p + j - i] == q[i:j] for p in range(len(s) - (j - i) + 1)):
                best = j - i
            else:
                break
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_stream_index_finds_the_longest_verbatim_stretch(seed):
    rng = np.random.default_rng(seed)
    for trial in range(60):
        n = int(rng.integers(1, 90))
        vocab_size = [2, 3, 5, 300][trial % 4]  # 300: two bytes a token, fewer tokens a key
        ids = rng.integers(0, vocab_size, n).astype(np.uint16)
        sample = rng.integers(0, vocab_size + 1, int(rng.integers(1, 30)))
        if trial % 2:  # plant a copied stretch
            a = int(rng.integers(0, n))
            sample = np.concatenate([sample[:3], ids[a:a + int(rng.integers(1, 40))], sample[3:]])
        index = novelty.StreamIndex(ids)
        length, start = index.longest_match(sample)
        assert length == brute_longest(ids, sample), (ids, sample)
        if length:
            stretch = [int(x) for x in sample[start:start + length]]
            assert any([int(x) for x in ids[p:p + length]] == stretch for p in range(n))


def test_the_stream_index_is_one_sort_of_every_position_by_its_next_tokens():
    ids = np.random.default_rng(1).integers(0, 6, 2000).astype(np.uint8)
    bits, k = novelty.gram_width(ids)
    order = novelty.gram_order(ids)
    assert sorted(order.tolist()) == list(range(len(ids)))
    keys = [tuple(ids[p:p + k]) for p in order]
    assert keys == sorted(keys)  # a shorter tail sorts before its extensions, as tuples do


def test_line_index_knows_exactly_the_lines_it_holds():
    lines = ["anna", "bob", "", "carl", "an", "annabel"]
    vocab = Vocab(SPECIAL_TOKENS + tuple(sorted(set("".join(lines)))), "char")
    ids, offsets = corpus.encode_lines(vocab, lines)
    index = novelty.LineIndex(ids, offsets)
    for line in lines:
        assert vocab.encode(line) in index
    for other in ("ann", "annab", "bobb", "lrac", "carlanna"):
        assert vocab.encode(other) not in index


def test_line_index_confirms_a_hash_match_by_the_ids(monkeypatch):
    vocab = Vocab(SPECIAL_TOKENS + tuple("abc"), "char")
    ids, offsets = corpus.encode_lines(vocab, ["abc", "cab"])
    monkeypatch.setattr(novelty, "_line_hashes", lambda ids, offsets: np.zeros(len(offsets) - 1, np.uint64))
    index = novelty.LineIndex(ids, offsets)  # every line hashes alike: only the comparison tells them apart
    assert vocab.encode("abc") in index and vocab.encode("bca") not in index


# ---------------------------------------------------------------- through the command line


def stream_run(tmp_path, train_text):
    chars = sorted(set(train_text))
    _, _, vocab, model_file = make_run(tmp_path / "run", "".join(chars), mode="stream", val_text=train_text[-20:])
    corpus.save_ids(tmp_path / "run" / "data" / "train.npy", vocab.encode(train_text))
    return vocab, model_file


def test_stream_novelty_reports_each_samples_longest_stretch_on_stderr_only(tmp_path):
    train_text = "the cat sat on the mat. " * 3 + "a dog ran far away."  # no newline: samples split cleanly
    vocab, _ = stream_run(tmp_path, train_text)
    args = ["sample", "-c", tmp_path / "run", "-n", "3", "--length", "40", "--seed", "3"]
    code, plain, _ = invoke(args)
    code, out, err = invoke(args + ["--novelty"])
    assert code == 0, err
    assert out == plain  # stdout is the samples alone, exactly as without --novelty
    assert "Indexed" in err and (tmp_path / "run" / "data" / "train_index.npy").exists()
    samples = out.rstrip("\n").split("\n\n")
    train_ids = vocab.encode(train_text)
    for i, text in enumerate(samples, 1):
        expected = brute_longest(train_ids, vocab.encode(text))
        assert f"sample {i}: longest stretch found in the training text: {expected} characters" in err, err
    # a second run reads the stored index instead of building it again
    code, out2, err2 = invoke(args + ["--novelty"])
    assert out2 == plain and "Indexed" not in err2 and "sample 1: longest stretch" in err2


def test_lines_novelty_counts_copies_of_training_and_validation_lines(tmp_path):
    train_lines = ["ab", "ba", "aab"]
    val_lines = ["bb"]
    _, _, vocab, _ = make_run(tmp_path / "run", "ab", mode="lines", val_text="\n".join(val_lines))
    ids, offsets = corpus.encode_lines(vocab, train_lines)
    corpus.save_ids(tmp_path / "run" / "data" / "train.npy", ids)
    corpus.save_ids(tmp_path / "run" / "data" / "train_offsets.npy", offsets)
    code, out, err = invoke(["sample", "-c", tmp_path / "run", "-n", "40", "--length", "3", "--seed", "0",
                             "--novelty"])
    assert code == 0, err
    samples = out.rstrip("\n").split("\n")
    assert len(samples) == 40
    in_train = sum(s in train_lines for s in samples)
    in_val = sum(s in val_lines for s in samples)
    assert in_train and in_val  # the tiny alphabet makes both happen
    assert f"{in_train} in train, {in_val} in validation, {40 - in_train - in_val} new" in err, err
    lines = [line for line in err.splitlines() if line.startswith("sample ")]
    for i, (sample, line) in enumerate(zip(samples, lines), 1):  # each verdict shows its sample
        label = "in train" if sample in train_lines else "in validation" if sample in val_lines else "new"
        assert line == f"sample {i}: {label}: {sample!r}"


def test_novelty_needs_the_training_data_beside_the_model(tmp_path):
    _, _, _, model_file = make_run(tmp_path / "run", "abc")
    code, out, err = invoke(["sample", "-c", model_file, "--novelty", "--length", "5"])
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("Error: ")
    assert "--novelty" in err and "training" in err
