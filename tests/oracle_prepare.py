"""The in-memory preparation: the oracle that the one corpus engine (charrnn/files/textfile.py) is held to.

It holds the whole text as a str (a folder as `Documents`, one str per file) and prepares it the plain way:
split the text, count the vocabulary, encode, save. textfile.py does the same in chunks, never holding the
text; tests/test_textfile.py and tests/test_folder_corpus.py compare the two (vocabulary, splits, ids,
offsets and labels) on files, folders, built-in corpora, pipes and labelled files. Nothing in charrnn/
uses this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn.data import batches
from charrnn.data.vocab import Vocab, build_vocab, extend_vocab
from charrnn.errors import ConfigError, CorpusError
from charrnn.files import corpus, textfile
from charrnn.files.config import TrainConfig

LABELS_FILE = "labels.json"


@dataclass
class Documents:
    """The texts of several files, in order (a folder read whole).

    - names, texts: each piece's file name and text
    - ends: whether each piece ends its file (False only where a split cut a file in two); in stream mode
      every end of a file is followed by the EOS token
    - skipped, empty: files left out as binary or undecodable, and as empty
    len() is the number of characters, as for a str."""
    names: list[str]
    texts: list[str]
    ends: list[bool] = None
    skipped: list[str] = field(default_factory=list)
    empty: int = 0

    def __post_init__(self):
        if self.ends is None:
            self.ends = [True] * len(self.texts)

    def __len__(self) -> int:
        return sum(map(len, self.texts))


def read_folder(root, pattern: str | None = None, errors: str = "strict",
                encoding: str = corpus.DEFAULT_ENCODING) -> Documents:
    """Every text file under root (corpus.folder_files), each read whole by corpus.decode_text."""
    if errors not in corpus.TEXT_ERRORS:
        raise ConfigError(f"unknown text error handling {errors!r}; expected 'strict' or 'replace'")
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"{root}: not a folder")
    names = corpus.folder_files(root, pattern)
    if not names:
        raise CorpusError(f"{root}: the folder holds no files" + (f" matching {pattern!r}" if pattern else ""))
    docs = Documents([], [])
    for name in names:
        data = corpus.read_input(root / name, encoding=encoding)
        if not data or data == b"\xef\xbb\xbf":
            docs.empty += 1
            continue
        try:
            text = corpus.decode_text(data, root / name, errors, encoding)
        except CorpusError:
            docs.skipped.append(name)
            continue
        docs.names.append(name)
        docs.texts.append(text)
        docs.ends.append(True)
    return docs


def folder_texts(folder: textfile.Folder) -> list[str]:
    """The texts of a spooled textfile.Folder's files, read back from its spool."""
    with open(folder.whole.path, "rb") as f:
        data = f.read()
    return [data[begin:end].decode("utf-8") for begin, end in folder.spans]


def split_documents(docs: Documents, val_frac: float, seed: int = 0, whole_only: bool = False):
    """(train, val, how) of a folder's documents as corpus.hold_out_files says; with whole_only, None where
    whole files cannot be held out. The last part: the file it starts in is cut in two."""
    held, how = corpus.hold_out_files([len(t) for t in docs.texts], val_frac, seed)
    if held == []:
        return docs, Documents([], []), how
    if held is not None:
        keep = sorted(set(range(len(docs.texts))) - set(held))
        pick = lambda idx: Documents([docs.names[i] for i in idx], [docs.texts[i] for i in idx])  # noqa: E731
        return pick(keep), pick(held), how
    if whole_only:
        return None
    cut = corpus.split_index(len(docs), val_frac)
    train, val, seen = Documents([], []), Documents([], []), 0
    for name, text in zip(docs.names, docs.texts):
        head = max(0, min(len(text), cut - seen))
        if head:
            train.names.append(name), train.texts.append(text[:head]), train.ends.append(head == len(text))
        if head < len(text):
            val.names.append(name), val.texts.append(text[head:]), val.ends.append(True)
        seen += len(text)
    return train, val, how


def split_text(text: str, val_frac: float) -> tuple[str, str]:
    """(train, val): val is the last floor(len(text) * val_frac) characters (corpus.split_index)."""
    cut = corpus.split_index(len(text), val_frac)
    return text[:cut], text[cut:]


def encode_stream(vocab: Vocab, text) -> np.ndarray:
    """vocab.encode(text), or for Documents each piece's ids followed by EOS where the piece ends its file."""
    if not isinstance(text, Documents):
        return vocab.encode(text)
    parts = []
    for piece, end in zip(text.texts, text.ends):
        parts.append(vocab.encode(piece))
        if end:
            parts.append(np.array([vocab.eos], dtype=vocab.dtype))
    return np.concatenate(parts) if parts else np.empty(0, dtype=vocab.dtype)


def vocab_text(text) -> str:
    """The text a vocabulary is counted from: the documents joined by newlines."""
    return "\n".join(text.texts) if isinstance(text, Documents) else text


def lines_of(text) -> list[str]:
    """corpus.split_lines of a text, or of every document, pooled in order."""
    if isinstance(text, Documents):
        return [line for piece in text.texts for line in corpus.split_lines(piece)]
    return corpus.split_lines(text)


def lines_vocab(lines: list[str], tconfig: TrainConfig) -> Vocab:
    """Lines mode's vocabulary: the lines' tokens only (at word level joined by a "\\n" that is dropped)."""
    if tconfig.level == "char":
        return build_vocab("".join(lines), "char", tconfig.min_count, tconfig.max_vocab)
    vocab = build_vocab("\n".join(lines), "word", tconfig.min_count, tconfig.max_vocab)
    return Vocab(tuple(t for t in vocab.tokens if t != "\n"), "word")


def prepare(directory, train_text, val_text, tconfig: TrainConfig, base_vocab: Vocab | None = None,
            extend: bool = False, where: tuple = ("the corpus", "the validation text")) -> Vocab:
    """Build the vocabulary from the training text (a str or Documents) and save the encoded ids under
    directory/data, as the engine does: train.npy, val.npy, in lines mode *_offsets.npy, for a classifier
    *_labels.npy and labels.json.
    - val_text: a separate validation text, or None to hold out val_frac
    - base_vocab, extend: a fine-tuned model's vocabulary, kept or extended"""
    def make_vocab(text, exclude=()):
        if base_vocab is None:
            return build_vocab(text, tconfig.level, tconfig.min_count, tconfig.max_vocab)
        return extend_vocab(base_vocab, text, tconfig.min_count, exclude) if extend else base_vocab

    arrays = {}
    if tconfig.mode == "stream":
        if val_text is None:
            train_text, val_text = (split_text(train_text, tconfig.val_frac) if isinstance(train_text, str)
                                    else split_documents(train_text, tconfig.val_frac, tconfig.seed)[:2])
        vocab = make_vocab(vocab_text(train_text))
        arrays["train.npy"] = encode_stream(vocab, train_text)
        arrays["val.npy"] = encode_stream(vocab, val_text)
        batches.stream_windows(len(arrays["train.npy"]), tconfig.batch_size, tconfig.seq_len)
    else:
        classify = tconfig.task == "classify"
        if classify:
            tags, lines = corpus.split_labelled(train_text, where[0])
            label_names = sorted(set(tags))
            tags = corpus.label_ids(tags, label_names, where[0]) if tags else None
        else:
            lines = lines_of(train_text)
        corpus.check_line_lengths(max(map(len, lines), default=0), classifier=classify)
        if val_text is None:
            order = np.random.default_rng(tconfig.seed).permutation(len(lines))
            n_val = int(len(lines) * tconfig.val_frac)
            val_rows, train_rows = np.sort(order[:n_val]), np.sort(order[n_val:])
            val_lines = [lines[i] for i in val_rows]
            lines = [lines[i] for i in train_rows]
            if classify:
                tags, val_tags = tags[train_rows], tags[val_rows]
        else:
            if classify:
                val_tags, val_lines = corpus.split_labelled(val_text, where[1], min_labels=1)
                val_tags = corpus.label_ids(val_tags, label_names, where[1])
            else:
                val_lines = lines_of(val_text)
            corpus.check_line_lengths(max(map(len, val_lines), default=0), "validation ", classifier=classify)
        if not lines:
            raise CorpusError("lines mode needs at least one non-empty training line")
        vocab = lines_vocab(lines, tconfig) if base_vocab is None else make_vocab("\n".join(lines), exclude=("\n",))
        for name, part in (("train", lines), ("val", val_lines)):
            arrays[f"{name}.npy"], arrays[f"{name}_offsets.npy"] = corpus.encode_lines(vocab, part)
        if classify:
            arrays["train_labels.npy"], arrays["val_labels.npy"] = tags, val_tags
    data = os.path.join(directory, "data")
    os.makedirs(data, exist_ok=True)
    for name, ids in arrays.items():
        np.save(os.path.join(data, name), ids, allow_pickle=False)
    if tconfig.task == "classify":
        with open(os.path.join(data, LABELS_FILE), "w", encoding="utf-8") as f:
            f.write(json.dumps(label_names))
    return vocab
