"""A corpus file prepared in chunks, so that memory does not grow with its size.

`open_text` checks a file as `corpus.read_text` does, without reading it
whole, and `scan` reads it once (pass 1): it decodes the bytes in chunks of
`chunk_bytes` with an incremental decoder of the file's encoding (UTF-8 unless
given; only an encoding `corpus.ascii_compatible` calls so, where line ends
are single bytes and the decoder holds no state but a character cut short:
`chunked` says whether a file can be read so) (a character split between two
chunks is decoded whole; invalid bytes give read_text's errors, at the same
offsets), counts the tokens, and in lines mode writes an index of the kept
lines (byte start, byte end, tokens) to an anonymous temporary file, read
back memory-mapped. `prepare_data` (pass 2) builds the vocabulary from the counts
and encodes the text straight into the run's .npy id files, in the vocabulary's
smallest unsigned dtype (`vocab.id_dtype`, recorded in each file's header).
Pass 1 keeps a CRC-32 of the bytes it read (`_Digest`); once every file is
staged, and before any is renamed into place, the file is read again for it
(`check_unchanged`): a file changed between the passes is refused even where
the change kept every token count.

The text is never held whole: a chunk at a time, plus the counts (characters,
or at word level the words and their counts, at most WORD_TABLE of them: past
that the rarest are dropped as the scan goes, `_Counts.bound`) and, in lines mode, one byte per
line saying which split it is in (and, while that is drawn, the seeded
permutation of the lines that chooses it, 4 bytes per line: the order
`permutation` gives, drawn by `shuffle` on 32-bit line numbers). Every result is that of the in-memory path
(`prepare.prepare_data` on `corpus.read_text`'s string): the same split, the
same vocabulary and the same ids. Where a chunk is cut is never seen in the
result: at word level it is cut only where a token ends (before a newline, or
where a run of spaces starts), in lines mode only after a line end.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import tempfile
import weakref
import zlib
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, compress

import numpy as np

from . import atomic, corpus, layout
from ..data import batches
from .config import TrainConfig
from ..errors import ConfigError, CorpusError, option
from ..data.vocab import (WORD_PATTERN, Vocab, _codepoints, distinct_line_tokens, distinct_tokens, extend_from_counts,
                          vocab_from_counts)

CHUNK_BYTES = 1 << 20  # bytes read at a time: bounds every temporary (a few times this), and fits in cache
_BOM = corpus._BOM
_SPACE_START = re.compile(r"\S(?=[^\S\n])")  # a token ends and a run of spaces starts right after it
_SPACE_START_REVERSED = re.compile(r"[^\S\n]\S")  # the same, in the reversed text: its first match is the last
_LINE_ENDS = (10, 13)  # "\n" and "\r": never inside a multi-byte UTF-8 character
_MAX_LINE_BYTES = 4 * corpus.MAX_LINE_CHARS  # a longer line has more characters than lines mode takes
# word level: the most distinct words counted at once. Past it the rarest are dropped (_Counts.bound), so the
# counts' memory is bounded (about 200 MB) whatever the corpus; exact up to this many distinct words
WORD_TABLE = 1 << 20


@dataclass(eq=False)
class TextFile:
    """A corpus file that preparation reads in chunks (see open_text); str() is its name in messages."""
    path: str
    errors: str = "strict"
    chunk_bytes: int = CHUNK_BYTES
    long_lines: bool = False  # lines mode: keep lines longer than corpus.MAX_LINE_CHARS (eval scores them)
    encoding: str = corpus.DEFAULT_ENCODING
    scans: dict = field(default_factory=dict, repr=False)  # (level, mode) -> Scan
    name: str | None = None  # what messages call it (None: its path)
    spool: object = field(default=None, repr=False)  # a spooled input's temporary file, deleted with it
    # stream mode, several files spooled as one (Folder): the characters, each a "\n" between two files,
    # that stand for the EOS ending the file before them, and whether an EOS ends the text too
    eos_at: np.ndarray | None = field(default=None, repr=False)
    ends: bool = False
    val_start: int | None = None  # where a validation part held out of it starts (None: corpus.split_index)
    # lines mode: what a line means: None, the line is the example; else the task's line parser (such as
    # corpus.LabelledLines), whose parse(line) gives (tag, where the example starts) or None (malformed)
    parse: object = field(default=None, repr=False)
    n_chars: int | None = None  # its characters, where known (characters())

    def __str__(self) -> str:
        return str(self.path) if self.name is None else self.name


def chunked(path, encoding: str = corpus.DEFAULT_ENCODING) -> bool:
    """Whether a file can be read in chunks here (open_text): a regular file, in an encoding whose chunks
    can be cut at line ends (corpus.ascii_compatible). Others (a pipe, UTF-16) are read whole by read_text."""
    return os.path.isfile(path) and corpus.ascii_compatible(corpus.text_encoding(encoding))


def open_source(path, errors: str = "strict", chunk_bytes: int = CHUNK_BYTES, long_lines: bool = False,
                encoding: str = corpus.DEFAULT_ENCODING) -> TextFile:
    """Any input as a TextFile, checked as open_text checks a file: a regular file that can be read in
    chunks (chunked) is read where it lies; anything else (a pipe, standard input "-", a device, a file in
    UTF-16 or UTF-32) is spooled first to a temporary file (spool), which is then read as a file.
    Raises CorpusError or ConfigError as corpus.read_text would for the same input."""
    encoding = corpus.text_encoding(encoding)
    if chunked(path, encoding):
        return open_text(path, errors, chunk_bytes, long_lines, encoding)
    return spool(path, errors, chunk_bytes, long_lines, encoding)


def spool(path, errors: str = "strict", chunk_bytes: int = CHUNK_BYTES, long_lines: bool = False,
          encoding: str = corpus.DEFAULT_ENCODING) -> TextFile:
    """An input copied, a block at a time (corpus.input_blocks: a pipe or device within
    corpus.MAX_STREAM_BYTES), to a temporary file that lives as long as the TextFile, and opened as a
    file. Its bytes are copied as they are, in an encoding that open_text reads (their offsets, and so
    every message about them, are the input's); a file in another encoding (UTF-16) is decoded on the way
    and stored as UTF-8, its invalid bytes reported at their offsets in the input as decode_text does."""
    if errors not in corpus.TEXT_ERRORS:
        raise ConfigError(f"unknown text error handling {errors!r}; expected 'strict' or 'replace'")
    encoding = corpus.text_encoding(encoding)
    name = corpus.input_name(path)
    blocks = corpus.input_blocks(path, encoding=encoding)
    if not corpus.ascii_compatible(encoding):
        blocks = _as_utf8(decoded(blocks, name, errors, encoding))
        encoding = corpus.DEFAULT_ENCODING
    return _spooled(blocks, name, errors, chunk_bytes, long_lines, encoding)


def _as_utf8(texts):
    """UTF-8 bytes of texts, after a byte order mark (so a text's own leading U+FEFF stays text)."""
    yield _BOM
    for text in texts:
        yield text.encode("utf-8")


def _spooled(blocks, name: str, errors: str = "strict", chunk_bytes: int = CHUNK_BYTES, long_lines: bool = False,
             encoding: str = corpus.DEFAULT_ENCODING) -> TextFile:
    """A TextFile over a temporary file holding the blocks of bytes, removed when the TextFile goes.
    - name: what messages call it"""
    fd, path = tempfile.mkstemp(prefix="charrnn-spool-")
    try:
        with os.fdopen(fd, "wb") as out:
            for block in blocks:
                out.write(block)
        tf = open_text(path, errors, chunk_bytes, long_lines, encoding, name=name)
    except BaseException:
        _remove(path)
        raise
    tf.spool = weakref.finalize(tf, _remove, path)
    return tf


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def decoded(blocks, name: str, errors: str = "strict", encoding: str = corpus.DEFAULT_ENCODING):
    """Yield the text of an input given as blocks of bytes, a block at a time, as corpus.decode_text gives it
    whole: a leading byte order mark dropped, newlines normalized (a "\\r" that ends a block waits for the
    next), and the same CorpusError for an empty text, NUL characters near its start (an encoding whose
    bytes are not ASCII's: the bytes themselves are checked by corpus.input_blocks), or invalid bytes (at
    their offset in the input).
    - name: what messages call the input"""
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    bom = corpus._is_utf8(encoding) or not corpus.ascii_compatible(encoding)
    sniff = not corpus.ascii_compatible(encoding)
    offset, head, started, held, wrote = 0, "", False, "", False  # offset: the input's bytes decoded so far
    for data in chain(blocks, [None]):
        final = data is None
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(b"" if final else data, final)
        except UnicodeDecodeError as e:
            raise corpus.bad_bytes_error(name, encoding, offset - pending + e.start) from None
        if text and not started:
            started, text = True, text[1:] if bom and text.startswith("\ufeff") else text
        if sniff and len(head) < corpus._BINARY_SNIFF:
            head += text[: corpus._BINARY_SNIFF - len(head)]
            if "\0" in head:
                raise CorpusError(f"{name}: looks like a binary file (it holds NUL characters as {encoding}); "
                                  f"expected {encoding} text")
        text, held = held + text, ""
        if not final and text.endswith("\r"):
            text, held = text[:-1], "\r"
        if text:
            wrote = True
            yield corpus.normalize_newlines(text)
        if not final:
            offset += len(data)
    if not wrote:
        raise CorpusError(f"{name}: the file is empty")


def spool_text(pieces, name: str, chunk_bytes: int = CHUNK_BYTES) -> TextFile:
    """A text given as pieces of str ("\\n" line ends), such as a built-in corpus, spooled as UTF-8."""
    count = [0]

    def counted():
        for piece in pieces:
            count[0] += len(piece)
            yield piece
    tf = _spooled(_as_utf8(counted()), name, chunk_bytes=chunk_bytes)
    tf.n_chars = count[0]
    return tf


def characters(source) -> int:
    """How many characters a TextFile or a Folder holds."""
    if isinstance(source, Folder):
        return len(source)
    if source.n_chars is None:
        scans = list(source.scans.values())
        source.n_chars = (scans[0] if scans else scan(source, "char", "stream")).n_chars
    return source.n_chars


# ---------------------------------------------------------------- several files as one corpus


@dataclass(eq=False)
class Folder:
    """Several text files as one corpus (a folder, or the built-in python-source), spooled: their texts,
    each decoded and checked as corpus.decode_text does and its newlines normalized, joined by "\\n" into
    one temporary UTF-8 file, `whole` (the text a vocabulary is counted from: the "\\n" keeps the words of
    two files apart). In stream mode each file ends with EOS: the "\\n" after a file stands for its EOS
    (TextFile.eos_at), and an EOS follows the last. len() is the number of characters, as for a str.
    - names: each file's name (relative to the folder); lengths: its characters; spans: its bytes in whole
    - skipped: the files left out (binary or undecodable); empty: how many were left out as empty"""
    root: str
    names: list
    lengths: list
    spans: list
    whole: TextFile
    skipped: list
    empty: int

    def __len__(self) -> int:
        return sum(self.lengths)


def open_folder(root, pattern: str | None = None, errors: str = "strict",
                encoding: str = corpus.DEFAULT_ENCODING, chunk_bytes: int = CHUNK_BYTES) -> Folder:
    """Every text file under root (corpus.folder_files: recursive, sorted, hidden ones left out) as a Folder.

    - pattern: a glob such as "*.py" (matched against file names; against relative paths if it has a "/")
    - errors: invalid bytes skip the file ("strict") or become U+FFFD ("replace")
    - encoding: every file's encoding (corpus.text_encoding)
    Raises CorpusError when root is no folder or no file is left to train on, or a file cannot be opened.
    """
    if errors not in corpus.TEXT_ERRORS:
        raise ConfigError(f"unknown text error handling {errors!r}; expected 'strict' or 'replace'")
    if not os.path.isdir(root):
        raise CorpusError(f"{root}: not a folder")
    names = corpus.folder_files(root, pattern)
    if not names:
        which = f" matching {pattern!r}" if pattern else ""
        raise CorpusError(f"{root}: the folder holds no files{which}")
    folder = documents(str(root), [(name, os.path.join(root, name)) for name in names], errors, encoding, chunk_bytes)
    if not folder.names:
        what = []
        if folder.skipped:
            what.append(f"{len(folder.skipped)} binary or undecodable ({', '.join(folder.skipped[:3])}"
                        f"{', ...' if len(folder.skipped) > 3 else ''})")
        if folder.empty:
            what.append(f"{folder.empty} empty")
        raise CorpusError(f"{root}: no text file to train on among its {len(names)} files: {' and '.join(what)}")
    return folder


def documents(root: str, files, errors: str = "strict", encoding: str = corpus.DEFAULT_ENCODING,
              chunk_bytes: int = CHUNK_BYTES) -> Folder:
    """A Folder of files [(name, path)], spooled a block at a time; a file is left out as empty (no bytes,
    or only a byte order mark) or as skipped (binary or undecodable: corpus.decode_text's errors).
    CorpusError for a file that cannot be opened. A Folder with no file has no `whole` (None)."""
    encoding = corpus.text_encoding(encoding)
    names, lengths, spans, skipped, empty = [], [], [], [], 0
    fd, path = tempfile.mkstemp(prefix="charrnn-spool-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(_BOM)
            for name, file in files:
                with corpus.open_binary(file) as f:  # cannot be opened: an error, not a file left out
                    head = f.read(len(_BOM) + 1)
                if head in (b"", _BOM):
                    empty += 1
                    continue
                start = out.tell()
                if names:
                    out.write(b"\n")
                n = 0
                try:
                    for text in decoded(corpus.input_blocks(file, encoding=encoding), name, errors, encoding):
                        out.write(text.encode("utf-8"))
                        n += len(text)
                except CorpusError:
                    out.seek(start)
                    out.truncate()
                    skipped.append(name)
                    continue
                names.append(name)
                lengths.append(n)
                spans.append((start + (len(names) > 1), out.tell()))
        whole = open_text(path, chunk_bytes=chunk_bytes, name=root) if names else None
    except BaseException:
        _remove(path)
        raise
    if whole is None:
        _remove(path)
    else:
        whole.spool = weakref.finalize(whole, _remove, path)
        _mark_files(whole, lengths)
    return Folder(root, names, lengths, spans, whole, skipped, empty)


def _mark_files(tf: TextFile, lengths) -> None:
    """Files of these lengths joined by "\\n" in tf: each "\\n" between two is an EOS, and one ends the text."""
    tf.eos_at = (np.cumsum(lengths[:-1], dtype=np.int64) + np.arange(len(lengths) - 1)) if len(lengths) else \
        np.zeros(0, dtype=np.int64)
    tf.ends = True


def _part(folder: Folder, which: list[int], name: str) -> TextFile:
    """The files `which` of a folder, in order, spooled as a Folder's whole is (copied from it)."""
    def blocks():
        yield _BOM
        with _open(folder.whole) as f:
            for k, i in enumerate(which):
                if k:
                    yield b"\n"
                begin, end = folder.spans[i]
                f.seek(begin)
                while begin < end:
                    data = f.read(min(CHUNK_BYTES, end - begin))
                    if not data:
                        raise CorpusError(f"{name}: its spooled text is cut short; run again")
                    begin += len(data)
                    yield data
    tf = _spooled(blocks(), name, chunk_bytes=folder.whole.chunk_bytes)
    _mark_files(tf, [folder.lengths[i] for i in which])
    return tf


def split_folder(folder: Folder, tc: TrainConfig):
    """Hold out a folder's validation text (corpus.hold_out_files). Returns (train, val, how):
    - whole files held out: TextFiles of the files kept and of those held out
    - nothing held out: (whole, None, how), with val_start at its end
    - the last part (stream mode): (whole, None, how), whole.val_start the character where validation
      starts: the files' cut (corpus.split_index of their characters, one after another) in whole, where a
      "\\n" stands between two files
    - None in lines mode where whole files cannot be held out (a random share of the lines is)"""
    held, how = corpus.hold_out_files(folder.lengths, tc.val_frac, tc.seed)
    if held is not None and held:
        keep = sorted(set(range(len(folder.names))) - set(held))
        return _part(folder, keep, folder.root), _part(folder, held, folder.root), how
    if held is None and tc.mode == "lines":
        return None
    cut = corpus.split_index(len(folder), tc.val_frac)
    ends = np.cumsum(folder.lengths)
    folder.whole.val_start = cut + int(np.searchsorted(ends, cut))  # "\n"s before the file of the cut's last character
    return folder.whole, None, how


def open_text(path, errors: str = "strict", chunk_bytes: int = CHUNK_BYTES, long_lines: bool = False,
              encoding: str = corpus.DEFAULT_ENCODING, *, name: str | None = None) -> TextFile:
    """A corpus file checked as corpus.read_text checks it (missing, unreadable, a directory, empty, UTF-16,
    binary), reading only its first bytes; invalid bytes are found by scan. Raises CorpusError or ConfigError.
    - long_lines: a lines-mode scan keeps lines of any length (else it refuses one too long to train on)
    - encoding: the file's; ConfigError unless corpus.ascii_compatible (see chunked)
    - name: what messages call it (None: its path)"""
    if errors not in corpus.TEXT_ERRORS:
        raise ConfigError(f"unknown text error handling {errors!r}; expected 'strict' or 'replace'")
    if int(chunk_bytes) < 1:
        raise ConfigError(f"chunk size must be at least one byte, got {chunk_bytes!r}")
    encoding = corpus.text_encoding(encoding)
    if not corpus.ascii_compatible(encoding):
        raise ConfigError(f"a file in {encoding} cannot be read in chunks; read it with corpus.read_text")
    tf = TextFile(os.fspath(path), errors, int(chunk_bytes), long_lines, encoding, name=name)
    with _open(tf) as f:
        head = f.read(corpus._BINARY_SNIFF)
        start = len(_BOM) if _utf8(tf) and head.startswith(_BOM) else 0
        if len(head) == start and not f.read(1):
            raise CorpusError(f"{tf}: the file is empty")
    corpus._check_head(head, str(tf), encoding)
    return tf


def _utf8(tf: TextFile) -> bool:
    return tf.encoding == "utf-8"


def _open(tf: TextFile):
    return corpus.open_binary(tf.path)


def _bad_bytes(tf: TextFile, offset: int) -> CorpusError:
    """corpus.bad_bytes_error for the bytes at offset, with the bytes around them read again."""
    window = b""
    try:
        with _open(tf) as f:
            f.seek(max(0, offset - 4096))
            window = f.read(offset - max(0, offset - 4096) + 4096)
    except (CorpusError, OSError):
        pass
    return corpus.bad_bytes_error(tf, tf.encoding, offset, window)


def _start(f, tf: TextFile) -> int:
    """Skip a leading byte order mark (UTF-8's); returns where the text starts."""
    if _utf8(tf) and f.read(len(_BOM)) == _BOM:
        return len(_BOM)
    f.seek(0)
    return 0


# ---------------------------------------------------------------- the text in chunks


def _blocks(tf: TextFile, resume: int = 0, digest: "_Digest | None" = None):
    """Yield (resume, text): the file's text in blocks, newlines normalized, decoded incrementally.

    - resume: 0 for the file's start (its BOM dropped), else a position an earlier block reported
    - digest: takes every byte read (pass 1: what pass 2 is checked against)
    Each block's resume is the byte from which a fresh decoder gives that block's text first (a block
    ends before a "\\r", which waits for the next block in case a "\\n" follows it).
    """
    decoder = codecs.getincrementaldecoder(tf.encoding)(tf.errors)
    with _open(tf) as f:
        if resume:
            f.seek(resume)
            pos = resume
        else:
            pos = _start(f, tf)
        held = ""
        while True:
            pending = len(decoder.getstate()[0])
            block_resume = pos - pending - len(held)
            data = f.read(tf.chunk_bytes)
            final = not data
            if digest is not None:
                digest.add(data)
            try:
                text = decoder.decode(data, final)
            except UnicodeDecodeError as e:
                raise _bad_bytes(tf, pos - pending + e.start) from None
            pos += len(data)
            text, held = held + text, ""
            if not final and text.endswith("\r"):
                text, held = text[:-1], "\r"
            if text:
                yield block_resume, corpus.normalize_newlines(text)
            if final:
                return


def _pieces(blocks, level: str, limit: int):
    """Yield (origin, piece) from _blocks' (resume, text): at word level cut only where a token ends.

    - origin: (resume, skip): the piece starts `skip` characters into the text a decoder gives from resume
    - limit: a word-level piece with no newline is cut at a run of spaces once it holds this many characters
    Characters are tokens of their own, so at char level the blocks are the pieces.
    """
    if level == "char":
        for resume, text in blocks:
            yield (resume, 0), text
        return
    # The text since the last cut is kept as a list of blocks and joined once, at the cut: joining (and
    # searching) it again at every block was quadratic in a long line with no newline.
    parts, size, origin = [], 0, None
    space = None  # where the last run of spaces starts in the kept text (a cut there ends a token), or None
    for resume, text in blocks:
        if not parts:
            origin = (resume, 0)
        # the runs of spaces starting in this block (its first may start right after the kept text's last character)
        before = parts[-1][-1:] if parts else ""
        last = _last_space_start(before + text)
        if last is not None:
            space = size - len(before) + last
        nl = text.rfind("\n")
        parts.append(text)
        total = size + len(text)
        if nl >= 0 and size + nl > 0:
            cut = size + nl
        elif total >= limit and space:
            cut = space
        else:
            size = total
            continue
        buf = "".join(parts)
        yield origin, buf[:cut]
        origin = (resume, cut - size) if cut >= size else (origin[0], origin[1] + cut)
        parts, size = [buf[cut:]], total - cut
        space = space - cut if space and space > cut else None
        if not parts[0]:
            parts, size = [], 0
    if parts:
        yield origin, "".join(parts)


def _last_space_start(text: str) -> int | None:
    """The end of _SPACE_START's last match in text (just after a token that a run of spaces follows), or None;
    found by one search of the reversed text, not by walking every match (a Python step per word)."""
    found = _SPACE_START_REVERSED.search(text[::-1])
    return None if found is None else len(text) - found.start() - 1


def _replay(tf: TextFile, level: str, origin=(0, 0)):
    """The pieces of the text from origin on (an origin that _pieces reported), re-cut the same way."""
    resume, skip = origin

    def texts():
        nonlocal skip
        for r, text in _blocks(tf, resume):
            if skip >= len(text):
                skip -= len(text)
                continue
            if skip:
                r, text, skip = None, text[skip:], 0
            yield r, text
    for _, piece in _pieces(texts(), level, _limit(tf)):
        yield piece


def _limit(tf: TextFile) -> int:
    return max(2 * tf.chunk_bytes, 1024)


def _tokens(piece: str, level: str):
    return piece if level == "char" else WORD_PATTERN.findall(piece)


class _Counts:
    """Token counts: a code point histogram (char level) or a Counter (word level)."""

    def __init__(self, level: str):
        self.level = level
        self.hist = np.zeros(0, dtype=np.int64)
        self.words = Counter()

    def add(self, piece: str, sign: int = 1) -> int:
        """Count (sign 1) or uncount (-1) the tokens of piece; returns how many there are."""
        if self.level == "char":
            c = np.bincount(_codepoints(piece)) * sign
            if c.size > self.hist.size:
                c[: self.hist.size] += self.hist
                self.hist = c
            else:
                self.hist[: c.size] += c
            return len(piece)
        tokens, counts, inverse = distinct_tokens(piece)
        counted = dict(zip(tokens, counts.tolist()))
        if sign > 0:
            self.words.update(counted)
            self.bound()
        else:
            self.words.subtract(counted)
        return inverse.size

    def bound(self) -> None:
        """Past WORD_TABLE distinct words, drop the rarest: keep the words counted more often than the count
        at rank WORD_TABLE // 2 (at most half the table; none of a tie is kept or dropped alone, so what is
        kept does not depend on the order the words came in). A word dropped and met again counts afresh:
        its count is then short, which can only matter for words rarer than those kept (lossy counting).
        Exact for a corpus of up to WORD_TABLE distinct words; beyond, the vocabulary holds fewer than
        WORD_TABLE words, a function of the corpus (and the reading's chunks)."""
        if len(self.words) <= WORD_TABLE:
            return
        counts = np.fromiter(self.words.values(), dtype=np.int64, count=len(self.words))
        floor = int(-np.partition(-counts, WORD_TABLE // 2)[WORD_TABLE // 2])
        self.words = Counter({word: n for word, n in self.words.items() if n > floor})

    def as_dict(self) -> dict:
        if self.level == "char":
            (nz,) = np.nonzero(self.hist)
            return {chr(cp): int(self.hist[cp]) for cp in nz}
        return {t: c for t, c in self.words.items() if c > 0}


class _Digest:
    """A CRC-32 of the bytes given, and their number: what pass 1 read of a file, for pass 2 to check that
    the file still holds it (a change of any byte is caught, whatever it does to the token count; two
    texts of one length share a CRC-32 by chance once in 2**32)."""

    def __init__(self):
        self.crc, self.size = 0, 0

    def add(self, data: bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Digest) and (self.crc, self.size) == (other.crc, other.size)


def file_digest(tf: TextFile) -> _Digest:
    """The _Digest of the file's bytes after its BOM, read again in large blocks (the check of pass 2)."""
    digest = _Digest()
    with _open(tf) as f:
        _start(f, tf)
        while data := f.read(max(tf.chunk_bytes, 1 << 22)):
            digest.add(data)
    return digest


def check_unchanged(tf: TextFile, s: Scan) -> None:
    """CorpusError when the file no longer holds the bytes its scan s read (a file of ours, spooled, is
    nobody else's to change: not read again)."""
    if tf.spool is None and s.digest is not None and file_digest(tf) != s.digest:
        raise CorpusError(f"{tf}: the file changed while it was being prepared; run again")


# ---------------------------------------------------------------- pass 1: the scan


@dataclass
class Scan:
    """What pass 1 learned of a file at one level and mode.

    - n_chars, n_tokens: of the whole text (config.count_tokens)
    - distinct: how many distinct tokens the whole text holds, as build_vocab counts them (the speed
      estimate's vocabulary; at word level at most what the counts keep: see _Counts.bound)
    - counts: the tokens' counts: the whole text (stream mode) or the kept lines (lines mode)
    - stream mode: pieces, [(origin, first character, tokens)] of each piece
    - lines mode: n_lines (corpus.split_lines; with a line parser, the examples), index (n_lines, COLUMNS)
      int64 memmap of (byte start, byte end, tokens, characters before the example, tag code) per line,
      longest (characters of an example), line_tokens (their sum)
    """
    level: str
    mode: str
    n_chars: int = 0
    n_tokens: int = 0
    distinct: int = 0
    counts: _Counts = None
    pieces: list = field(default_factory=list)
    n_lines: int = 0
    index: np.ndarray | None = None
    longest: int = 0
    line_tokens: int = 0
    blank: set = field(default_factory=set)  # lines mode: the whitespace-only lines (each one word-level token)
    newline: bool = False                    # lines mode: whether the text holds a newline
    # lines mode with a line parser (TextFile.parse): the tags in the order of their first line (tag -> its
    # code in the index's last column), the text before each example (a set), the malformed lines: how many,
    # and the first's (number from 1, text)
    tags: dict = field(default_factory=dict)
    prefixes: set = field(default_factory=set)
    bad: int = 0
    first_bad: tuple | None = None
    digest: "_Digest | None" = None  # of the bytes pass 1 read (the file after its BOM): pass 2 is checked against it


def scan(tf: TextFile, level: str, mode: str) -> Scan:
    """Pass 1 over the file at this level and mode (cached on tf); CorpusError for invalid UTF-8."""
    key = (level, mode)
    if key not in tf.scans:
        tf.scans[key] = _scan_lines(tf, level) if mode == "lines" else _scan_stream(tf, level)
    return tf.scans[key]


def _scan_stream(tf: TextFile, level: str) -> Scan:
    s = Scan(level, "stream", counts=_Counts(level), digest=_Digest())
    for origin, piece in _pieces(_blocks(tf, digest=s.digest), level, _limit(tf)):
        n = s.counts.add(piece)
        s.pieces.append((origin, s.n_chars, n))
        s.n_chars += len(piece)
        s.n_tokens += n
    s.distinct = len(s.counts.words) if level == "word" else int(np.count_nonzero(s.counts.hist))
    return s


def _line_chunks(tf: TextFile, digest: "_Digest | None" = None):
    """Yield (byte start, bytes): the file (BOM dropped) in chunks that end after a line end, or at its end.

    A chunk ends after a "\\n", or after a "\\r" whose next byte is read (and is no "\\n"), so each chunk
    decodes and normalizes on its own to its share of the text. A line longer than a read is held as a
    list of reads, joined once (joining at every read was quadratic in the line); unless tf.long_lines,
    a line too long for lines mode is refused as soon as it is (each character is at most 4 bytes).
    """
    with _open(tf) as f:
        pos = _start(f, tf)
        parts, held = [], 0  # the bytes read since the last line end
        while True:
            if held > _MAX_LINE_BYTES and not tf.long_lines:
                corpus.check_line_lengths(-(-held // 4), at_least=True, where=f"{tf}: ", classifier=_tagged(tf))
            data = f.read(tf.chunk_bytes)
            if digest is not None:
                digest.add(data)
            if not data:
                if held:
                    yield pos, b"".join(parts)
                return
            arr = np.frombuffer(data, dtype=np.uint8)
            ends = np.flatnonzero((arr == 10) | (arr == 13))
            if ends.size and arr[ends[-1]] == 13 and ends[-1] == len(data) - 1:
                ends = ends[:-1]  # a "\r" that ends the read waits: a "\n" may follow it
            if not ends.size:
                parts.append(data)
                held += len(data)
                continue
            cut = int(ends[-1]) + 1
            parts.append(data[:cut])
            yield pos, b"".join(parts)
            pos += held + cut
            parts, held = [data[cut:]], len(data) - cut


def _decode_chunk(tf: TextFile, start: int, data: bytes) -> str:
    try:
        return corpus.normalize_newlines(str(data, tf.encoding, tf.errors))
    except UnicodeDecodeError as e:
        raise _bad_bytes(tf, start + e.start) from None


def _kept_lines(text: str):
    """(corpus.split_lines(text), and for each non-empty line whether it is kept: not whitespace only)."""
    lines = [line for line in text.split("\n") if line]
    keep = [not space for space in map(str.isspace, lines)]
    return list(compress(lines, keep)), keep


COLUMNS = 5  # of a lines index: byte start, byte end, tokens, characters before the example, tag code


def _tagged(tf: TextFile) -> bool:
    return bool(getattr(tf.parse, "classifier", False))


def _parsed(tf: TextFile, s: Scan, text: str, lines: list, numbered: int):
    """The examples of the kept lines under tf.parse: (examples, (skip, tag code) per example, which lines are
    good); a malformed line is counted (s.bad) and the first remembered, with its number (numbered: the lines
    of the text before this chunk)."""
    parsed = list(map(tf.parse.parse, lines))
    good = [p is not None for p in parsed]
    if not all(good):
        if s.first_bad is None:
            for number, line in enumerate(text.split("\n"), start=numbered + 1):
                if line and not line.isspace() and tf.parse.parse(line) is None:
                    s.first_bad = (number, line)
                    break
        s.bad += good.count(False)
        parsed = list(compress(parsed, good))
        lines = list(compress(lines, good))
    skips = [start for _, start in parsed]
    codes = [s.tags.setdefault(tag, len(s.tags)) for tag, _ in parsed]
    s.prefixes.update(line[:k] for line, k in zip(lines, skips))
    return [line[k:] for line, k in zip(lines, skips)], skips, codes, good


def _line_tokens(lines: list[str]) -> tuple[dict, np.ndarray]:
    """The word-level tokens of lines (each non-empty, without a newline): ({token: times seen}, each
    line's number of tokens)."""
    tokens, counts, _, per_line = distinct_line_tokens(lines)
    return {t: n for t, n in zip(tokens, counts.tolist()) if n}, per_line


def _scan_lines(tf: TextFile, level: str) -> Scan:
    s = Scan(level, "lines", counts=_Counts(level), digest=_Digest())
    numbered = 0  # lines of the text before this chunk ("\n"s)
    out = tempfile.TemporaryFile(prefix="charrnn-lines-")
    try:
        for start, data in _line_chunks(tf, s.digest):
            text = _decode_chunk(tf, start, data)
            s.n_chars += len(text)
            arr = np.frombuffer(data, dtype=np.uint8)
            ends = np.flatnonzero((arr == 10) | (arr == 13))
            begins = np.concatenate([[0], ends + 1])
            ends = np.concatenate([ends, [len(data)]])
            full = ends > begins
            lines, keep = _kept_lines(text)
            if len(keep) != int(full.sum()):  # a non-empty line of bytes decodes to a non-empty line
                raise CorpusError(f"{tf}: its lines between bytes {start} and {start + len(data)} do not decode "
                                  f"one by one; train on it with {option('mode', 'stream')}")
            spaces = len(keep) - len(lines)  # whitespace-only lines: one token each at word level
            if spaces:  # the speed estimate and a fine-tuned run's report count all the text's tokens
                s.blank.update(compress(text.split("\n"), [line.isspace() for line in text.split("\n")]))
            s.newline = s.newline or "\n" in text
            begins, ends = begins[full][keep], ends[full][keep]
            skips = codes = 0
            if tf.parse is not None:
                whole = lines
                lines, skips, codes, good = _parsed(tf, s, text, lines, numbered)
                begins, ends = begins[good], ends[good]
                if level == "word":  # the labels' tokens too: the settings count the whole text's
                    s.n_tokens += sum(len(WORD_PATTERN.findall(line[:k])) for line, k in zip(whole, skips))
            numbered += text.count("\n")
            rows = np.empty((len(lines), COLUMNS), dtype=np.int64)
            rows[:, 0] = begins + start
            rows[:, 1] = ends + start
            rows[:, 3] = skips
            rows[:, 4] = codes
            if level == "char":
                rows[:, 2] = list(map(len, lines))
                if lines:
                    s.counts.add("".join(lines))
            else:
                counted, rows[:, 2] = _line_tokens(lines)
                s.counts.words.update(counted)
                s.counts.bound()
                s.n_tokens += int(rows[:, 2].sum()) + spaces + text.count("\n")
            out.write(rows.tobytes())
            s.n_lines += len(lines)
            s.line_tokens += int(rows[:, 2].sum())
            s.longest = max(s.longest, int(rows[:, 2].max(initial=0)) if level == "char" else
                            max(map(len, lines), default=0))
        if level == "char":
            s.n_tokens = s.n_chars
        s.distinct = len(seen_tokens(tf, level, "lines", s))  # build_vocab's tokens of the whole text
        out.flush()
        s.index = np.memmap(out, dtype=np.int64, mode="r", shape=(s.n_lines, COLUMNS)) if s.n_lines else \
            np.zeros((0, COLUMNS), dtype=np.int64)
    finally:
        if not s.n_lines:
            out.close()
    return s


# ---------------------------------------------------------------- the text in pieces, for other readers


def text_pieces(tf: TextFile, level: str):
    """Yield the file's text in pieces of a few MB cut where no token straddles them: vocab.encode of each,
    one after the other, gives the ids of the whole text (eval scores a file so)."""
    yield from _replay(tf, level)


def line_blocks(tf: TextFile, level: str):
    """Yield corpus.split_lines of the file's text a few MB of lines at a time, in order (pass 1 in lines mode
    finds them)."""
    yield from _selected_lines(tf, scan(tf, level, "lines").index, None)


# ---------------------------------------------------------------- pass 2: the vocabulary and the id files


def prepare_data(data_dir, train: TextFile, val: TextFile | None, tconfig: TrainConfig,
                 base_vocab: Vocab | None = None, extend: bool = False) -> Vocab:
    """prepare.prepare_data for a corpus file (and a separate validation file, or None to hold out
    val_frac): the same vocabulary and the same files, the text read in chunks. Everything is counted
    and checked before the first file is written; the files are written together (atomic.write_files).
    - base_vocab, extend: a fine-tuned model's vocabulary, kept or extended (as prepare.prepare_data)"""
    make = _VocabMaker(tconfig, base_vocab, extend)
    if tconfig.mode == "lines":
        vocab, files = _lines(train, val, tconfig, make)
    else:
        vocab, files = _stream(train, val, tconfig, make, train.val_start)
    *_, last = files
    files[last] = _then_unchanged(files[last], [(tf, scan(tf, tconfig.level, tconfig.mode))
                                                for tf in (train, val) if tf is not None])
    os.makedirs(data_dir, exist_ok=True)
    atomic.cleanup_temp_files(data_dir)  # left by a start that was killed
    try:
        atomic.write_files((os.path.join(data_dir, name), write) for name, write in files.items())
    except OSError as e:
        raise CorpusError(f"{e.filename}: cannot write token ids: {e.strerror or e}") from None
    return vocab


def _then_unchanged(write, sources):
    """write, followed by check_unchanged of each (TextFile, Scan): run as the last file is staged, so a file
    that changed between the passes is refused before any file is renamed into place, even where the
    change kept the token counts that _npy checks."""
    def checked(f):
        write(f)
        for tf, s in sources:
            check_unchanged(tf, s)
    return checked


def _npy(dtype, n: int, arrays, where: TextFile):
    """write(f): a .npy file of shape (n,) and this dtype (its header as np.save writes it), filled with
    the arrays that arrays() yields; CorpusError when they do not come to n (the file changed meanwhile)."""
    dtype = np.dtype(dtype)

    def write(f):
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (int(n),)})
        written = 0
        for arr in arrays():
            arr = np.ascontiguousarray(arr, dtype=dtype)
            written += arr.size
            if written > n:
                break
            f.write(arr)
        if written != n:
            raise CorpusError(f"{where}: the file changed while it was being prepared; run again")
    return write


@dataclass
class _VocabMaker:
    """The vocabulary of the training tokens' counts: new (build_vocab's), or a base kept or extended."""
    tc: TrainConfig
    base: Vocab | None
    extend: bool

    def __call__(self, counts: dict, lines: int | None = None) -> Vocab:
        """- lines: lines mode: how many training lines (joined by "\n", a token that is dropped)"""
        tc = self.tc
        if self.base is not None:
            if not self.extend:
                return self.base
            return extend_from_counts(self.base, counts, tc.min_count, ("\n",) if lines is not None else ())
        if lines is None or tc.level == "char":
            return vocab_from_counts(counts, tc.level, tc.min_count, tc.max_vocab)
        # lines mode: no "\n" token (a sample is one line); at word level the lines are counted as joined by
        # "\n" (so words of neighbouring lines do not merge), and that token is dropped afterwards
        counts = {**counts, **({"\n": lines - 1} if lines > 1 else {})}
        vocab = vocab_from_counts(counts, "word", tc.min_count, tc.max_vocab)
        return Vocab(tuple(t for t in vocab.tokens if t != "\n"), "word")


def seen_tokens(tf: TextFile, level: str, mode: str, s: Scan | None = None) -> set:
    """Every token of the file's whole text (what build_vocab of it would hold), from its scan (s, or tf's)."""
    s = s or scan(tf, level, mode)
    seen = set(s.counts.as_dict())
    if mode == "lines":  # the counts are the examples': add the whitespace-only lines', the text before
        seen |= set().union(*s.blank) if level == "char" else s.blank  # each example and the newline
        seen |= set().union(*s.prefixes) if level == "char" else {t for p in s.prefixes for t in _tokens(p, level)}
        seen |= {"\n"} if s.newline else set()
    return seen


def _stream(train: TextFile, val: TextFile | None, tc: TrainConfig, make: _VocabMaker, cut: int | None = None):
    """- cut: with no val, the character where validation starts (None: corpus.split_index of val_frac)"""
    level = tc.level
    s = scan(train, level, "stream")
    if val is None:
        cut = corpus.split_index(s.n_chars, tc.val_frac) if cut is None else cut
        counts, n_train, n_val, first = _split_counts(train, s, cut)
        eos = _eos_at(train, cut, s.n_chars)  # an EOS at the cut ends the training part
        inside = cut < s.n_chars
        n_train += eos
        n_val += (train.ends and inside) - (eos and inside)  # the validation part's own EOS; not the cut's
    else:
        cut, first, eos, inside = s.n_chars, None, train.ends, False
        counts, n_train, n_val = s.counts, s.n_tokens + train.ends, scan(val, level, "stream").n_tokens + val.ends
    vocab = make(counts.as_dict())
    # raises CorpusError (with the length and what is needed) when the text is too short for one batch
    batches.stream_windows(n_train, tc.batch_size, tc.seq_len)
    end = np.full(1, vocab.eos, dtype=vocab.dtype)

    def train_ids():
        yield from _ids(vocab, train.eos_at, _cut_pieces(train, level, (0, 0), 0, 0, cut))
        if eos:
            yield end

    def val_ids():
        if val is not None:
            yield from _ids(vocab, val.eos_at, _cut_pieces(val, level, (0, 0), 0, 0, None))
            if val.ends:
                yield end
            return
        if first is None:
            return
        origin, pos, _ = s.pieces[first]
        yield from _ids(vocab, train.eos_at, _cut_pieces(train, level, origin, pos, cut + (eos and inside), None))
        if train.ends and inside:
            yield end

    return vocab, {"train.npy": _npy(vocab.dtype, n_train, train_ids, train),
                   "val.npy": _npy(vocab.dtype, n_val, val_ids, val or train)}


def _eos_at(tf: TextFile, pos: int, n_chars: int) -> bool:
    """Whether an EOS stands at character pos of tf's text of n_chars (a "\\n" between two files, or its end)."""
    if not tf.ends:
        return False
    i = int(np.searchsorted(tf.eos_at, pos))
    return pos == n_chars or (i < len(tf.eos_at) and int(tf.eos_at[i]) == pos)


def _cut_pieces(tf: TextFile, level: str, origin, pos: int, begin: int, end: int | None):
    """Yield (start, piece): the pieces of tf's text[begin:end] (end None: to its end), replayed from origin,
    a piece starting at character pos; start is each piece's first character in the text."""
    for piece in _replay(tf, level, origin):
        if end is not None and pos >= end:
            return
        lo, hi = max(0, begin - pos), len(piece) if end is None else min(len(piece), end - pos)
        if hi > lo:
            yield pos + lo, piece[lo:hi]
        pos += len(piece)


def _ids(vocab: Vocab, eos_at, pieces):
    """The ids of (start, piece) pieces, a character at an eos_at position (a "\\n" between two files)
    encoded as EOS: a "\\n" is a token of its own at either level, so the pieces are cut there."""
    for start, piece in pieces:
        if eos_at is None or not len(eos_at):
            yield vocab.encode(piece)
            continue
        lo, hi = np.searchsorted(eos_at, [start, start + len(piece)])
        at = 0
        for e in (eos_at[lo:hi] - start).tolist():
            yield vocab.encode(piece[at:e])
            yield np.full(1, vocab.eos, dtype=vocab.dtype)
            at = e + 1
        yield vocab.encode(piece[at:])


def _split_counts(tf: TextFile, s: Scan, cut: int):
    """The counts and token numbers of text[:cut] and text[cut:] (the training and validation parts), from the whole
    text's counts: the pieces from the one holding the cut on are read again.

    Returns (counts of the training part, its tokens, the validation part's tokens, the index of the
    piece holding the cut or None when nothing is held out).
    """
    if cut >= s.n_chars:
        return s.counts, s.n_tokens, 0, None
    starts = [start for _, start, _ in s.pieces]
    first = int(np.searchsorted(starts, cut, side="right")) - 1
    counts = _Counts(s.level)
    counts.hist, counts.words = s.counts.hist.copy(), Counter(s.counts.words)
    n_train, n_val = s.n_tokens, 0
    pos = starts[first]
    for piece in _replay(tf, s.level, s.pieces[first][0]):
        n_train -= counts.add(piece, -1)  # the whole text's tokens from here on ...
        if pos < cut:
            n_train += counts.add(piece[: cut - pos])  # ... give way to those of text[:cut]
        if pos + len(piece) > cut:
            rest = piece[max(0, cut - pos):]
            n_val += len(rest) if s.level == "char" else distinct_tokens(rest)[2].size
        pos += len(piece)
    return counts, n_train, n_val, first


def _index_blocks(index: np.ndarray, select: np.ndarray | None, rows: int = 1 << 16, whole: bool = False):
    """Yield blocks of rows of a memory-mapped line index (copies), releasing the pages read, so memory
    does not grow with the index: the rows selected, or with whole, (all the rows, which are selected)."""
    for i in range(0, len(index), rows):
        block = np.array(index[i : i + rows])
        corpus.release_pages(index)
        chosen = None if select is None else select[i : i + rows]
        if whole:
            yield block, chosen
        else:
            yield block if chosen is None else block[chosen]


def _selected_lines(tf: TextFile, index: np.ndarray, select: np.ndarray | None):
    """Yield lists of the selected lines' text, in file order, a few MB at a time: each stretch of
    lines is read and decoded in one piece, as pass 1 did."""
    with _open(tf) as f:
        for block, chosen in _index_blocks(index, select, whole=True):
            lo = 0
            while lo < len(block):
                begin = int(block[lo, 0])
                hi = max(lo + 1, int(np.searchsorted(block[:, 1], begin + tf.chunk_bytes, side="right")))
                f.seek(begin)
                data = f.read(int(block[hi - 1, 1]) - begin)
                pick = None if chosen is None else chosen[lo:hi]
                rows = block[lo:hi] if pick is None else block[lo:hi][pick]
                try:
                    if pick is not None and 4 * np.count_nonzero(pick) < len(pick):  # a few: decode those alone
                        view = memoryview(data)
                        lines = [str(view[b:e], tf.encoding, tf.errors) for b, e in (rows[:, :2] - begin).tolist()]
                    else:
                        lines = _kept_lines(corpus.normalize_newlines(str(data, tf.encoding, tf.errors)))[0]
                        if len(lines) != hi - lo:
                            raise UnicodeDecodeError("utf-8", b"", 0, 1, "not the lines pass 1 found")
                        if pick is not None:
                            lines = list(compress(lines, pick.tolist()))
                except UnicodeDecodeError:
                    raise CorpusError(f"{tf}: the file changed while it was being prepared; run again") from None
                if tf.parse is not None:  # the examples, after what comes before them (a label)
                    lines = [line[k:] for line, k in zip(lines, rows[:, 3].tolist())]
                yield lines
                lo = hi


def _lines(train: TextFile, val: TextFile | None, tc: TrainConfig, make: _VocabMaker):
    level = tc.level
    s = scan(train, level, "lines")
    corpus.check_line_lengths(s.longest, classifier=_tagged(train))
    _check_parsed(train, s)
    if val is None:
        # as prepare.prepare_data: a seeded random share of the lines is held out (one byte per line here). The
        # permutation is shuffled in place as 4-byte line numbers (Generator.shuffle draws what permutation(n)
        # draws, so the order is the same: tests/test_textfile.py compares), not permutation(n)'s 8 bytes
        order = np.arange(s.n_lines, dtype=np.uint32 if s.n_lines < 2**32 else np.int64)
        np.random.default_rng(tc.seed).shuffle(order)
        held = np.zeros(s.n_lines, dtype=bool)
        held[order[: int(s.n_lines * tc.val_frac)]] = True
        del order
        parts = {"train": (train, s, ~held), "val": (train, s, held)}
    else:
        v = scan(val, level, "lines")
        corpus.check_line_lengths(v.longest, "validation ", classifier=_tagged(val))
        _check_parsed(val, v)
        held = None
        parts = {"train": (train, s, None), "val": (val, v, None)}
    sizes = {}
    for name, (tf, sc, select) in parts.items():
        n_lines = n_tokens = 0
        for rows in _index_blocks(sc.index, select):
            n_lines += len(rows)
            n_tokens += int(rows[:, 2].sum())
        sizes[name] = (n_lines, n_tokens)
    if not sizes["train"][0]:
        raise CorpusError("lines mode needs at least one non-empty training line")
    counts = _Counts(level)
    counts.hist, counts.words = s.counts.hist.copy(), Counter(s.counts.words)
    if held is not None and held.any():
        for lines in _selected_lines(train, s.index, held):
            if level == "char":
                counts.add("".join(lines), -1)
            else:
                counts.words.subtract(_line_tokens(lines)[0])
    vocab = make(counts.as_dict(), lines=sizes["train"][0])

    files = {}
    for name, (tf, sc, select) in parts.items():
        def ids(tf=tf, sc=sc, select=select):
            for lines in _selected_lines(tf, sc.index, select):
                yield corpus.encode_lines(vocab, lines)[0]

        def offsets(sc=sc, select=select):
            yield np.zeros(1, dtype=np.int64)
            total = 0
            for rows in _index_blocks(sc.index, select):
                ends = np.cumsum(rows[:, 2]) + total
                total = int(ends[-1]) if len(ends) else total
                yield ends
        n_lines, n_tokens = sizes[name]
        files[f"{name}.npy"] = _npy(vocab.dtype, n_tokens, ids, tf)
        files[f"{name}_offsets.npy"] = _npy(np.int64, n_lines + 1, offsets, tf)
    if train.parse is not None:
        files.update(_tag_files(parts, sizes))
    return vocab, files


def _check_parsed(tf: TextFile, s: Scan) -> None:
    """The line parser's errors for a scan: its malformed lines, or too few tags."""
    if tf.parse is None:
        return
    if s.bad:
        raise tf.parse.malformed(str(tf), s.bad, *s.first_bad)
    tf.parse.check_labels(list(s.tags), str(tf))


def _tag_files(parts: dict, sizes: dict) -> dict:
    """The tag of each example ({name}_labels.npy, int64: its index in the sorted training tags) and the
    training tags in that order (layout.LABELS_FILE, JSON); CorpusError for a validation tag not among them."""
    tf, s, _ = parts["train"]
    names = sorted(s.tags)
    files = {layout.LABELS_FILE: lambda f: f.write(json.dumps(names).encode("utf-8"))}
    for name, (tf, sc, select) in parts.items():
        # the scan's codes (in order of first appearance) -> ids among the training tags
        ids = corpus.label_ids(list(sc.tags), names, str(tf)) if len(sc.tags) else np.zeros(0, dtype=np.int64)

        def tags(sc=sc, select=select, ids=ids):
            for rows in _index_blocks(sc.index, select):
                yield ids[rows[:, 4]]
        files[f"{name}_labels.npy"] = _npy(np.int64, sizes[name][0], tags, tf)
    return files
