"""--encoding: text in any codec Python knows, read whole or in chunks, recorded by the model; and the
invalid-UTF-8 error that recognizes Latin-1 and Windows-1252 and names the option.

The reference throughout is Python's own bytes.decode of the whole file."""

import numpy as np
import pytest

from charrnn import api
from charrnn.files import checkpoint, corpus, textfile
from charrnn.errors import CheckpointError, ConfigError, CorpusError
from tiny_runs import TINY, invoke, make_run

FRENCH = ("Le cœur a ses raisons que la raison ne connaît point ; on le sait en mille choses.\n"
          "« Où êtes-vous ? » dit-elle — déjà l'été s'achève, à Noël ça gèle.\n") * 40
LATIN = FRENCH.replace("œ", "oe").replace("—", "-")  # Latin-1 has neither
CURLY = "“Don’t,” she said – and that’s all… Café für Zoë.\n" * 60


def _file(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("encoding, text", [("latin-1", LATIN), ("cp1252", CURLY + FRENCH),
                                            ("utf-16", FRENCH), ("shift_jis", "日本語のテキスト、ひらがな。\n" * 50),
                                            ("koi8-r", "Привет, мир!\n" * 50)])
def test_read_text_decodes_as_python_does(tmp_path, encoding, text):
    path = _file(tmp_path, "t.txt", text.encode(encoding))
    assert corpus.read_text(path, encoding=encoding) == text.encode(encoding).decode(encoding).lstrip("\ufeff")


@pytest.mark.parametrize("encoding, text", [("cp1252", CURLY + FRENCH), ("shift_jis", "日本語のテキスト、ひらがな。\n" * 50),
                                            ("gb18030", "中文文本，一行又一行。𝄞\n" * 50)])
@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_reading_matches_the_whole_decode(tmp_path, encoding, text, chunk):
    """Chunks cut inside multi-byte characters and between "\\r" and "\\n" give the whole file's text."""
    data = text.replace("\n", "\r\n").encode(encoding)
    path = _file(tmp_path, "t.txt", data)
    tf = textfile.open_text(path, chunk_bytes=chunk, encoding=encoding)
    whole = data.decode(encoding).replace("\r\n", "\n")
    assert "".join(textfile.text_pieces(tf, "char")) == whole
    assert [line for block in textfile.line_blocks(tf, "char") for line in block] == corpus.split_lines(whole)


def test_only_encodings_whose_line_ends_are_bytes_are_read_in_chunks():
    for name in ("utf-8", "latin-1", "cp1252", "shift_jis", "gb18030", "koi8-r"):
        assert corpus.ascii_compatible(corpus.text_encoding(name)), name
    for name in ("utf-16", "utf-32", "utf-7", "iso2022_jp", "cp037"):
        assert not corpus.ascii_compatible(corpus.text_encoding(name)), name


def test_encoding_names_are_checked_and_canonical():
    assert corpus.text_encoding("Latin-1") == "iso8859-1"
    assert corpus.text_encoding("utf-8-sig") == "utf-8"
    for bad, fragment in (("no-such-codec", "unknown encoding"), ("base64", "not a text encoding"), ("", "encoding")):
        with pytest.raises(ConfigError, match=fragment):
            corpus.text_encoding(bad)


def test_limited_read_drops_a_character_cut_short(tmp_path):
    text = "日本語" * 10
    path = _file(tmp_path, "t.txt", text.encode("shift_jis"))
    assert corpus.read_text(path, limit=5, encoding="shift_jis") == text[:2]  # 2-byte characters


# ---------------------------------------------------------------- the error names --encoding


# called as a library, the error names the API's keyword; on the command line, the flag (test_cli_flags)
@pytest.mark.parametrize("text, encoding, option", [(LATIN, "latin-1", "encoding='latin-1'"),
                                                     (CURLY, "cp1252", "encoding='cp1252'")])
def test_invalid_utf8_that_looks_single_byte_names_the_encoding(tmp_path, text, encoding, option):
    data = text.encode(encoding)
    path = _file(tmp_path, "t.txt", data)
    first_bad = len(text[: next(i for i, c in enumerate(text) if ord(c) > 127)].encode(encoding))
    for read in (lambda: corpus.read_text(path), lambda: textfile.scan(textfile.open_text(path), "char", "stream")):
        with pytest.raises(CorpusError) as e:
            read()
        assert option in str(e.value) and f"byte offset {first_bad}" in str(e.value) and "\n" not in str(e.value)
    assert corpus.read_text(path, encoding=encoding) == text  # and the option it names reads the file


@pytest.mark.parametrize("data", [
    "déjà vu, naïve café\n".encode() * 20 + b"\xff" + b"more\n",  # UTF-8 with one bad byte
    bytes(range(0x80, 0x100)) * 4,                                # not text in any Western encoding
    b"abc \x81\x8d\x90 def" * 10])                                # bytes Windows-1252 does not define
def test_no_single_byte_guess_for_what_is_not_western_text(tmp_path, data):
    with pytest.raises(CorpusError) as e:
        corpus.read_text(_file(tmp_path, "t.txt", data))
    assert "looks like" not in str(e.value) and "errors='replace'" in str(e.value)


def test_utf16_is_told_to_use_the_option(tmp_path):
    path = _file(tmp_path, "t.txt", FRENCH.encode("utf-16"))
    with pytest.raises(CorpusError, match="encoding='utf-16'"):
        corpus.read_text(path)
    assert corpus.read_text(path, encoding="utf-16") == FRENCH


# ---------------------------------------------------------------- training, and the model records it


def _ids(run):
    return np.load(run / "data" / "train.npy"), np.load(run / "data" / "val.npy")


@pytest.mark.parametrize("encoding, mode", [("latin-1", "stream"), ("cp1252", "lines"), ("utf-16", "stream")])
def test_training_on_an_encoded_file_is_training_on_its_text(tmp_path, encoding, mode):
    """The same ids, vocabulary and losses as the same text in UTF-8 (chunked or whole, by the encoding)."""
    text = (CURLY + FRENCH) if encoding == "cp1252" else LATIN
    utf8, other = _file(tmp_path, "u.txt", text.encode()), _file(tmp_path, "o.txt", text.encode(encoding))
    runs = []
    for path, extra in ((utf8, []), (other, ["--encoding", encoding])):
        out = tmp_path / f"run-{path.stem}"
        r = invoke(["train", path, *TINY, *extra, "--mode", mode, "--max-steps", 2, "--eval-every", 2, "--out", out, "-q"])
        assert r.exit_code == 0, r.stderr
        runs.append(out)
    for a, b in zip(_ids(runs[0]), _ids(runs[1])):
        np.testing.assert_array_equal(a, b)
    meta = [checkpoint.load_model(r / "model.safetensors")[2] for r in runs]
    assert meta[0]["tokens"] == meta[1]["tokens"]
    assert meta[0]["data"]["encoding"] == "utf-8" and meta[1]["data"]["encoding"] == corpus.text_encoding(encoding)
    assert api.load(str(runs[1])).encoding == corpus.text_encoding(encoding)

    # eval reads a file in the model's encoding unless told, and scores it as the UTF-8 model scores UTF-8
    plain = invoke(["eval", utf8, "-c", runs[0], "--json", "-q"])
    coded = invoke(["eval", other, "-c", runs[1], "--json", "-q"])
    assert plain.exit_code == 0 and coded.exit_code == 0, coded.stderr
    assert plain.stdout == coded.stdout
    told = invoke(["eval", utf8, "-c", runs[1], "--encoding", "utf-8", "--json", "-q"])
    assert told.stdout == plain.stdout
    r = invoke(["train", "--resume", runs[1], "--encoding", "utf-8", "--max-steps", 3])
    assert r.exit_code == 2 and "--encoding cannot be given with --resume" in r.stderr


def test_annotate_and_classify_read_in_the_models_encoding(tmp_path):
    text = "Zoë et Chloé, à l'été.\n" * 30
    path = _file(tmp_path, "o.txt", text.encode("latin-1"))
    out = tmp_path / "run"
    assert invoke(["train", path, *TINY, "--encoding", "latin-1", "--max-steps", 1, "--out", out, "-q"]).exit_code == 0
    r = invoke(["annotate", path, "-c", out, "--json", "-q", "--max-chars", 30])
    assert r.exit_code == 0, r.stderr
    assert "".join(__import__("json").loads(line)["token"] for line in r.stdout.splitlines()) == text[1:30]

    tsv = _file(tmp_path, "k.tsv", "".join(f"{'a' if i % 2 else 'b'}\tCafé n°{i} à Zoë\n" for i in range(40))
                .encode("cp1252"))
    clf = tmp_path / "clf"
    r = invoke(["train", tsv, "--task", "classify", "--encoding", "cp1252", "--layers", 1, "--hidden", 8,
                "--max-steps", 1, "--out", clf, "-q"])
    assert r.exit_code == 0, r.stderr
    r = invoke(["classify", tsv, "-c", clf])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0].endswith("\tCafé n°0 à Zoë")


def test_a_model_without_an_encoding_reads_utf8(tmp_path):
    """Models saved before --encoding existed hold none: they read UTF-8, as they always did."""
    make_run(tmp_path / "old", "abcé \n")
    model = api.load(str(tmp_path / "old"))
    assert model.encoding == "utf-8"
    path = _file(tmp_path, "t.txt", "abcé abc\n".encode() * 5)
    assert invoke(["eval", path, "-c", tmp_path / "old", "-q"]).exit_code == 0


def test_a_model_file_with_an_unknown_encoding_is_damaged(tmp_path):
    params, config, vocab, model_file = make_run(tmp_path / "bad", "abc \n")
    _, _, meta = checkpoint.load_model(model_file)
    meta = {k: v for k, v in meta.items() if k not in {"kind", "model", *checkpoint.RESERVED_META}}
    meta["data"]["encoding"] = "no-such-codec"
    checkpoint.save_model(model_file, params, config, meta)
    with pytest.raises(CheckpointError, match="encoding"):
        api.load(str(tmp_path / "bad"))


def test_unknown_encoding_is_a_usage_error_before_anything_is_read(tmp_path):
    path = _file(tmp_path, "t.txt", b"abc\n" * 100)
    r = invoke(["train", path, *TINY, "--encoding", "klingon", "--max-steps", 1, "--out", tmp_path / "run"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "unknown encoding 'klingon'" in r.stderr
    assert not (tmp_path / "run").exists()


def test_an_endless_device_is_refused_at_once_in_any_encoding(tmp_path):
    for encoding in ("utf-8", "latin-1", "utf-16-le", "utf-32"):
        with pytest.raises(CorpusError, match="binary|not utf-32 text"):
            corpus.read_text("/dev/zero", encoding=encoding)  # its first megabyte, not its 1 GiB bound
    with pytest.raises(CorpusError, match="utf-16-le or utf-16-be"):
        corpus.read_text(_file(tmp_path, "t.txt", "no mark".encode("utf-16-le")), encoding="utf-16")
