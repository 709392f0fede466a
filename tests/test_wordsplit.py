"""The compiled word splitter (charrnn/data/wordsplit.py) against its reference, WORD_PATTERN.

What goes in: text with every kind of character the pattern tells apart (word characters of any script,
digits, "_", the newline, "\\r", Unicode spaces, punctuation, lone surrogates). What must come out: the
distinct tokens in order of first appearance, their counts and each token's index among them, exactly as
vocab.distinct_tokens_reference gives them.
"""

import numpy as np
from hypothesis import given, settings, strategies as st

from charrnn.data import vocab
from charrnn.data.vocab import WORD_PATTERN
from tiny_runs import compiled

wordsplit = compiled("data.wordsplit")

EVERY = "".join(map(chr, range(0x110000)))


def same_as_reference(text: str) -> None:
    tokens, counts, inverse = wordsplit.distinct_tokens(text, vocab._codepoints(text))
    ref_tokens, ref_counts, ref_inverse = vocab.distinct_tokens_reference(text)
    assert tokens == ref_tokens
    assert counts.tolist() == ref_counts.tolist() and inverse.tolist() == ref_inverse.tolist()
    splits_as_the_pattern(text)


def splits_as_the_pattern(text: str) -> None:
    """The compiled split against WORD_PATTERN.findall alone (what distinct_tokens_reference is made of,
    without its Python loop: for the texts of a million code points)."""
    tokens, counts, inverse = wordsplit.distinct_tokens(text, vocab._codepoints(text))
    found = WORD_PATTERN.findall(text)
    assert tokens == list(dict.fromkeys(found))  # distinct, in order of first appearance
    assert [tokens[i] for i in inverse.tolist()] == found
    assert counts.tolist() == np.bincount(inverse, minlength=len(tokens)).tolist()


def test_every_code_point_is_split_as_the_pattern_splits_it():
    splits_as_the_pattern(EVERY)  # in order: each class boundary between neighbouring code points
    # a shuffled fifth of them: every class met beside every other, and runs of each
    splits_as_the_pattern("".join(map(chr, np.random.default_rng(0).permutation(0x110000)[:0x110000 // 5].tolist())))


ALPHABET = st.sampled_from(list("ab_Z09 \t\n\r.,'-") + ["é", "ß", "漢", "²", "\u0301", "\u00a0", "\u2003",
                                                          "\x1c", "\x85", "\u2028", "\ud800", "\U0001f600"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=ALPHABET, max_size=8), max_size=60))
def test_random_text_splits_as_the_reference(words):
    same_as_reference("".join(words))


def test_a_text_of_many_distinct_tokens_grows_the_table_and_keeps_them_apart():
    # 50,000 distinct words (the table doubles from 4,096 slots), each twice, in two orders
    words = [f"w{k}" for k in range(50_000)]
    rng = np.random.default_rng(1)
    text = " ".join(words + [words[i] for i in rng.permutation(50_000).tolist()])
    same_as_reference(text)
    tokens, counts, _ = wordsplit.distinct_tokens(text, vocab._codepoints(text))
    assert len(tokens) == 50_001 and counts[tokens.index("w49999")] == 2  # and the space


def test_the_kernels_choice_gives_the_reference_under_charrnn_kernels_numpy(monkeypatch):
    text = "Hello, world!\n  héllo_world 42 ²\n"
    vocab._word_kernels.cache_clear()
    try:
        monkeypatch.setenv("CHARRNN_KERNELS", "numpy")
        assert vocab._word_kernels() is None
        reference = vocab.distinct_tokens(text)
        vocab._word_kernels.cache_clear()
        monkeypatch.delenv("CHARRNN_KERNELS")
        assert vocab._word_kernels() is wordsplit
        fast = vocab.distinct_tokens(text)
        assert fast[0] == reference[0] and (fast[1] == reference[1]).all() and (fast[2] == reference[2]).all()
    finally:
        vocab._word_kernels.cache_clear()


LINE = st.text(alphabet=st.sampled_from(list("ab_Z0 \t.,'") + ["é", "²", "\u2003", "\x85", "\ud800"]), max_size=10)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(LINE, max_size=12), newline_in=st.integers(-1, 11))
def test_word_lines_encode_and_count_as_each_line_split_alone(lines, newline_in):
    """Lines mode splits a block of lines as one text joined by newlines, then leaves the joins out: the ids,
    the offsets and the counts must be those of each line split by WORD_PATTERN on its own (a line that holds
    a newline itself, possible through the API, is encoded line by line)."""
    from collections import Counter
    from charrnn.files import corpus, textfile
    if 0 <= newline_in < len(lines):
        lines[newline_in] += "\nx y"
    known = vocab.build_vocab(" ".join(lines[::2]) + " a b", "word")  # some tokens unknown: UNK
    ids, offsets = corpus.encode_lines(known, lines)
    alone = [known.encode_tokens(WORD_PATTERN.findall(line)) for line in lines]
    assert offsets.tolist() == [0, *np.cumsum([a.size for a in alone]).tolist()]
    assert ids.dtype == known.dtype and ids.tolist() == [i for a in alone for i in a.tolist()]
    if all("\n" not in line for line in lines) and all(lines):  # what pass 1 sees: non-empty lines
        counted, per_line = textfile._line_tokens(lines)
        assert counted == Counter(t for line in lines for t in WORD_PATTERN.findall(line))
        assert per_line.tolist() == [a.size for a in alone]
