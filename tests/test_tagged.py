"""A tagger's corpus: JSON Lines and CoNLL columns, and one error with a line number for each kind of
malformed line."""

import json

import pytest

from charrnn.errors import CorpusError
from charrnn.files import tagged


def read(text, fmt, level="word"):
    return list(tagged.sequences(text.split("\n"), fmt, level, "t"))


def test_json_lines_at_word_and_char_level():
    text = "\n".join([json.dumps({"tokens": ["Harry", "Potter", "and", "Hermione"], "tags": ["B-PER", "I-PER", "O", "B-PER"]}),
                      "", json.dumps({"tokens": ["x"], "tags": [3], "id": 7})])
    assert read(text, "jsonl") == [(["Harry", "Potter", "and", "Hermione"], ["B-PER", "I-PER", "O", "B-PER"]),
                                   (["x"], ["3"])]
    line = json.dumps({"tokens": "a b", "tags": ["n", "ws", "n"]})
    assert read(line, "jsonl", "char") == [(["a", " ", "b"], ["n", "ws", "n"])]
    assert read(json.dumps({"tokens": ["é", " "], "tags": ["x", "y"]}), "jsonl", "char") == [(["é", " "], ["x", "y"])]


def test_conll_columns():
    text = "-DOCSTART-\tO\n\nEU\tB-ORG\nrejects\tO\r\n\n\nGerman\tNNP\tB-MISC\ncall\tO\n"
    assert read(text, "conll") == [(["EU", "rejects"], ["B-ORG", "O"]), (["German", "call"], ["B-MISC", "O"])]
    assert tagged.guess_format('  {"tokens": []}') == "jsonl" and tagged.guess_format("EU\tB-ORG") == "conll"


@pytest.mark.parametrize("fmt,level,lines,number,reason", [
    ("jsonl", "word", ['{"tokens": ["a"], "tags": ["x"]}', '{"tokens": ["a", "b"], "tags": ["x"]}'], 2,
     "2 tokens but 1 tags"),                                                       # unequal lengths
    ("jsonl", "word", ['{"tokens": ["a"]}'], 1, 'no "tags"'),                      # a missing tag list
    ("jsonl", "word", ['', '{"tokens": [], "tags": []}'], 2, "an empty sequence"),
    ("jsonl", "word", ['{"tokens": ["a"], "tags": ["x"]', ], 1, "bad JSON"),
    ("jsonl", "word", ['[1, 2]'], 1, "not an object"),
    ("jsonl", "word", ['{"tokens": ["a b"], "tags": ["x"]}'], 1, "run of non-blank characters"),
    ("jsonl", "word", ['{"tokens": "ab", "tags": ["x", "y"]}'], 1, "must be a list at word level"),
    ("jsonl", "char", ['{"tokens": ["ab"], "tags": ["x"]}'], 1, "one character"),
    ("jsonl", "word", ['{"tokens": ["a"], "tags": [null]}'], 1, "a tag must be a non-empty string"),
    ("jsonl", "word", ['{"tokens": ["a"], "tags": [true]}'], 1, "a tag must be a non-empty string"),
    ("conll", "word", ["EU\tB-ORG", "rejects"], 2, "a missing tag"),
    ("conll", "word", ["EU\tB-ORG", "rejects\t  "], 2, "a tag must be a non-empty string"),
    ("conll", "word", ["EU\tB-ORG", "", "\tO"], 3, "run of non-blank characters"),
])
def test_each_malformed_line_is_one_error_with_its_number(fmt, level, lines, number, reason):
    with pytest.raises(CorpusError) as info:
        list(tagged.sequences(lines, fmt, level, "data.jsonl"))
    message = str(info.value)
    assert message.startswith("data.jsonl: 1 malformed line of ") and "\n" not in message
    assert f"the first is line {number}: " in message and reason in message


def test_many_malformed_lines_are_counted_and_the_first_named():
    lines = ['{"tokens": ["a"], "tags": ["x"]}', "oops", '{"tokens": ["a"], "tags": []}']
    with pytest.raises(CorpusError, match=r"2 malformed lines of JSON Lines; the first is line 2: bad JSON"):
        list(tagged.sequences(lines, "jsonl", "word", "f"))


def test_a_sequence_too_long_and_an_empty_file_are_refused():
    lines = [f"a\tx" for _ in range(tagged.MAX_TOKENS + 1)] + ["", "b\ty"]
    with pytest.raises(CorpusError, match=r"1 malformed line of CoNLL columns; the first is line 1: a sequence of more"):
        list(tagged.sequences(lines, "conll", "word", "f"))
    with pytest.raises(CorpusError, match="no tagged sequence found"):
        list(tagged.sequences(["", "  "], "conll", "word", "f"))
    with pytest.raises(CorpusError, match="unknown tagged format"):
        list(tagged.sequences([], "csv", "word", "f"))


def test_inputs_to_tag_are_plain_lines_or_json_lines():
    lines = ["Harry Potter", "", json.dumps({"tokens": ["a", "b"], "tags": ["x", "y"], "probs": [1, 1]}),
             json.dumps({"tokens": "ab"})]
    assert list(tagged.inputs(lines[:3], "word", "f")) == [["Harry", "Potter"], ["a", "b"]]
    assert list(tagged.inputs(lines, "char", "f")) == [list("Harry Potter"), ["a", "b"], ["a", "b"]]
    for bad, reason in (("{oops", "bad JSON"), ('{"tags": []}', 'not an object with "tokens"'),
                        ('{"tokens": []}', "non-empty list"), ('{"tokens": ["a b"]}', "non-blank")):
        with pytest.raises(CorpusError, match=f"f: line 2: .*{reason}"):
            list(tagged.inputs(["ok", bad], "word", "f"))
