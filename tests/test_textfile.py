"""Preparation in chunks (textfile.py, the one corpus engine) against the in-memory oracle.

The reference is tests/oracle_prepare.prepare on corpus.read_text's string: the same
vocabulary, the same files byte for byte, and the same errors, for char and
word level in stream and lines mode, with chunks so small that multi-byte
characters, "\\r\\n" pairs and words straddle their boundaries.
"""

import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.files import checkpoint, config, corpus, textfile
from charrnn.runs import prepare
from charrnn.files.config import TrainConfig
from charrnn.errors import CorpusError
from charrnn.data.vocab import UNK, build_vocab
import oracle_prepare as oracle
from tiny_runs import stream_text

# multi-byte characters (2, 3 and 4 bytes), CRLF and lone CR, blank and whitespace-only lines, a U+2028,
# tabs, punctuation: every kind of boundary a chunk can fall on
SAMPLE = ("héllo wörld, naïve café\r\nthe 日本語 text 🎉🎉 ends\rhere.\n\n   \n\t\nalpha\u2028beta  gamma!!\n"
          "x\n" * 3 + "Ünïcödé  spaces   and\ttabs; done\r\n" + "zz top\n" * 5 + "last line without end")


def _files(directory) -> dict:
    data = os.path.join(directory, "data")
    return {name: open(os.path.join(data, name), "rb").read() for name in sorted(os.listdir(data))}


def _both(tmp_path, data: bytes, chunk: int, val: bytes | None = None, errors="strict", base=None, extend=False,
          **options):
    """(vocab, files) of the in-memory path and of the chunked path on the same file."""
    path = tmp_path / "c.txt"
    path.write_bytes(data)
    vpath = None
    if val is not None:
        vpath = tmp_path / "v.txt"
        vpath.write_bytes(val)
    tc = TrainConfig(batch_size=2, seq_len=4, **options)
    ref_dir, new_dir = tmp_path / "ref", tmp_path / "new"
    ref_vocab = oracle.prepare(ref_dir, corpus.read_text(path, errors),
                               corpus.read_text(vpath, errors) if vpath else None, tc, base, extend)
    new_vocab = prepare.prepare_data(new_dir, textfile.open_text(path, errors, chunk),
                                    textfile.open_text(vpath, errors, chunk) if vpath else None, tc, base, extend)
    return (ref_vocab, _files(ref_dir)), (new_vocab, _files(new_dir))


@pytest.mark.parametrize("mode", ["stream", "lines"])
@pytest.mark.parametrize("level", ["char", "word"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64, 1 << 20])
def test_chunked_preparation_is_the_in_memory_one(tmp_path, mode, level, chunk):
    data = b"\xef\xbb\xbf" + SAMPLE.encode() * 3
    (ref_vocab, ref), (new_vocab, new) = _both(tmp_path, data, chunk, mode=mode, level=level, val_frac=0.3)
    assert new_vocab == ref_vocab
    assert new == ref
    assert set(ref) == ({"train.npy", "val.npy"} | ({"train_offsets.npy", "val_offsets.npy"} if mode == "lines"
                                                    else set()))


@pytest.mark.parametrize("mode", ["stream", "lines"])
@pytest.mark.parametrize("level", ["char", "word"])
@pytest.mark.parametrize("options", [{"val_frac": 0.0}, {"val_frac": 0.5, "min_count": 2},
                                     {"val_frac": 0.1, "max_vocab": 5}, {"val_frac": 0.25, "seed": 7}])
def test_split_and_vocabulary_options_are_kept(tmp_path, mode, level, options):
    data = SAMPLE.encode() * 4
    (ref_vocab, ref), (new_vocab, new) = _both(tmp_path, data, 7, mode=mode, level=level, **options)
    assert (new_vocab, new) == (ref_vocab, ref)


@pytest.mark.parametrize("mode", ["stream", "lines"])
@pytest.mark.parametrize("level", ["char", "word"])
@pytest.mark.parametrize("extend", [False, True])
def test_a_fine_tuned_vocabulary_kept_or_extended(tmp_path, mode, level, extend):
    base = build_vocab("héllo wörld, the text\nx y\n", level)
    (ref_vocab, ref), (new_vocab, new) = _both(tmp_path, SAMPLE.encode() * 3, 6, base=base, extend=extend,
                                               mode=mode, level=level, val_frac=0.2, min_count=2)
    assert (new_vocab, new) == (ref_vocab, ref)
    assert new_vocab.tokens[: base.size] == base.tokens and (new_vocab.size > base.size) == extend


@pytest.mark.parametrize("mode", ["stream", "lines"])
@pytest.mark.parametrize("level", ["char", "word"])
def test_a_separate_validation_file(tmp_path, mode, level):
    (ref_vocab, ref), (new_vocab, new) = _both(tmp_path, SAMPLE.encode() * 2, 4, val="only 🎉 here\nand ünseen\n".encode(),
                                               mode=mode, level=level)
    assert (new_vocab, new) == (ref_vocab, ref)


@pytest.mark.parametrize("mode", ["stream", "lines"])
def test_invalid_bytes_replaced_as_in_memory(tmp_path, mode):
    rng = np.random.default_rng(0)
    for trial in range(20):
        good = SAMPLE.encode()
        raw = bytearray(good * 2)
        for i in rng.integers(0, len(raw), 12):
            raw[i] = int(rng.integers(128, 256))
        root = tmp_path / str(trial)
        root.mkdir()
        (ref_vocab, ref), (new_vocab, new) = _both(root, bytes(raw), int(rng.integers(1, 9)), errors="replace",
                                                   mode=mode, val_frac=0.2)
        assert (new_vocab, new) == (ref_vocab, ref)


@pytest.mark.parametrize("mode", ["stream", "lines"])
@pytest.mark.parametrize("data", [b"abc\xffdef\n" * 3, b"\xef\xbb\xbfa\xc3(\n", b"ok\n" * 5 + b"\xe6\x97",
                                  b"x" * 30 + "日".encode() + b"\xe6\x97\n" + b"y" * 9, b"a\r\n\xc0\x80"])
def test_invalid_utf8_is_the_same_error(tmp_path, mode, data):
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    with pytest.raises(CorpusError) as expected:
        corpus.read_text(path)
    for chunk in (1, 2, 3, 4, 1 << 20):
        with pytest.raises(CorpusError) as got:
            textfile.scan(textfile.open_text(path, chunk_bytes=chunk), "char", mode)
        assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", "hi".encode("utf-16"), b"abc\x00def", None])
def test_files_refused_as_read_text_refuses_them(tmp_path, data):
    path = tmp_path / "f.txt"
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(CorpusError) as expected:
        corpus.read_text(path)
    with pytest.raises(CorpusError) as got:
        textfile.open_text(path)
    assert str(got.value) == str(expected.value)
    with pytest.raises(CorpusError) as got:
        textfile.open_text(tmp_path)
    with pytest.raises(CorpusError) as expected:
        corpus.read_text(tmp_path)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("mode", ["stream", "lines"])
@pytest.mark.parametrize("level", ["char", "word"])
def test_scan_counts_what_the_settings_and_speed_estimate_count(tmp_path, mode, level):
    raw = SAMPLE * 3 + "\n\u3000\u00a0\n" + "\x1c sep\x85arated\x0bvertical\x0c"  # spaces seen only in a blank line
    path = tmp_path / "c.txt"
    path.write_bytes(raw.encode())
    text = corpus.normalize_newlines(raw)
    tf = textfile.open_text(path, chunk_bytes=5)
    s = textfile.scan(tf, level, mode)
    assert s.n_tokens == config.count_tokens(text, level)
    assert textfile.seen_tokens(tf, level, mode) == set(build_vocab(text, level).tokens[3:])  # a fine-tuned run's
    assert s.distinct == len(set(build_vocab(text, level).tokens[3:]))  # what the vocabulary is built from
    if mode == "lines":
        lines = corpus.split_lines(text)
        assert (s.n_lines, s.longest) == (len(lines), max(map(len, lines)))
        assert s.line_tokens + s.n_lines - 1 == config.count_tokens("\n".join(lines), level)


def test_a_long_word_level_line_is_cut_at_spaces(tmp_path):
    text = " ".join(f"w{i % 37}" for i in range(3000)) + "\nend\n"
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode())
    tf = textfile.open_text(path, chunk_bytes=16)
    pieces = [p for _, p in textfile._pieces(textfile._blocks(tf), "word", textfile._limit(tf))]
    assert "".join(pieces) == text and max(map(len, pieces)) < 2000
    (ref_vocab, ref), (new_vocab, new) = _both(tmp_path, text.encode(), 16, level="word", val_frac=0.1)
    assert (new_vocab, new) == (ref_vocab, ref)


def test_lines_too_long_and_no_training_line(tmp_path):
    for data, options in (((b"ab\n" * 3 + b"x" * 10_001 + b"\n"), {}),
                          (b"   \n\t\n", {})):
        path = tmp_path / "c.txt"
        path.write_bytes(data)
        tc = TrainConfig(batch_size=1, seq_len=4, mode="lines", **options)
        with pytest.raises(CorpusError) as expected:
            oracle.prepare(tmp_path / "ref", corpus.read_text(path), None, tc)
        with pytest.raises(CorpusError) as got:
            prepare.prepare_data(tmp_path / "new", textfile.open_text(path, chunk_bytes=3), None, tc)
        assert str(got.value) == str(expected.value)
        assert not os.path.exists(tmp_path / "new" / "data")


@pytest.mark.parametrize("extra", ["", "".join(map(chr, range(0x400, 0x400 + 300)))])  # one-byte ids, two-byte ids
def test_encode_ascii_fast_path_is_the_table_lookup(extra):
    vocab = build_vocab("abc xyz\n" + extra)
    for text in ("abc zzq\n\x7f", "abc é" + extra[:3]):  # ASCII (bytes.translate when ids fit a byte), and not
        assert vocab.encode(text).tolist() == [vocab._index.get(c, UNK) for c in text]
        assert vocab.encode(text).dtype == vocab.dtype


# Prepares a corpus (a file, a folder, or standard input: a pipe) in a fresh process and prints how far its
# peak resident set (VmHWM) grew.
_PREPARE = """
import os, sys
from charrnn.files import corpus, textfile
from charrnn.runs import prepare
from charrnn.files.config import TrainConfig
def peak():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0]) * 1024
before = peak()
tc = TrainConfig(batch_size=16, seq_len=100)
val = None
if os.path.isdir(sys.argv[1]):
    text, val, _ = textfile.split_folder(textfile.open_folder(sys.argv[1]), tc)
else:
    text = textfile.open_source(sys.argv[1])
textfile.scan(text, "char", "stream")
prepare.prepare_data(sys.argv[2], text, val, tc)
print(peak() - before)
"""


def prepare_growth(corpus_path, out, piped: bool = False) -> int:
    """Bytes the peak resident set of a process grows by while it prepares corpus_path into out (piped:
    the file's bytes come through a pipe on its standard input)."""
    import subprocess
    import sys
    source = subprocess.Popen(["cat", str(corpus_path)], stdout=subprocess.PIPE) if piped else None
    try:
        done = subprocess.run([sys.executable, "-c", _PREPARE, "-" if piped else str(corpus_path), str(out)],
                              stdin=source.stdout if piped else None, capture_output=True, text=True, timeout=180)
    finally:
        if source is not None:
            source.stdout.close()
            source.wait()
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


_LAST = "a last line, not ASCII: ünïcödé 日本\n"


def _big(path, megabytes: int) -> int:
    """Write megabytes of text and a last non-ASCII line to path; returns its characters."""
    block = (stream_text(200_000) * 2).encode()[: 1 << 20]
    with open(path, "wb") as f:
        for _ in range(megabytes):
            f.write(block)
        f.write(_LAST.encode())
    return megabytes * len(block) + len(_LAST)


def _prepared_ids(run) -> np.ndarray:
    ids = [corpus.load_ids(run / "data" / f"{split}.npy") for split in ("train", "val")]
    assert ids[0].dtype == np.uint8
    return len(ids[0]) + len(ids[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_preparing_64_mb_grows_memory_by_less_than_half_of_it(tmp_path):
    """The in-memory path held the bytes, the text and the ids (about 2x the corpus: 141 MB more for
    this one); in chunks the growth is a few temporaries of a chunk each, whatever the corpus size."""
    path = tmp_path / "big.txt"
    chars = _big(path, 64)
    size = os.path.getsize(path)
    growth = prepare_growth(path, tmp_path / "run")
    assert growth < size // 2, f"preparing {size / 1e6:.0f} MB grew the peak resident set by {growth / 1e6:.0f} MB"
    assert _prepared_ids(tmp_path / "run") == chars


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
@pytest.mark.parametrize("source", ["folder", "pipe"])
def test_preparing_a_64_mb_folder_or_pipe_grows_memory_by_less_than_half_of_it(tmp_path, source):
    """A folder (its files spooled one at a time) and a pipe (spooled to a temporary file) are prepared in
    chunks as a file is: the peak resident set grows by a few chunks, not by the corpus (the in-memory
    path held each whole: about 2x the corpus)."""
    if source == "folder":
        root = tmp_path / "folder"
        root.mkdir()
        chars = sum(_big(root / f"part{i:02d}.txt", 4) for i in range(16))
        size = sum(os.path.getsize(root / name) for name in os.listdir(root))
        growth = prepare_growth(root, tmp_path / "run")
        chars += 16  # an EOS ends each file
    else:
        path = tmp_path / "big.txt"
        chars = _big(path, 64)
        size = os.path.getsize(path)
        growth = prepare_growth(path, tmp_path / "run", piped=True)
    assert growth < size // 2, f"preparing a {size / 1e6:.0f} MB {source} grew the peak resident set by " \
        f"{growth / 1e6:.0f} MB"
    assert _prepared_ids(tmp_path / "run") == chars


@pytest.mark.parametrize("mode", ["stream", "lines"])
def test_a_run_whose_ids_have_another_dtype_still_resumes(tmp_path, mode):
    """Each id file names its dtype in its .npy header: a run whose ids were written wider (int64, as an
    older or another writer might) resumes, and trains exactly as the same run with the smallest dtype."""
    from tiny_runs import TINY, invoke, read_log, untimed
    path = tmp_path / "c.txt"
    path.write_text(("ab cd\nefg hij\n" * 60) + "é\n", encoding="utf-8")
    runs = {}
    for name in ("narrow", "wide"):
        run = tmp_path / name
        assert invoke(["train", path, *TINY, "--mode", mode, "--max-steps", 2, "--out", run, "--quiet"]).exit_code == 0
        if name == "wide":
            data = run / "data"
            for f in os.listdir(data):
                ids = corpus.load_ids(data / f, mmap=False)
                assert f.endswith("_offsets.npy") or ids.dtype == np.uint8
                np.save(data / f, ids.astype(np.int64), allow_pickle=False)
        done = invoke(["train", "--resume", run, "--max-steps", 4, "--quiet"])
        assert done.exit_code == 0, done.stderr
        runs[name] = untimed(read_log(run))
        meta = checkpoint.load_model(str(run / "model.safetensors"))[2]
        assert meta["data"]["ids_dtype"] == ("int64" if name == "wide" else "uint8")
    assert runs["wide"] == runs["narrow"] and runs["narrow"][-1]["step"] == 4


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_is_spooled_to_a_temporary_file_and_read_in_chunks(tmp_path):
    """A pipe cannot be read twice: `charrnn train /dev/stdin` and the like copy it to a temporary file
    first, which is then read as a file is, and named as the pipe in messages; the file goes with it."""
    import threading
    from charrnn import api
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = ("x" * 9000 + "\r\nabc\n").encode()  # more than open_text's first look at a file
    writer = threading.Thread(target=lambda: fifo.write_bytes(data))
    writer.start()
    text = api._read(str(fifo), "strict", TrainConfig())
    writer.join()
    assert isinstance(text, textfile.TextFile) and str(text) == str(fifo) and text.path != str(fifo)
    assert "".join(textfile.text_pieces(text, "char")) == corpus.normalize_newlines(data.decode())
    spooled = text.path
    del text
    assert not os.path.exists(spooled)
    path = tmp_path / "c.txt"
    path.write_bytes(data)
    assert api._read(str(path), "strict", TrainConfig()).path == str(path)


@pytest.mark.parametrize("mode", ["stream", "lines"])
def test_a_pipe_prepared_through_its_spool_is_the_in_memory_oracle(tmp_path, monkeypatch, mode):
    data = b"\xef\xbb\xbf" + SAMPLE.encode() * 3
    _stdin(monkeypatch, data)
    tc = TrainConfig(batch_size=2, seq_len=4, mode=mode, val_frac=0.3)
    new = prepare.prepare_data(tmp_path / "new", textfile.open_source("-", chunk_bytes=3), None, tc)
    ref = oracle.prepare(tmp_path / "ref", corpus.decode_text(data, "standard input"), None, tc)
    assert new == ref and _files(tmp_path / "new") == _files(tmp_path / "ref")


def _stdin(monkeypatch, data: bytes):
    import io
    import sys
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def _outcome(read):
    try:
        return read()
    except CorpusError as e:
        return str(e)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40),
       encoding=st.sampled_from(["utf-8", "latin-1", "utf-16", "utf-16-le", "utf-32", "shift_jis"]),
       cut=st.integers(0, 200), junk=st.binary(max_size=3), errors=st.sampled_from(["strict", "replace"]),
       chunk=st.sampled_from([1, 3, 1 << 20]))
def test_a_spooled_input_is_the_text_read_text_reads(tmp_path, monkeypatch, text, encoding, cut, junk, errors, chunk):
    """Standard input, or a file in an encoding read whole (UTF-16, UTF-32), spooled and read in chunks: the
    text corpus.read_text gives of the same bytes, or the same error (bad bytes at the same offset, empty,
    binary). The bytes are the text's in the encoding, with junk spliced in somewhere."""
    data = text.encode(encoding, "replace")
    data = data[:cut] + junk + data[cut:]
    path = tmp_path / "in.txt"
    path.write_bytes(data)

    def spooled(source):
        tf = textfile.open_source(source, errors, chunk, encoding=encoding)
        return "".join(textfile.text_pieces(tf, "char"))
    whole = _outcome(lambda: corpus.read_text(path, errors, encoding=encoding))
    assert _outcome(lambda: spooled(path)) == whole
    _stdin(monkeypatch, data)
    expected = whole.replace(str(path), "standard input") if isinstance(whole, str) and str(path) in whole \
        else whole
    assert _outcome(lambda: spooled("-")) == expected


def test_a_long_word_level_line_without_spaces_is_searched_once(tmp_path, monkeypatch):
    # A word-level piece with no newline is cut at its last run of spaces once it is long: the kept text was
    # searched again at every block (a 50 MB line with no spaces: 7.4 s, twice as long 29.9 s). Each
    # character is searched about once now, and the pieces are still the text, cut where a token ends.
    searched = []

    class Counting:
        def finditer(self, text):
            searched.append(len(text))
            return re.finditer(r"\S(?=[^\S\n])", text)
    monkeypatch.setattr(textfile, "_SPACE_START", Counting())
    text = "x" * 20_000 + " y" + "z" * 5_000 + "\nend\n"
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode())
    tf = textfile.open_text(path, chunk_bytes=16)
    pieces = [p for _, p in textfile._pieces(textfile._blocks(tf), "word", textfile._limit(tf))]
    assert "".join(pieces) == text and pieces[0] == "x" * 20_000
    assert sum(searched) <= len(text) + len(searched)  # each block once, with one character before it


def test_a_line_too_long_for_lines_mode_is_refused_before_it_is_held_or_split(tmp_path):
    # a 4 MB line of words: splitting it into tokens before the length check peaked at about 60 times its size
    import tracemalloc

    path = tmp_path / "c.txt"
    path.write_bytes(b"ab\n" + b"ab " * ((4 << 20) // 3) + b"\nlast\n")
    tracemalloc.start()
    try:
        with pytest.raises(CorpusError) as info:
            textfile.scan(textfile.open_text(path), "word", "lines")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"{path}: a line is at least " in str(info.value) and "at most 10,000" in str(info.value)
    assert peak < 4 * textfile.CHUNK_BYTES


@pytest.mark.parametrize("task", ["lm", "classify"])
def test_a_line_too_long_in_a_pipe_or_a_labelled_file_is_refused_before_its_tokens_are_counted(tmp_path, task):
    # a classifier's text (and a pipe's) was held in memory: its lines were split into tokens, to choose the
    # settings, before their length was checked (a 20 MB word-level line ran out of memory measuring speed)
    import tracemalloc

    from tiny_runs import invoke

    label = "a\t" if task == "classify" else ""
    path = tmp_path / "c.txt"
    path.write_bytes(f"{label}ab\nb\tc\n{label}".encode() + b"ab " * 1_000_000 + b"\n")
    fifo = tmp_path / "fifo"
    args = ["train", path, "--task", task, "--mode", "lines", "--level", "word" if task == "lm" else "char",
            "--out", tmp_path / "run"]
    if task == "lm":  # a regular file is scanned in chunks; a pipe is read whole, so give it as one
        os.mkfifo(fifo)
        import threading
        threading.Thread(target=lambda: fifo.write_bytes(path.read_bytes()), daemon=True).start()
        args[1] = fifo
    tracemalloc.start()
    try:
        code, out, err = invoke(args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a pipe is spooled and scanned as a file is, and so is a classifier's file: the line is refused as soon
    # as it is known to be too long
    what = "a classifier takes each line" if task == "classify" else "lines mode takes each line"
    assert code == 1 and err.startswith(f"Error: {args[1]}: a line is at least ") and what in err, err
    assert err.count("\n") == 1, err
    assert peak < 32 << 20  # the file's bytes and text (3 MB each): no list of its 2,000,000 tokens
    assert not (tmp_path / "run").exists()


_EXAMPLE = st.tuples(st.sampled_from(["a", " b ", "c c", "ü"]), st.text(st.sampled_from("xy z\t日é"), min_size=1,
                                                                        max_size=12)).map(lambda t: f"{t[0]}\t{t[1]}")
_ODD = st.sampled_from(["", "   ", "x\ty\tz", "no tab", "\tempty label", "lbl\t", "lbl\t  "])  # blank, TABs, malformed


@st.composite
def _labelled(draw, min_size):
    lines = draw(st.lists(_EXAMPLE, min_size=min_size, max_size=30))
    for at, odd in draw(st.lists(st.tuples(st.integers(0, 30), _ODD), max_size=2)):
        lines.insert(at, odd)
    return lines


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_labelled(1), val=st.none() | _labelled(0),
       end=st.sampled_from(["\n", "\r\n", "\r"]), level=st.sampled_from(["char", "word"]),
       val_frac=st.sampled_from([0.0, 0.2, 0.5]), seed=st.integers(0, 3), chunk=st.sampled_from([1, 5, 1 << 20]))
def test_a_labelled_file_prepared_in_chunks_is_the_in_memory_oracle(tmp_path_factory, lines, val, end, level, val_frac,
                                                                    seed, chunk):
    """A classifier's label<TAB>text lines, parsed a line at a time by the engine's line parser hook: the same
    vocabulary, examples, split, label ids and labels.json as the in-memory oracle, or the same error (a
    malformed line, too few labels, a validation label the training lines lack)."""
    tmp = tmp_path_factory.mktemp("l")
    path, vpath = tmp / "c.txt", tmp / "v.txt"
    path.write_bytes(end.join(lines).encode())
    vpath.write_bytes(end.join(val or []).encode())
    tc = TrainConfig(task="classify", mode="lines", level=level, val_frac=val_frac, seed=seed, batch_size=1, seq_len=2)

    def engine(directory):
        tf = textfile.open_text(path, chunk_bytes=chunk)
        tf.parse = corpus.LabelledLines()
        vf = None
        if val:
            vf = textfile.open_text(vpath, chunk_bytes=chunk)
            vf.parse = corpus.LabelledLines(1)
        return prepare.prepare_data(directory, tf, vf, tc, where=(str(path), str(vpath)))

    def reference(directory):
        return oracle.prepare(directory, corpus.read_text(path), corpus.read_text(vpath) if val else None, tc,
                              where=(str(path), str(vpath)))

    def outcome(prepare, directory):
        try:
            return prepare(directory), _files(directory)
        except CorpusError as e:
            return str(e)
    if not any(line.strip() for line in lines) or (val and not any(line.strip() for line in val)):
        return  # an empty file: test_files_refused_as_read_text_refuses_them
    assert outcome(engine, tmp / "new") == outcome(reference, tmp / "ref")


@pytest.mark.parametrize("mode", ["stream", "lines"])
@pytest.mark.parametrize("level", ["char", "word"])
@pytest.mark.parametrize("change", ["swap", "same_length_other_words"])
def test_a_file_changed_between_the_passes_is_refused_even_with_the_same_token_counts(tmp_path, mode, level, change):
    """Pass 2 found a change only where it changed a token count (the id files' lengths). Now the bytes pass 1
    read are checked (a CRC-32 and their number) before any file is renamed into place: a change that keeps
    every count (two characters swapped: the same tokens, in another order) is refused, and no data written."""
    path = tmp_path / "c.txt"
    text = "the cat sat on the mat\nthe dog ran far away\n" * 40
    path.write_text(text, encoding="utf-8")
    tc = TrainConfig(batch_size=2, seq_len=4, mode=mode, level=level)
    tf = textfile.open_text(path, chunk_bytes=64)
    textfile.scan(tf, level, mode)  # pass 1
    if change == "swap":
        changed = text.replace("cat sat", "sat cat", 1)  # every character and word count kept
    else:
        changed = text.replace("dog", "cow", 1) if level == "word" else text.replace("dog", "god", 1)
    path.write_text(changed, encoding="utf-8")
    with pytest.raises(CorpusError, match="changed while it was being prepared"):
        prepare.prepare_data(tmp_path / "run", tf, None, tc)
    assert not (tmp_path / "run" / "data").exists() or not [
        name for name in os.listdir(tmp_path / "run" / "data") if name.endswith(".npy")]
    # unchanged since its pass 1, the same file is prepared
    tf = textfile.open_text(path, chunk_bytes=64)
    prepare.prepare_data(tmp_path / "run", tf, None, tc)
    assert (tmp_path / "run" / "data" / "train.npy").exists()


def _open_vocabulary_text(n_words: int, seed: int = 0) -> str:
    """Words of a Zipf-like law with an open vocabulary: a few frequent words, and new words that keep coming."""
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.2, n_words)
    words = [f"w{r}" for r in ranks.tolist()]
    return "\n".join(" ".join(words[i:i + 12]) for i in range(0, n_words, 12)) + "\n"


@pytest.mark.parametrize("mode", ["stream", "lines"])
def test_word_counts_past_the_table_keep_the_frequent_words_exactly(tmp_path, monkeypatch, mode):
    """Past WORD_TABLE distinct words the rarest are dropped as the scan goes (the memory stays bounded);
    the frequent words' counts stay exact, so a vocabulary of the most frequent words is the exact one."""
    text = _open_vocabulary_text(20_000)
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    exact = build_vocab(text, "word", max_vocab=20)
    monkeypatch.setattr(textfile, "WORD_TABLE", 256)
    s = textfile.scan(textfile.open_text(path, chunk_bytes=512), "word", mode)
    assert len(s.counts.words) <= 256 + 12 * 60  # the table, and what one chunk's lines can add before a prune
    counts = s.counts.as_dict()
    top = sorted(exact.tokens[3:], key=lambda w: -text.split().count(w))[:10]
    for word in top:
        assert counts[word] == len(re.findall(rf"(?<!\S){word}(?!\S)", text))
    tc = TrainConfig(batch_size=2, seq_len=4, mode=mode, level="word", max_vocab=20, val_frac=0.0)
    vocab = prepare.prepare_data(tmp_path / "run", textfile.open_text(path, chunk_bytes=512), None, tc)
    assert vocab.tokens == exact.tokens if mode == "stream" else set(vocab.tokens) - {"\n"} == set(exact.tokens) - {"\n"}


_COUNT_WORDS = """
import sys
from charrnn.files import textfile
def peak():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0]) * 1024
textfile.WORD_TABLE = 1 << 15
from charrnn.data import vocab
vocab.distinct_tokens("load the word splitter")  # numba: a constant, not the counts
before = peak()
s = textfile.scan(textfile.open_text(sys.argv[1]), "word", sys.argv[2])
print(peak() - before, len(s.counts.words))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
@pytest.mark.parametrize("mode", ["stream", "lines"])
def test_counting_a_million_distinct_words_holds_the_table_not_the_words(tmp_path, mode):
    """A Counter of every distinct word grew with the corpus (about 100 bytes a word: 100 MB here); the
    table keeps at most WORD_TABLE of them (2**15 in this child), within 48 MB with the chunks."""
    import subprocess
    import sys
    path = tmp_path / "words.txt"
    with open(path, "w", encoding="utf-8") as f:
        for block in range(10):
            f.write("\n".join(" ".join(f"new{block}x{i + j}" for j in range(10)) for i in range(0, 100_000, 10)))
            f.write("\n")
    out = subprocess.run([sys.executable, "-c", _COUNT_WORDS, path, mode], capture_output=True, text=True,
                         timeout=600, check=True).stdout.split()
    grew, kept = int(out[0]), int(out[1])
    assert kept <= (1 << 15) + 100_000, kept
    assert grew < 48 << 20, f"counting a million distinct words grew the peak resident set by {grew / 2**20:.0f} MB"


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 65_537, 1_000_003])
@pytest.mark.parametrize("seed", [0, 3])
def test_the_held_out_lines_are_drawn_as_the_64_bit_permutation_drew_them(n, seed):
    """Lines mode's held-out share is the start of a seeded permutation; it is now shuffled as 4-byte line
    numbers, which must be the order Generator.permutation(n) gives (8 bytes a line): the same split."""
    order = np.arange(n, dtype=np.uint32)
    np.random.default_rng(seed).shuffle(order)
    assert np.array_equal(order, np.random.default_rng(seed).permutation(n))


@given(st.text(alphabet=st.sampled_from("ab \t\n\u00a0\u2028é."), max_size=60))
@settings(max_examples=300, deadline=None)
def test_the_last_run_of_spaces_is_found_as_walking_every_match_finds_it(text):
    last = None
    for last in textfile._SPACE_START.finditer(text):
        pass
    assert textfile._last_space_start(text) == (None if last is None else last.end())


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_preparing_lines_grows_memory_by_a_constant_not_by_the_lines(tmp_path):
    """Lines mode holds an index of the lines in a temporary file (memory-mapped, its pages released), one
    byte a line for its split and, while that is drawn, 4 bytes a line of permutation: 64 MB of 60-byte
    lines (1.1 million) grow the peak resident set as 8 MB do, within 16 MB (a list of the lines would
    add over 100 MB)."""
    import subprocess
    import sys
    words = "the of and to in a is that for it as was with be by on not he this are or his".split()
    rng = np.random.default_rng(0)
    block = "\n".join(" ".join(words[i] for i in rng.integers(0, len(words), 12)) for _ in range(20000)) + "\n"
    script = _PREPARE.replace("TrainConfig(batch_size=16, seq_len=100)",
                              'TrainConfig(batch_size=16, seq_len=100, mode="lines")').replace(
        'textfile.scan(text, "char", "stream")', 'textfile.scan(text, "char", "lines")')
    growth = {}
    for mb in (8, 64):
        path = tmp_path / f"lines{mb}.txt"
        with open(path, "w") as f:
            while f.tell() < mb << 20:
                f.write(block)
        done = subprocess.run([sys.executable, "-c", script, path, tmp_path / f"run{mb}"], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        growth[mb] = int(done.stdout)
        path.unlink()
    assert growth[64] - growth[8] < 16 << 20, f"8 MB of lines: +{growth[8] / 2**20:.0f} MB, 64 MB: " \
        f"+{growth[64] / 2**20:.0f} MB"
