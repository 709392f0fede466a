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


# ---------------------------------------------------------------- the index built by an external merge sort


def brute_order(ids):
    """Every position sorted by its next k tokens (a shorter tail first), ties by position: by Python tuples."""
    _, k = novelty.gram_width(ids)
    return sorted(range(len(ids)), key=lambda p: (tuple(int(x) for x in ids[p:p + k]), p))


@pytest.mark.parametrize("seed", range(4))
def test_the_merged_runs_are_the_brute_force_order(tmp_path, monkeypatch, seed):
    from charrnn.runs import models
    rng = np.random.default_rng(seed)
    for trial in range(12):
        n = int(rng.integers(1, 400))
        ids = rng.integers(0, [2, 3, 40, 300][trial % 4], n).astype(np.uint16)
        run_tokens = int(rng.integers(1, 60))  # many runs, merged a few positions of each at a time
        monkeypatch.setattr(models, "RUN_TOKENS", run_tokens)
        spill = tmp_path / f"{seed}-{trial}"
        spill.mkdir()
        models.build_stream_index(ids, str(spill / "index.npy"), str(spill), b"\x07" * 32)
        stored = corpus.load_ids(spill / "index.npy")
        assert stored.dtype == np.uint32 and stored[:8].tobytes() == b"\x07" * 32
        assert stored[8:].tolist() == brute_order(ids) == novelty.gram_order(ids).tolist()
        assert len(list(spill.iterdir())) == 1 + -(-n // run_tokens)  # the index, and one file a run


@pytest.mark.parametrize("budget", [1, 2, 5, 13, 1000])
def test_a_merge_a_few_positions_at_a_time_still_takes_ties_in_position_order(budget):
    ids = np.array([1, 1, 1, 1, 2, 1, 1, 1, 1, 2] * 30 + [0, 1, 2] * 40, dtype=np.uint8)
    for k in (1, 2, 3, 8):  # short keys: many ties, between runs and across the merge's steps
        runs = [novelty.sorted_run(ids, a, min(len(ids), a + 7), 2, k) for a in range(0, len(ids), 7)]
        merged = np.concatenate(list(novelty.merge_runs(ids, runs, 2, k, budget=budget)))
        expected = sorted(range(len(ids)), key=lambda p: (tuple(int(x) for x in ids[p:p + k]), p))
        assert merged.tolist() == expected


def test_the_stored_index_is_rebuilt_when_the_training_ids_change_but_not_their_length(tmp_path, monkeypatch):
    from charrnn.runs import models
    monkeypatch.setattr(models, "RUN_TOKENS", 16)  # several runs through the command line too
    train_text = "the cat sat on the mat. " * 3 + "a dog ran far away."
    vocab, _ = stream_run(tmp_path, train_text)
    args = ["sample", "-c", tmp_path / "run", "-n", "2", "--length", "40", "--seed", "3", "--novelty"]
    code, out, err = invoke(args)
    assert code == 0 and "Indexed" in err, err
    changed = train_text.replace("cat", "dog").replace("mat", "rat")  # the same length, other text
    corpus.save_ids(tmp_path / "run" / "data" / "train.npy", vocab.encode(changed))
    code, out, err = invoke(args)
    assert code == 0 and "Indexed" in err, err  # built again: the stamp is the ids' digest, not their length
    for i, text in enumerate(out.rstrip("\n").split("\n\n"), 1):
        expected = brute_longest(vocab.encode(changed), vocab.encode(text))
        assert f"sample {i}: longest stretch found in the training text: {expected} characters" in err, err
    assert sorted(p.name for p in (tmp_path / "run" / "data").iterdir()) == ["train.npy", "train_index.npy",
                                                                             "val.npy"]  # no spill left


def test_an_index_from_the_previous_version_is_rebuilt_with_its_stamp(tmp_path):
    train_text = "abcabcabd" * 5
    vocab, _ = stream_run(tmp_path, train_text)
    ids = vocab.encode(train_text)
    corpus.save_ids(tmp_path / "run" / "data" / "train_index.npy", novelty.gram_order(ids))  # no stamp
    code, out, err = invoke(["sample", "-c", tmp_path / "run", "--length", "10", "--novelty"])
    assert code == 0 and "Indexed" in err, err
    assert len(corpus.load_ids(tmp_path / "run" / "data" / "train_index.npy")) == len(ids) + 8


_BUILD = """
import sys, numpy as np
from charrnn.files import corpus
from charrnn.runs import models
def peak():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0]) * 1024
ids = corpus.load_ids(sys.argv[1])
models.RUN_TOKENS = 1 << 18
before = peak()
models.build_stream_index(ids, sys.argv[2], sys.argv[3], models.ids_digest(ids))
print(peak() - before)
"""


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_building_the_index_of_8_million_tokens_holds_a_constant_not_the_sort(tmp_path):
    """The in-memory sort held about 30 bytes a token (keys, their argsort): 240 MB here. The external sort
    holds its run (2**18 positions) and the merge's blocks, plus the mapped ids (8 MB), within 64 MB."""
    import subprocess
    import sys
    n = 1 << 23
    ids = (np.random.default_rng(0).zipf(1.3, n) % 90).astype(np.uint8)
    corpus.save_ids(tmp_path / "train.npy", ids)
    del ids
    out = subprocess.run([sys.executable, "-c", _BUILD, tmp_path / "train.npy", tmp_path / "index.npy", tmp_path],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    grew = int(out)
    assert grew < 64 << 20, f"building the index grew the peak resident set by {grew / 2**20:.0f} MB"
    index = corpus.load_ids(tmp_path / "index.npy")
    assert len(index) == n + 8


@pytest.mark.parametrize("run_lines", [1, 3, 50])
def test_the_spilled_line_index_is_the_in_memory_one(tmp_path, monkeypatch, run_lines):
    from charrnn.runs import models
    monkeypatch.setattr(models, "RUN_TOKENS", run_lines)
    rng = np.random.default_rng(run_lines)
    vocab = Vocab(SPECIAL_TOKENS + tuple("abc"), "char")
    lines = ["".join(rng.choice(list("abc"), int(rng.integers(0, 5)))) for _ in range(120)]  # many duplicates
    ids, offsets = corpus.encode_lines(vocab, lines)
    spill = tmp_path / "spill"
    spill.mkdir()
    index = models.line_index(ids, offsets, str(spill))
    memory = novelty.LineIndex(ids, offsets)
    assert np.array_equal(index.hashes, memory.hashes) and np.array_equal(index.order, memory.order)
    for probe in set(lines) | {"abca", "cccc", "bbbbbb"}:
        assert (vocab.encode(probe) in index) == (probe in lines)


_LINES = """
import sys, numpy as np
from charrnn.files import corpus
from charrnn.runs import models
def peak():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0]) * 1024
ids, offsets = corpus.load_ids(sys.argv[1]), corpus.load_ids(sys.argv[2])
models.RUN_TOKENS = 1 << 18
before = peak()
index = models.line_index(ids, offsets, sys.argv[3])
print(peak() - before, len(index.hashes))
"""


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_the_line_index_of_4_million_lines_holds_a_constant_not_16_bytes_a_line(tmp_path):
    """The in-memory index held a hash and a line number (16 bytes) a line, and as much again while sorting:
    263 MB here; spilled, a run of 2**18 lines and the merge's blocks, plus the mapped files, within 64 MB."""
    import subprocess
    import sys
    n = 1 << 22
    lengths = np.random.default_rng(0).integers(1, 4, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    corpus.save_ids(tmp_path / "ids.npy", (np.arange(offsets[-1]) % 7 + 3).astype(np.uint8))
    corpus.save_ids(tmp_path / "offsets.npy", offsets)
    del offsets, lengths
    (tmp_path / "spill").mkdir()
    out = subprocess.run([sys.executable, "-c", _LINES, tmp_path / "ids.npy", tmp_path / "offsets.npy",
                          tmp_path / "spill"], capture_output=True, text=True, timeout=600, check=True).stdout.split()
    assert int(out[1]) == n
    assert int(out[0]) < 64 << 20, f"the line index grew the peak resident set by {int(out[0]) / 2**20:.0f} MB"
