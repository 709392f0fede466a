import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.errors import ConfigError, VocabError
from charrnn.data.vocab import Vocab, build_vocab, id_dtype, tokenize


def test_specials_and_sorted_order():
    v = build_vocab("hello world")
    assert (v.eos, v.unk, v.bos) == (0, 1, 2)
    assert v.special == {"eos": 0, "unk": 1, "bos": 2}
    assert v.tokens[:3] == ("<eos>", "<unk>", "<bos>")
    assert v.tokens[3:] == tuple(sorted(set("hello world")))
    assert v.size == 3 + len(set("hello world"))


def test_ids_do_not_depend_on_text_order():
    assert build_vocab("abcabc") == build_vocab("cbacba")


def test_min_count_makes_unk():
    v = build_vocab("aaabbc", min_count=2)
    assert v.tokens[3:] == ("a", "b")
    assert list(v.encode("abcz")) == [3, 4, v.unk, v.unk]


def test_max_vocab_keeps_most_frequent_ties_sorted():
    v = build_vocab("ccccbbbaad", max_vocab=2)
    assert v.tokens[3:] == ("b", "c")
    # a, b, c tie; the first two in sorted order win and stay sorted.
    v = build_vocab("cba", max_vocab=2)
    assert v.tokens[3:] == ("a", "b")


def test_bad_options():
    with pytest.raises(ConfigError):
        build_vocab("abc", level="byte")
    with pytest.raises(ConfigError):
        build_vocab("abc", min_count=0)
    with pytest.raises(ConfigError):
        build_vocab("abc", max_vocab=0)


def test_word_level():
    text = "Hello, world!\n\n  It's  <eos> ok."
    toks = tokenize(text, "word")
    assert "".join(toks) == text
    assert toks[:4] == ["Hello", ",", " ", "world"]
    assert "<eos>" not in toks and "\n" in toks and "  " in toks
    v = build_vocab(text, level="word")
    assert v.level == "word"
    assert "Hello" in v.tokens and v.tokens[3:] == tuple(sorted(set(toks)))
    ids = v.encode(text)
    assert ids.size == len(toks)
    assert v.decode(ids) == text
    assert list(v.encode("Hello there")) == [v.tokens.index("Hello"), v.tokens.index(" "), v.unk]


def test_unknown_chars_and_decode_specials():
    v = build_vocab("ab")
    ids = v.encode("a\U0001f600b\u00e9")
    assert list(ids) == [3, v.unk, 4, v.unk]
    assert v.decode(ids) == "a\ufffdb\ufffd"
    assert v.decode([v.bos, 3, v.eos]) == "a"
    assert v.decode(3) == "a"
    assert v.decode([]) == ""
    with pytest.raises(VocabError):
        v.decode([v.size])
    with pytest.raises(VocabError):
        v.decode([-1])


def test_non_bmp_and_lone_surrogate():
    v = build_vocab("x\U0001f600y")
    assert v.decode(v.encode("\U0001f600yx")) == "\U0001f600yx"
    assert list(v.encode("\ud800")) == [v.unk]
    s = build_vocab("a\ud800")  # a lone surrogate is still one character with an id
    assert s.decode(s.encode("\ud800a")) == "\ud800a"


def test_dtype_selection():
    assert id_dtype(3) == np.uint8
    assert id_dtype(256) == np.uint8
    assert id_dtype(257) == np.uint16
    assert id_dtype(65536) == np.uint16
    assert id_dtype(65537) == np.uint32
    assert build_vocab("abc").encode("abc").dtype == np.uint8
    wide = build_vocab("".join(chr(0x4E00 + i) for i in range(300)))
    assert wide.size == 303 and wide.encode("\u4e00").dtype == np.uint16
    assert wide.decode(wide.encode("\u4e00\u4e01")) == "\u4e00\u4e01"


def test_large_text_encodes_in_chunks():
    # Longer than one chunk, so chunk seams are exercised at both levels.
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", ",", " ", "\n", "  "]
    text = "".join(rng.choice(words, size=600_000))
    assert len(text) > 1 << 20
    for level in ("char", "word"):
        v = build_vocab(text, level=level)
        ids = v.encode(text)
        assert ids.size == len(tokenize(text, level))
        assert v.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_char_round_trip(text):
    v = build_vocab(text)
    ids = v.encode(text)
    assert ids.shape == (len(text),)
    assert (ids >= 3).all()
    assert v.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_word_round_trip(text):
    assert "".join(tokenize(text, "word")) == text
    v = build_vocab(text, level="word")
    assert v.decode(v.encode(text)) == text


@given(st.text(min_size=1), st.text())
def test_char_unknowns_become_unk(train, other):
    v = build_vocab(train)
    ids = v.encode(other)
    known = np.array([c in set(train) for c in other], dtype=bool)
    assert ((ids == v.unk) == ~known).all()


@pytest.mark.parametrize("level", ["char", "word"])
def test_dict_round_trip(level):
    v = build_vocab("one two, three\n", level=level)
    d = json.loads(json.dumps(v.to_dict()))
    assert d["special"] == {"eos": 0, "unk": 1, "bos": 2}
    assert d["level"] == level
    w = Vocab.from_dict(d)
    assert w == v
    assert list(w.encode("one two")) == list(v.encode("one two"))


def _good():
    return build_vocab("abc").to_dict()


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["tokens"].append("a"),  # duplicate
        lambda d: d.__setitem__("special", {"eos": 1, "unk": 0, "bos": 2}),
        lambda d: d["tokens"].__setitem__(3, 7),  # non-string
        lambda d: d["tokens"].__setitem__(3, "ab"),  # not one character
        lambda d: d["tokens"].__setitem__(3, ""),
        lambda d: d.__setitem__("level", "byte"),
        lambda d: d.__setitem__("tokens", d["tokens"][1:]),  # specials shifted
        lambda d: d.__setitem__("tokens", "abc"),
        lambda d: d.pop("level"),
        lambda d: d.pop("tokens"),
    ],
)
def test_from_dict_rejects_malformed(change):
    d = _good()
    change(d)
    with pytest.raises(VocabError) as e:
        Vocab.from_dict(d)
    assert "\n" not in str(e.value)


def test_from_dict_rejects_non_dict():
    with pytest.raises(VocabError):
        Vocab.from_dict(["<eos>"])


def test_word_dict_rejects_special_string_duplicate():
    d = build_vocab("a b", level="word").to_dict()
    d["tokens"].append("<eos>")
    with pytest.raises(VocabError):
        Vocab.from_dict(d)


@pytest.mark.parametrize("level, token", [("word", "the"), ("char", "a")])
def test_many_copies_of_one_token_are_refused_in_linear_time(level, token):
    # a crafted model file's vocabulary: 200,000 copies of one token. A count per token (quadratic)
    # took minutes here; the one-pass check refuses it at once and says how many copies are extra
    d = build_vocab("a b", level=level).to_dict()
    d["tokens"] += [token] * 200_000
    with pytest.raises(VocabError, match="duplicate") as e:
        Vocab.from_dict(d)
    extra = len(d["tokens"]) - len(set(d["tokens"]))
    assert f"{extra:,} duplicate" in str(e.value) and repr(token) in str(e.value)
