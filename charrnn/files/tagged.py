"""Tagged sequences, a tagger's corpus: JSON Lines or CoNLL columns, read a line at a time.

- JSON Lines, the convention of token-classification datasets: one object a line,
  `{"tokens": [...], "tags": [...]}`, of equal lengths. At char level "tokens"
  may also be a string, meaning its characters. A tag is a string (an integer is
  taken as its decimal text, as datasets that store tag ids write them).
- CoNLL columns: `token<TAB>tag` a line (more columns between are ignored: the
  token is the first, the tag the last), a blank line between sequences; a
  `-DOCSTART-` line (CoNLL-2003's document marker) ends a sequence too.

`sequences` yields each good sequence as (tokens, tags) and, once the input
ends, raises one CorpusError for the malformed lines: how many, and the first
one's number and what is wrong with it (unequal lengths, a missing tag, an
empty sequence, bad JSON, ...). A token is one character at char level, and a
non-empty run of non-blank characters at word level (what the word-level
vocabulary splits text into); a sequence holds at most MAX_TOKENS tokens.
Blank lines are skipped in JSON Lines.
"""

from __future__ import annotations

import json

from .corpus import MAX_LINE_CHARS
from ..errors import CorpusError, option

FORMATS = ("jsonl", "conll")
MAX_TOKENS = MAX_LINE_CHARS  # a sequence is one example of lines mode
DOCSTART = "-DOCSTART-"


def guess_format(first_line: str) -> str:
    """The format of a file whose first non-blank line is `first_line`: JSON Lines when it opens an object."""
    return "jsonl" if first_line.lstrip().startswith("{") else "conll"


class _Bad(Exception):
    """One malformed line's reason (caught by `sequences`, never seen outside)."""


def _token(value, level: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"a token must be a string, got {type(value).__name__}")
    if level == "char":
        if len(value) != 1:
            raise _Bad(f"at char level a token is one character, got {value[:20]!r} (tokens that are words need "
                       f"{option('level', 'word')})")
    elif not value or value.split() != [value]:
        raise _Bad(f"at word level a token is a run of non-blank characters, got {value[:20]!r}")
    return value


def _tag(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"a tag must be a non-empty string, got {json.dumps(value)[:20]}")
    return value.strip()


def _check(tokens: list, tags: list) -> tuple[list[str], list[str]]:
    if not tokens:
        raise _Bad("an empty sequence")
    if len(tokens) != len(tags):
        raise _Bad(f"{len(tokens)} tokens but {len(tags)} tags")
    if len(tokens) > MAX_TOKENS:
        raise _Bad(f"{len(tokens):,} tokens, above the {MAX_TOKENS:,} of one sequence; split it")
    return tokens, tags


def parse_json_line(line: str, level: str) -> tuple[list[str], list[str]]:
    """One JSON Lines object -> (tokens, tags); _Bad with the reason when it is malformed."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise _Bad(f"bad JSON ({str(exc)[:60]})") from None
    if not isinstance(value, dict):
        raise _Bad('not an object with "tokens" and "tags"')
    for key in ("tokens", "tags"):
        if key not in value:
            raise _Bad(f'no "{key}"')
    tokens, tags = value["tokens"], value["tags"]
    if isinstance(tokens, str) and level == "char":
        tokens = list(tokens)
    if not isinstance(tokens, list):
        raise _Bad('"tokens" must be a list' + (" or a string" if level == "char" else " at word level"))
    if not isinstance(tags, list):
        raise _Bad('"tags" must be a list')
    return _check([_token(t, level) for t in tokens], [_tag(t) for t in tags])


def parse_conll_line(line: str, level: str) -> tuple[str, str]:
    """One `token<TAB>tag` line -> (token, tag); _Bad with the reason when it is malformed."""
    fields = line.split("\t")
    if len(fields) < 2:
        raise _Bad("no TAB: a missing tag (each line is token<TAB>tag)")
    return _token(fields[0], level), _tag(fields[-1])


def _note(bad, number: int, reason):
    return (1, number, str(reason)) if bad is None else (bad[0] + 1, *bad[1:])


def sequences(lines, fmt: str, level: str, where: str):
    """Yield (tokens, tags) for each sequence of `lines` (an iterable of str, their line ends optional).

    - fmt: "jsonl" or "conll"; level: "char" or "word"; where: the input's name, for errors
    After the last good sequence, a CorpusError names the malformed lines, if any.
    """
    if fmt not in FORMATS:
        raise CorpusError(f"{where}: unknown tagged format {fmt!r}; choose jsonl or conll")
    bad = None  # (how many malformed lines, the first one's number, its reason)
    count = 0
    tokens: list[str] = []
    tags: list[str] = []
    start, long = 0, False  # the line number of the CoNLL sequence being read; whether it is too long
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        blank = not line.strip()
        if fmt == "jsonl":
            if blank:
                continue
            try:
                yield parse_json_line(line, level)
                count += 1
            except _Bad as exc:
                bad = _note(bad, number, exc)
            continue
        if blank or line.split("\t", 1)[0] == DOCSTART:
            if tokens and not long:
                yield tokens, tags
                count += 1
            tokens, tags, long = [], [], False
            continue
        if not tokens and not long:
            start = number
        try:
            token, tag = parse_conll_line(line, level)
        except _Bad as exc:
            bad = _note(bad, number, exc)
            continue
        if long:
            continue
        tokens.append(token)
        tags.append(tag)
        if len(tokens) > MAX_TOKENS:  # not held further: the sequence is refused
            bad = _note(bad, start, f"a sequence of more than {MAX_TOKENS:,} tokens; split it with blank lines")
            tokens, tags, long = [], [], True
    if tokens:
        yield tokens, tags
        count += 1
    if bad:
        n, number, reason = bad
        raise CorpusError(f"{where}: {n:,} malformed line{'s' if n > 1 else ''} of "
                          f"{'JSON Lines' if fmt == 'jsonl' else 'CoNLL columns'}; the first is line {number}: "
                          f"{reason}")
    if not count:
        raise CorpusError(f"{where}: no tagged sequence found")


def inputs(lines, level: str, where: str):
    """Yield the token lists to tag, one per non-blank line of `lines` (what `charrnn tag` reads).

    - a line that opens a JSON object is JSON Lines: its "tokens" (a list, or a string at char level; any
      "tags" it holds are ignored, so the tagger's own output reads back);
    - any other line is plain text: its characters at char level, its whitespace-split words at word level.
    A malformed JSON line is a CorpusError naming its number, raised when it is reached.
    """
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                value = json.loads(line)
                if not isinstance(value, dict) or "tokens" not in value:
                    raise _Bad('not an object with "tokens"')
                tokens = value["tokens"]
                if isinstance(tokens, str) and level == "char":
                    tokens = list(tokens)
                if not isinstance(tokens, list) or not tokens:
                    raise _Bad('"tokens" must be a non-empty list' + (" or string" if level == "char" else ""))
                tokens = [_token(t, level) for t in tokens]
            except (ValueError, RecursionError) as exc:
                raise CorpusError(f"{where}: line {number}: bad JSON ({str(exc)[:60]})") from None
            except _Bad as exc:
                raise CorpusError(f"{where}: line {number}: {exc}") from None
        else:
            tokens = list(line) if level == "char" else line.split()
        if len(tokens) > MAX_TOKENS:
            raise CorpusError(f"{where}: line {number}: {len(tokens):,} tokens, above the {MAX_TOKENS:,} of one "
                              "sequence; split it")
        yield tokens
