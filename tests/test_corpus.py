import io
import os

import numpy as np
import pytest

from charrnn.files.corpus import (
    default_corpus,
    encode_lines,
    load_ids,
    read_text,
    release_pages,
    save_ids,
    split_lines,
)
from charrnn.errors import ConfigError, CorpusError
from charrnn.data.vocab import build_vocab
from oracle_prepare import split_text


def write(tmp_path, data: bytes, name="c.txt"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_plain_utf8(tmp_path):
    assert read_text(write(tmp_path, "héllo\nwörld\n".encode())) == "héllo\nwörld\n"


def test_bom_removed(tmp_path):
    assert read_text(write(tmp_path, b"\xef\xbb\xbfabc")) == "abc"


def test_newlines_normalized(tmp_path):
    assert read_text(write(tmp_path, b"a\r\nb\rc\n\r\n")) == "a\nb\nc\n\n"


def test_invalid_utf8_names_offset(tmp_path):
    p = write(tmp_path, b"abc\xffdef")
    with pytest.raises(CorpusError) as e:
        read_text(p)
    msg = str(e.value)
    assert "byte offset 3" in msg and "errors='replace'" in msg and str(p) in msg  # the API's keyword
    assert "\n" not in msg


def test_invalid_utf8_offset_counts_bom(tmp_path):
    with pytest.raises(CorpusError, match="byte offset 4"):
        read_text(write(tmp_path, b"\xef\xbb\xbfa\xc3("))


def test_replace(tmp_path):
    assert read_text(write(tmp_path, b"abc\xffdef"), errors="replace") == "abc\ufffddef"


def test_bad_errors_option(tmp_path):
    with pytest.raises(ConfigError):
        read_text(write(tmp_path, b"abc"), errors="ignore")


def test_binary_refused(tmp_path):
    with pytest.raises(CorpusError, match="looks like a binary file"):
        read_text(write(tmp_path, b"abc\x00def"))
    # A NUL beyond the sniffed prefix is text, as far as reading goes.
    assert read_text(write(tmp_path, b"a" * 9000 + b"\x00")).endswith("\x00")


def test_utf16_refused(tmp_path):
    with pytest.raises(CorpusError, match="UTF-16"):
        read_text(write(tmp_path, "hello".encode("utf-16")))


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf"])
def test_empty(tmp_path, data):
    with pytest.raises(CorpusError, match="empty"):
        read_text(write(tmp_path, data))


def test_missing(tmp_path):
    with pytest.raises(CorpusError, match="no such file") as e:
        read_text(tmp_path / "nope.txt")
    assert "nope.txt" in str(e.value)


def test_directory(tmp_path):
    with pytest.raises(CorpusError, match="directory"):
        read_text(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable(tmp_path):
    p = write(tmp_path, b"abc")
    p.chmod(0)
    try:
        with pytest.raises(CorpusError, match="permission denied"):
            read_text(p)
    finally:
        p.chmod(0o644)


def test_default_corpus():
    text = default_corpus()
    assert len(text) > 100_000
    assert "\r" not in text and "\n\n" in text
    assert text == default_corpus()
    assert len(build_vocab(text).tokens) > 60


def test_default_corpus_reads_as_prose():
    """No grid table, no run of blanks between words, no deep indentation, no blank lines in a row."""
    import re

    text = default_corpus()
    lines = text.split("\n")
    assert not [line for line in lines if re.fullmatch(r"\s*\+[-=+]{3,}\+\s*", line)]
    assert not [line for line in lines if re.search(r"\S {2,}\S", line) or line != line.rstrip()]
    assert not [line for line in lines if len(line) - len(line.lstrip(" ")) > 8]
    assert "\n\n\n" not in text
    assert "The *sign* option is only valid for number types" in text  # the prose around a table stays


def test_as_prose():
    from charrnn.files.corpus import as_prose

    table = ("Options:\n\n"
             "   +-------+-----------+\n"
             "   | A     | Meaning   |\n"
             "   |=======|===========|\n"
             "   | \"<\"   | left      |\n"
             "   +-------+-----------+\n"
             "\n\n\n"
             "x   ::=   y     # a rule  \n"
             "                  deep\n"
             "| a pipe outside a table stays\n")
    assert as_prose(table) == ("Options:\n\n"
                               "x ::= y # a rule\n"
                               "        deep\n"
                               "| a pipe outside a table stays\n")
    plain = "Plain text.\n   Indented once.\n\nNew paragraph.\n"
    assert as_prose(plain) == plain


def test_split_fractions():
    text = "".join(chr(97 + i % 26) for i in range(1000))
    train, val = split_text(text, 0.1)
    assert (len(train), len(val)) == (900, 100)
    assert train + val == text
    assert split_text(text, 0.0) == (text, "")
    train, val = split_text("abc", 0.5)
    assert (train, val) == ("ab", "c")
    for bad in (-0.1, 1.0, 2, float("nan"), "x"):
        with pytest.raises(ConfigError):
            split_text(text, bad)


def test_split_lines():
    assert split_lines("a\n\n  \nb c \n\t\nd") == ["a", "b c ", "d"]
    assert split_lines("") == []
    assert split_lines("\n\n") == []


# what str.splitlines breaks at besides "\n" and "\r": characters inside a line for charrnn
NOT_LINE_ENDS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def test_a_line_ends_at_a_newline_and_nowhere_else(tmp_path, monkeypatch):
    """One definition of a line: "\\n", "\\r\\n" or "\\r" ends one; the other characters str.splitlines
    breaks at stay inside it, in the in-memory split, the chunked scan, eval's lines and the automatic
    settings' line count alike (the reference is written out by hand)."""
    from charrnn.files import config, textfile
    from charrnn.files.config import TrainConfig
    raw = "".join(f"a{c}b\n" for c in NOT_LINE_ENDS) + "cr\rcrlf\r\n" + "".join(NOT_LINE_ENDS) + "\nend"
    expected = [f"a{c}b" for c in NOT_LINE_ENDS] + ["cr", "crlf", "end"]  # a line of only those is blank
    assert len([line for line in raw.splitlines() if line.strip()]) == 2 * len(NOT_LINE_ENDS) + 3  # splitlines'

    text = read_text(write(tmp_path, raw.encode()))
    assert split_lines(text) == expected
    tf = textfile.open_text(tmp_path / "c.txt", chunk_bytes=3)
    assert [line for block in textfile.line_blocks(tf, "char") for line in block] == expected
    assert textfile.scan(tf, "char", "lines").n_lines == len(expected)
    counted = []
    real = config.auto_settings
    monkeypatch.setattr(config, "auto_settings", lambda *a, **k: counted.append(k["n_lines"]) or real(*a, **k))
    for source in (text, tf):
        config.fill_auto_settings(source, "x", TrainConfig(mode="lines", batch_size=None),
                                  dict.fromkeys(("layers", "hidden", "embed", "dropout")))
    assert counted == [len(expected)] * 2


@pytest.mark.parametrize("level", ["char", "word"])
def test_encode_lines_offsets(level):
    lines = ["ab c", "d", "ccc a"]
    v = build_vocab("\n".join(lines), level=level)
    ids, offsets = encode_lines(v, lines)
    assert offsets.dtype == np.int64 and offsets.shape == (4,)
    assert offsets[0] == 0 and offsets[-1] == ids.size
    assert ids.dtype == v.dtype
    for i, line in enumerate(lines):
        assert v.decode(ids[offsets[i] : offsets[i + 1]]) == line


def test_encode_no_lines():
    ids, offsets = encode_lines(build_vocab("ab"), [])
    assert ids.size == 0 and list(offsets) == [0]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_save_load_round_trip(tmp_path, dtype):
    ids = (np.arange(1000) % 200).astype(dtype)
    p = tmp_path / "ids.npy"
    save_ids(p, ids)
    assert sorted(os.listdir(tmp_path)) == ["ids.npy"]  # no temporary left behind
    m = load_ids(p)
    assert isinstance(m, np.memmap) and m.dtype == dtype
    np.testing.assert_array_equal(m, ids)
    with pytest.raises(ValueError):
        m[0] = 1  # read-only map
    plain = load_ids(p, mmap=False)
    assert not isinstance(plain, np.memmap)
    np.testing.assert_array_equal(plain, ids)


def test_save_replaces_existing(tmp_path):
    p = tmp_path / "ids.npy"
    save_ids(p, np.arange(5, dtype=np.uint8))
    save_ids(p, np.arange(3, dtype=np.uint8))
    np.testing.assert_array_equal(load_ids(p), [0, 1, 2])


def test_load_errors(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        load_ids(tmp_path / "missing.npy")
    bad = write(tmp_path, b"not numpy", "bad.npy")
    with pytest.raises(CorpusError):
        load_ids(bad)
    np.save(tmp_path / "f.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(CorpusError):
        load_ids(tmp_path / "f.npy")


def test_save_errors(tmp_path):
    with pytest.raises(CorpusError):
        save_ids(tmp_path / "no_dir" / "ids.npy", np.arange(3))
    with pytest.raises(CorpusError):
        save_ids(tmp_path / "x.npy", np.zeros((2, 2), dtype=np.int64))


def _resident_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS (Linux)")
def test_release_pages_unmaps_what_reading_mapped(tmp_path):
    path = tmp_path / "ids.npy"
    save_ids(path, np.arange(32 << 20, dtype=np.uint32) % 251)  # 128 MB
    ids = load_ids(path)
    before = _resident_mb()
    assert int(ids[::1024].astype(np.int64).sum()) > 0  # one read in every 4 KB page
    assert _resident_mb() > before + 64  # the pages read are mapped into the process
    release_pages(ids)
    assert _resident_mb() < before + 16
    assert int(ids[::1024].astype(np.int64).sum()) > 0  # and still readable
    release_pages(np.zeros(3))  # an in-memory array: nothing to do


# ---------------------------------------------------------------- the one reader: a size bound on what is not a file

DEVICES = [d for d in ("/dev/zero", "/dev/urandom") if os.path.exists(d)]


@pytest.mark.parametrize("device", DEVICES)
def test_an_endless_device_is_refused_by_its_first_bytes_wherever_it_is_read(tmp_path, device):
    from tiny_runs import TINY, invoke, make_run

    make_run(tmp_path / "run", "abc \n")
    (tmp_path / "c.txt").write_text("abc cab bca\n" * 50)
    for args in (["train", device, *TINY, "--max-steps", 1, "--out", tmp_path / "r1"],
                 ["train", tmp_path / "c.txt", "--val", device, *TINY, "--max-steps", 1, "--out", tmp_path / "r2"],
                 ["train", device, "--task", "classify", "--max-steps", 1, "--out", tmp_path / "r3"],
                 ["eval", device, "-c", tmp_path / "run"],
                 ["annotate", device, "-c", tmp_path / "run"],
                 ["classify", device, "-c", tmp_path / "run"]):
        code, out, err = invoke(args)
        assert code == 1 and err.startswith(f"Error: {device}: looks like ") and err.count("\n") == 1, (args, err)
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe")
def test_an_endless_pipe_of_text_is_refused_at_the_bound(tmp_path, monkeypatch):
    import threading

    from charrnn.files import corpus

    monkeypatch.setattr(corpus, "MAX_STREAM_BYTES", 1 << 16)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def endless():
        try:
            with open(fifo, "wb") as f:
                while True:
                    f.write(b"abc def\n" * 1024)
        except BrokenPipeError:
            pass  # the reader stopped: what is tested
    writer = threading.Thread(target=endless, daemon=True)
    writer.start()
    with pytest.raises(CorpusError) as info:
        corpus.read_text(fifo)
    writer.join(timeout=10)
    assert not writer.is_alive()
    assert str(info.value) == (f"{fifo}: more than 65,536 bytes from a pipe or device, the most charrnn takes "
                               f"from one; save the text to a file first")


def test_standard_input_is_read_within_the_bound(tmp_path, monkeypatch):
    from charrnn.files import corpus

    monkeypatch.setattr(corpus, "MAX_STREAM_BYTES", 1000)
    for size, fails in ((1000, False), (1001, True)):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"a" * (size - 1) + b"\n")))
        if fails:
            with pytest.raises(CorpusError, match="^standard input: more than 1,000 bytes from a pipe or device"):
                corpus.read_stdin()
        else:
            assert corpus.read_stdin() == "a" * (size - 1) + "\n"
