"""Corpus text: read and validate files, the built-in default corpus, splits, compact id arrays on disk.

Text is UTF-8 unless an encoding is given (any text codec Python knows, `text_encoding`), with "\\n"
line ends: a leading byte order mark is dropped and "\\r\\n" / lone "\\r" become "\\n", whichever
way the text arrives.
"""

from __future__ import annotations

import codecs
import fnmatch
import functools
import io
import mmap as mmap_module
import os
import re
import stat
import sys
from pathlib import Path

import numpy as np

from . import atomic
from ..errors import ConfigError, CorpusError, option
from ..data.vocab import Vocab, distinct_line_tokens

TEXT_ERRORS = ("strict", "replace")  # what invalid UTF-8 does: an error, or U+FFFD
DEFAULT_ENCODING = "utf-8"
_BOM = b"\xef\xbb\xbf"
# Like git and grep: a NUL byte this early means the file is not text.
_BINARY_SNIFF = 8000


def normalize_newlines(text: str) -> str:
    """Text with "\\r\\n" and lone "\\r" replaced by "\\n"."""
    if "\r" not in text:
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def text_encoding(name) -> str:
    """The codec of a text encoding Python knows, by its canonical name ("latin-1" -> "iso8859-1");
    "utf-8-sig" is "utf-8" (a leading byte order mark is dropped either way). ConfigError for a name Python
    does not know or a codec that does not decode bytes to text (base64, rot13)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"encoding must be the name of a text encoding, such as utf-8 or latin-1, got {name!r:.40}")
    try:
        info = codecs.lookup(name.strip())
    except LookupError:
        raise ConfigError(f"unknown encoding {name!r:.60}; give one Python knows, such as utf-8, latin-1, cp1252 "
                          f"or utf-16") from None
    if not getattr(info, "_is_text_encoding", True):
        raise ConfigError(f"{name!r:.60} is not a text encoding; give one such as utf-8, latin-1 or cp1252")
    return DEFAULT_ENCODING if info.name == "utf-8-sig" else info.name


@functools.lru_cache(maxsize=None)
def ascii_compatible(encoding: str) -> bool:
    """Whether text in this encoding can be read in chunks cut at line ends, and its lines decoded one by
    one: each ASCII byte stands for its own character ("\\n" and "\\r" are never part of another), and the
    decoder keeps no state but the bytes of a character cut short (UTF-8, Latin-1, Windows-1252, Shift JIS,
    GB18030, ...; not UTF-16, UTF-32, UTF-7, ISO-2022 or EBCDIC). Other encodings are read whole."""
    try:
        if codecs.getincrementaldecoder(encoding)().getstate() != (b"", 0):
            return False
        return bytes(range(128)).decode(encoding) == bytes(range(128)).decode("ascii")
    except (LookupError, UnicodeError, ValueError):
        return False


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


# Bytes that Windows-1252 does not define: a text holding them is not Windows-1252 (Latin-1 has C1 controls there).
_CP1252_UNDEFINED = frozenset(b"\x81\x8d\x8f\x90\x9d")
_WESTERN_MARKS = set("\u2018\u2019\u201a\u201c\u201d\u201e\u2013\u2014\u2026\u2022\u20ac\u00a3\u00a7\u00b0\u00b1"
                     "\u00ab\u00bb\u00bf\u00a1\u00a9\u00ae\u00b7\u00b4\u00a8\u00aa\u00ba\u00a0\u00b2\u00b3\u00bd\u00bc\u00be")


def single_byte_guess(window: bytes) -> str | None:
    """"cp1252" or "latin-1" when bytes that are not UTF-8 look like Western European text in Windows-1252 or
    Latin-1 (ISO 8859-1): nearly every byte above 0x7F is a letter or common punctuation there, and bytes
    0x80-0x9F (curly quotes and dashes in Windows-1252, controls in Latin-1) say which, and no character
    around them is UTF-8 (that is UTF-8 text with some bad bytes). Else None.
    - window: some bytes of the text around where UTF-8 failed"""
    high = [b for b in window if b >= 0x80]
    if not high or any(c > "\x7f" and c != "\ufffd" for c in window.decode("utf-8", "replace")):
        return None  # nothing to go on, or UTF-8 text with some bad bytes among good characters
    c1 = [b for b in high if b < 0xA0]
    if any(b in _CP1252_UNDEFINED for b in c1):
        return None
    guess = "cp1252" if c1 else "latin-1"
    chars = bytes(high).decode(guess)
    plausible = sum(ch.isalpha() or ch in _WESTERN_MARKS for ch in chars)
    return guess if plausible >= 0.9 * len(chars) else None


def bad_bytes_error(name, encoding: str, offset: int, window: bytes = b"") -> CorpusError:
    """The CorpusError for bytes that do not decode: where, and what to do. When UTF-8 fails on bytes that
    look like Windows-1252 or Latin-1 (single_byte_guess of the window around them), it names --encoding.
    - offset: the first bad byte's offset in the file"""
    label = "UTF-8" if _is_utf8(encoding) else encoding
    guess = single_byte_guess(window) if _is_utf8(encoding) else None
    if guess:
        what = "Windows-1252" if guess == "cp1252" else "Latin-1 (ISO 8859-1)"
        return CorpusError(f"{name}: invalid UTF-8 at byte offset {offset}; it looks like {what} text: re-run with "
                           f"{option('encoding', guess)} (or {option('errors', 'replace')} to substitute U+FFFD for "
                           f"bad bytes)")
    return CorpusError(f"{name}: invalid {label} at byte offset {offset}; re-run with {option('encoding', 'NAME')} "
                       f"if it is in another encoding, or {option('errors', 'replace')} to substitute U+FFFD for "
                       f"bad bytes")


def error_window(data, start: int, size: int = 4096) -> bytes:
    """The bytes around offset start (up to size on each side), for single_byte_guess."""
    return bytes(data[max(0, start - size) : start + size])


# A pipe, a terminal or a device has no size to look at beforehand, and whatever reads it whole holds it
# in memory: it is read up to this many bytes, and a longer one is refused (a file of any size is read in
# chunks where it can be: training, eval). A device that gives no text (/dev/zero, /dev/urandom) is refused
# by its first bytes, as a binary file is.
MAX_STREAM_BYTES = 1 << 30
_READ_BLOCK = 1 << 20
STDIN = "-"  # the name that reads standard input


def input_name(path) -> str:
    """What messages call an input: its path, or "standard input" for "-"."""
    return "standard input" if os.fspath(path) == STDIN else str(os.fspath(path))


def read_text(path, errors: str = "strict", *, limit: int | None = None, encoding: str = DEFAULT_ENCODING) -> str:
    """Read a text file (or standard input, "-") as training text.

    - path: str or Path of the file, or "-"
    - errors: "strict" (invalid bytes are an error) or "replace" (they become U+FFFD)
    - limit: read at most this many bytes, and stop there (None: all of it; see read_input)
    - encoding: the text's encoding (text_encoding), UTF-8 by default
    - returns: the text, BOM removed, newlines normalized to "\n"
    Raises CorpusError for a missing, unreadable, empty, binary or badly encoded file.
    """
    if errors not in TEXT_ERRORS:
        raise ConfigError(f"unknown text error handling {errors!r}; expected 'strict' or 'replace'")
    encoding = text_encoding(encoding)
    data = read_input(path, limit, encoding)
    if limit is not None:
        data = _whole_characters(data, encoding, errors)
    return decode_text(data, input_name(path), errors, encoding)


def read_input(path, limit: int | None = None, encoding: str = DEFAULT_ENCODING) -> bytes:
    """The bytes of a user's input, whole: a file, a pipe, a device or standard input ("-").

    - limit: stop after this many bytes (None: read to the end)
    A regular file is read at once; anything else as input_blocks reads it (within MAX_STREAM_BYTES).
    """
    return b"".join(input_blocks(path, limit, encoding, whole=True))


def _regular(f) -> bool:
    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):  # a stream with no descriptor (io.BytesIO as stdin)
        return False


def input_blocks(path, limit: int | None = None, encoding: str = DEFAULT_ENCODING, *, whole: bool = False):
    """Yield the bytes of a user's input a block at a time: the one reader of a file, a pipe, a device or
    standard input ("-") that is not read in chunks where it lies.

    - limit: stop after this many bytes (None: read to the end)
    - whole: a regular file read to its end comes as one block (read_input)
    A file that is not regular (a pipe, a terminal, a device) is refused, with a CorpusError, once it
    passes MAX_STREAM_BYTES; the first bytes of anything else are checked as decode_text checks them as
    soon as they arrive, so an endless binary device is refused at once.
    """
    name = input_name(path)
    f = open_binary(path)
    try:
        regular = _regular(f)
        if regular and whole and limit is None:
            yield f.read()
            return
        bound = limit if limit is not None else None if regular else MAX_STREAM_BYTES + 1
        head, total = b"", 0
        while bound is None or total < bound:
            block = f.read(_READ_BLOCK if bound is None else min(_READ_BLOCK, bound - total))
            if not block:
                break
            if len(head) < _BINARY_SNIFF:
                head += block[: _BINARY_SNIFF - len(head)]
                _check_head(head, name, encoding)
            total += len(block)
            if limit is None and not regular and total > MAX_STREAM_BYTES:
                raise CorpusError(f"{name}: more than {MAX_STREAM_BYTES:,} bytes from a pipe or device, the most "
                                  f"charrnn takes from one; save the text to a file first")
            yield block
    except OSError as e:
        raise CorpusError(f"{name}: cannot read: {e.strerror or e}") from None
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def _whole_characters(data: bytes, encoding: str = DEFAULT_ENCODING, errors: str = "strict") -> bytes:
    """data without a character cut short at its end (a read that stopped at a byte limit)."""
    if not _is_utf8(encoding):  # what an incremental decoder holds back, waiting for the rest
        decoder = codecs.getincrementaldecoder(encoding)(errors)
        try:
            decoder.decode(data, False)
        except UnicodeDecodeError:
            return data  # decode_text reports where
        pending = len(decoder.getstate()[0])
        return data[: len(data) - pending]
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return data
        if byte >= 0xC0:  # the lead byte: is its character whole?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if back >= need else data[:-back]
    return data


def open_binary(path):
    """A user's input opened for reading bytes ("-": standard input); CorpusError (no such file, a directory,
    permission denied, cannot read) where it cannot be. Read it through read_input, or in chunks."""
    if os.fspath(path) == STDIN:
        return sys.stdin.buffer
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CorpusError(f"{path}: is a directory, not a text file") from None
    except PermissionError:
        raise CorpusError(f"{path}: permission denied") from None
    except OSError as e:
        raise CorpusError(f"{path}: cannot read: {e.strerror or e}") from None
    if os.path.isdir(path):  # some platforms open directories without an error
        f.close()
        raise CorpusError(f"{path}: is a directory, not a text file")
    return f


def _check_head(head: bytes, path: str, encoding: str = DEFAULT_ENCODING) -> None:
    """CorpusError when a file's first bytes say it is not text in its encoding (UTF-16 read as another, or a
    NUL byte). An encoding whose bytes are not ASCII's (UTF-16, UTF-32) is checked by the characters its first
    bytes decode to: a NUL among them is no text (so /dev/zero is refused at once in any encoding)."""
    if not ascii_compatible(encoding):
        try:
            chars = codecs.getincrementaldecoder(encoding)("replace").decode(head[:_BINARY_SNIFF], False)
        except (UnicodeError, ValueError) as e:  # even with errors replaced: these bytes are not such text
            hint = "; give utf-16-le or utf-16-be, or utf-32-le or utf-32-be" if "BOM" in str(e) else ""
            raise CorpusError(f"{path}: not {encoding} text: {e}{hint}") from None
        if "\0" in chars:
            raise CorpusError(f"{path}: looks like a binary file (it holds NUL characters as {encoding}); "
                              f"expected {encoding} text")
        return
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise CorpusError(f"{path}: looks like UTF-16 text (it starts with a UTF-16 byte order mark); "
                          f"re-run with {option('encoding', 'utf-16')}")
    if b"\0" in head[:_BINARY_SNIFF]:
        raise CorpusError(f"{path}: looks like a binary file (it contains NUL bytes); expected "
                          f"{'UTF-8' if _is_utf8(encoding) else encoding} text")


def decode_text(data: bytes, name: str, errors: str = "strict", encoding: str = DEFAULT_ENCODING) -> str:
    """The text of a file's bytes, checked as read_text checks them (name: what errors call it)."""
    if errors not in TEXT_ERRORS:
        raise ConfigError(f"unknown text error handling {errors!r}; expected 'strict' or 'replace'")
    encoding = text_encoding(encoding)
    path = name
    start = len(_BOM) if _is_utf8(encoding) and data.startswith(_BOM) else 0
    if len(data) == start:
        raise CorpusError(f"{path}: the file is empty")
    _check_head(data[:_BINARY_SNIFF], path, encoding)
    try:
        # str() decodes the memoryview in place: no copy of a large file just to drop the BOM.
        text = str(memoryview(data)[start:], encoding, errors)
    except UnicodeDecodeError as e:
        raise bad_bytes_error(path, encoding, start + e.start, error_window(data, start + e.start)) from None
    if not ascii_compatible(encoding):
        text = text[1:] if text.startswith("\ufeff") else text
        if not text:
            raise CorpusError(f"{path}: the file is empty")
        if "\0" in text[:_BINARY_SNIFF]:
            raise CorpusError(f"{path}: looks like a binary file (it holds NUL characters as {encoding}); "
                              f"expected {encoding} text")
    return normalize_newlines(text)


def read_stdin(errors: str = "strict", encoding: str = DEFAULT_ENCODING) -> str:
    """Standard input as text, checked as read_text checks a file; "" when it is empty."""
    data = read_input(STDIN, encoding=encoding)
    return decode_text(data, "standard input", errors, encoding) if data.strip(_BOM) else ""


def default_corpus() -> str:
    """The built-in corpus: the Python language reference text that CPython ships, as prose (as_prose).

    - returns: the pydoc_data topics in sorted key order, a blank line between them, tables and long
      runs of blanks removed
    Raises CorpusError when this Python lacks the pydoc_data module.
    """
    return "".join(default_corpus_parts())


def default_corpus_parts():
    """Yield default_corpus() in pieces, a topic at a time (CorpusError as default_corpus)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise CorpusError(
            "the built-in corpus needs the pydoc_data module, which this Python does not have; "
            "pass a text file to train on"
        ) from None
    first = True
    for key in sorted(topics):
        part = as_prose(normalize_newlines(topics[key])).strip("\n")
        if part:
            yield part if first else "\n\n" + part
            first = False
    yield "\n"


_TABLE_BORDER = re.compile(r"[ \t]*\+[-=+]*[-=][-=+]*\+?[ \t]*")  # +-----+----+ or +=====+ (a grid table's)
_TABLE_ROW = re.compile(r"[ \t]*[|+].*")                             # | cell | cell | (or a border)
_INNER_BLANKS = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")              # a run of blanks between words
_INDENT = re.compile(r"^[ \t]{9,}", re.M)                           # an indentation beyond 8 columns
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n){2,}")                     # two or more blank lines in a row


def as_prose(text: str) -> str:
    """Reference text as prose a short run can learn to write: grid tables (+----+ borders and the | rows
    between them) left out, runs of blanks between words made one space, indentation cut to 8 columns,
    trailing blanks dropped and blank lines in a row made one. Text without these is returned unchanged."""
    out, table = [], False
    for line in text.split("\n"):
        if _TABLE_BORDER.fullmatch(line):
            table = True  # a grid table: it goes on while its lines are borders and rows
            continue
        if table and _TABLE_ROW.fullmatch(line):
            continue
        table = False
        out.append(_INNER_BLANKS.sub(" ", line).rstrip())
    text = _INDENT.sub(" " * 8, "\n".join(out))
    return _BLANK_LINES.sub("\n\n", text)


def split_index(length: int, val_frac: float) -> int:
    """Where the validation part of a text of `length` characters starts: length - floor(length * val_frac)."""
    try:
        frac = float(val_frac)
    except (TypeError, ValueError):
        raise ConfigError(f"validation fraction must be a number, got {val_frac!r}") from None
    if not 0.0 <= frac < 1.0:  # also rejects NaN
        raise ConfigError(f"validation fraction must be at least 0 and below 1, got {val_frac!r}")
    return length - int(length * frac)


def split_lines(text: str) -> list[str]:
    """Lines of text for lines mode, without their "\\n"; whitespace-only lines are dropped.

    This is charrnn's one definition of a line, everywhere (preparation, the settings' line count, eval,
    classify, annotate, novelty): a line ends at "\\n", "\\r\\n" or a lone "\\r" (normalize_newlines makes
    them all "\\n") and nowhere else. The other characters str.splitlines breaks at (vertical tab, form feed,
    \\x1c-\\x1e, NEL \\x85, U+2028, U+2029) are characters inside a line: a form feed in source code or a
    U+2028 in JSON text does not end the line a user sees, and in Latin-1 text \\x85 is a byte of the text.
    - text: the text ("\\n" line ends)
    - returns: list of lines, each with at least one non-whitespace character
    """
    return [line for line in text.split("\n") if line and not line.isspace()]


# Lines mode runs a whole line through the network in one step: longer lines belong to stream mode.
MAX_LINE_CHARS = 10_000


def check_line_lengths(longest: int, which: str = "", *, at_least: bool = False, where: str = "",
                       classifier: bool = False) -> None:
    """CorpusError when a line of `longest` characters is too long to be one example of lines mode.

    - at_least: the line has at least `longest` characters (it was refused before its end was read)
    - where: the start of the message (such as the file's name)
    - classifier: the lines are a classifier's examples, which have no stream mode to go to"""
    if longest > MAX_LINE_CHARS:
        what = "a classifier" if classifier else "lines mode"
        hint = "shorten or split such lines (each line is one labelled example)" if classifier else \
            f"train on long text with {option('mode', 'stream')}"
        raise CorpusError(f"{where}a {which}line is {'at least ' if at_least else ''}{longest:,} characters long, "
                          f"but {what} takes each line as one example of at most {MAX_LINE_CHARS:,}; {hint}")


_LONG_LINE = re.compile(r"[^\n]{%d,}" % (MAX_LINE_CHARS + 1))  # a whole line: a maximal run between newlines


def check_text_lines(text, which: str = "", labelled: bool = False) -> None:
    """check_line_lengths of a text held in memory (a str; None and others, such as a TextFile, pass), by one
    scan that copies nothing, before anything splits it into lines or tokens (a task that reads its text
    whole: Task.chunked False).
    - labelled: label<TAB>text lines (a classifier's): the text after the first TAB is the example"""
    longest = 0
    for m in _LONG_LINE.finditer(text if isinstance(text, str) else ""):
        start = text.find("\t", m.start(), m.end()) + 1 if labelled else m.start()
        longest = max(longest, m.end() - (start or m.start()))
    check_line_lengths(longest, which, classifier=labelled)


class LabelledLines:
    """What a line of a classifier's file means: `label<TAB>text`, the hook the corpus engine calls on each
    non-blank line (textfile.py: TextFile.parse) and split_labelled on a text in memory.

    - min_labels: how many distinct labels a file must hold (2 to train; 1 for a file to score)"""
    classifier = True  # its lines are a classifier's examples (corpus.check_line_lengths says so)

    def __init__(self, min_labels: int = 2):
        self.min_labels = min_labels

    @staticmethod
    def parse(line: str):
        """(label, start) of a non-blank line: the label stripped of surrounding whitespace, and where its
        example starts (after the first TAB; the example is kept as written, more TABs and all); None when
        the line is malformed (no TAB, an empty label or an empty example)."""
        label, tab, rest = line.partition("\t")
        if not tab or not label.strip() or not rest or rest.isspace():
            return None
        return label.strip(), len(label) + 1

    @staticmethod
    def malformed(where: str, count: int, number: int, line: str) -> CorpusError:
        """The error for `count` malformed lines, the first of them line `number` (from 1), `line`."""
        return CorpusError(f"{where}: {count:,} malformed line{'s' if count > 1 else ''} (each must be "
                           f"label<TAB>text, both non-empty); the first is line {number}: {line[:60]!r}")

    def check_labels(self, labels: list[str], where: str) -> None:
        """CorpusError unless labels (the distinct labels, in the order of their first line) are enough."""
        if len(labels) < self.min_labels:
            raise CorpusError(f"{where}: a classifier needs at least {self.min_labels} "
                              f"label{'s' if self.min_labels > 1 else ''}, found "
                              f"{len(labels)}{': ' + repr(labels[0]) if labels else ''}")


def split_labelled(text: str, where: str, min_labels: int = 2) -> tuple[list[str], list[str]]:
    """Labelled lines for a classifier held in memory (LabelledLines: each non-blank line is `label<TAB>text`).

    - text: the file's text ("\n" line ends); where: its name, for errors
    - returns (labels, texts): one entry per example
    CorpusError when a line is malformed (the message names the first such line's number and how many
    there are), or there are fewer than min_labels labels.
    """
    parser = LabelledLines(min_labels)
    labels, texts, bad = [], [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line or line.isspace():
            continue
        parsed = parser.parse(line)
        if parsed is None:
            bad.append((number, line))
            continue
        labels.append(parsed[0])
        texts.append(line[parsed[1]:])
    if bad:
        raise parser.malformed(where, len(bad), *bad[0])
    parser.check_labels(list(dict.fromkeys(labels)), where)
    return labels, texts


def label_ids(names: list[str], labels: list[str], where: str) -> np.ndarray:
    """Label names -> ids in `labels`; CorpusError naming a label the model does not know."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise CorpusError(f"{where}: {len(unknown)} label{'s' if len(unknown) > 1 else ''} the model does not know, "
                          f"such as {unknown[0]!r}; its labels are {', '.join(map(repr, labels[:10]))}")
    return np.array([index[n] for n in names], dtype=np.int64)


# ---------------------------------------------------------------- a folder of files as one corpus

# Below this many files a folder's validation split is the last tenth of its text, not whole files.
MIN_FILES_FOR_FILE_SPLIT = 10


def _matches(relative: str, pattern: str | None) -> bool:
    """A file matches --glob when its name does, or, for a pattern with a "/", its relative path."""
    if pattern is None:
        return True
    return fnmatch.fnmatchcase(relative if "/" in pattern else relative.rsplit("/", 1)[-1], pattern)


def folder_files(root, pattern: str | None = None) -> list[str]:
    """The files under root (recursive, sorted by relative path, hidden entries left out) that match pattern.

    - returns: relative paths with "/" separators; symbolic links to folders are not followed
    """
    root = os.fspath(root)
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            relative = os.path.relpath(os.path.join(here, name), root).replace(os.sep, "/")
            if _matches(relative, pattern) and os.path.isfile(os.path.join(here, name)):
                found.append(relative)
    return sorted(found)


def hold_out_files(lengths: list[int], val_frac: float, seed: int = 0):
    """Which whole files of a folder are held out for validation, from their lengths in characters.

    - val_frac: share of the characters to hold out; seed: chooses which files
    Returns (held, how): held is the sorted indexes of the files held out, [] when nothing is held out, or
    None when whole files cannot be held out, and then the last val_frac of the text is (the file it starts
    in cut in two); how says in words which split was made.
    Whole files: with at least MIN_FILES_FOR_FILE_SPLIT files, a seeded random choice of files whose
    characters come to about val_frac of the total (a file that would overshoot half as much again is
    passed over); if that cannot reach half the target, or would leave no training file, the last part.
    """
    total = sum(lengths)
    cut = split_index(total, val_frac)
    if total - cut == 0:
        return [], f"no validation split ({option('val_frac', 0)})"
    n = len(lengths)
    if n >= MIN_FILES_FOR_FILE_SPLIT:
        target = total - cut
        chosen, held = [], 0
        for i in np.random.default_rng(seed).permutation(n):
            size = lengths[i]
            if held + size <= 1.5 * target:
                chosen.append(int(i))
                held += size
            if held >= target:
                break
        if held >= 0.5 * target and len(chosen) < n:
            return (sorted(chosen),
                    f"{len(chosen)} whole files held out for validation ({held / total:.1%} of the characters)")
    reason = f"{n} files are too few to hold out whole ones" if n < MIN_FILES_FOR_FILE_SPLIT else \
        "the files are too unequal in size to hold out whole ones"
    return None, f"the last {val_frac:.0%} of the text held out for validation ({reason})"


def encode_lines(vocab: Vocab, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encode lines into one flat id array plus offsets.

    - vocab: the vocabulary
    - lines: list of n_lines strings, or of n_lines token lists (each token one id, taken whole)
    - returns ids: (total_tokens,) dtype vocab.dtype, the lines' ids back to back
    - returns offsets: (n_lines + 1,) int64; line i is ids[offsets[i]:offsets[i + 1]]
    """
    offsets = np.zeros(len(lines) + 1, dtype=np.int64)
    if lines and not isinstance(lines[0], str):  # token lists: one id per token, each taken whole
        offsets[1:] = np.cumsum([len(line) for line in lines])
        encoded = [vocab.encode_tokens(line) for line in lines]
        return (np.concatenate(encoded) if encoded else np.empty(0, vocab.dtype)).astype(vocab.dtype, copy=False), offsets
    if vocab.level == "char":
        # One token per character: encode all lines in one vectorized call.
        offsets[1:] = np.cumsum([len(line) for line in lines])
        return vocab.encode("".join(lines)), offsets
    if not lines or any("\n" in line for line in lines):  # a line of its own newlines: each on its own
        encoded = [vocab.encode(line) for line in lines]
        offsets[1:] = np.cumsum([e.size for e in encoded])
        ids = np.concatenate(encoded) if encoded else np.empty(0, dtype=vocab.dtype)
        return ids.astype(vocab.dtype, copy=False), offsets
    tokens, _, inverse, per_line = distinct_line_tokens(lines)  # each distinct token looked up once
    offsets[1:] = np.cumsum(per_line)
    return vocab.encode_tokens(tokens)[inverse].astype(vocab.dtype, copy=False), offsets


def check_offsets(offsets: np.ndarray, n_ids: int, name: str = "offsets", min_lines: int = 0) -> None:
    """CorpusError unless offsets divide n_ids ids into lines (as encode_lines makes them).

    - offsets: (n_lines + 1,) integers, from 0 to n_ids, never decreasing
    - n_ids: length of the id array they index
    - name: what to call them in the message
    - min_lines: fewest lines allowed
    """
    if len(offsets) < min_lines + 1 or offsets[0] != 0 or offsets[-1] != n_ids or \
            (len(offsets) > 1 and np.diff(offsets).min() < 0):
        raise CorpusError(f"{name} do not divide the {n_ids} token ids into lines; the file is damaged")


def save_ids(path, ids: np.ndarray) -> None:
    """Write a 1-D id array as a .npy file, atomically (a reader sees the old file or the new one).

    - path: str or Path of the destination
    - ids: (N,) integer array
    """
    path = Path(path)
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise CorpusError(f"{path}: token ids must be a 1-D integer array, got shape {arr.shape} {arr.dtype}")
    try:
        atomic.write_file(path, lambda f: np.save(f, arr, allow_pickle=False))
    except OSError as e:
        raise CorpusError(f"{path}: cannot write token ids: {e.strerror or e}") from None


def release_pages(ids: np.ndarray) -> None:
    """Unmap the pages of a memory-mapped id array that this process has read; a no-op otherwise.

    Reading a mapped file maps its pages into the process, and the kernel maps
    whole page-cache folios at a time (up to 2 MB each: one read per stream per
    step maps megabytes). Left alone, the mapped part grows as training walks
    the streams, towards the whole file. The pages stay in the page cache, so
    the next read costs a minor fault, not disk I/O.
    """
    mapping = getattr(ids, "_mmap", None)  # np.memmap's mmap object
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap_module, "MADV_DONTNEED"):
        mapping.madvise(mmap_module.MADV_DONTNEED)


def check_mapped(*arrays) -> None:
    """CorpusError when the file under a memory-mapped id array is now shorter than its mapping (None and
    arrays in memory pass).

    Reading a mapped page past a file's end kills the process with SIGBUS, which no Python code can
    catch or report: a trainer whose data file another process cut would die with no message and no
    save. The loop calls this before each step and each evaluation, so such a cut is an error with a
    message instead. It narrows the window, it cannot close it: a cut between this check and the reads
    that follow still kills the process. The run's lock keeps charrnn itself from writing a run's data
    while it trains; nothing keeps another program from it.
    """
    for ids in arrays:
        filename = getattr(ids, "filename", None)  # np.memmap's file
        if filename is None:
            continue
        try:
            size = os.stat(filename).st_size
        except OSError:  # gone: the mapping keeps the file's data alive
            continue
        if size < ids.offset + ids.nbytes:
            raise CorpusError(f"{filename} was cut to {size:,} bytes while in use (it holds "
                              f"{ids.offset + ids.nbytes:,}): the run's data is damaged; restore it or start "
                              f"the run again")


def load_ids(path, mmap: bool = True) -> np.ndarray:
    """Read an id array written by save_ids.

    - path: str or Path of the .npy file
    - mmap: map the file read-only instead of reading it, so memory does not grow with its length
    - returns: (N,) integer array (a read-only np.memmap when mmap is true)
    """
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except OSError as e:
        raise CorpusError(f"{path}: cannot read token ids: {e.strerror or e}") from None
    except ValueError as e:
        # np.load reports a malformed .npy header, or a zero-length array it cannot map, as ValueError.
        if mmap:
            try:
                arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                raise CorpusError(f"{path}: not a valid token id file ({e})") from None
        else:
            raise CorpusError(f"{path}: not a valid token id file ({e})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise CorpusError(f"{path}: not a token id file (expected a 1-D integer array)")
    return arr
