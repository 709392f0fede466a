"""Built-in corpora: named texts built from what every Python installation carries.

Nothing is downloaded and no text is copied into this repository: each corpus
is assembled, deterministically, from the running Python's own files and
tables (so two Pythons of one version give the same corpus). corpora/README.md
says how each is built, its size and what a short run reaches on it.

- python-reference: the language reference (pydoc_data.topics) as English prose: tables and runs of
  blanks left out (corpus.as_prose), so that a short run's sample reads as prose
- python-source: a few MB of the standard library's own .py files (tests left
  out), whole files chosen in the order of a hash of their paths, EOS between files
- unicode-names: the names of the Unicode characters (unicodedata), one a line
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
import unicodedata
from dataclasses import dataclass

from . import corpus, textfile
from ..errors import ConfigError, CorpusError

# python-source takes whole files until it holds this many characters.
SOURCE_CHARS = 3_000_000


@dataclass(frozen=True)
class BuiltIn:
    name: str
    mode: str          # the mode `charrnn train --corpus NAME` trains in unless --mode says otherwise
    description: str


CORPORA = {c.name: c for c in (
    BuiltIn("python-reference", "stream", "the Python language reference (pydoc_data.topics), English prose without its tables"),
    BuiltIn("python-source", "stream", "standard-library .py files, tests left out, whole files, EOS between"),
    BuiltIn("unicode-names", "lines", "the names of the Unicode characters (unicodedata), one a line"),
)}
DEFAULT = "python-reference"


def names() -> list[str]:
    return list(CORPORA)


def lookup(name: str) -> BuiltIn:
    """The built-in corpus called name; ConfigError listing the names otherwise."""
    if name not in CORPORA:
        raise ConfigError(f"no built-in corpus called {name!r}; choose one of {', '.join(CORPORA)} "
                          f"(charrnn corpora lists them)")
    return CORPORA[name]


def build(name: str):
    """A built-in corpus, spooled to a temporary file (textfile.spool_text): a textfile.TextFile, or a
    textfile.Folder of whole files for python-source."""
    lookup(name)
    if name == "python-source":
        return python_source()
    pieces = corpus.default_corpus_parts() if name == "python-reference" else unicode_name_lines()
    return textfile.spool_text(pieces, name)


def stdlib_sources() -> list[str]:
    """Relative paths of the standard library's .py files, tests, site-packages and hidden folders left out."""
    root = sysconfig.get_paths()["stdlib"]
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in
                         ("site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"))
        for name in files:
            if name.endswith(".py") and not name.startswith("test_"):
                found.append(os.path.relpath(os.path.join(here, name), root).replace(os.sep, "/"))
    return sorted(found)


def python_source_files(limit: int = SOURCE_CHARS) -> list[tuple[str, str]]:
    """Whole standard-library .py files [(relative path, path)], in the order of the SHA-1 of their relative
    paths, while the total stays under limit characters (a spread over the whole library, the same on every
    run); each is read, one at a time, to count its characters."""
    root = sysconfig.get_paths()["stdlib"]
    order = sorted(stdlib_sources(), key=lambda rel: hashlib.sha1(rel.encode()).hexdigest())
    chosen, total = [], 0
    for rel in order:
        path = os.path.join(root, rel)
        try:
            with open(path, "rb") as f:
                size = len(corpus.decode_text(f.read(), rel))
        except (OSError, CorpusError):
            continue  # unreadable or not UTF-8 text: not part of the corpus
        if total + size > limit:
            continue
        chosen.append((rel, path))
        total += size
    if not chosen:
        raise CorpusError(f"no standard-library source files found under {root}")
    return chosen


def python_source(limit: int = SOURCE_CHARS):
    """python_source_files as one corpus, spooled: a textfile.Folder (EOS between files in stream mode)."""
    return textfile.documents("python-source", python_source_files(limit))


def unicode_name_lines():
    """Yield the Unicode character names this Python knows, each with its "\\n", in code point order.

    Left out: names made from the code point itself (CJK UNIFIED IDEOGRAPH-4E00, TANGUT
    IDEOGRAPH-17000, ...) and the Hangul syllables, whose names are composed by a rule.
    """
    for cp in range(sys.maxunicode + 1):
        name = unicodedata.name(chr(cp), "")
        if not name or name.startswith("HANGUL SYLLABLE ") or name.endswith((f"{cp:04X}", f"{cp:05X}")):
            continue
        yield name + "\n"


def unicode_names() -> str:
    """unicode_name_lines as one text."""
    return "".join(unicode_name_lines())


def describe(name: str) -> dict:
    """{"name", "mode", "description", "characters", "files", "lines"} of a built-in corpus (it is built to count)."""
    source = build(name)
    folder = isinstance(source, textfile.Folder)
    lines = textfile.scan(source, "char", "lines").n_lines if not folder and CORPORA[name].mode == "lines" else None
    return {"name": name, "mode": CORPORA[name].mode, "description": CORPORA[name].description,
            "characters": textfile.characters(source), "files": len(source.names) if folder else None, "lines": lines}
