"""A folder as a corpus (`charrnn train DIR`) and the built-in corpora (`--corpus NAME`, `charrnn corpora`)."""

import hashlib
import os
import sysconfig
import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracle_prepare as oracle
from charrnn.files import corpora, corpus, textfile
from charrnn.files.config import TrainConfig
from charrnn.runs import rundir
from charrnn.errors import CorpusError
from charrnn.data.vocab import EOS, build_vocab
from tiny_runs import invoke

TINY = ["--cell", "gru", "--layers", "1", "--hidden", "8", "--embed", "4", "--batch-size", "2", "--seq-len", "6",
        "--max-steps", "1", "--log-every", "1"]


def make_tree(root, files: dict):
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return root


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "src", {
        "b.txt": "bee buzz\n", "a.txt": "ant hill\nant farm\n", "sub/c.py": "print('c')\n",
        "sub/deeper/d.txt": "deep down\n", ".hidden/x.txt": "hidden\n", ".dot.txt": "dot\n",
        "pic.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "latin1.txt": b"caf\xe9\n", "utf16.txt": "hi".encode("utf-16"),
        "empty.txt": b"",
    })


def data(run, name):
    return np.load(run / "data" / name)


def test_a_folder_is_read_recursively_in_sorted_order_skipping_binary_hidden_and_empty(tree):
    docs = textfile.open_folder(tree)
    assert docs.names == ["a.txt", "b.txt", "sub/c.py", "sub/deeper/d.txt"]
    assert oracle.folder_texts(docs) == [(tree / n).read_text() for n in docs.names]
    assert docs.skipped == ["latin1.txt", "pic.png", "utf16.txt"] and docs.empty == 1
    assert len(docs) == sum(len(t) for t in oracle.folder_texts(docs))
    # --errors replace keeps the undecodable file, with U+FFFD for its bad byte
    assert "caf\ufffd\n" in oracle.folder_texts(textfile.open_folder(tree, errors="replace"))


def test_glob_matches_file_names_in_every_subfolder_or_a_relative_path(tree):
    assert textfile.open_folder(tree, "*.py").names == ["sub/c.py"]
    assert textfile.open_folder(tree, "*.txt").names == ["a.txt", "b.txt", "sub/deeper/d.txt"]
    assert textfile.open_folder(tree, "sub/*/*.txt").names == ["sub/deeper/d.txt"]


def _prepared(directory):
    data = os.path.join(directory, "data")
    return {name: open(os.path.join(data, name), "rb").read() for name in sorted(os.listdir(data))}


def _outcome(prepare, directory):
    try:
        return prepare(directory), _prepared(directory)
    except CorpusError as e:
        return str(e)


def _engine(root, tc, errors, chunk, val=None):
    def prepare(directory):
        folder = textfile.open_folder(root, errors=errors, chunk_bytes=chunk)
        text, val_text = folder.whole, val
        if val is None:
            split = textfile.split_folder(folder, tc)
            if split is not None:
                text, val_text, _ = split
        return rundir.prepare_data(directory, text, val_text, tc)
    return prepare


def _oracle(root, tc, errors, val=None):
    def prepare(directory):
        docs = oracle.read_folder(root, errors=errors)
        if not docs.texts:
            raise CorpusError("no text file")
        text, val_text = docs, val and corpus.read_text(val.path)
        if val is None:
            split = oracle.split_documents(docs, tc.val_frac, tc.seed, whole_only=tc.mode == "lines")
            if split is not None:
                text, val_text, _ = split
        return oracle.prepare(directory, text, val_text, tc)
    return prepare


_DOC = st.one_of(st.text(st.sampled_from("ab c\n\r\té日\u2028"), max_size=30).map(str.encode),
                 st.sampled_from([b"", b"\xef\xbb\xbf", b"caf\xe9\n", b"x\x00y", b"\xef\xbb\xbf\xef\xbb\xbfz\r"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=st.lists(_DOC, min_size=1, max_size=14), mode=st.sampled_from(["stream", "lines"]),
       level=st.sampled_from(["char", "word"]), val_frac=st.sampled_from([0.0, 0.1, 0.3]),
       seed=st.integers(0, 3), errors=st.sampled_from(["strict", "replace"]), chunk=st.sampled_from([1, 4, 1 << 20]),
       val=st.booleans())
def test_a_folder_prepared_by_the_engine_is_the_in_memory_oracle(tmp_path_factory, docs, mode, level, val_frac, seed,
                                                                  errors, chunk, val):
    """The same vocabulary, splits (whole files held out, or the last part with the file it starts in cut in
    two, or a random share of the pooled lines) and ids, EOS after each file in stream mode, or the same error,
    for folders of Hypothesis-made files (empty, binary, undecodable, CRLF and lone CR, BOMs)."""
    tmp = tmp_path_factory.mktemp("f")
    root = make_tree(tmp / "src", {f"d{i:02d}.txt": d for i, d in enumerate(docs)})
    tc = TrainConfig(batch_size=1, seq_len=2, mode=mode, level=level, val_frac=val_frac, seed=seed)
    vfile = None
    if val:
        (tmp / "v.txt").write_bytes(b"val text\nab\n")
        vfile = textfile.open_text(tmp / "v.txt")
    try:
        textfile.open_folder(root, errors=errors)
    except CorpusError:
        return  # nothing to train on: test_a_folder_with_nothing_to_train_on_is_a_one_line_error
    assert _outcome(_engine(root, tc, errors, chunk, vfile), tmp / "new") == \
        _outcome(_oracle(root, tc, errors, vfile), tmp / "ref")


def test_stream_mode_ends_every_file_with_eos_and_reports_what_it_skipped(tree, tmp_path):
    code, out, err = invoke(["train", tree, *TINY, "--val-frac", "0.2", "--out", tmp_path / "run"])
    assert code == 0, err
    assert "4 text files" in err and "skipped 3 binary or undecodable: latin1.txt, pic.png, utf16.txt" in err
    assert "skipped 1 empty" in err
    assert "the last 20% of the text held out for validation (4 files are too few" in err
    texts = [(tree / n).read_text() for n in ("a.txt", "b.txt", "sub/c.py", "sub/deeper/d.txt")]
    whole = "".join(texts)
    cut = len(whole) - int(len(whole) * 0.2)
    vocab = build_vocab(whole[:cut])
    # the reference: each file's ids, then EOS; the split falls at the same character as for one file
    ids = np.concatenate([np.append(vocab.encode(t), EOS) for t in texts])
    boundary = cut + sum(1 for k in range(len(texts)) if len("".join(texts[: k + 1])) <= cut)
    run = tmp_path / "run"
    np.testing.assert_array_equal(data(run, "train.npy"), ids[:boundary])
    np.testing.assert_array_equal(data(run, "val.npy"), ids[boundary:])


def test_enough_files_hold_out_whole_files_and_say_so(tmp_path):
    files = {f"f{i:02d}.txt": f"file number {i} says {'la ' * (i % 5 + 3)}\n" for i in range(30)}
    root = make_tree(tmp_path / "many", files)
    code, _, err = invoke(["train", root, *TINY, "--out", tmp_path / "run"])
    assert code == 0, err
    assert "whole files held out for validation" in err
    run = tmp_path / "run"
    val, train = data(run, "val.npy"), data(run, "train.npy")
    assert val[-1] == EOS and train[-1] == EOS
    vocab = build_vocab("".join(files.values()))  # every character occurs in the training files too

    def pieces(ids):
        ends = np.flatnonzero(ids == EOS)
        return [vocab.decode(ids[a + 1 if a >= 0 else 0:b]) for a, b in zip(np.r_[-1, ends[:-1]], ends)]

    held, kept = pieces(val), pieces(train)
    assert 1 <= len(held) < 30 and sorted(held + kept) == sorted(files.values())  # whole files, each once
    share = sum(map(len, held)) / sum(map(len, files.values()))
    assert 0.05 <= share <= 0.15


def test_lines_mode_pools_the_lines_of_every_file(tree, tmp_path):
    code, _, err = invoke(["train", tree, *TINY, "--mode", "lines", "--val-frac", "0.25", "--out", tmp_path / "r"])
    assert code == 0, err
    assert "a random 25% of the lines" in err
    from charrnn.runs import rundir
    run = rundir.resume_run(str(tmp_path / "r"))

    def lines(ids, offsets):
        return [run.vocab.decode(ids[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]

    expected = ["ant hill", "ant farm", "bee buzz", "print('c')", "deep down"]
    train, (val,) = lines(run.train_ids, run.train_offsets), lines(run.val_ids, run.val_offsets)
    assert len(train) == 4 and set(train) < set(expected)
    (missing,) = set(expected) - set(train)  # the held-out line (its characters unseen in training are UNK)
    assert len(val) == len(missing) and all(a == b or a == "\ufffd" for a, b in zip(val, missing))


@pytest.mark.parametrize("files, args, message", [
    ({}, [], "the folder holds no files"),
    ({"a.txt": "x\n"}, ["--glob", "*.py"], "holds no files matching '*.py'"),
    ({"a.bin": b"\x00\x01\x02", "b.txt": b"", "c.txt": b"\xff\xfe\x00"}, [],
     "no text file to train on among its 3 files: 2 binary or undecodable (a.bin, c.txt) and 1 empty"),
])
def test_a_folder_with_nothing_to_train_on_is_a_one_line_error(tmp_path, files, args, message):
    root = make_tree(tmp_path / "d", files)
    root.mkdir(exist_ok=True)
    code, out, err = invoke(["train", root, *args, "--max-steps", "1"])
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("Error: ") and message in err, err
    assert not (tmp_path / "checkpoints").exists()


def test_glob_without_a_folder_and_a_corpus_twice_are_errors(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abc\n")
    code, _, err = invoke(["train", text, "--glob", "*.py"])
    assert code == 2 and "--glob chooses files in a folder" in err
    code, _, err = invoke(["train", text, "--corpus", "unicode-names"])
    assert code == 2 and "not both" in err


# ---------------------------------------------------------------- built-in corpora


def test_corpora_lists_every_built_in_corpus_with_its_mode_and_size():
    code, out, err = invoke(["corpora"])
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {"python-reference", "python-source", "unicode-names"}
    assert rows["python-reference"][1] == "stream"
    assert rows["python-reference"][2] == f"{len(corpus.default_corpus()):,}"
    assert rows["unicode-names"][1] == "lines"
    assert rows["python-source"][2] == f"{len(oracle.Documents([], oracle.folder_texts(corpora.python_source()))):,}"


def test_python_source_is_a_deterministic_slice_of_whole_stdlib_files():
    docs = corpora.python_source()
    again = corpora.python_source()
    assert docs.names == again.names and oracle.folder_texts(docs) == oracle.folder_texts(again)
    root = sysconfig.get_paths()["stdlib"]
    assert 2_000_000 <= len(docs) <= corpora.SOURCE_CHARS
    assert len(docs.names) > 50
    for name, text in zip(docs.names, oracle.folder_texts(docs)):
        assert name.endswith(".py") and "test" not in name.split("/")[:-1] and "site-packages" not in name
        with open(os.path.join(root, name), encoding="utf-8") as f:
            assert text == corpus.normalize_newlines(f.read())
    keys = [hashlib.sha1(n.encode()).hexdigest() for n in docs.names]
    assert keys == sorted(keys)  # spread over the library by hash, not the first files alphabetically
    assert len({n.split("/")[0] for n in docs.names}) > 10


def test_unicode_names_are_the_names_unicodedata_gives_without_the_numbered_ones():
    lines = corpora.unicode_names().splitlines()
    assert "LATIN SMALL LETTER A" in lines and "SNOWMAN" in lines and "SMILING FACE WITH SMILING EYES" in lines
    assert not any(n.startswith(("CJK UNIFIED IDEOGRAPH-", "HANGUL SYLLABLE ")) for n in lines)
    every = {unicodedata.name(chr(c), "") for c in range(0x110000)}
    assert set(lines) <= every and len(lines) == len(set(lines)) > 20_000


def test_train_on_a_built_in_corpus_takes_its_mode_and_names_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke(["train", "--corpus", "unicode-names", *TINY])
    assert code == 0, err
    from charrnn.runs import rundir
    run = rundir.resume_run("checkpoints/unicode-names")
    assert run.tconfig.mode == "lines"
    assert run.vocab.decode(run.train_ids[run.train_offsets[0]:run.train_offsets[1]]) in \
        corpora.unicode_names().splitlines()
    code, out, err = invoke(["train", "--corpus", "shakespeare"])
    assert code == 2 and out == ""  # a value --corpus cannot take: usage and err.count("\n") == 1
    assert "no built-in corpus called 'shakespeare'; choose one of python-reference, python-source" in err


def test_read_folder_refuses_a_file():
    with pytest.raises(CorpusError, match="not a folder"):
        textfile.open_folder(__file__)


@pytest.mark.parametrize("name, mode, level", [("python-reference", "stream", "word"), ("unicode-names", "lines", "char"),
                                               ("python-source", "stream", "char")])
def test_a_built_in_corpus_prepared_by_the_engine_is_the_in_memory_oracle(tmp_path, name, mode, level):
    """A built-in corpus is spooled and prepared in chunks: the vocabulary and files the in-memory oracle
    makes of its text (python-source's files, read whole, EOS after each; whole files held out)."""
    tc = TrainConfig(batch_size=4, seq_len=8, mode=mode, level=level)
    source = corpora.build(name)
    if isinstance(source, textfile.Folder):
        new, val, _ = textfile.split_folder(source, tc)
        docs = oracle.Documents(source.names, [corpus.read_text(path) for _, path in corpora.python_source_files()])
        ref, ref_val, _ = oracle.split_documents(docs, tc.val_frac, tc.seed)
    else:
        new, val = source, None
        ref, ref_val = (corpus.default_corpus() if name == "python-reference" else corpora.unicode_names()), None
    assert rundir.prepare_data(tmp_path / "new", new, val, tc) == oracle.prepare(tmp_path / "ref", ref, ref_val, tc)
    assert _prepared(tmp_path / "new") == _prepared(tmp_path / "ref")
